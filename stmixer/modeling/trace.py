"""Optional recording of intermediate results, for parity checks and debugging.

Model code calls ``record(trace, name, value)`` at the points worth inspecting.
``trace`` is ``None`` in normal use (nothing is kept) or a plain ``dict``
supplied by the caller, which then maps each name to the list of values
recorded under it, in call order (one entry per decoder stage for per-stage
quantities). Tensors are stored detached; nothing recorded affects the
computation.
"""

import torch


def record(trace, name, value):
    """Append ``value`` (a tensor is detached) to ``trace[name]``; a no-op when ``trace`` is None."""
    if trace is None:
        return
    if isinstance(value, torch.Tensor):
        value = value.detach()
    trace.setdefault(name, []).append(value)
