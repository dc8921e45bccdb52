"""What every command-line entry point does before the real work: arguments, config, processes, logs.

``train_net.py`` and ``test_net.py`` stay thin: they call ``run_entry_point``,
which parses the arguments, checks and locks OUTPUT_DIR (one run at a time; a
resumed training must keep its config), starts logging and hands the frozen
config to the engine.
"""

import argparse
import os
import re
import sys
import time

import yaml

from ..config import load_config
from ..errors import UserError, exit_on_user_error, read_text
from ..solver.auto_scale import auto_scale_lr
from ..utils import distributed as comm
from ..utils.env import collect_env_info, seed_all
from ..utils.io import atomic_open
from ..utils.logging import setup_logger
from ..utils.run_dir import ConfigChangedError, RunDirLock, config_changes, ensure_writable_dir, format_changes
from .checkpointer import POINTER_FILE
from ..utils.threads import set_threads

_EPILOG = """\
Config overrides follow the options as KEY VALUE pairs, e.g.
  OUTPUT_DIR data/output/run1 SOLVER.BASE_LR 1e-5 MODEL.WEIGHT path/to/file.pth
Multi-GPU:
  torchrun --nproc_per_node 8 {prog} --config-file F ...
  python -m torch.distributed.launch --nproc_per_node=8 {prog} --config-file F ...
Multi-node (see docs/distributed.md):
  torchrun --nnodes 2 --node_rank K --nproc_per_node 8 --rdzv-endpoint HOST:PORT {prog} --config-file F ...
  srun --ntasks-per-node 8 --gpus-per-node 8 python {prog} --config-file F ...   (SLURM: one task per GPU)
"""


