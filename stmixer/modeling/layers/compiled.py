"""``torch.compile`` of small functions of modules, where a config key asks for it, with an eager fallback.

Used by the ViT backbone (its transformer blocks' residual branches) and the ViT neck (the simple feature
pyramid): there most of a training step outside the matrix products and attention is LayerNorms, GELUs,
dtype casts and copies that Inductor fuses (``ViT.COMPILE``, docs/performance.md).

A ``CompiledFunction`` wraps one plain function ``fn(module, *tensors)``; PyTorch 2.5+ inlines the modules it
calls into the graph, so every module of the same structure (the 12 blocks of a ViT-B) shares one compilation.
Shapes start static; a second input shape (multi-scale training) makes PyTorch compile one dynamic-shape
graph for the rest (``torch.compile``'s default).
"""

import importlib.util
import logging

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import triton_support

logger = logging.getLogger(__name__)

# Values of the config keys that select a compiled path.
MODES = ("auto", True, False)

# Inductor's GPU code is Triton.
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _dynamo_error_type():
    """The exception type that means "this could not be compiled" (not an error of the model itself); imported
    on first need, as importing torch._dynamo takes a while."""
    from torch._dynamo.exc import TorchDynamoException

    return TorchDynamoException


def _eager_only():
    """Whether this call must run eagerly without asking Dynamo: inside a graph being compiled (the outer
    compilation inlines the function), or under a Python dispatch mode (``FlopCounterMode``, debugging modes).
    Dynamo of torch 2.11 gives up on a function first called under ``FlopCounterMode`` for the rest of the
    process, without an error: a FLOP count before training left the ViT eager (benchmarks/README.md)."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


class CompiledFunction:
    """``fn(module, *tensors)`` through ``torch.compile`` where ``mode`` selects it, else eagerly.

    ``mode``: "auto" = CUDA tensors on GPUs of compute capability 8.0+ with Triton; True = any device
    Inductor compiles for (the CPU needs a C++ compiler); False = never. The compiled function keeps PyTorch's
    random number generator for random operations (Inductor's ``fallback_random``), so dropout and drop
    path draw what the eager code draws. A failure to compile logs one warning and the function runs eagerly from
    then on in this process; an error of the model itself is raised again by the eager call.
    """

    def __init__(self, fn, name):
        self.fn = fn
        self.name = name
        self._compiled = None
        self.failure = None  # why compilation failed, once it has

    def wanted(self, mode, x):
        """Whether a call with ``mode`` on tensor ``x`` goes through ``torch.compile``."""
        if mode not in MODES:
            raise ValueError(f"{self.name}: compile mode must be one of {MODES}, got {mode!r}")
        if mode is False or self.failure is not None:
            return False
        if mode is True:
            return True
        return HAS_TRITON and x.is_cuda and triton_support.capable(x.device)

    def prepare(self, mode, x):
        """Call before a region that calls this function on ``x`` with ``mode`` and must not see CUDA initialized
        inside it: the first compilation initializes CUDA on a machine with a GPU even for CPU tensors, and
        activation checkpointing then fails ("device state was initialized in the forward pass" of a
        checkpoint, whose default device is CUDA). Initializes CUDA now where that first compilation is due."""
        if (self._compiled is None and self.wanted(mode, x) and not x.is_cuda and torch.cuda.is_available()
                and not torch.cuda.is_initialized()):
            torch.cuda.init()

    def __call__(self, mode, module, x, *args):
        if not self.wanted(mode, x) or _eager_only():
            return self.fn(module, x, *args)
        if self._compiled is None:
            self.prepare(mode, x)
            self._compiled = torch.compile(self.fn, options={"fallback_random": True})
        try:
            return self._compiled(module, x, *args)
        except _dynamo_error_type() as e:
            self.failure = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            logger.warning("%s: torch.compile failed (%s); running it eagerly from now on", self.name, self.failure)
            return self.fn(module, x, *args)
