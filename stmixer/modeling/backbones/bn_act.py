"""BatchNorm (+ residual) (+ ReLU) in training as Triton kernels: ``MODEL.BACKBONE.FUSED_TRAINING_BN``.

A ResNet block in training computes ``relu(bn(conv(x)) + shortcut)`` with batch statistics. On
channels_last_3d (NDHWC) CUDA activations PyTorch runs its own BatchNorm kernels for bfloat16
(cuDNN's take float32 only), then the addition and the ReLU as separate passes, and the backward as
a ReLU mask, two BatchNorm passes and the gradient of the sum. On an H100 the bfloat16 BatchNorm
forward of a ``[8, 256, 8, 64, 112]`` map takes 1.27 ms, 4x what reading and writing it costs.

Here the activations are one ``[M, C]`` matrix (M = N * T * H * W rows of C contiguous channels) and:

* forward: one kernel sums ``x - s`` and ``(x - s)^2`` per channel over chunks of rows (``s`` the
  chunk's first-tile mean: no cancellation to speak of), a small one combines the chunks (Chan et
  al.'s pairwise formula) into the batch mean and variance, the affine coefficients and the running
  statistics (updated in place as ``nn.BatchNorm3d`` does: unbiased variance, momentum), and one
  writes ``relu(x * scale + shift + residual)`` in the input's dtype;
* backward: one kernel reduces the masked gradient and its product with the centred input per
  channel, a small one turns the sums into the weight and bias gradients and three per-channel
  coefficients, and one writes the input's gradient (and the residual's: the masked gradient).

Frozen BatchNorm (eval mode) with gradients (``MODEL.BACKBONE.FROZEN_BN``, SlowOnly's setting) takes
the running statistics instead: no statistics pass, and the input's gradient is ``g * w / sigma``.

SyncBatchNorm (``MODEL.BACKBONE.SYNC_BN`` on several processes) runs the same kernels. In eval mode it
is frozen BatchNorm (no collective, as the module). In training, where the module would synchronize
(``sync_group``), each process combines its own partials into its mean, centred sum of squares and
count per channel, one ``all_gather`` brings every process's to every process, and the combining kernel
merges them (the same pairwise formula) into the batch statistics of all processes' clips; backward
all-reduces the two per-channel gradient sums (the module's two collectives, in the same order). The
weight and bias gradients are each process's own, as the module's (DistributedDataParallel averages
them). The kernels take only the SyncBatchNorm layers whose ``process_group`` came from
``new_sync_group`` (``MODEL.CUDA_GRAPH.SYNC_BN``); the others run the module. Those collectives can be
captured in a CUDA graph: a group of their own keeps them apart from DistributedDataParallel's
gradient all-reduces (whose order relative to a replayed backward differs from an eager one's), and
``skip_collectives`` keeps a capture's warm-up runs from communicating, so that every process runs
each collective exactly once per forward and backward, captured, replayed or eager.

Statistics, coefficients and accumulation are float32 for any input dtype, as in PyTorch's kernels;
the result is rounded once (PyTorch rounds the BatchNorm output, then the sum). No atomics: the
results do not vary run to run. Same values as the modules up to float rounding;
``tests/modeling/test_bn_act.py`` compares values, gradients and running statistics with them, on the
CPU through Triton's interpreter and on CUDA. Parity runs use the modules (``False``).

The kernels run only where they compute what the modules would: an ``nn.BatchNorm3d`` or
``nn.SyncBatchNorm`` with affine parameters and running statistics (and a momentum in training mode), of
``MIN_CHANNELS`` or more channels, on channels_last_3d-contiguous activations
(``MODEL.BACKBONE.CHANNELS_LAST`` on CUDA). Anything else runs the modules; eval mode without
gradients is ``FUSED_INFERENCE``'s (BatchNorm folded into the convolutions).
"""

import contextlib
import logging
import threading

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..layers import triton_support

try:  # Triton ships with PyTorch's CUDA wheels; elsewhere the modules run
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

logger = logging.getLogger(__name__)

# Elements per program tile ([BLOCK_M rows, BLOCK_C channels]) and the widest channel block.
TILE = 4096
MAX_BLOCK_C = 64
# Reduction programs per streaming multiprocessor (the statistics and the backward sums).
PROGRAMS_PER_SM = 4
# Warps per program.
NUM_WARPS = 4
# Partials per block of the per-channel combining kernels.
BLOCK_Q = 64
# Activation dtypes the kernels take.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Fewest channels the kernels take where rows cannot be packed (``_Layout``): with one narrow tile column per
# channel they were slower than PyTorch's kernels (an H100, 8 channels unpacked, eager calls: 0.83 against 0.47
# ms forward and backward for a [8, 8, 32, 64, 112] bfloat16 map).
MIN_CHANNELS = 32
# Take the collectives of a training SyncBatchNorm even in a process group of one process (where the module, and
# ``sync_group``, would not): benchmarks measure the cost of the collective path on one GPU with it.
SYNC_ONE_PROCESS = False

