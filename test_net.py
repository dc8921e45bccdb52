#!/usr/bin/env python
"""Evaluate a checkpoint: ``test_net.py --config-file F MODEL.WEIGHT ckpt [KEY VALUE ...]``.

Writes the detections CSV and a metrics JSON to OUTPUT_DIR/inference/<dataset>/ (recognition:
recognition_metrics.json and video_scores.npz).
"""

from stmixer.engine import runner
from stmixer.engine.launch import run_entry_point


def main(argv=None):
    run_entry_point("test", lambda args, cfg, dist_info: runner.test(cfg, dist_info=dist_info), argv)


if __name__ == "__main__":
    main()
