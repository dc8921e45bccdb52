"""CUDA graphs of a model part: one captured forward (and backward) per input signature, replayed.

Why: STMixer's training step is launch-bound on a GPU (thousands of small kernels a step:
six decoder stages, each with attention, sampling, mixing and heads, and a ResNet of small
3-D convolutions at batch 2). Replaying a captured graph launches the same kernels with one
host call. ``GraphedPart`` wraps a function of tensors that returns a tuple of tensors
(for STMixer: videos -> the per-stage logits and boxes) and

* captures it the first time it sees an input signature (shapes, dtypes, which inputs need
  gradients, train/eval, grad and inference mode, autocast dtype): a forward graph and, when gradients
  are on, a backward graph of the same function (``torch.autograd.grad`` of the outputs
  with respect to the inputs and the trainable parameters);
* replays it afterwards: inputs are copied into the graph's static inputs, outputs and
  gradients are copied out (so nothing a caller keeps is overwritten by the next replay),
  parameter gradients reach ``.grad`` through the usual accumulation (DDP hooks, gradient
  accumulation and GradScaler work unchanged);
* runs the function eagerly (slower, same results) when a replay cannot run or could be wrong: not on CUDA,
  more signatures than ``max_graphs``, a graphed forward whose backward has not run yet
  (its saved activations live in the graph's memory), module hooks registered (a replay
  would not call them), a capture that failed, inside ``torch.compile`` tracing.

All graphs of one ``GraphedPart`` share one memory pool: only one forward/backward pair is
in flight at a time, which the pending check above guarantees. A capture differentiates with
respect to stand-ins of the parameters (``parameter_stand_ins``), so DistributedDataParallel's
hold on the parameters' gradient accumulators cannot make autograd synchronize streams inside
a capture. ``GraphedPart`` holds its module weakly: the module owns it, and dropping the
module frees the graphs' memory without waiting for a garbage collection.

Capturing runs the function a few times (warm-up); module buffers (BatchNorm running
statistics) are restored afterwards, so capturing changes no state. Replays are what
eager steps would compute, up to the order of floating-point reductions that cuDNN /
cuBLAS pick (the parity runs use the eager path: ``MODEL.CUDA_GRAPH.SCOPE off``, and the
CPU never uses graphs).
"""

import contextlib
import inspect
import logging
import weakref

import torch
from torch.nn.modules import module as torch_module

logger = logging.getLogger(__name__)

# Warm-up runs of the function before a capture (cuBLAS/cuDNN workspaces and algorithm choices).
WARMUP_ITERS = 2
# Only this thread's CUDA calls may not disturb a capture: a DataLoader's pin-memory thread keeps running.
CAPTURE_MODE = "thread_local"


def device_constant(like, values):
    """A 1-D tensor of ``values`` in ``like``'s dtype and device, written by fill kernels.

    Unlike ``like.new_tensor(values)`` (a host-to-device copy, which a CUDA graph capture does
    not allow) this can run inside a captured part; the values round to the dtype the same way.
    """
    out = like.new_empty(len(values))
    for i, value in enumerate(values):
        out[i].fill_(value)  # a scalar kernel argument (``out[i] = value`` copies a host tensor)
    return out