_SYNC_GROUPS = []  # the process groups new_sync_group made (compared by identity)
_local = threading.local()  # .skip: inside skip_collectives

_SELF_CHECKS = {}  # (device type, index) -> None (the kernels ran) or why they could not
_warned = set()


def self_check(device):
    """None when the kernels build and run on ``device`` (tiny forward and backward, once per device)."""
    return triton_support.checked(_SELF_CHECKS, device, _self_check_run)


def _self_check_run(device):
    x = torch.randn(2, 4, 1, 2, 2, device=device).to(memory_format=torch.channels_last_3d).requires_grad_()
    residual = torch.randn_like(x).requires_grad_()
    weight = torch.rand(4, device=device, requires_grad=True)
    bias = torch.zeros(4, device=device, requires_grad=True)
    stats = torch.zeros(4, device=device), torch.ones(4, device=device)
    FusedBatchNormAct.apply(x, weight, bias, residual, *stats, 0.1, 1e-5, True).sum().backward()


def wanted(mode, device):
    """Whether ``mode`` ("auto", True, False) asks for the kernels on ``device`` and they can run there.

    "auto": CUDA GPUs of compute capability 8.0+; True: any device Triton runs on (the CPU only under
    ``TRITON_INTERPRET=1``, for tests); both pass a once-per-device self-check first, and log once why not."""
    if mode is False or triton is None:
        return False
    if mode == "auto" and not triton_support.capable(device):
        return False
    if not triton_support.runs_on(device):
        return False
    failure = self_check(device)
    if failure is not None:
        if failure not in _warned:
            _warned.add(failure)
            logger.warning("MODEL.BACKBONE.FUSED_TRAINING_BN: the Triton BatchNorm kernels failed on %s (%s); "
                           "the BatchNorm modules run instead", device, failure)
        return False
    return True


def active(mode, bn, x):
    """Whether a block sends its BatchNorms through ``bn_act`` for the input ``x``: ``mode`` not False, ``bn`` in
    training mode or a gradient wanted (frozen BatchNorm in training; without gradients ``FUSED_INFERENCE``
    folds eval-mode BatchNorm into the convolutions), and the kernels ``wanted`` on ``x``'s device (each
    ``bn_act`` call still checks ``fusable``)."""
    return mode is not False and (bn.training or torch.is_grad_enabled()) and wanted(mode, x.device)


def _channels_last(t):
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def sync_group(bn):
    """The process group whose clips' statistics ``bn`` normalizes with: for an ``nn.SyncBatchNorm`` in training
    mode, with torch.distributed initialized and more than one process in its ``process_group`` (the module's
    own rule; ``SYNC_ONE_PROCESS`` drops the last condition), that group; else None (this process's batch)."""
    if type(bn) is not nn.SyncBatchNorm or not bn.training or not (dist.is_available() and dist.is_initialized()):
        return None
    group = bn.process_group if bn.process_group is not None else dist.group.WORLD
    return group if SYNC_ONE_PROCESS or dist.get_world_size(group) > 1 else None


def new_sync_group():
    """A process group of every process (collective: every process calls it) for the SyncBatchNorm layers whose
    statistics the kernels synchronize (``MODEL.CUDA_GRAPH.SYNC_BN``): separate from the default group, which
    DistributedDataParallel uses, so captured and eager collectives of the two never interleave differently."""
    group = dist.new_group(backend=dist.get_backend())
    # one collective now: NCCL makes a group's communicator at its first collective, which must not be inside
    # a CUDA graph capture (the first one of these layers usually is: a capture's warm-up skips them)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None
    dist.all_reduce(torch.zeros(1, device=device), group=group)
    _SYNC_GROUPS.append(group)
    return group


def kernels_synchronize(group):
    """Whether ``group`` (a ``sync_group``) came from ``new_sync_group``: its SyncBatchNorm runs the kernels."""
    return any(group is g for g in _SYNC_GROUPS)


