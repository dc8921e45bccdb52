"""What every command-line entry point does before the real work: arguments, config, processes, logs.

``train_net.py`` and ``test_net.py`` stay thin: they call ``parse_args`` and
``setup`` from here, then hand the frozen config to the engine.
"""

import argparse
import os
import sys

from ..config import load_config
from ..errors import exit_on_user_error
from ..utils import distributed as comm
from ..utils.env import collect_env_info, seed_all
from ..utils.io import atomic_open
from ..utils.logging import setup_logger
from ..utils.threads import set_threads

_EPILOG = """\
Config overrides follow the options as KEY VALUE pairs, e.g.
  OUTPUT_DIR data/output/run1 SOLVER.BASE_LR 1e-5 MODEL.WEIGHT path/to/file.pth
Multi-GPU:
  torchrun --nproc_per_node 8 {prog} --config-file F ...
  python -m torch.distributed.launch --nproc_per_node=8 {prog} --config-file F ...
"""


def build_parser(kind):
    """Argument parser of ``train_net.py`` (kind="train") or ``test_net.py`` (kind="test")."""
    prog = f"{kind}_net.py"
    description = {
        "train": "Train an STMixer action detector (resumes automatically from OUTPUT_DIR).",
        "test": "Evaluate a checkpoint (MODEL.WEIGHT path) with AVA frame-mAP.",
    }[kind]
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=_EPILOG.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML config file")
    if kind == "train":
        parser.add_argument(
            "--transfer",
            action="store_true",
            help="load only the weights of MODEL.WEIGHT (iteration, optimizer and scheduler start fresh)",
        )
        parser.add_argument(
            "--no-head",
            action="store_true",
            help="leave the decoder and classifiers of the detector at their initialization",
        )
        parser.add_argument("--use-tfboard", action="store_true", help="also write TensorBoard logs to OUTPUT_DIR/tb")
        parser.add_argument(
            "--skip-val",
            "--skip-val-in-train",
            dest="skip_val",
            action="store_true",
            help="no periodic evaluation during training",
        )
        parser.add_argument(
            "--skip-final-test",
            dest="skip_test",
            action="store_true",
            help="do not evaluate the final model after training",
        )
        parser.add_argument("--seed", type=int, default=2, help="random seed (default 2, as the official code)")
    # torch.distributed.launch passes --local-rank=K (torch >= 2.0) or --local_rank K (older).
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides (options may come before or after them)")
    return parser


def run_entry_point(kind, body, argv=None):
    """Set up (see ``setup``), run ``body(args, cfg, dist_info)``, leave the process group.

    Bad input (any ``stmixer.errors.UserError``) ends the process with status 1 (2 for a
    config error) and one ``error:`` line naming the file, line or key; the traceback goes
    to the log file only.
    """
    args, cfg, dist_info, logger = setup(kind, argv)
    try:
        with exit_on_user_error(logger):
            body(args, cfg, dist_info)
    finally:
        comm.cleanup_distributed()


def setup(kind, argv=None):
    """Parse arguments, join the process group, build the config, start logging.

    Args:
        kind: "train" or "test".
        argv: argument list (default ``sys.argv[1:]``).

    Returns:
        (args, cfg, dist_info, logger). Bad configs exit with status 2 and a one-line
        error naming the file, line and key (no traceback).
    """
    args = build_parser(kind).parse_intermixed_args(argv)
    with exit_on_user_error():
        cfg = load_config(args.config_file, args.opts)
    dist_info = comm.init_distributed(args.local_rank)
    logger = setup_logger(cfg.OUTPUT_DIR, dist_info.rank)
    _log_run_header(logger, args, cfg, dist_info)
    with exit_on_user_error(logger):
        set_threads(cfg.DATALOADER.NUM_WORKERS, dist_info.world_size, cfg.NUM_THREADS, logger)
    if dist_info.rank == 0 and cfg.OUTPUT_DIR:
        save_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
        logger.info("Merged config saved to %s", os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    if kind == "train":
        # Each rank gets its own stream of augmentation randomness; model init is
        # broadcast from rank 0 by DDP.
        seed_all(args.seed + dist_info.rank)
    return args, cfg, dist_info, logger


def save_config(cfg, path):
    """Write ``cfg`` as YAML to ``path`` atomically (it loads back with ``merge_from_file``)."""
    with atomic_open(path, "w") as f:
        f.write(cfg.dump())


def _log_run_header(logger, args, cfg, dist_info):
    logger.info("Command line: %s", " ".join(sys.argv))
    logger.info("Arguments: %s", vars(args))
    if dist_info.world_size > 1:
        peers = comm.all_gather_object((dist_info.rank, dist_info.local_rank, os.uname().nodename, os.getpid()))
        logger.info(
            "Process group ready: world size %d, backend %s; ranks: %s",
            dist_info.world_size,
            dist_info.backend,
            ", ".join(f"{r}@{host}:{pid} (local {lr})" for r, lr, host, pid in peers),
        )
    else:
        logger.info("Single process (no process group)")
    logger.info("Environment:\n%s", collect_env_info())
    with open(args.config_file, "r") as f:
        logger.debug("Contents of %s:\n%s", args.config_file, f.read())
    logger.debug("Running with config:\n%s", cfg.dump())
