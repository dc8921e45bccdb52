"""Process-group set-up and helpers that make distributed code read like single-process code.

Launchers supported: a plain process, ``torchrun`` (single or multi node, via
its standard ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` /
``MASTER_PORT`` variables) and ``python -m torch.distributed.launch`` (which
also passes ``--local-rank=K`` or ``--local_rank K``). Every helper works when
no process group exists (world size 1).
"""

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, rank on its node, backend."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "nccl", "gloo" or "" when not distributed


def _env_int(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as e:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from e


def init_distributed(local_rank_arg=None, timeout_minutes=30):
    """Join the process group described by the launcher's environment.

    Args:
        local_rank_arg: the ``--local-rank`` value given by ``torch.distributed.launch``
            (None when launched otherwise); ``LOCAL_RANK`` in the environment wins.
        timeout_minutes: collective-operation timeout.

    Returns:
        DistInfo. The backend is NCCL when CUDA devices are visible, gloo otherwise;
        with CUDA the process is bound to ``cuda:<local_rank>``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", local_rank_arg if local_rank_arg is not None else 0)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=local_rank, backend="")
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    kwargs = {}
    if use_cuda:
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        world_size=world_size,
        rank=rank,
        timeout=datetime.timedelta(minutes=timeout_minutes),
        **kwargs,
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def is_distributed():
    """True when a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size():
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank():
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_local_rank():
    """Rank of this process on its node (from ``LOCAL_RANK``; 0 when unset)."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process():
    """True on global rank 0."""
    return get_rank() == 0


def synchronize():
    """Barrier across all processes; a no-op when not distributed."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather_object(obj):
    """Gather a picklable object from every process; returns a list indexed by rank."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src=0):
    """Send a picklable object from rank ``src`` to every process and return it."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor):
    """Average a tensor over all processes (returns a new tensor; identity when not distributed)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor / get_world_size()


class PendingMean:
    """The mean over processes of a tensor whose all-reduce was issued without waiting (``all_reduce_mean_async``)."""

    def __init__(self, tensor, work):
        self._tensor, self._work = tensor, work

    def wait(self):
        """The mean (a new tensor). With NCCL only the current CUDA stream waits for the all-reduce, not the host."""
        if self._work is not None:
            self._work.wait()
            self._work = None
            self._tensor = self._tensor / get_world_size()
        return self._tensor


def all_reduce_mean_async(tensor):
    """Start averaging a tensor over all processes and return at once: a ``PendingMean`` (identity when not
    distributed). Every process must issue its collectives in the same order, as for ``all_reduce_mean``."""
    if not is_distributed():
        return PendingMean(tensor, None)
    tensor = tensor.clone()
    return PendingMean(tensor, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))


def resolve_device(requested, local_rank):
    """The torch.device to run on.

    Args:
        requested: ``MODEL.DEVICE``; "" picks ``cuda:<local_rank>`` if CUDA is available, else CPU.
        local_rank: this process's rank on its node.
    """
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"MODEL.DEVICE is {requested!r} but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cleanup_distributed():
    """Leave the process group (if any) so that the process exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