def _autocast_dtype():
    """The CUDA autocast dtype in force, or None."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


def _signature(tensors, training):
    return (
        tuple((tuple(t.shape), t.dtype, t.requires_grad, t.device) for t in tensors),
        training,
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        _autocast_dtype(),
    )


@contextlib.contextmanager
def parameter_stand_ins(module, params):
    """Inside: each of ``params`` (trainable parameters of ``module``) replaced in the module tree by a fresh
    leaf tensor on the same memory (``p.detach().requires_grad_()``); yields the stand-ins in ``params``' order.

    A capture differentiates with respect to the stand-ins, not the parameters: the parameters' gradient
    accumulators may have been made earlier on another CUDA stream (DistributedDataParallel keeps
    references to them), and autograd would then make that stream wait for the capture's stream, which a
    capture refuses. The stand-ins' accumulators are made on the capturing stream. Parameters shared by
    several modules get one stand-in; the module tree is restored on exit."""
    stand_ins = [p.detach().requires_grad_() for p in params]
    by_id = {id(p): leaf for p, leaf in zip(params, stand_ins)}
    swapped = []
    for owner in module.modules():
        for name, p in list(owner._parameters.items()):
            if p is not None and id(p) in by_id:
                swapped.append((owner, name, p))
                owner._parameters[name] = by_id[id(p)]
    try:
        yield stand_ins
    finally:
        for owner, name, p in swapped:
            owner._parameters[name] = p


class _Graph:
    """One captured signature: static inputs, outputs, gradient buffers and the two graphs."""

    def __init__(self, fn, module, params, state, inputs, pool, with_backward, warmup=contextlib.nullcontext):
        self.params = params
        self.static_inputs = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
        self.with_backward = with_backward
        autocast_dtype = _autocast_dtype()
        static_grad_inputs = [x for x in self.static_inputs if x.requires_grad]

        def run():
            """(outputs, the parameters' stand-ins they were computed from)."""
            # autocast's weight cache must not hold tensors of a capture
            if autocast_dtype is None:
                ctx = contextlib.nullcontext()
            else:
                ctx = torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False)
            with ctx, parameter_stand_ins(module, params) as stand_ins:
                return tuple(fn(*self.static_inputs)), stand_ins

        def backward(outputs, stand_ins, grads):
            pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
            return torch.autograd.grad([o for o, _ in pairs], static_grad_inputs + stand_ins, [g for _, g in pairs],
                                       allow_unused=True)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), warmup():
            for _ in range(WARMUP_ITERS):
                outputs, stand_ins = run()
                if with_backward:
                    backward(outputs, stand_ins, [torch.ones_like(o) for o in outputs])
                del outputs, stand_ins
        torch.cuda.current_stream().wait_stream(stream)

        self.forward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool, capture_error_mode=CAPTURE_MODE):
            outputs, stand_ins = run()
        self.static_outputs = outputs
        self.differentiable = [o.requires_grad for o in outputs]
        self.backward_graph = None
        if with_backward:
            self.static_grad_outputs = [torch.zeros_like(o) if o.requires_grad else None for o in outputs]
            self.backward_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.backward_graph, pool=pool, capture_error_mode=CAPTURE_MODE):
                grads = backward(outputs, stand_ins, self.static_grad_outputs)
            # gradient of every static input (None where it needs none) and of every parameter
            grads = iter(grads)
            self.input_grads = [next(grads) if x.requires_grad else None for x in self.static_inputs]
            self.param_grads = list(grads)
        del stand_ins  # views of the parameters' memory, which the graphs read; the parameters keep it
        # drop the capture's autograd graph: the backward graph holds what it needs
        self.static_outputs = tuple(o.detach() for o in self.static_outputs)
        # the graphs read parameters and buffers at these addresses
        self.addresses = [(t, t.data_ptr()) for t in state]

    def moved(self):
        """Whether a parameter or buffer got new storage since the capture (``module.to(...)``, ``p.data = ...``)."""
        return any(t.data_ptr() != address for t, address in self.addresses)

    def replay_forward(self, inputs):
        """Copy ``inputs`` into the static inputs, replay the forward graph; returns copies of the outputs."""
        for static, x in zip(self.static_inputs, inputs):
            if static.data_ptr() != x.data_ptr():
                static.detach().copy_(x.detach())
        self.forward_graph.replay()
        return tuple(o.clone() for o in self.static_outputs)


class _Replay(torch.autograd.Function):
    """Forward: replay the forward graph; backward: replay the backward graph. Outputs and gradients are copies."""

    @staticmethod
    def forward(ctx, part, graph, num_inputs, *inputs_and_params):
        outputs = graph.replay_forward(inputs_and_params[:num_inputs])
        ctx.part, ctx.graph = part, graph
        ctx.mark_non_differentiable(*[o for o, d in zip(outputs, graph.differentiable) if not d])
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        graph = ctx.graph
        for static, grad in zip(graph.static_grad_outputs, grad_outputs):
            if static is not None:
                if grad is None:
                    static.zero_()
                else:
                    static.copy_(grad)
        graph.backward_graph.replay()
        ctx.part._pending = None
        grads = [g.clone() if g is not None else None for g in graph.input_grads]
        grads += [g.clone() if g is not None else None for g in graph.param_grads]
        return (None, None, None, *grads)