def build_parser(kind):
    """Argument parser of ``train_net.py`` (kind="train") or ``test_net.py`` (kind="test")."""
    prog = f"{kind}_net.py"
    description = {
        "train": "Train an STMixer action detector (resumes automatically from OUTPUT_DIR).",
        "test": "Evaluate a checkpoint (MODEL.WEIGHT path): AVA frame-mAP, or frame-mAP and video-mAP "
                "for UCF101-24 / JHMDB-21.",
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
        parser.add_argument(
            "--auto-scale-lr",
            action="store_true",
            help="scale SOLVER.BASE_LR by SOLVER.VIDEOS_PER_BATCH / SOLVER.BASE_BATCH_SIZE (linear scaling rule, "
                 "mmaction2's --auto-scale-lr); the scaled value is logged and saved in OUTPUT_DIR/config.yaml",
        )
        parser.add_argument(
            "--allow-config-change",
            action="store_true",
            help="resume a run in OUTPUT_DIR even if the config changes the model, optimizer or inputs",
        )
    # torch.distributed.launch passes --local-rank=K (torch >= 2.0) or --local_rank K (older).
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides (options may come before or after them)")
    return parser


def run_entry_point(kind, body, argv=None):
    """Set up (see ``setup``), run ``body(args, cfg, dist_info)``, release the output folder, leave the group.

    Bad input (any ``stmixer.errors.UserError``) ends the process with status 1 (2 for a
    config error) and one ``error:`` line naming the file, line or key; the traceback goes
    to the log file only. Every process of a group ends with the same line.
    """
    args = build_parser(kind).parse_intermixed_args(argv)
    scale_note = None
    with exit_on_user_error():
        cfg = load_config(args.config_file, args.opts)
        if getattr(args, "auto_scale_lr", False):
            cfg, scale_note = auto_scale_lr(cfg)
    with exit_on_user_error():
        apply_slurm_environment()
    dist_info = comm.init_distributed(args.local_rank)
    lock = None
    try:
        with exit_on_user_error():
            lock, notes = _on_all_ranks(lambda: open_output_dir(kind, cfg, args, dist_info.rank),
                                        undo=lambda opened: opened[0] and opened[0].release())
        logger = setup(kind, args, cfg, dist_info, notes)
        if scale_note:
            logger.info("%s", scale_note)
        with exit_on_user_error(logger):
            body(args, cfg, dist_info)
    finally:
        if lock is not None:
            lock.release()
        comm.cleanup_distributed()


def open_output_dir(kind, cfg, args, rank):
    """Check that OUTPUT_DIR is writable; on rank 0 also lock it and (training) check a resumed run's config.

    Returns:
        (``RunDirLock`` held by rank 0 or None, list of warnings to log).
    """
    if not cfg.OUTPUT_DIR:
        return None, []
    folder = ensure_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    if rank != 0:
        return None, []
    lock = RunDirLock(folder)
    notes = lock.acquire()
    try:
        if kind == "train":
            notes += check_resumed_config(cfg, folder, allow_change=args.allow_config_change)
    except BaseException:
        lock.release()
        raise
    return lock, notes


def check_resumed_config(cfg, folder, allow_change=False):
    """When ``folder`` holds a run to resume, compare ``cfg`` with the run's saved ``config.yaml``.

    Keys outside ``run_dir.HARMLESS_KEYS`` must be unchanged: otherwise a ``ConfigChangedError``
    lists them as ``KEY: saved -> now``. With ``allow_change`` they are returned as a warning
    and the saved config is kept as ``config.before-<time>.yaml`` (the new one is then saved).

    Returns:
        A list of warnings.
    """
    saved_path = os.path.join(folder, "config.yaml")
    if not (os.path.exists(os.path.join(folder, POINTER_FILE)) and os.path.exists(saved_path)):
        return []
    saved = read_text(saved_path)
    try:
        changes = config_changes(saved, cfg.dump())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{saved_path}:{mark.line + 1}" if mark is not None else saved_path
        reason = getattr(e, "problem", None) or type(e).__name__
        raise UserError(f"{where}: not a readable config ({reason}); move it away to resume without the check") from None
    if not changes:
        return []
    listed = format_changes(changes)
    if not allow_change:
        raise ConfigChangedError(
            f"OUTPUT_DIR {folder} holds a run to resume whose config.yaml differs in keys that change the model, "
            f"optimizer or inputs: {listed} (restore them, choose another OUTPUT_DIR, or pass --allow-config-change)"
        )
    backup = os.path.join(folder, f"config.before-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    with atomic_open(backup, "w") as f:
        f.write(saved)
    return [f"--allow-config-change: resuming with config changes {listed}; the previous config is kept in {backup}"]


def _on_all_ranks(work, undo=None):
    """Run ``work()`` on every process; if it raises a ``UserError`` on any, every process raises it.

    The first failing rank's message wins, so all processes end with the same line and none
    waits forever on a peer that stopped; ``undo(result)`` reverts a process's own success
    then. Returns ``work()``'s result.
    """
    result, failure, error = None, None, None
    try:
        result = work()
    except UserError as e:
        error, failure = e, (str(e), getattr(e, "exit_status", 1))
    failures = comm.all_gather_object(failure)
    first = next((f for f in failures if f is not None), None)
    if first is None:
        return result
    if error is None and undo is not None:
        undo(result)
    if error is not None and failure == first:
        raise error
    peer = UserError(first[0])
    peer.exit_status = first[1]
    raise peer


def setup(kind, args, cfg, dist_info, notes=()):
    """Start logging (OUTPUT_DIR/log.txt), log the run header and ``notes``, save the merged config, seed.

    Training saves ``OUTPUT_DIR/config.yaml``; test_net saves ``OUTPUT_DIR/test_config.yaml``, so it
    never replaces the config of the training run kept in the same folder. Called once the
    output folder is checked and locked (``open_output_dir``).

    Returns:
        The package logger.
    """
    logger = setup_logger(cfg.OUTPUT_DIR, dist_info.rank)
    _log_run_header(logger, args, cfg, dist_info)
    for note in notes:
        logger.warning("%s", note)
    with exit_on_user_error(logger):
        set_threads(cfg.DATALOADER.NUM_WORKERS, dist_info.world_size, cfg.NUM_THREADS, logger)
    if dist_info.rank == 0 and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml" if kind == "train" else "test_config.yaml")
        save_config(cfg, path)
        logger.info("Merged config saved to %s", path)
    if kind == "train":
        # Each rank gets its own stream of augmentation randomness; model init is
        # broadcast from rank 0 by DDP.
        seed_all(args.seed + dist_info.rank)
    return logger


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


# Port of the rendezvous under SLURM when MASTER_PORT is not set: this base plus the job id modulo
# SLURM_PORT_SPAN, so that jobs sharing a node do not collide.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


def expand_nodelist(nodelist):
    """Host names of a SLURM node list, in order: ``"node[01-03],gpu7"`` -> node01, node02, node03, gpu7.

    Supports comma-separated entries, bracket groups of numbers and zero-padded ranges
    (``[001-004,7]``) and several groups per entry (``r[1-2]n[3-4]``). Raises ``UserError``
    naming ``SLURM_JOB_NODELIST`` when the text is not such a list.
    """
    entries, depth, current = [], 0, ""
    for char in nodelist.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: nested or unbalanced brackets")
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    entries.append(current)
    if depth or not all(entries):
        raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: expected host names such as 'node[01-03],gpu7'")
    hosts = []
    for entry in entries:
        hosts.extend(_expand_entry(entry, nodelist))
    return hosts


def _expand_entry(entry, nodelist):
    match = re.search(r"\[([^\]]*)\]", entry)
    if match is None:
        return [entry]
    head, tail = entry[:match.start()], entry[match.end():]
    names = []
    for part in match.group(1).split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            raise UserError(f"SLURM_JOB_NODELIST={nodelist!r}: {part!r} is not a number or a range like 01-03")
        first, last = int(bounds[0]), int(bounds[-1])
        width = len(bounds[0])
        names.extend(f"{head}{n:0{width}d}" for n in range(first, last + 1))
    return [name + rest for name in names for rest in _expand_entry(tail, nodelist)]


def slurm_environment(environ=None):
    """The torch.distributed variables for a process started by ``srun`` (one task per GPU), or {}.

    Applies only inside an ``srun`` job step (``SLURM_STEP_ID`` set) with more than one task,
    and only when the launcher's ``RANK`` / ``WORLD_SIZE`` are absent (``torchrun`` inside a
    SLURM job keeps its own). ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` =
    ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), ``LOCAL_RANK`` = ``SLURM_LOCALID``,
    ``MASTER_ADDR`` = its own value or the first host of ``SLURM_STEP_NODELIST`` /
    ``SLURM_JOB_NODELIST``, ``MASTER_PORT`` = its own value or ``SLURM_PORT_BASE`` + job id
    modulo ``SLURM_PORT_SPAN``.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env or "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return {}
    world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if not world.isdigit():
        raise UserError(f"SLURM_NTASKS={world!r} is not a number of tasks")
    if int(world) <= 1:
        return {}
    for name in ("SLURM_PROCID", "SLURM_LOCALID"):
        if not env.get(name, "0").isdigit():
            raise UserError(f"{name}={env.get(name)!r} is not a task number")
    values = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
    address = env.get("MASTER_ADDR")
    if not address:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise UserError("srun job step without MASTER_ADDR or SLURM_JOB_NODELIST: set MASTER_ADDR to the host "
                            "of rank 0")
        address = expand_nodelist(nodelist)[0]
    values["MASTER_ADDR"] = address
    port = env.get("MASTER_PORT")
    if not port:
        job = env.get("SLURM_JOB_ID", "0")
        port = str(SLURM_PORT_BASE + (int(job) if job.isdigit() else 0) % SLURM_PORT_SPAN)
    values["MASTER_PORT"] = port
    return values


def apply_slurm_environment():
    """Export ``slurm_environment()`` into ``os.environ`` (before ``init_distributed``); returns what was set."""
    values = slurm_environment()
    os.environ.update(values)
    return values