@contextlib.contextmanager
def skip_collectives():
    """Inside (this thread): the kernels' SyncBatchNorm collectives are skipped (each process normalizes with its
    own statistics, and a backward started inside skips its all-reduce too). For the warm-up runs of a CUDA graph
    capture, whose values are discarded: they must not communicate, so that each process runs every collective
    once per step whether it captures, replays or runs eagerly."""
    saved = getattr(_local, "skip", False)
    _local.skip = True
    try:
        yield
    finally:
        _local.skip = saved


def fusable(mode, x, bn, residual=None):
    """Whether ``bn_act`` runs the kernels for ``x`` ``[N, C, T, H, W]`` through ``bn`` (+ ``residual``).

    A synchronizing SyncBatchNorm (``sync_group``) takes the kernels only on a ``new_sync_group`` group, and then
    on every process of it (the kernels' collective and the module's carry different values): only settings
    that are the same on every process decide for it (the module, the dtype, the layout, the device), never the
    local batch's size."""
    if mode is False or type(bn) not in (nn.BatchNorm3d, nn.SyncBatchNorm) or x.dim() != 5:
        return False
    if not (bn.affine and bn.track_running_stats and bn.running_mean is not None):
        return False
    if x.dtype not in DTYPES or not _channels_last(x):
        return False
    if bn.training and bn.momentum is None:
        return False  # a cumulative average (a host-side factor)
    group = sync_group(bn)
    if group is not None and not kernels_synchronize(group):
        return False  # PyTorch's SyncBatchNorm and its collectives
    if group is None:
        if bn.training and x.numel() // max(x.shape[1], 1) < 2:
            return False  # one value per channel (the module raises)
        if x.shape[1] < MIN_CHANNELS and _pack(x) == 1:
            return False
    elif x.numel() == 0:
        return False
    if residual is not None and (residual.shape != x.shape or residual.dtype not in DTYPES
                                 or residual.device != x.device or not _channels_last(residual)):
        return False
    return wanted(mode, x.device)


def bn_act(mode, x, bn, relu=None, residual=None):
    """``relu(bn(x) + residual)``; ``relu``: the block's ``nn.ReLU`` (None: no activation), ``residual``: None or
    a tensor shaped as ``x``. ``[N, C, T, H, W]`` -> same shape (channels_last_3d where the kernels ran).

    ``mode``: ``MODEL.BACKBONE.FUSED_TRAINING_BN``. Where ``fusable``, one ``FusedBatchNormAct``: batch statistics
    in training mode (the running statistics and ``num_batches_tracked`` updated as the module does; a
    SyncBatchNorm's over its ``sync_group``), the running statistics in eval mode; else the modules, as the block
    had them."""
    group = sync_group(bn)
    fused = fusable(mode, x, bn, residual)
    if group is not None and not fused and kernels_synchronize(group) and (
            getattr(_local, "skip", False) or (x.is_cuda and torch.cuda.is_current_stream_capturing())):
        # the module's collectives would run where the kernels' are expected (a capture's warm-up, or a graph
        # that the other processes replay): refuse, so that the capture fails before communicating
        raise RuntimeError(f"SyncBatchNorm({bn.num_features}) on a new_sync_group process group needs the Triton "
                           f"kernels (MODEL.BACKBONE.FUSED_TRAINING_BN {mode!r}), which cannot take this input "
                           f"({x.dtype}, channels_last_3d {_channels_last(x)}, device {x.device})")
    if fused:
        if bn.training and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        return FusedBatchNormAct.apply(x, bn.weight, bn.bias, residual, bn.running_mean, bn.running_var,
                                       float(bn.momentum or 0.0), float(bn.eps), relu is not None, bn.training,
                                       group)
    y = bn(x)
    if residual is not None:
        y = residual + y
    return relu(y) if relu is not None else y


