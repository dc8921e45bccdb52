"""Optional recording of intermediate results, for parity checks and debugging.

Model code calls ``record(trace, name, value)`` at the points worth inspecting.
``trace`` is ``None`` in normal use (nothing is kept) or a ``dict`` supplied by
the caller, which then maps each name to the list of values recorded under it,
in call order (one entry per decoder stage for per-stage quantities). A
``Trace(skip=...)`` keeps only the names it does not skip (the inside-stage
``detail/`` tensors of a full-size decoder take hundreds of MB). Tensors are
stored detached; nothing recorded affects the computation.
"""

import torch


class Trace(dict):
    """A trace dict that ignores names starting with any prefix in ``skip``."""

    def __init__(self, skip=()):
        super().__init__()
        self.skip = tuple(skip)


def record(trace, name, value):
    """Append ``value`` (a tensor is detached) to ``trace[name]``; a no-op when ``trace`` is None or skips ``name``."""
    if trace is None or name.startswith(getattr(trace, "skip", ())):
        return
    if isinstance(value, torch.Tensor):
        value = value.detach()
    trace.setdefault(name, []).append(value)
