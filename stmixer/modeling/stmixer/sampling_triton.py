"""Level-weighted bilinear sampling as two Triton kernels (``MODEL.STM.SAMPLER`` "auto" on CUDA, or "triton").

The folded sampler (``sampling._WeightedLevelSampling``) runs one ``grid_sample`` per level
and frame-major image; ``grid_sample``'s backward adds each sample's gradient into a
channels-first map with one atomic addition per channel at scattered addresses, which makes
it the largest kernel of a graphed STMixer training step on an H100 (20 % of the SlowFast-R50
step at batch 8). These kernels compute the same function from channels-last copies of the
levels (``[T * N, H_l, W_l, C/G]``, each sampled pixel one contiguous row of channels):

* forward: one program per (block of points, clip-group pair) loops over the frames and the
  levels and writes ``sum_l w_l * bilinear(level_l[t], x, y)``: one kernel instead of
  ``L`` samplings, products and sums;
* backward: recomputes the corners, adds the images' gradients with relaxed atomic additions
  on contiguous rows of channels (into one buffer per level that all decoder stages of a
  backward pass share: ``FrameGradients``), and reduces the grid's and the level weights'
  gradients over frames and channels inside the program (no atomics for them).

Same values as ``grid_sample`` (bilinear, zeros padding, ``align_corners=False``), up to the
order of float additions; ``tests/modeling/test_sampling_triton.py`` compares values and
gradients with the folded path, on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``) and on CUDA.
"""

import weakref

import torch

from ..layers import triton_support

try:  # Triton ships with PyTorch's CUDA wheels; elsewhere the folded sampler runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

# Points per program; every program holds [BLOCK_P, channels] blocks of the four corners. With 64 channels
# and 4 warps, 8 points compile for sm_90 without register spills (ptxas -v: 168 / 179 registers, forward /
# backward); 16 or 32 points spill. Not yet tuned on a GPU.
BLOCK_P = 8
NUM_WARPS = 4
# Levels a kernel takes (STMixer samples 4).
MAX_LEVELS = 4


def interpreted():
    """Whether Triton runs its kernels in its CPU interpreter (``TRITON_INTERPRET=1``, tests)."""
    return triton_support.interpreted()


def available(device):
    """Whether the kernels can run on tensors of ``device``: Triton importable and a CUDA device (or the
    interpreter, which runs them on CPU tensors)."""
    return triton is not None and triton_support.runs_on(device)


# Oldest GPUs ``MODEL.STM.SAMPLER auto`` runs the kernels on (layers/triton_support.py); "triton" still tries
# older ones (self-checked).
AUTO_MIN_CAPABILITY = triton_support.AUTO_MIN_CAPABILITY


def auto_supported(device):
    """Whether ``MODEL.STM.SAMPLER auto`` picks the kernels for tensors on ``device``: ``available`` and, on
    CUDA, a GPU of compute capability ``AUTO_MIN_CAPABILITY`` or newer."""
    return available(device) and triton_support.capable(device)


_SELF_CHECKS = {}  # (device type, index) -> None (the kernels ran) or why they could not


def self_check(device):
    """None when the kernels (both samplers' forward and backward) build and run on ``device``, else why not.

    Runs a tiny forward and backward once per device and process (the first sampler on it), so that a
    GPU or an installation Triton cannot build for (an old GPU, a broken toolchain) makes the sampler
    fall back to the folded path instead of failing a training step (``triton_support.checked``)."""
    return triton_support.checked(_SELF_CHECKS, device, _self_check_run)


def _self_check_run(device):
    """Tiny forwards and backwards of both samplers on ``device``."""
    frames = torch.rand(2, 4, 4, 8, device=device, requires_grad=True)  # T = 1 frame, N = 2 pairs
    grids = (torch.rand(1, 2, 3, 2, device=device) * 2 - 1).requires_grad_()
    weights = torch.rand(1, 2, 3, device=device, requires_grad=True)
    TritonWeightedSampling.apply(grids, weights, None, frames).sum().backward()
    grids = (torch.rand(1, 2, BLOCK_P, 2, device=device) * 2 - 1).requires_grad_()  # one query of P points
    weights = torch.rand(1, 2, BLOCK_P, device=device, requires_grad=True)
    sum(m.sum() for m in TritonSampleMeans.apply(grids, weights, 1, BLOCK_P, FrameGradients(), frames)).backward()


