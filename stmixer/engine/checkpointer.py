"""Crash-proof training checkpoints: atomic files, a ``last_checkpoint`` pointer, the last N kept.

A checkpoint holds everything a resumed run needs to continue exactly:
model weights, optimizer, LR scheduler, gradient scaler, the iteration, and the
random-number states of every process (the data sampler's position is the
iteration: the training sampler is a deterministic function of seed and
iteration). Files are written to a temporary name and renamed, so a run killed
at any moment leaves either the previous checkpoint or the complete new one.

Files are in the project format of ``stmixer.checkpoint`` (``save_checkpoint``
/ ``read_checkpoint``): they load with ``torch.load(weights_only=True)``.

At the end of training the full state goes to ``model_<max_iter>.pth`` (a
periodic file) and ``model_final.pth`` holds the weights and the iteration
only: the file people copy and evaluate stays the size of the model.

Resuming (``resume_latest``) takes the newest checkpoint of the folder that
reads intact: the file the pointer names and every ``model_*.pth``, newest
iteration first; corrupt files are skipped with a warning naming them, and a
pointer that lags behind a newer intact file (a run killed between the two
writes) is reported. A checkpoint that does not fit the model raises the
loader's ``CheckpointMismatchError`` with its table; changed optimizer
parameter groups raise a ``CheckpointError`` naming both layouts. Both are
checked before anything is changed.
"""

import logging
import math
import os
import random
import re
import time

import numpy as np
import torch

from ..checkpoint import CheckpointError, CheckpointMismatchError, match_state_dict, read_checkpoint, save_checkpoint
from ..checkpoint.formats import CheckpointContents
from ..errors import UserFileNotFoundError, read_text
from ..utils import distributed as comm
from ..utils.io import atomic_open, stale_temporaries

logger = logging.getLogger(__name__)

POINTER_FILE = "last_checkpoint"
FINAL_NAME = "model_final"
_PERIODIC = re.compile(r"^model_(\d+)\.pth$")
# Config keys that decide the optimizer's parameter groups (named when the groups changed).
_GROUP_KEYS = ("SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BN", "SOLVER.DECAY_NORM_AND_BIAS", "ViT.WEIGHT_DECAY",
               "ViT.NO_WEIGHT_DECAY", "ViT.LAYER_DECAY", "MODEL.BACKBONE.FROZEN_BN")


def unwrap_model(model):
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def capture_rng_state():
    """This process's Python, NumPy, torch (CPU and CUDA) random states as plain, weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of ``capture_rng_state``."""
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    # torch.load may give lists where tuples were saved; random.setstate needs tuples.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


