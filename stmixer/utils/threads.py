"""How many intra-op CPU threads a process uses: chosen once per entry point, logged.

PyTorch's default (one thread per core, per process) oversubscribes a machine as soon as
loader workers, several processes per node or other jobs compete for the cores, and a
shared 2-core machine then runs 10x slower. Every entry point (train, test, demo, the data
checker) therefore calls ``set_threads``, which takes, in this order:

1. ``requested`` > 0 (the ``NUM_THREADS`` config key): a fixed count. The result of CPU
   training depends on it (the order of floating-point reductions), so a config that
   promises a number pins it.
2. ``OMP_NUM_THREADS`` from the environment, if a positive integer.
3. Automatic: ``cores // processes_on_node - num_workers``, at least 1, so that the
   process's own threads plus its loader workers (one thread each) fit in its share of
   the cores this process may run on (``os.sched_getaffinity``).
"""

import logging
import os

import torch

ENV_VAR = "OMP_NUM_THREADS"


def available_cores():
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def processes_on_node(world_size=1):
    """Training/test processes sharing this machine: ``LOCAL_WORLD_SIZE`` (torchrun), else ``world_size``."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, int(world_size))


def _env_threads(environ):
    value = environ.get(ENV_VAR, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(num_workers=0, processes=1, cores=None, requested=0, environ=None):
    """The intra-op thread count and where it came from.

    Args:
        num_workers: DataLoader worker processes of this process (each runs one thread).
        processes: processes of the job on this node.
        cores: cores available (default ``available_cores()``).
        requested: the ``NUM_THREADS`` config value (0: not set).
        environ: environment mapping (default ``os.environ``).

    Returns:
        ``(threads, source)`` with ``source`` one of "NUM_THREADS", "OMP_NUM_THREADS", "automatic".
    """
    if not isinstance(requested, int) or requested < 0:
        from ..config.config import ConfigError

        raise ConfigError(f"NUM_THREADS = {requested!r}: expected an integer >= 0 (0: automatic)")
    if requested > 0:
        return int(requested), "NUM_THREADS"
    from_env = _env_threads(os.environ if environ is None else environ)
    if from_env is not None:
        return from_env, ENV_VAR
    cores = available_cores() if cores is None else int(cores)
    share = cores // max(1, int(processes))
    return max(1, share - max(0, int(num_workers))), "automatic"


def set_threads(num_workers=0, world_size=1, requested=0, logger=None):
    """Choose (``choose_threads``), apply (``torch.set_num_threads``) and log the thread count; returns it."""
    processes = processes_on_node(world_size)
    cores = available_cores()
    threads, source = choose_threads(num_workers, processes, cores, requested)
    torch.set_num_threads(threads)
    how = {
        "NUM_THREADS": "from the NUM_THREADS config key",
        ENV_VAR: f"from {ENV_VAR}",
        "automatic": "automatic",
    }[source]
    (logger or logging.getLogger(__name__)).info(
        "Using %d intra-op thread%s (%s; %d cores, %d loader workers, %d processes on this node; "
        "set NUM_THREADS or %s to change)",
        threads, "" if threads == 1 else "s", how, cores, num_workers, processes, ENV_VAR,
    )
    return threads


def single_thread_worker(*_):
    """Initializer of worker processes (DataLoader, process pools): one torch and one OpenCV thread each."""
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
