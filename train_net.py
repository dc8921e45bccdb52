#!/usr/bin/env python
"""Train a detector or a recognizer: ``train_net.py --config-file F [options] [KEY VALUE ...]``.

Resumes automatically when OUTPUT_DIR holds a checkpoint; see ``--help``.
"""

from stmixer.engine import runner
from stmixer.engine.launch import run_entry_point


def run(args, cfg, dist_info):
    """``runner.train`` with the command-line options as its arguments."""
    return runner.train(cfg, transfer=args.transfer, no_head=args.no_head, seed=args.seed, skip_val=args.skip_val,
                        skip_test=args.skip_test, use_tensorboard=args.use_tfboard, dist_info=dist_info)


def main(argv=None):
    run_entry_point("train", run, argv)


if __name__ == "__main__":
    main()
