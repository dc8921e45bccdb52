"""Crash-proof training checkpoints: atomic files, a ``last_checkpoint`` pointer, the last N kept.

A checkpoint holds everything a resumed run needs to continue exactly:
model weights, optimizer, LR scheduler, gradient scaler, the iteration, and the
random-number states of every process (the data sampler's position is the
iteration: the training sampler is a deterministic function of seed and
iteration). Files are written to a temporary name and renamed, so a run killed
at any moment leaves either the previous checkpoint or the complete new one.

Files are in the project format of ``stmixer.checkpoint`` (``save_checkpoint``
/ ``read_checkpoint``): they load with ``torch.load(weights_only=True)``.
"""

import logging
import os
import random

import numpy as np
import torch

from ..checkpoint import read_checkpoint, save_checkpoint
from ..errors import UserFileNotFoundError
from ..utils import distributed as comm
from ..utils.io import atomic_open

logger = logging.getLogger(__name__)

POINTER_FILE = "last_checkpoint"


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

    def save(self, name, iteration, **extra):
        """Write ``<name>.pth`` (all ranks join to gather RNG states; rank 0 writes). Returns its path."""
        rng_states = comm.all_gather_object(capture_rng_state())
        if not comm.is_main_process():
            return None
        state = {"iteration": int(iteration), "rng": rng_states}
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
        logger.info("Saved checkpoint %s (iteration %d)", path, iteration)
        self._prune(keep=f"{name}.pth")
        return path

    def _prune(self, keep):
        if self.keep_last <= 0:
            return
        periodic = sorted(
            f for f in os.listdir(self.output_dir) if f.startswith("model_") and f.endswith(".pth") and f[6:-4].isdigit()
        )
        for old in periodic[: -self.keep_last]:
            if old != keep:
                os.remove(os.path.join(self.output_dir, old))
                logger.info("Removed old checkpoint %s", old)

    def last_checkpoint(self):
        """Path of the checkpoint named by ``last_checkpoint``, or None when there is none."""
        pointer = os.path.join(self.output_dir, POINTER_FILE)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.output_dir, name)
        if not os.path.isfile(path):
            raise UserFileNotFoundError(f"{pointer} names {name}, which does not exist in {self.output_dir}")
        return path

    def resume(self, path):
        """Restore model, optimizer, scheduler, scaler and this rank's RNG from ``path``.

        Returns:
            The checkpoint's iteration (number of finished iterations).
        """
        contents = read_checkpoint(path)
        state = contents.extras
        if contents.format != "stmixer" or "iteration" not in state:
            raise ValueError(f"{path} is not a stmixer training checkpoint (format {contents.format}, no iteration)")
        unwrap_model(self.model).load_state_dict(contents.state_dict)
        if self.optimizer is not None:
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
