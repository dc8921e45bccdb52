#!/usr/bin/env python
"""Evaluate a checkpoint: ``test_net.py --config-file F MODEL.WEIGHT ckpt [KEY VALUE ...]``."""

from stmixer.engine.launch import setup
from stmixer.utils import distributed as comm


def main(argv=None):
    args, cfg, dist_info, logger = setup("test", argv)
    logger.info("Set-up finished; the inference engine is not part of this version yet, stopping here.")
    comm.cleanup_distributed()


if __name__ == "__main__":
    main()