class GraphedPart:
    """Replay CUDA graphs of ``fn`` (tensors -> tuple of tensors) that uses the parameters of ``module``.

    Args:
        fn: the function to capture; it must launch no host synchronization and depend on
            its tensor inputs only through their values (fixed shapes per signature).
        module: the ``nn.Module`` whose trainable parameters ``fn`` uses (gradients flow to them)
            and whose buffers are restored after each capture.
        submodules: names of ``module``'s children that hold all ``fn`` uses, where it uses only those:
            the graphs then differentiate their parameters alone. A parameter that the backward graph
            is handed but gives no gradient would still hold back autograd's accumulation of that
            parameter's gradient from elsewhere until this part's backward has run.
        max_graphs: captured signatures at most; further ones run eagerly.
        name: for log lines.
        warmup: a context manager factory entered around a capture's warm-up runs (their values are discarded):
            ``bn_act.skip_collectives`` where ``fn`` holds collectives, which the warm-up must not run (every
            process runs each collective once per call: captured and replayed, replayed, or eager).

    ``part(*tensors)`` returns the outputs, or ``None`` when the caller should run ``fn``
    eagerly itself (see the module docstring for when).
    """

    def __init__(self, fn, module, max_graphs=8, name="model", warmup=contextlib.nullcontext, submodules=None):
        # weak references: the module usually owns this object, and a cycle would keep the graphs' memory
        # (activations of every captured shape) alive after the module is dropped, until a garbage collection
        self._fn = weakref.WeakMethod(fn) if inspect.ismethod(fn) else (lambda: fn)
        self._module = weakref.ref(module)
        self.submodules = tuple(submodules) if submodules else None
        self.max_graphs = max_graphs
        self.name = name
        self.warmup = warmup
        self.graphs = {}
        self.disabled = None  # reason, once a capture failed
        self._pool = None
        self._pending = None  # weak reference to the autograd node of a graphed forward whose backward has not run
        self._warned = set()
        self._modules = None  # the module tree, listed once (hook checks)

    @property
    def fn(self):
        return self._fn()

    @property
    def module(self):
        return self._module()

    def _note(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            logger.info("CUDA graphs (%s): %s", self.name, message)

    def _hooked(self):
        """Whether a forward or backward hook is registered on the module tree or globally."""
        module = self.module
        if self._modules is None:  # the submodules (not the module itself: no reference cycle)
            self._modules = [m for m in module.modules() if m is not module]
        hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        if any(getattr(nn_module, name, None) for nn_module in (module, *self._modules) for name in hook_dicts):
            return True
        return any(getattr(torch_module, name, None) for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks"))

    def _busy(self):
        return self._pending is not None and self._pending() is not None

    def __call__(self, *tensors):
        if self.disabled or not torch.cuda.is_available() or not all(t.is_cuda for t in tensors):
            return None
        if _compiling() or torch.cuda.is_current_stream_capturing():
            return None
        if self._hooked():
            self._note("hooks", "module hooks are registered (a replay would not call them); running eagerly")
            return None
        if self._busy():
            self._note("busy", "a graphed forward is waiting for its backward; this call runs eagerly")
            return None
        training = self.module.training
        key = _signature(tensors, training)
        graph = self.graphs.get(key)
        if graph is not None and graph.moved():
            self._note("moved", "parameters or buffers moved to new memory since the capture; capturing again")
            self.graphs.clear()
            graph = None
        if graph is None:
            if len(self.graphs) >= self.max_graphs:
                self._note("full", f"{self.max_graphs} input shapes captured (MODEL.CUDA_GRAPH.MAX_GRAPHS); "
                                   "further shapes run eagerly")
                return None
            graph = self._capture(tensors, key)
            if graph is None:
                return None
        params = graph.params
        if graph.with_backward:
            outputs = _Replay.apply(self, graph, len(tensors), *tensors, *params)
            node = next((o.grad_fn for o in outputs if o.grad_fn is not None), None)
            self._pending = weakref.ref(node) if node is not None else None
            return outputs
        return graph.replay_forward(tensors)

    def _owned(self):
        """(parameters, buffers) that ``fn`` uses: ``module``'s, or its ``submodules``' (each once)."""
        module = self.module
        owners = [module] if self.submodules is None else [getattr(module, name) for name in self.submodules]
        params, buffers, seen = [], [], set()
        for owner in owners:
            for kind, tensors in ((params, owner.parameters()), (buffers, owner.buffers())):
                for t in tensors:
                    if id(t) not in seen:
                        seen.add(id(t))
                        kind.append(t)
        return params, buffers

    def _capture(self, tensors, key):
        owned_params, owned_buffers = self._owned()
        params = [p for p in owned_params if p.requires_grad] if torch.is_grad_enabled() else []
        with_backward = bool(params) or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        saved = [b.detach().clone() for b in owned_buffers]
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            state = owned_params + owned_buffers
            graph = _Graph(self.fn, self.module, params, state, tensors, self._pool, with_backward, self.warmup)
        except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly from now on, say why once
            torch.cuda.synchronize()
            self.disabled = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            logger.warning("CUDA graphs (%s): capture failed (%s); running eagerly (MODEL.CUDA_GRAPH.SCOPE off "
                           "silences this)", self.name, self.disabled)
            self.graphs.clear()
            return None
        finally:
            with torch.no_grad():
                for b, value in zip(owned_buffers, saved):
                    b.copy_(value)
        self.graphs[key] = graph
        shapes = ", ".join("x".join(map(str, t.shape)) for t in tensors)
        self._note(key, f"captured {'forward + backward' if with_backward else 'forward'} for inputs {shapes} "
                        f"({len(self.graphs)}/{self.max_graphs})")
        return graph


def _compiling():
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