class Checkpointer:
    """Saves and restores the training state in one folder.

    Args:
        output_dir: folder of the checkpoints (``model_<iter>.pth``, ``model_final.pth``,
            and the ``last_checkpoint`` pointer holding the latest file name).
        model: the (possibly DDP-wrapped) detector.
        optimizer, scheduler, grad_scaler: saved and restored when given.
        keep_last: how many periodic checkpoints to keep (older ones are deleted; 0 keeps all).
    """

    def __init__(self, output_dir, model, optimizer=None, scheduler=None, grad_scaler=None, keep_last=3):
        self.output_dir = output_dir
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_scaler = grad_scaler
        self.keep_last = keep_last
        # Files of interrupted writes are those untouched since before this moment.
        self.started = time.time()

    # ------------------------------------------------------------------------- writing
    def save(self, name, iteration, weights_only=False, **extra):
        """Write ``<name>.pth`` and point ``last_checkpoint`` to it (all ranks call it; rank 0 writes).

        Args:
            weights_only: keep the file to the model weights and the iteration (no optimizer,
                scheduler, scaler or random states).

        Returns:
            its path on rank 0, None elsewhere.
        """
        rng_states = None if weights_only else comm.all_gather_object(capture_rng_state())
        if not comm.is_main_process():
            return None
        state = {"iteration": int(iteration)}
        if not weights_only:
            state["rng"] = rng_states
            if self.optimizer is not None:
                state["optimizer"] = self.optimizer.state_dict()
            if self.scheduler is not None:
                state["scheduler"] = self.scheduler.state_dict()
            if self.grad_scaler is not None and self.grad_scaler.is_enabled():
                state["grad_scaler"] = self.grad_scaler.state_dict()
        state.update(extra)
        path = os.path.join(self.output_dir, f"{name}.pth")
        save_checkpoint(path, unwrap_model(self.model).state_dict(), **state)
        with atomic_open(os.path.join(self.output_dir, POINTER_FILE), "w") as f:
            f.write(f"{name}.pth\n")
        logger.info("Saved checkpoint %s (iteration %d%s)", path, iteration, ", weights only" if weights_only else "")
        self._prune(keep=f"{name}.pth")
        return path

    def save_final(self, iteration):
        """The end of training: the full state as ``model_<iteration>.pth`` (what a longer schedule
        resumes from), then ``model_final.pth`` with the weights and the iteration only."""
        self.save(f"model_{iteration:07d}", iteration)
        return self.save(FINAL_NAME, iteration, weights_only=True)

    def _prune(self, keep):
        if self.keep_last <= 0:
            return
        periodic = sorted(f for f in os.listdir(self.output_dir) if _PERIODIC.match(f))
        for old in periodic[: -self.keep_last]:
            if old != keep:
                os.remove(os.path.join(self.output_dir, old))
                logger.info("Removed old checkpoint %s", old)

    def remove_stale_temporaries(self):
        """Delete the temporary files interrupted writes left in the folder (untouched since this
        checkpointer was made); logs and returns their names. Call it on one process only."""
        removed = []
        for path in stale_temporaries(self.output_dir, self.started):
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(os.path.basename(path))
        if removed:
            logger.info("Removed %d unfinished file(s) left by interrupted writes in %s: %s",
                        len(removed), self.output_dir, ", ".join(removed))
        return removed

    # ------------------------------------------------------------------------- finding
    def _pointer_name(self):
        """The file name ``last_checkpoint`` holds, or None when there is no pointer."""
        pointer = os.path.join(self.output_dir, POINTER_FILE)
        if not os.path.isfile(pointer):
            return None
        return read_text(pointer).strip()

    def last_checkpoint(self):
        """Path of the checkpoint named by ``last_checkpoint``, or None when there is none."""
        name = self._pointer_name()
        if name is None:
            return None
        path = os.path.join(self.output_dir, name)
        if not os.path.isfile(path):
            pointer = os.path.join(self.output_dir, POINTER_FILE)
            raise UserFileNotFoundError(f"{pointer} names {name}, which does not exist in {self.output_dir}")
        return path

    def _newest_first(self, pointer_name):
        """``(name, contents, problem)`` for each checkpoint file of the folder, newest iteration first.

        ``model_final.pth`` (read first for its iteration) comes before the periodic file of the same
        iteration; a pointer naming another file (or a missing one) comes first of all. ``contents``
        is None where the file does not read intact as a training checkpoint; ``problem`` says why.
        """
        try:
            names = set(os.listdir(self.output_dir))
        except FileNotFoundError:
            names = set()
        read = {}

        def attempt(name):
            path = os.path.join(self.output_dir, name)
            if name not in names:
                return None, f"{path}: no such file (named by {POINTER_FILE})"
            try:
                return _read_training_checkpoint(path), None
            except CheckpointError as e:
                return None, str(e)

        order = [((int(m[1]), 0), name) for name in names for m in [_PERIODIC.match(name)] if m]
        final = f"{FINAL_NAME}.pth"
        if final in names:
            read[final] = attempt(final)
            contents = read[final][0]
            order.append(((contents.extras["iteration"] if contents else math.inf, 1), final))
        if pointer_name and pointer_name not in (name for _, name in order):
            order.append(((math.inf, 2), pointer_name))
        for _, name in sorted(order, reverse=True):
            yield (name, *(read.pop(name) if name in read else attempt(name)))

    def resume_latest(self, max_iter=None):
        """Resume from the newest intact checkpoint of the folder (see the module docstring).

        Args:
            max_iter: the run's last iteration. A weights-only file (``model_final.pth``) at or past it
                restores the weights only; otherwise the full state of that iteration is needed.

        Returns:
            the iteration resumed at, or None when the folder holds no checkpoint.
        """
        pointer_name = self._pointer_name()
        skipped = []
        for name, contents, problem in self._newest_first(pointer_name):
            if contents is None:
                logger.warning("Skipping a checkpoint that does not read intact: %s", problem)
                skipped.append((name, problem))
                continue
            if pointer_name and name != pointer_name and pointer_name not in (n for n, _ in skipped):
                logger.warning("%s names %s, but %s is newer and intact (the run stopped between writing it and "
                               "updating the pointer): resuming from %s", POINTER_FILE, pointer_name, name, name)
            elif pointer_name is None:
                logger.warning("%s has no %s file: resuming from the newest intact checkpoint %s",
                               self.output_dir, POINTER_FILE, name)
            if self._needs_full_state(contents, max_iter) and not _is_full_state(contents):
                contents = self._full_state_of(contents)
            return self.resume(contents, max_iter)
        if skipped:
            raise CheckpointError(
                f"{self.output_dir}: no intact checkpoint to resume from: " + "; ".join(p for _, p in skipped)
                + ". Remove these files to start the run afresh, or use another OUTPUT_DIR"
            )
        return None

    def _needs_full_state(self, contents, max_iter):
        return self.optimizer is not None and (max_iter is None or contents.extras["iteration"] < max_iter)

    def _full_state_of(self, final):
        """The intact full-state ``model_<iter>.pth`` of a weights-only file's iteration, or an error."""
        iteration = final.extras["iteration"]
        path = os.path.join(self.output_dir, f"model_{iteration:07d}.pth")
        try:
            contents = _read_training_checkpoint(path)
            if _is_full_state(contents) and contents.extras["iteration"] == iteration:
                return contents
            problem = "holds no optimizer state"
        except CheckpointError as e:
            problem = str(e)
        raise CheckpointError(
            f"{final.path} holds the weights only (iteration {iteration}); training on needs the full state of "
            f"that iteration, and {path}: {problem}. To train on from these weights, start a new run in another "
            f"OUTPUT_DIR with MODEL.WEIGHT {final.path} --transfer"
        )

    # ------------------------------------------------------------------------- restoring
    def resume(self, source, max_iter=None):
        """Restore model, optimizer, scheduler, scaler and this rank's RNG from a training checkpoint.

        Args:
            source: a path or the ``CheckpointContents`` of a stmixer training checkpoint.
            max_iter: as in ``resume_latest``: a weights-only file at or past it restores the weights only.

        Returns:
            The checkpoint's iteration (number of finished iterations).
        """
        contents = source if isinstance(source, CheckpointContents) else _read_training_checkpoint(source)
        path, state = contents.path, contents.extras
        full = self._needs_full_state(contents, max_iter)
        if full and not _is_full_state(contents):
            raise CheckpointError(
                f"{path} holds the weights of iteration {state['iteration']} only (no optimizer state), so its "
                f"run cannot continue from it: use --transfer to start a new run from these weights"
            )
        self._check_fits(contents)
        if full:
            _check_param_groups(path, state["optimizer"], self.optimizer)
        unwrap_model(self.model).load_state_dict(contents.state_dict)
        if not full:
            logger.info("Loaded the weights of %s (iteration %d)", path, state["iteration"])
            return state["iteration"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        rng = state.get("rng") or []
        rank = comm.get_rank()
        if len(rng) == comm.get_world_size():
            restore_rng_state(rng[rank])
        else:
            logger.warning(
                "%s holds random states of %d processes, this run has %d: random streams start afresh",
                path, len(rng), comm.get_world_size(),
            )
        logger.info("Resumed from %s at iteration %d", path, state["iteration"])
        return state["iteration"]

    def _check_fits(self, contents):
        """``CheckpointMismatchError`` with the loader's table unless every model tensor is in the file."""
        stored = {k: tuple(v.shape) for k, v in contents.state_dict.items()}
        report = match_state_dict(self.model, contents)
        # Resuming is exact: a tensor the model had to adapt (e.g. a resized position table) does not fit.
        adapted = [k for k in report.loaded if k in stored and stored[k] != tuple(contents.state_dict[k].shape)]
        report.loaded = [k for k in report.loaded if k not in adapted]
        report.mismatched += [(k, stored[k], tuple(contents.state_dict[k].shape)) for k in adapted]
        if report.ok and not (report.left_at_init or report.skipped or report.not_stored):
            return
        in_folder = os.path.dirname(os.path.abspath(contents.path)) == os.path.abspath(self.output_dir)
        what_to_do = (
            "in OUTPUT_DIR does not fit the model (a run of another architecture or config?): use another "
            f"OUTPUT_DIR, and to start from its weights give MODEL.WEIGHT {contents.path} --transfer"
            if in_folder else
            "does not fit the model (another architecture or config?): to start a new run from its weights use "
            "--transfer"
        )
        raise CheckpointMismatchError(
            f"{contents.path}: this training checkpoint {what_to_do} (add --no-head if only stm_head differs)"
            f"\n{report.table()}", report,
        )


def _read_training_checkpoint(path):
    """``read_checkpoint`` of a stmixer training checkpoint (project format with an iteration)."""
    contents = read_checkpoint(path)
    if contents.format != "stmixer" or not isinstance(contents.extras.get("iteration"), int):
        raise CheckpointError(f"{path}: not a stmixer training checkpoint (format {contents.format}, no iteration)")
    return contents


def _is_full_state(contents):
    return "optimizer" in contents.extras


def _check_param_groups(path, saved, optimizer):
    """``CheckpointError`` naming both layouts when the saved optimizer's parameter groups differ from
    ``optimizer``'s (torch would refuse them, or silently give parameters another one's state)."""
    saved_groups, groups = saved.get("param_groups", []), optimizer.param_groups
    saved_sizes, sizes = [len(g["params"]) for g in saved_groups], [len(g["params"]) for g in groups]
    moved = []
    if saved_sizes == sizes:
        moved = [n for a, b in zip(saved_groups, groups) if "names" in a and "names" in b
                 for n in sorted(set(a["names"]) ^ set(b["names"]))]
        if not moved:
            return
    detail = f" (parameters in another group now: {', '.join(moved[:3])}{', ...' if len(moved) > 3 else ''})" \
        if moved else ""
    raise CheckpointError(
        f"{path}: its optimizer has {_groups(saved_sizes)}, this run's has {_groups(sizes)}{detail}: the parameter "
        f"grouping changed since it was saved (config keys that decide it: {', '.join(_GROUP_KEYS)}; trainable "
        f"parts of the model). Restore those settings to resume, or start a new run from its weights with "
        f"--transfer (in another OUTPUT_DIR)"
    )


def _groups(sizes):
    return f"{len(sizes)} parameter group{'' if len(sizes) == 1 else 's'} of sizes {sizes}"