if triton is not None:

    @triton.jit
    def _program_block(QP, C, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's (clip-group pair, point offsets and mask, channel offsets and mask)."""
        offs_p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        offs_c = tl.arange(0, BLOCK_C)
        return tl.program_id(1), offs_p, offs_p < QP, offs_c, offs_c < C

    @triton.jit
    def _corners(grid_ptr, weight_ptr, level: tl.constexpr, n, offs_p, mask_p, QP, N, H, W):
        """Bilinear corners of the points ``offs_p`` of pair ``n`` on level ``level`` (grid_sample's formulas)."""
        g = grid_ptr + ((level * N + n) * QP + offs_p) * 2
        gx = tl.load(g, mask=mask_p, other=0.0)
        gy = tl.load(g + 1, mask=mask_p, other=0.0)
        lw = tl.load(weight_ptr + (level * N + n) * QP + offs_p, mask=mask_p, other=0.0)
        ix = ((gx + 1.0) * W - 1.0) * 0.5
        iy = ((gy + 1.0) * H - 1.0) * 0.5
        x0 = tl.floor(ix)
        y0 = tl.floor(iy)
        x1 = x0 + 1.0
        y1 = y0 + 1.0
        return ix, iy, x0, y0, x1, y1, lw

    @triton.jit
    def _corner_rows(x, y, mask_p, H, W, C):
        """Row offsets (pixel * C) of a corner and whether it lies inside the map."""
        inside = mask_p & (x >= 0.0) & (x < W) & (y >= 0.0) & (y < H)
        xi = tl.where(inside, x, 0.0).to(tl.int32)
        yi = tl.where(inside, y, 0.0).to(tl.int32)
        return (yi * W + xi).to(tl.int64) * C, inside

    @triton.jit
    def _level_sample(frame_ptr, image, level: tl.constexpr, grid_ptr, weight_ptr, n, offs_p, mask_p, offs_c,
                      mask_c, QP, N, H, W, C):
        """``w_l * bilinear`` of one image of one level: [BLOCK_P, BLOCK_C]."""
        ix, iy, x0, y0, x1, y1, lw = _corners(grid_ptr, weight_ptr, level, n, offs_p, mask_p, QP, N, H, W)
        base = frame_ptr + image.to(tl.int64) * H * W * C
        c = offs_c[None, :]
        row, ok = _corner_rows(x0, y0, mask_p, H, W, C)
        v = tl.load(base + row[:, None] + c, mask=ok[:, None] & mask_c[None, :], other=0.0)
        acc = v * ((x1 - ix) * (y1 - iy))[:, None]
        row, ok = _corner_rows(x1, y0, mask_p, H, W, C)
        v = tl.load(base + row[:, None] + c, mask=ok[:, None] & mask_c[None, :], other=0.0)
        acc += v * ((ix - x0) * (y1 - iy))[:, None]
        row, ok = _corner_rows(x0, y1, mask_p, H, W, C)
        v = tl.load(base + row[:, None] + c, mask=ok[:, None] & mask_c[None, :], other=0.0)
        acc += v * ((x1 - ix) * (iy - y0))[:, None]
        row, ok = _corner_rows(x1, y1, mask_p, H, W, C)
        v = tl.load(base + row[:, None] + c, mask=ok[:, None] & mask_c[None, :], other=0.0)
        acc += v * ((ix - x0) * (iy - y0))[:, None]
        return acc * lw[:, None]

    @triton.jit
    def _levels_sample(f0, f1, f2, f3, H0, W0, H1, W1, H2, W2, H3, W3, image, grid_ptr, weight_ptr, n, offs_p,
                       mask_p, offs_c, mask_c, QP, N, C, LEVELS: tl.constexpr):
        """``sum_l w_l * bilinear`` over the levels of one image: [BLOCK_P, BLOCK_C]."""
        acc = _level_sample(f0, image, 0, grid_ptr, weight_ptr, n, offs_p, mask_p, offs_c, mask_c, QP, N, H0, W0, C)
        if LEVELS > 1:
            acc += _level_sample(f1, image, 1, grid_ptr, weight_ptr, n, offs_p, mask_p, offs_c, mask_c, QP, N,
                                 H1, W1, C)
        if LEVELS > 2:
            acc += _level_sample(f2, image, 2, grid_ptr, weight_ptr, n, offs_p, mask_p, offs_c, mask_c, QP, N,
                                 H2, W2, C)
        if LEVELS > 3:
            acc += _level_sample(f3, image, 3, grid_ptr, weight_ptr, n, offs_p, mask_p, offs_c, mask_c, QP, N,
                                 H3, W3, C)
        return acc

    @triton.jit
    def _forward_kernel(out_ptr, grid_ptr, weight_ptr, f0, f1, f2, f3, H0, W0, H1, W1, H2, W2, H3, W3,
                        N, QP, C, T: tl.constexpr, LEVELS: tl.constexpr, BLOCK: tl.constexpr,
                        BLOCK_C: tl.constexpr):
        n, offs_p, mask_p, offs_c, mask_c = _program_block(QP, C, BLOCK, BLOCK_C)
        for t in range(T):
            image = t * N + n
            acc = _levels_sample(f0, f1, f2, f3, H0, W0, H1, W1, H2, W2, H3, W3, image, grid_ptr, weight_ptr, n,
                                 offs_p, mask_p, offs_c, mask_c, QP, N, C, LEVELS)
            # out: [T * N, C, QP]
            out = out_ptr + image.to(tl.int64) * C * QP + offs_c[None, :] * QP + offs_p[:, None]
            tl.store(out, acc, mask=mask_p[:, None] & mask_c[None, :])

    @triton.jit
    def _level_backward(grad_out_ptr, frame_ptr, grad_frame_ptr, grid_ptr, weight_ptr, grad_grid_ptr,
                        grad_weight_ptr, level: tl.constexpr, n, offs_p, mask_p, offs_c, mask_c,
                        T: tl.constexpr, N, QP, H, W, C, NEED_FRAME: tl.constexpr,
                        MEANS: tl.constexpr, grad_s, grad_t_row_ptr, P):
        """Gradients of one level for the points ``offs_p`` of pair ``n``, summed over the frames.

        ``MEANS``: the samples' gradient is not read from ``grad_out_ptr`` but made from those of the two
        means (``_forward_means_kernel``): ``grad_s / T`` (``[BLOCK_P, BLOCK_C]``, the frame mean's) plus
        frame ``t``'s row ``grad_t_row_ptr + t * C`` of the point mean's over ``P``."""
        ix, iy, x0, y0, x1, y1, lw = _corners(grid_ptr, weight_ptr, level, n, offs_p, mask_p, QP, N, H, W)
        w_nw = (x1 - ix) * (y1 - iy)
        w_ne = (ix - x0) * (y1 - iy)
        w_sw = (x1 - ix) * (iy - y0)
        w_se = (ix - x0) * (iy - y0)
        r_nw, ok_nw = _corner_rows(x0, y0, mask_p, H, W, C)
        r_ne, ok_ne = _corner_rows(x1, y0, mask_p, H, W, C)
        r_sw, ok_sw = _corner_rows(x0, y1, mask_p, H, W, C)
        r_se, ok_se = _corner_rows(x1, y1, mask_p, H, W, C)
        c = offs_c[None, :]
        m_nw = ok_nw[:, None] & mask_c[None, :]
        m_ne = ok_ne[:, None] & mask_c[None, :]
        m_sw = ok_sw[:, None] & mask_c[None, :]
        m_se = ok_se[:, None] & mask_c[None, :]
        g_ix = tl.zeros_like(ix)
        g_iy = tl.zeros_like(iy)
        g_lw = tl.zeros_like(lw)
        for t in range(T):
            image = (t * N + n).to(tl.int64)
            if MEANS:
                g_t = tl.load(grad_t_row_ptr + t * C + offs_c, mask=mask_c, other=0.0)
                go = grad_s * (1.0 / T) + g_t[None, :] * (1.0 / P)
            else:
                go = tl.load(grad_out_ptr + image * C * QP + c * QP + offs_p[:, None],
                             mask=mask_p[:, None] & mask_c[None, :], other=0.0)
            base = frame_ptr + image * H * W * C
            v_nw = tl.load(base + r_nw[:, None] + c, mask=m_nw, other=0.0)
            v_ne = tl.load(base + r_ne[:, None] + c, mask=m_ne, other=0.0)
            v_sw = tl.load(base + r_sw[:, None] + c, mask=m_sw, other=0.0)
            v_se = tl.load(base + r_se[:, None] + c, mask=m_se, other=0.0)
            sampled = v_nw * w_nw[:, None] + v_ne * w_ne[:, None] + v_sw * w_sw[:, None] + v_se * w_se[:, None]
            g_lw += tl.sum(go * sampled, axis=1)
            gx = -v_nw * (y1 - iy)[:, None] + v_ne * (y1 - iy)[:, None] - v_sw * (iy - y0)[:, None] \
                + v_se * (iy - y0)[:, None]
            gy = -v_nw * (x1 - ix)[:, None] - v_ne * (ix - x0)[:, None] + v_sw * (x1 - ix)[:, None] \
                + v_se * (ix - x0)[:, None]
            g_ix += tl.sum(go * gx, axis=1)
            g_iy += tl.sum(go * gy, axis=1)
            if NEED_FRAME:
                # relaxed: only atomicity is needed (nothing in the kernel reads these sums), not the default
                # acq_rel ordering, whose fences made the backward 2.3x slower (H100, ViT-B sizes)
                gbase = grad_frame_ptr + image * H * W * C
                weighted = go * lw[:, None]
                tl.atomic_add(gbase + r_nw[:, None] + c, weighted * w_nw[:, None], mask=m_nw, sem="relaxed")
                tl.atomic_add(gbase + r_ne[:, None] + c, weighted * w_ne[:, None], mask=m_ne, sem="relaxed")
                tl.atomic_add(gbase + r_sw[:, None] + c, weighted * w_sw[:, None], mask=m_sw, sem="relaxed")
                tl.atomic_add(gbase + r_se[:, None] + c, weighted * w_se[:, None], mask=m_se, sem="relaxed")
        # d ix / d grid_x = W / 2 (align_corners=False); the level weight multiplies the samples
        gg = grad_grid_ptr + ((level * N + n) * QP + offs_p) * 2
        tl.store(gg, g_ix * lw * (W * 0.5), mask=mask_p)
        tl.store(gg + 1, g_iy * lw * (H * 0.5), mask=mask_p)
        tl.store(grad_weight_ptr + (level * N + n) * QP + offs_p, g_lw, mask=mask_p)

    @triton.jit
    def _levels_backward(grad_out_ptr, f0, f1, f2, f3, g0, g1, g2, g3, H0, W0, H1, W1, H2, W2, H3, W3, grid_ptr,
                         weight_ptr, grad_grid_ptr, grad_weight_ptr, n, offs_p, mask_p, offs_c, mask_c, T: tl.constexpr,
                         N, QP, C, LEVELS: tl.constexpr, NEED_FRAMES: tl.constexpr, MEANS: tl.constexpr, grad_s,
                         grad_t_row_ptr, P):
        """``_level_backward`` of every level (see there for ``MEANS``)."""
        _level_backward(grad_out_ptr, f0, g0, grid_ptr, weight_ptr, grad_grid_ptr, grad_weight_ptr, 0, n, offs_p,
                        mask_p, offs_c, mask_c, T, N, QP, H0, W0, C, NEED_FRAMES, MEANS, grad_s, grad_t_row_ptr, P)
        if LEVELS > 1:
            _level_backward(grad_out_ptr, f1, g1, grid_ptr, weight_ptr, grad_grid_ptr, grad_weight_ptr, 1, n,
                            offs_p, mask_p, offs_c, mask_c, T, N, QP, H1, W1, C, NEED_FRAMES, MEANS, grad_s,
                            grad_t_row_ptr, P)
        if LEVELS > 2:
            _level_backward(grad_out_ptr, f2, g2, grid_ptr, weight_ptr, grad_grid_ptr, grad_weight_ptr, 2, n,
                            offs_p, mask_p, offs_c, mask_c, T, N, QP, H2, W2, C, NEED_FRAMES, MEANS, grad_s,
                            grad_t_row_ptr, P)
        if LEVELS > 3:
            _level_backward(grad_out_ptr, f3, g3, grid_ptr, weight_ptr, grad_grid_ptr, grad_weight_ptr, 3, n,
                            offs_p, mask_p, offs_c, mask_c, T, N, QP, H3, W3, C, NEED_FRAMES, MEANS, grad_s,
                            grad_t_row_ptr, P)

    @triton.jit
    def _backward_kernel(grad_out_ptr, grid_ptr, weight_ptr, grad_grid_ptr, grad_weight_ptr, f0, f1, f2, f3,
                         g0, g1, g2, g3, H0, W0, H1, W1, H2, W2, H3, W3, N, QP, C, T: tl.constexpr,
                         LEVELS: tl.constexpr, NEED_FRAMES: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
        n, offs_p, mask_p, offs_c, mask_c = _program_block(QP, C, BLOCK, BLOCK_C)
        _levels_backward(grad_out_ptr, f0, f1, f2, f3, g0, g1, g2, g3, H0, W0, H1, W1, H2, W2, H3, W3, grid_ptr,
                         weight_ptr, grad_grid_ptr, grad_weight_ptr, n, offs_p, mask_p, offs_c, mask_c, T, N, QP, C,
                         LEVELS, NEED_FRAMES, False, 0.0, grad_out_ptr, 1)

    @triton.jit
    def _query_block(N, G, NPB, BLOCK: tl.constexpr):
        """The block's query, its clip and group, its index among the query's NPB blocks and its points'
        offsets within the query."""
        n = tl.program_id(1)
        q = tl.program_id(0) // NPB
        pb = tl.program_id(0) % NPB
        return q, n // G, n % G, pb, pb * BLOCK + tl.arange(0, BLOCK)

    @triton.jit
    def _forward_means_kernel(spatial_ptr, temporal_ptr, grid_ptr, weight_ptr, f0, f1, f2, f3, H0, W0, H1, W1,
                              H2, W2, H3, W3, N, QP, C, G, Q, P, NPB, T: tl.constexpr, LEVELS: tl.constexpr,
                              BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
        """The samples' mean over the frames and their partial sums over this block's points, per frame.

        spatial ``[B, Q, G, P, C]``: mean over T; temporal ``[NPB, B, Q, G, T, C]``: each block's share of the
        mean over the query's P points (summed over the NPB blocks by the caller). The samples themselves
        (``[T, N, C, QP]``) are never written."""
        n, offs_p, mask_p, offs_c, mask_c = _program_block(QP, C, BLOCK, BLOCK_C)
        q, b, g, pb, p_local = _query_block(N, G, NPB, BLOCK)
        B = N // G
        t_sum = tl.zeros([BLOCK, BLOCK_C], dtype=tl.float32)
        for t in range(T):
            image = t * N + n
            acc = _levels_sample(f0, f1, f2, f3, H0, W0, H1, W1, H2, W2, H3, W3, image, grid_ptr, weight_ptr, n,
                                 offs_p, mask_p, offs_c, mask_c, QP, N, C, LEVELS)
            t_sum += acc
            row = ((((pb * B + b) * Q + q) * G + g) * T + t).to(tl.int64) * C
            tl.store(temporal_ptr + row + offs_c, tl.sum(acc, axis=0) * (1.0 / P), mask=mask_c)
        rows = (((b * Q + q) * G + g) * P + p_local).to(tl.int64) * C
        tl.store(spatial_ptr + rows[:, None] + offs_c[None, :], t_sum * (1.0 / T),
                 mask=mask_p[:, None] & mask_c[None, :])

    @triton.jit
    def _backward_means_kernel(grad_spatial_ptr, grad_temporal_ptr, grid_ptr, weight_ptr, grad_grid_ptr,
                               grad_weight_ptr, f0, f1, f2, f3, g0, g1, g2, g3, H0, W0, H1, W1, H2, W2, H3, W3,
                               N, QP, C, G, Q, P, NPB, T: tl.constexpr, LEVELS: tl.constexpr,
                               NEED_FRAMES: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
        """``_backward_kernel`` for ``_forward_means_kernel``: the samples' gradient is made on the fly from the
        means' (spatial ``[B, Q, G, P, C]``, temporal ``[B, Q, G, T, C]``)."""
        n, offs_p, mask_p, offs_c, mask_c = _program_block(QP, C, BLOCK, BLOCK_C)
        q, b, g, _, p_local = _query_block(N, G, NPB, BLOCK)
        rows = (((b * Q + q) * G + g) * P + p_local).to(tl.int64) * C
        grad_s = tl.load(grad_spatial_ptr + rows[:, None] + offs_c[None, :],
                         mask=mask_p[:, None] & mask_c[None, :], other=0.0)
        grad_t_row = grad_temporal_ptr + (((b * Q + q) * G + g) * T).to(tl.int64) * C
        _levels_backward(grad_spatial_ptr, f0, f1, f2, f3, g0, g1, g2, g3, H0, W0, H1, W1, H2, W2, H3, W3, grid_ptr,
                         weight_ptr, grad_grid_ptr, grad_weight_ptr, n, offs_p, mask_p, offs_c, mask_c, T, N, QP, C,
                         LEVELS, NEED_FRAMES, True, grad_s, grad_t_row, P)


def _graph_task():
    """The id of the backward pass running now (``>= 0``), or None outside one or where PyTorch cannot say."""
    current = getattr(torch._C, "_current_graph_task_id", None)
    task = current() if current is not None else -1
    return task if task >= 0 else None


class FrameGradients:
    """The frames' gradient buffers that all samplings of one pyramid add into during one backward pass.

    The decoder's six stages sample the same channels-last frames. With a gradient per sampling, every
    backward would fill its own zero buffers the size of the frames and autograd would add them up: for 8
    ViT-B clips, six fills and five additions of 0.6 GB (4 ms of a 140 ms H100 training step). Instead,
    the first sampling whose backward runs in a pass makes the zero buffers and returns them as the frames'
    gradient; the later ones in the same pass add into them (the kernels' atomic additions) and return
    none. Autograd runs the backward of whatever made the frames only after the backwards of all their
    consumers, so by then the buffers hold every sampling's share.

    The buffers are shared only within one backward pass (PyTorch's graph-task id): another pass over the
    same graph (``retain_graph``, a second ``torch.autograd.grad``) starts its own, so nothing returned by
    an earlier pass is changed. They are held weakly: once autograd has consumed them, their memory goes.
    Where PyTorch cannot say which pass runs, every sampling returns its own buffers, as before.
    """

    def __init__(self):
        self._task = None
        self._buffers = []  # weak references to this pass's buffers

    def buffers(self, frames):
        """``(buffers, new)``: zeros like ``frames`` (``new``: return them to autograd), or this pass's buffers
        returned earlier by another sampling (add into them, return no gradient for the frames)."""
        task = _graph_task()
        if task is not None and task == self._task:
            held = [ref() for ref in self._buffers]
            if held and all(b is not None for b in held):
                return held, False
        buffers = [torch.zeros_like(f) for f in frames]
        if task is not None:
            self._task, self._buffers = task, [weakref.ref(b) for b in buffers]
        return buffers, True


def channels_last_frames(feature, n_groups):
    """``[B, C, T, H, W]`` -> ``[T * B * G, H, W, C/G]`` float32 (image ``(t * B + b) * G + g``; a copy)."""
    B, C, T, H, W = feature.shape
    frames = feature.reshape(B, n_groups, C // n_groups, T, H, W).permute(3, 0, 1, 4, 5, 2)
    return frames.reshape(T * B * n_groups, H, W, C // n_groups).to(torch.promote_types(feature.dtype, torch.float32))


def _padded(frames):
    """The kernels take MAX_LEVELS levels: unused ones repeat the last (never read)."""
    return list(frames) + [frames[-1]] * (MAX_LEVELS - len(frames))


def _sizes(frames):
    """H_l, W_l of every level the kernels take."""
    return [size for f in _padded(frames) for size in (f.size(1), f.size(2))]


def _block_c(channels):
    return triton.next_power_of_2(channels)


class TritonWeightedSampling(torch.autograd.Function):
    """``sum_l weights[l] * bilinear(frames[l], grids[l])`` for every frame.

    Inputs: grids ``[L, N, QP, 2]`` (grid_sample coordinates) and weights ``[L, N, QP]`` for the
    ``N = B * G`` (clip, group) pairs, frames ``L x [T * N, H_l, W_l, C/G]`` (``channels_last_frames``),
    all float32 and contiguous, and the pyramid's ``FrameGradients`` (or None: gradients of its own).
    Output ``[T * N, C/G, QP]``, as the folded sampler's.
    """

    @staticmethod
    def forward(ctx, grids, weights, frame_grads, *frames):
        if not 1 <= len(frames) <= MAX_LEVELS:
            raise ValueError(f"the Triton sampler takes 1 to {MAX_LEVELS} levels, got {len(frames)}")
        L, N, QP, _ = grids.shape
        TN, _, _, C = frames[0].shape
        T = TN // N
        grids, weights = grids.contiguous(), weights.contiguous()
        frames = [f.contiguous() for f in frames]
        out = torch.empty(TN, C, QP, device=grids.device, dtype=grids.dtype)
        launch = (triton.cdiv(QP, BLOCK_P), N)
        _forward_kernel[launch](out, grids, weights, *_padded(frames), *_sizes(frames), N, QP, C,
                                T=T, LEVELS=len(frames), BLOCK=BLOCK_P, BLOCK_C=_block_c(C), num_warps=NUM_WARPS)
        ctx.save_for_backward(grids, weights, *frames)
        ctx.frame_grads = frame_grads
        return out

    @staticmethod
    def backward(ctx, grad_out):
        grids, weights, *frames = ctx.saved_tensors
        L, N, QP, _ = grids.shape
        TN, _, _, C = frames[0].shape
        need = ctx.needs_input_grad[3:]
        need_frames = any(need)
        grad_frames, new = _frame_gradients(ctx.frame_grads, frames, need_frames)
        grad_grids = torch.empty_like(grids)
        grad_weights = torch.empty_like(weights)
        launch = (triton.cdiv(QP, BLOCK_P), N)
        _backward_kernel[launch](grad_out.contiguous(), grids, weights, grad_grids, grad_weights,
                                 *_padded(frames), *_padded(grad_frames), *_sizes(frames), N, QP, C,
                                 T=TN // N, LEVELS=len(frames), NEED_FRAMES=need_frames, BLOCK=BLOCK_P,
                                 BLOCK_C=_block_c(C), num_warps=NUM_WARPS)
        return (grad_grids if ctx.needs_input_grad[0] else None,
                grad_weights if ctx.needs_input_grad[1] else None, None, *_returned(grad_frames, new, need))


def _frame_gradients(frame_grads, frames, need_frames):
    """``(buffers the kernel adds the frames' gradient into, whether to return them)``; without ``need_frames``
    the frames themselves stand in (the kernel never touches them)."""
    if not need_frames:
        return list(frames), False
    if frame_grads is None:
        return [torch.zeros_like(f) for f in frames], True
    return frame_grads.buffers(frames)


def _returned(grad_frames, new, need):
    """The frames' gradients a backward returns: new buffers where a level needs one, else None."""
    return [g if new and n else None for g, n in zip(grad_frames, need)]


def means_supported(points_per_query):
    """Whether ``TritonSampleMeans`` takes ``points_per_query`` points per query: whole blocks of ``BLOCK_P``."""
    return points_per_query % BLOCK_P == 0


class TritonSampleMeans(torch.autograd.Function):
    """The two means of ``TritonWeightedSampling``'s samples that STMixer's mixing uses, without the samples.

    Inputs as ``TritonWeightedSampling`` (grids ``[L, N, QP, 2]``, weights ``[L, N, QP]``, frames
    ``L x [T * N, H_l, W_l, C/G]``) and the clips' group count ``G`` and points per query ``P``
    (``means_supported(P)``). Outputs: spatial ``[B, Q, G, P, C/G]`` (the mean over the T frames) and temporal
    ``[B, Q, G, T, C/G]`` (the mean over each query's P points), contiguous in the layout the mixing reads.
    ``frame_grads``: as ``TritonWeightedSampling``'s.
    The ``[T * N, C/G, Q * P]`` samples (0.2 GB a decoder stage for 8 SlowFast clips) are neither written
    nor read back, and their gradient is made inside the backward kernel.
    """

    @staticmethod
    def forward(ctx, grids, weights, groups, points_per_query, frame_grads, *frames):
        if not 1 <= len(frames) <= MAX_LEVELS:
            raise ValueError(f"the Triton sampler takes 1 to {MAX_LEVELS} levels, got {len(frames)}")
        L, N, QP, _ = grids.shape
        TN, _, _, C = frames[0].shape
        T, G, P = TN // N, groups, points_per_query
        B, Q, NPB = N // G, QP // P, P // BLOCK_P
        grids, weights = grids.contiguous(), weights.contiguous()
        frames = [f.contiguous() for f in frames]
        spatial = torch.empty(B, Q, G, P, C, device=grids.device, dtype=grids.dtype)
        partial = torch.empty(NPB, B, Q, G, T, C, device=grids.device, dtype=grids.dtype)
        launch = (triton.cdiv(QP, BLOCK_P), N)
        _forward_means_kernel[launch](spatial, partial, grids, weights, *_padded(frames), *_sizes(frames), N, QP,
                                      C, G, Q, P, NPB, T=T, LEVELS=len(frames), BLOCK=BLOCK_P,
                                      BLOCK_C=_block_c(C), num_warps=NUM_WARPS)
        ctx.save_for_backward(grids, weights, *frames)
        ctx.sizes = (G, Q, P, NPB)
        ctx.frame_grads = frame_grads
        return spatial, partial.sum(0) if NPB > 1 else partial[0]

    @staticmethod
    def backward(ctx, grad_spatial, grad_temporal):
        grids, weights, *frames = ctx.saved_tensors
        G, Q, P, NPB = ctx.sizes
        L, N, QP, _ = grids.shape
        TN, _, _, C = frames[0].shape
        T = TN // N
        # (autograd gives zeros, not None, for an output that received no gradient)
        grad_spatial, grad_temporal = grad_spatial.contiguous(), grad_temporal.contiguous()
        need = ctx.needs_input_grad[5:]
        need_frames = any(need)
        grad_frames, new = _frame_gradients(ctx.frame_grads, frames, need_frames)
        grad_grids = torch.empty_like(grids)
        grad_weights = torch.empty_like(weights)
        launch = (triton.cdiv(QP, BLOCK_P), N)
        _backward_means_kernel[launch](grad_spatial, grad_temporal, grids, weights, grad_grids, grad_weights,
                                       *_padded(frames), *_padded(grad_frames), *_sizes(frames), N, QP, C, G, Q, P,
                                       NPB, T=T, LEVELS=len(frames), NEED_FRAMES=need_frames, BLOCK=BLOCK_P,
                                       BLOCK_C=_block_c(C), num_warps=NUM_WARPS)
        return (grad_grids if ctx.needs_input_grad[0] else None,
                grad_weights if ctx.needs_input_grad[1] else None, None, None, None,
                *_returned(grad_frames, new, need))
