#!/usr/bin/env python
"""Train an STMixer detector: ``train_net.py --config-file F [options] [KEY VALUE ...]``.

Resumes automatically when OUTPUT_DIR holds a checkpoint; see ``--help``.
"""

from stmixer.engine import runner
from stmixer.engine.launch import run_entry_point


def main(argv=None):
    run_entry_point("train", lambda args, cfg, dist_info: runner.train(cfg, args, dist_info), argv)


if __name__ == "__main__":
    main()