def _pack(x):
    """Rows of ``x``'s ``[M, C]`` matrix packed into one row of ``MAX_BLOCK_C`` values (``_Layout``): 1 unless C
    divides ``MAX_BLOCK_C`` and the packs divide M."""
    c = x.shape[1]
    pack = MAX_BLOCK_C // c if 0 < c < MAX_BLOCK_C and MAX_BLOCK_C % c == 0 else 1
    return pack if (x.numel() // max(c, 1)) % pack == 0 else 1


class _Layout:
    """How the kernels see a channels_last_3d ``[N, C, T, H, W]`` tensor: an ``[M / K, K * C]`` matrix.

    With fewer than ``MAX_BLOCK_C`` channels dividing it, K = MAX_BLOCK_C / C consecutive rows are packed
    into one matrix row of ``MAX_BLOCK_C`` values (column j holds channel j % C), so that every tile loads
    whole 64-value rows whatever C is (SlowFast's Fast pathway has 8, 16 and 32 channels); partial sums per
    matrix column are then K partial sums per channel."""

    def __init__(self, x):
        self.channels = c = x.shape[1]
        m = x.numel() // c
        self.pack = _pack(x)
        self.width = self.pack * c
        self.rows = m // self.pack
        self.block_c = min(triton.next_power_of_2(self.width), MAX_BLOCK_C)
        self.block_m = TILE // self.block_c
        self.c_blocks = triton.cdiv(self.width, self.block_c)
        self.tiles = (triton.cdiv(self.rows, self.block_m), self.c_blocks)  # grid of the elementwise kernels
        self.channel_block = triton.next_power_of_2(c) if c <= MAX_BLOCK_C else MAX_BLOCK_C
        self.channel_blocks = (triton.cdiv(c, self.channel_block),)  # grid of the per-channel kernels

    def matrix(self, t):
        """``t`` (channels_last_3d contiguous, shaped as the layout's tensor) as its matrix (a view)."""
        return t.permute(0, 2, 3, 4, 1).view(self.rows, self.width)

    def split(self, device):
        """(rows per reduction program, programs along the rows) of the statistics and gradient sums."""
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
        programs = max(1, min(triton.cdiv(self.rows, self.block_m), (PROGRAMS_PER_SM * sms) // self.c_blocks))
        chunk = triton.cdiv(triton.cdiv(self.rows, programs), self.block_m) * self.block_m
        return chunk, triton.cdiv(self.rows, chunk)


class FusedBatchNormAct(torch.autograd.Function):
    """``relu(batch_norm(x) + residual)``: with batch statistics (``training``; the running statistics updated in
    place) or with the running statistics.

    ``x``, ``residual`` ``[N, C, T, H, W]`` channels_last_3d-contiguous (float32, bfloat16 or float16);
    ``weight``, ``bias``, ``running_mean``, ``running_var`` ``[C]`` float32; ``group``: None, or the process group
    whose batches the statistics cover in training (``sync_group``: every process of it calls this with the same
    C). Returns ``[N, C, T, H, W]`` channels_last_3d in the promoted dtype of ``x`` and ``residual``."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, momentum, eps, relu, training=True,
                group=None):
        lay = _Layout(x)
        c, xm = lay.channels, lay.matrix(x)
        skip = bool(getattr(_local, "skip", False))  # skip_collectives, for this forward and its backward
        out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        y = torch.empty_like(x, dtype=out_dtype, memory_format=torch.channels_last_3d)
        if training:
            chunk, programs = lay.split(x.device)
            part = torch.empty(2, programs, lay.width, device=x.device, dtype=torch.float32)  # means, m2
            _stats_kernel[(programs, lay.c_blocks)](xm, part, lay.rows, lay.width, chunk, programs,
                                                    BLOCK_M=lay.block_m, BLOCK_C=lay.block_c, num_warps=NUM_WARPS)
            q = programs * lay.pack
            if group is None:
                coef = torch.empty(4, c, device=x.device, dtype=torch.float32)  # mean, rstd, scale, shift
                _stats_combine_kernel[lay.channel_blocks](part, weight, bias, running_mean, running_var, coef,
                                                          q, c, q * c, 0, lay.pack, chunk, lay.rows, c, momentum, eps,
                                                          COUNTS=False, LOCAL=False, BLOCK_Q=BLOCK_Q,
                                                          BLOCK_C=lay.channel_block)
            else:
                coef = _synced_statistics(part, q, lay, chunk, weight, bias, running_mean, running_var, momentum,
                                          eps, group, skip)
        else:
            rstd = torch.rsqrt(running_var.float() + eps)
            scale = weight.detach().float() * rstd
            coef = torch.stack([running_mean.float(), rstd, scale, bias.detach().float() - running_mean * scale])
        r = lay.matrix(residual) if residual is not None else xm
        _apply_kernel[lay.tiles](xm, r, lay.matrix(y), coef, lay.rows, lay.width, c, HAS_RES=residual is not None,
                                 RELU=relu, BLOCK_M=lay.block_m, BLOCK_C=lay.block_c, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, weight, coef, y if relu else None)
        ctx.relu = relu
        ctx.training = training
        ctx.group = group if training else None
        ctx.skip = skip
        ctx.residual_dtype = residual.dtype if residual is not None else None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, coef, y = ctx.saved_tensors
        lay = _Layout(x)
        c = lay.channels
        g = lay.matrix(grad.contiguous(memory_format=torch.channels_last_3d))
        xm = lay.matrix(x)
        ym = lay.matrix(y) if y is not None else g
        chunk, programs = lay.split(x.device)
        part = torch.empty(2, programs, lay.width, device=x.device, dtype=torch.float32)
        _grad_sums_kernel[(programs, lay.c_blocks)](g, ym, xm, coef, part, lay.rows, lay.width, c, chunk, programs,
                                                    RELU=ctx.relu, BLOCK_M=lay.block_m, BLOCK_C=lay.block_c,
                                                    num_warps=NUM_WARPS)
        q = programs * lay.pack
        # grad weight, grad bias, 3 coefficients (+ the two sums, synchronized)
        out = torch.empty(5 if ctx.group is None else 7, c, device=x.device, dtype=torch.float32)
        _grad_combine_kernel[lay.channel_blocks](part, weight, coef, out, q, c, q * c, lay.rows * lay.pack, c,
                                                 TRAINING=ctx.training and ctx.group is None, COUNT_IN_COEF=False,
                                                 SUMS=ctx.group is not None, BLOCK_Q=BLOCK_Q,
                                                 BLOCK_C=lay.channel_block)
        coefficients = out
        if ctx.group is not None:
            # the input's gradient needs the sums over every process's clips; the weight and bias gradients stay
            # this process's own (rows 0 and 1 of ``out``), as the module's
            sums = out[5:7]
            if not ctx.skip:
                dist.all_reduce(sums, group=ctx.group)
            coefficients = torch.empty(5, c, device=x.device, dtype=torch.float32)
            _grad_combine_kernel[lay.channel_blocks](sums, weight, coef, coefficients, 1, c, c, 0, c, TRAINING=True,
                                                     COUNT_IN_COEF=True, SUMS=False, BLOCK_Q=BLOCK_Q,
                                                     BLOCK_C=lay.channel_block)
        grad_x = torch.empty_like(x, memory_format=torch.channels_last_3d)
        has_res = ctx.residual_dtype is not None
        grad_res = torch.empty_like(x, dtype=ctx.residual_dtype, memory_format=torch.channels_last_3d) if has_res \
            else grad_x
        _grad_input_kernel[lay.tiles](g, ym, xm, coefficients, lay.matrix(grad_x), lay.matrix(grad_res), lay.rows,
                                      lay.width, c, RELU=ctx.relu, HAS_RES=has_res, BLOCK_M=lay.block_m,
                                      BLOCK_C=lay.block_c, num_warps=NUM_WARPS)
        return (grad_x, out[0].to(weight.dtype), out[1].to(weight.dtype), grad_res if has_res else None,
                None, None, None, None, None, None, None)


def _all_gather(out, tensor, group):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the newer name, torch 2.10+
    gather(out, tensor, group=group)


def _synced_statistics(part, q, lay, chunk, weight, bias, running_mean, running_var, momentum, eps, group,
                       skip=False):
    """The coefficients ``[4 * C + 1]`` (mean, rstd, scale, shift, the count of all processes' rows) of the batch of
    every process of ``group``, from this process's ``q`` partials; the running statistics updated with them.

    One ``all_gather`` of ``[mean, m2, count]`` (``2 * C + 1`` float32 values, a ``[world, 2 * C + 1]`` matrix on
    every process), merged by the combining kernel with each process's count (PyTorch's SyncBatchNorm also
    gathers ``2 * C + 1`` values: mean, inverse deviation and count)."""
    c = lay.channels
    mine = torch.empty(2 * c + 1, device=part.device, dtype=torch.float32)
    _stats_combine_kernel[lay.channel_blocks](part, weight, bias, running_mean, running_var, mine, q, c, q * c, 0,
                                              lay.pack, chunk, lay.rows, c, momentum, eps, COUNTS=False, LOCAL=True,
                                              BLOCK_Q=BLOCK_Q, BLOCK_C=lay.channel_block)
    world = dist.get_world_size(group)
    gathered = torch.empty(world * (2 * c + 1), device=part.device, dtype=torch.float32)
    if skip:  # skip_collectives: every "process" holds this one's statistics
        gathered.view(world, -1).copy_(mine.expand(world, -1))
    else:
        _all_gather(gathered, mine, group)
    coef = torch.empty(4 * c + 1, device=part.device, dtype=torch.float32)
    _stats_combine_kernel[lay.channel_blocks](gathered, weight, bias, running_mean, running_var, coef, world,
                                              2 * c + 1, c, 2 * c, 1, 0, 0, c, momentum, eps, COUNTS=True,
                                              LOCAL=False, BLOCK_Q=BLOCK_Q, BLOCK_C=lay.channel_block)
    return coef


if triton is not None:

    @triton.jit
    def _tile(ptr, start, M, W, offs_c, mask_c, BLOCK_M: tl.constexpr):
        """Rows ``start + [0, BLOCK_M)`` of the ``[M, W]`` matrix at ``ptr`` as float32, their mask and offsets."""
        offs_m = start + tl.arange(0, BLOCK_M)
        mask = (offs_m < M)[:, None] & mask_c[None, :]
        offs = offs_m.to(tl.int64)[:, None] * W + offs_c[None, :]
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32), mask, offs

    @triton.jit
    def _columns(W, BLOCK_C: tl.constexpr):
        """This program's matrix columns and their mask."""
        offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        return offs_c, offs_c < W

    @triton.jit
    def _stats_kernel(x_ptr, part_ptr, M, W, ROWS, P, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """Mean and centred sum of squares of rows ``[pid * ROWS, (pid + 1) * ROWS)`` per matrix column.

        Sums of ``x - s`` and ``(x - s)^2`` with ``s`` the mean of the chunk's first tile (close to the chunk's
        mean, so ``sum (x - s)^2 - (sum (x - s))^2 / n`` loses little to cancellation), kept per tile element
        and reduced once at the end."""
        pid = tl.program_id(0)
        offs_c, mask_c = _columns(W, BLOCK_C)
        start = pid * ROWS
        x, _, _ = _tile(x_ptr, start, M, W, offs_c, mask_c, BLOCK_M)
        shift = tl.sum(x, axis=0) / tl.minimum(M - start, BLOCK_M).to(tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for r in range(0, ROWS, BLOCK_M):
            x, mask, _ = _tile(x_ptr, start + r, M, W, offs_c, mask_c, BLOCK_M)
            d = tl.where(mask, x - shift[None, :], 0.0)
            acc += d
            acc2 += d * d
        n = tl.minimum(M - start, ROWS).to(tl.float32)
        s1 = tl.sum(acc, axis=0)
        mean_d = s1 / n
        tl.store(part_ptr + pid * W + offs_c, shift + mean_d, mask=mask_c)
        tl.store(part_ptr + (P + pid) * W + offs_c, tl.maximum(tl.sum(acc2, axis=0) - s1 * mean_d, 0.0),
                 mask=mask_c)

    @triton.jit
    def _partials(part_ptr, q0, Q, QS, offs_c, mask_c, BLOCK_Q: tl.constexpr):
        """Partials ``q0 + [0, BLOCK_Q)`` (rows of the ``[Q, C]`` matrix at ``part_ptr`` whose rows are ``QS``
        apart) and their row mask."""
        q = q0 + tl.arange(0, BLOCK_Q)
        mask_q = q < Q
        v = tl.load(part_ptr + q[:, None] * QS + offs_c[None, :], mask=mask_q[:, None] & mask_c[None, :], other=0.0)
        return v, q, mask_q

    @triton.jit
    def _count(part_ptr, q, mask_q, QS, CNT, PACK, ROWS, M, COUNTS: tl.constexpr):
        """Rows behind partials ``q``: ``COUNTS``, stored at ``part_ptr + CNT`` in each partial's row; else chunk
        ``q // PACK`` of ``ROWS`` matrix rows but the last (of ``M``)."""
        if COUNTS:
            n = tl.load(part_ptr + CNT + q * QS, mask=mask_q, other=0.0)
        else:
            n = tl.where(mask_q, tl.minimum(M - q // PACK * ROWS, ROWS), 0).to(tl.float32)
        return n

    @triton.jit
    def _stats_combine_kernel(part_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, coef_ptr, Q, QS, M2, CNT, PACK, ROWS, M, C,
                              momentum, eps, COUNTS: tl.constexpr, LOCAL: tl.constexpr, BLOCK_Q: tl.constexpr,
                              BLOCK_C: tl.constexpr):
        """Batch mean and variance from the ``Q`` partials per channel (means in rows ``QS`` apart from
        ``part_ptr``, centred sums of squares ``M2`` after them; the rows they cover: ``_count``): the
        count-weighted mean of the means, then ``sum m2_q + n_q (mean_q - mean)^2`` (Chan et al.), each over
        blocks of partials; running statistics; ``scale``, ``shift``. ``LOCAL``: only mean, m2 and the count
        (``[2 * C + 1]``, what ``_synced_statistics`` gathers); ``COUNTS``: the count also after the 4 rows."""
        offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        acc_n = tl.zeros([BLOCK_Q], dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            means, q, mask_q = _partials(part_ptr, q0, Q, QS, offs_c, mask_c, BLOCK_Q)
            n = _count(part_ptr, q, mask_q, QS, CNT, PACK, ROWS, M, COUNTS)
            acc += means * n[:, None]
            acc_n += n
        if COUNTS:
            count = tl.sum(acc_n, axis=0)
        else:
            count = M * PACK
        mean = tl.sum(acc, axis=0) / count
        acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            means, q, mask_q = _partials(part_ptr, q0, Q, QS, offs_c, mask_c, BLOCK_Q)
            m2, _, _ = _partials(part_ptr + M2, q0, Q, QS, offs_c, mask_c, BLOCK_Q)
            n = _count(part_ptr, q, mask_q, QS, CNT, PACK, ROWS, M, COUNTS)
            d = means - mean[None, :]
            acc += m2 + n[:, None] * d * d
        m2 = tl.sum(acc, axis=0)
        if LOCAL:
            tl.store(coef_ptr + offs_c, mean, mask=mask_c)
            tl.store(coef_ptr + C + offs_c, m2, mask=mask_c)
            if tl.program_id(0) == 0:
                tl.store(coef_ptr + 2 * C, tl.sum(acc_n, axis=0))  # M * PACK, exact in float32 below 2^24 rows
            return
        if COUNTS:
            if tl.program_id(0) == 0:
                tl.store(coef_ptr + 4 * C, count)
        var = m2 / count
        rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
        scale = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0) * rstd
        shift = tl.load(b_ptr + offs_c, mask=mask_c, other=0.0) - mean * scale
        rm = tl.load(rm_ptr + offs_c, mask=mask_c, other=0.0)
        rv = tl.load(rv_ptr + offs_c, mask=mask_c, other=0.0)
        tl.store(rm_ptr + offs_c, momentum * mean + (1.0 - momentum) * rm, mask=mask_c)
        tl.store(rv_ptr + offs_c, momentum * (m2 / (count - 1)) + (1.0 - momentum) * rv, mask=mask_c)
        tl.store(coef_ptr + offs_c, mean, mask=mask_c)
        tl.store(coef_ptr + C + offs_c, rstd, mask=mask_c)
        tl.store(coef_ptr + 2 * C + offs_c, scale, mask=mask_c)
        tl.store(coef_ptr + 3 * C + offs_c, shift, mask=mask_c)

    @triton.jit
    def _apply_kernel(x_ptr, r_ptr, y_ptr, coef_ptr, M, W, C, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """``y = relu(x * scale + shift + r)`` on one tile (column j: channel j % C)."""
        offs_c, mask_c = _columns(W, BLOCK_C)
        x, mask, offs = _tile(x_ptr, tl.program_id(0) * BLOCK_M, M, W, offs_c, mask_c, BLOCK_M)
        ch = offs_c % C
        scale = tl.load(coef_ptr + 2 * C + ch, mask=mask_c, other=0.0)
        shift = tl.load(coef_ptr + 3 * C + ch, mask=mask_c, other=0.0)
        y = x * scale[None, :] + shift[None, :]
        if HAS_RES:
            y += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            y = tl.maximum(y, 0.0)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)

    @triton.jit
    def _masked_grad(g_ptr, y_ptr, offs, mask, RELU: tl.constexpr):
        """The gradient at the BatchNorm's output (+ residual): ``g`` where ``y > 0`` with a ReLU."""
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            y = tl.load(y_ptr + offs, mask=mask, other=0.0)
            g = tl.where(y > 0, g, 0.0)
        return g

    @triton.jit
    def _grad_sums_kernel(g_ptr, y_ptr, x_ptr, coef_ptr, part_ptr, M, W, C, ROWS, P, RELU: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """Sums of ``g`` and ``g * (x - mean)`` over rows ``[pid * ROWS, (pid + 1) * ROWS)`` per matrix column."""
        pid = tl.program_id(0)
        offs_c, mask_c = _columns(W, BLOCK_C)
        mean = tl.load(coef_ptr + offs_c % C, mask=mask_c, other=0.0)
        acc_g = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for r in range(0, ROWS, BLOCK_M):
            x, mask, offs = _tile(x_ptr, pid * ROWS + r, M, W, offs_c, mask_c, BLOCK_M)
            g = _masked_grad(g_ptr, y_ptr, offs, mask, RELU)
            acc_g += g
            acc_gx += g * (x - mean[None, :])  # g is 0 outside the mask
        tl.store(part_ptr + pid * W + offs_c, tl.sum(acc_g, axis=0), mask=mask_c)
        tl.store(part_ptr + (P + pid) * W + offs_c, tl.sum(acc_gx, axis=0), mask=mask_c)

    @triton.jit
    def _grad_combine_kernel(part_ptr, w_ptr, coef_ptr, out_ptr, Q, QS, GX, COUNT, C, TRAINING: tl.constexpr,
                             COUNT_IN_COEF: tl.constexpr, SUMS: tl.constexpr, BLOCK_Q: tl.constexpr,
                             BLOCK_C: tl.constexpr):
        """Weight and bias gradients from the ``Q`` partial sums per channel (of ``g`` in rows ``QS`` apart from
        ``part_ptr``, of ``g * (x - mean)`` ``GX`` after them), and ``gx = a * g + b * x + c`` per channel (b = c
        = 0 with the running statistics, which do not depend on x). ``COUNT_IN_COEF``: the rows' count is the
        one ``_synced_statistics`` left after the coefficients (not ``COUNT``); ``SUMS``: the two sums also in
        rows 5 and 6 (``[7, C]``)."""
        offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        acc_g = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        acc_gx = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            acc_g += _partials(part_ptr, q0, Q, QS, offs_c, mask_c, BLOCK_Q)[0]
            acc_gx += _partials(part_ptr + GX, q0, Q, QS, offs_c, mask_c, BLOCK_Q)[0]
        sum_g = tl.sum(acc_g, axis=0)
        sum_gx = tl.sum(acc_gx, axis=0)
        if SUMS:
            tl.store(out_ptr + 5 * C + offs_c, sum_g, mask=mask_c)
            tl.store(out_ptr + 6 * C + offs_c, sum_gx, mask=mask_c)
        if COUNT_IN_COEF:
            count = tl.load(coef_ptr + 4 * C)
        else:
            count = COUNT
        mean = tl.load(coef_ptr + offs_c, mask=mask_c, other=0.0)
        rstd = tl.load(coef_ptr + C + offs_c, mask=mask_c, other=0.0)
        a = tl.load(w_ptr + offs_c, mask=mask_c, other=0.0) * rstd
        tl.store(out_ptr + offs_c, sum_gx * rstd, mask=mask_c)
        tl.store(out_ptr + C + offs_c, sum_g, mask=mask_c)
        tl.store(out_ptr + 2 * C + offs_c, a, mask=mask_c)
        if TRAINING:
            k = rstd * rstd * (sum_gx / count)
            tl.store(out_ptr + 3 * C + offs_c, -a * k, mask=mask_c)
            tl.store(out_ptr + 4 * C + offs_c, a * (k * mean - sum_g / count), mask=mask_c)
        else:
            tl.store(out_ptr + 3 * C + offs_c, tl.zeros([BLOCK_C], dtype=tl.float32), mask=mask_c)
            tl.store(out_ptr + 4 * C + offs_c, tl.zeros([BLOCK_C], dtype=tl.float32), mask=mask_c)

    @triton.jit
    def _grad_input_kernel(g_ptr, y_ptr, x_ptr, out_ptr, gx_ptr, gr_ptr, M, W, C, RELU: tl.constexpr,
                           HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """The input's gradient ``a * g + b * x + c`` and the residual's ``g`` on one tile."""
        offs_c, mask_c = _columns(W, BLOCK_C)
        x, mask, offs = _tile(x_ptr, tl.program_id(0) * BLOCK_M, M, W, offs_c, mask_c, BLOCK_M)
        g = _masked_grad(g_ptr, y_ptr, offs, mask, RELU)
        ch = offs_c % C
        a = tl.load(out_ptr + 2 * C + ch, mask=mask_c, other=0.0)
        b = tl.load(out_ptr + 3 * C + ch, mask=mask_c, other=0.0)
        c = tl.load(out_ptr + 4 * C + ch, mask=mask_c, other=0.0)
        gx = g * a[None, :] + x * b[None, :] + c[None, :]
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
        if HAS_RES:
            tl.store(gr_ptr + offs, g.to(gr_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


def reference(x, weight, bias, residual, running_mean, running_var, momentum, eps, relu, training=True):
    """What ``FusedBatchNormAct`` computes, with PyTorch operators (tests)."""
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = residual + y
    return F.relu(y) if relu else y
