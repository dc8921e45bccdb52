#!/usr/bin/env python
"""Train an STMixer detector: ``train_net.py --config-file F [options] [KEY VALUE ...]``."""

from stmixer.engine.launch import setup
from stmixer.utils import distributed as comm


def main(argv=None):
    args, cfg, dist_info, logger = setup("train", argv)
    logger.info("Set-up finished; the training engine is not part of this version yet, stopping here.")
    comm.cleanup_distributed()


if __name__ == "__main__":
    main()
