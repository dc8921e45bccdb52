"""Adaptive spatio-temporal sampling: every query reads the feature pyramid at its own points.

A query owns ``G * P`` points ``(x, y, z)``: pixel coordinates on the padded
canvas and a continuous pyramid level ``z``. Channel group ``g`` (channels
``g*C/G .. (g+1)*C/G - 1``) is read only at its own ``P`` points, on every
frame of every level with bilinear interpolation (zeros outside the map), and
the levels are blended with soft weights ``softmax_l(-(z - 3 - l)^2 / 2)``.

``PyramidSampler`` holds one clip batch's pyramid and is called by every
decoder stage. Two exact implementations (same values; same gradients up to
float rounding):

* ``"reference"``: the official order of work. Every call copies each level
  frame-major (``[T * B * G, C/G, H, W]``), repeats the points and the level
  weights for every frame, runs one ``grid_sample`` per level and keeps each
  level's samples for the backward.
* ``"folded"``: the frame-major copy of each level is made once per decoder
  forward and shared by all stages; the level weights are broadcast over the
  frames instead of repeated; the weighted sum over levels is one autograd
  node that keeps only its inputs and recomputes each level's samples in the
  backward, so no ``[T * B * G, C/G, Q, P]`` tensor per level and stage stays
  alive until the backward (these are the decoder's largest activations).
  The frames stay in the batch dimension (not folded into channels), which
  keeps ``grid_sample``'s parallelism (one thread per sampled point and frame)
  and is faster in its backward than a channel fold.

* ``"triton"`` (CUDA): the folded function as two Triton kernels on
  channels-last copies of the levels (``sampling_triton``): one forward kernel
  for all levels and frames, and a backward whose atomic additions run on
  contiguous rows of channels instead of ``grid_sample``'s channels-first
  scatter (0.38x the reference sampler's forward + backward time on an H100,
  where the folded one takes 0.95-1.02x). Where Triton or CUDA is missing, for
  float64, or when the kernels fail a one-time self-check on the device (an old
  GPU, a broken Triton), it runs "folded" (logged once).

"auto" selects "triton" for float32 (and autocast) CUDA tensors on GPUs of
compute capability 8.0 or newer where Triton is installed, else "folded";
"reference" is kept as the checked baseline (tests compare the three, values
and gradients) and for debugging.
"""

import logging

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ...structures.boxes import xyzr_to_wh
from ..cuda_graphs import device_constant
from . import sampling_triton

logger = logging.getLogger(__name__)

SAMPLER_IMPLS = ("auto", "reference", "folded", "triton")
_warned = set()

# Level z maps to pyramid index z - LEVEL_OFFSET (z = log2 of the box scale; index 0 has stride 4).
LEVEL_OFFSET = 3.0
# Temperature of the soft level weights: weight_l ~ exp(-(z - LEVEL_OFFSET - l)^2 / LEVEL_TAU).
LEVEL_TAU = 2.0

_GRID_SAMPLE_ARGS = dict(mode="bilinear", padding_mode="zeros", align_corners=False)


def make_sample_points(offsets, xyzr, num_points):
    """Sampling points of every query from its raw offsets and its proposal.

    Args:
        offsets: ``[B, Q, num_points * 3]`` offset-generator output; point ``n``
            is the triplet ``(dx, dy, dz)`` at ``3n .. 3n + 2`` (n = g * P + p).
        xyzr: ``[B, Q, 4]`` proposals (x, y pixels, z, r).
        num_points: ``G * P``.

    Returns:
        ``[B, Q, num_points, 3]``: ``(x + dx * w, y + dy * h, z + dz)``, x and y in
        pixels of the padded canvas, w and h the proposal's size.
    """
    B, Q, _ = offsets.shape
    offsets = offsets.view(B, Q, num_points, 3)
    wh = xyzr_to_wh(xyzr).view(B, Q, 1, 2)
    xy = xyzr[..., 0:2].reshape(B, Q, 1, 2) + offsets[..., :2] * wh
    level = xyzr[..., 2:3].reshape(B, Q, 1, 1) + offsets[..., 2:3]
    return torch.cat([xy, level], dim=-1)


def level_weights(levels, num_levels):
    """Soft pyramid-level weights ``[..., num_levels]`` (summing to 1) of continuous levels ``[...]``."""
    grid = torch.arange(num_levels, dtype=levels.dtype, device=levels.device)
    distance = (levels.unsqueeze(-1) - LEVEL_OFFSET - grid).pow(2.0).div(LEVEL_TAU).abs().neg()
    return torch.softmax(distance, dim=-1)


def _normalized_grid(xy, feature, stride):
    """Pixel coordinates ``[..., 2]`` -> grid_sample coordinates of a ``[..., H, W]`` map of the given stride.

    Normalized by the map's extent on the padded canvas (``W * stride``, ``H * stride``).
    """
    extent = device_constant(feature, [feature.size(-1), feature.size(-2)]) * stride
    return xy / extent * 2.0 - 1.0


def _frame_major(feature, n_groups):
    """``[B, C, T, H, W]`` -> ``[T * B * G, C/G, H, W]`` (image index ``(t * B + b) * G + g``; a copy)."""
    B, C, T, H, W = feature.shape
    return feature.reshape(B * n_groups, C // n_groups, T, H, W).permute(2, 0, 1, 3, 4).reshape(-1, C // n_groups, H, W)


class _WeightedLevelSampling(torch.autograd.Function):
    """``sum_l weights[l] * grid_sample(frames[l], grids[l])`` that recomputes the samples in backward.

    Inputs: grids ``[L, N, Q, P, 2]`` and weights ``[L, N, Q, P]`` for the
    ``N = B * G`` (clip, group) pairs; frames ``L x [T * N, C/G, H_l, W_l]``
    (frame-major). The grids and weights apply to every frame. Output
    ``[T * N, C/G, Q, P]``. Only the inputs are saved for the backward.
    """

    @staticmethod
    def forward(ctx, grids, weights, *frames):
        num_frames = frames[0].size(0) // grids.size(1)
        out = None
        for grid, weight, frame in zip(grids, weights, frames):
            sampled = F.grid_sample(frame, grid.repeat(num_frames, 1, 1, 1), **_GRID_SAMPLE_ARGS)
            sampled = sampled.view(num_frames, *weight.shape[:1], -1, *weight.shape[1:]).mul_(weight.unsqueeze(1))
            out = sampled if out is None else out.add_(sampled)
        ctx.save_for_backward(grids, weights, *frames)
        return out.view(-1, *out.shape[2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grids, weights, *frames = ctx.saved_tensors
        need_grids, need_weights = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_frames = ctx.needs_input_grad[2:]
        num_frames = frames[0].size(0) // grids.size(1)
        grad_out = grad_out.view(num_frames, grids.size(1), *grad_out.shape[1:])  # [T, N, C/G, Q, P]
        grad_grids = torch.zeros_like(grids) if need_grids else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        grad_frames = [None] * len(frames)
        for level, frame in enumerate(frames):
            frame_leaf = frame.detach().requires_grad_(need_frames[level])
            grid_leaf = grids[level].detach().repeat(num_frames, 1, 1, 1).requires_grad_(need_grids)
            inputs = [leaf for leaf in (frame_leaf, grid_leaf) if leaf.requires_grad]
            with torch.enable_grad():
                sampled = F.grid_sample(frame_leaf, grid_leaf, **_GRID_SAMPLE_ARGS)
            if inputs:
                grad_sampled = (grad_out * weights[level].unsqueeze(1)).view(sampled.shape)
                grads = iter(torch.autograd.grad(sampled, inputs, grad_sampled))
                if need_frames[level]:
                    grad_frames[level] = next(grads)
                if need_grids:
                    grad_grids[level] = next(grads).view(num_frames, *grids.shape[1:]).sum(0)
            if need_weights:
                product = sampled.detach().view(grad_out.shape).mul_(grad_out)  # reuses the samples' memory
                grad_weights[level] = product.sum(dim=(0, 2))
        return (grad_grids, grad_weights, *grad_frames)


class PyramidSampler:
    """Bilinear, level-weighted sampling of one batch's feature pyramid at query points.

    Build it once per decoder forward and call it from every stage.

    Args:
        features: L maps ``[B, C, T, H_l, W_l]``; map l has stride ``strides[l]`` of the padded canvas.
        strides: L strides in pixels (4, 8, 16, 32).
        n_groups: G; group g uses channels ``g*C/G .. (g+1)*C/G - 1``.
        impl: one of ``SAMPLER_IMPLS`` ("auto": "triton" on CUDA, else "folded"); see the module docstring.
    """

    def __init__(self, features, strides, n_groups, impl="auto"):
        if impl not in SAMPLER_IMPLS:
            raise ValueError(f"unknown sampler {impl!r}; expected one of {SAMPLER_IMPLS}")
        if len(features) != len(strides):
            raise ValueError(f"got {len(features)} feature levels but {len(strides)} strides {tuple(strides)}")
        shapes = [tuple(f.shape) for f in features]
        if any(len(s) != 5 for s in shapes) or len({s[:3] for s in shapes}) != 1:
            raise ValueError(f"feature levels must be [B, C, T, H_l, W_l] with one B, C and T; got shapes {shapes}")
        if shapes[0][1] % n_groups:
            raise ValueError(f"feature channels {shapes[0][1]} are not divisible by N_GROUPS={n_groups}")
        self.features = list(features)
        self.strides = tuple(strides)
        self.n_groups = n_groups
        self.batch, self.channels, self.frames = shapes[0][:3]
        # Sampling runs in at least float32, as autocast runs grid_sample in the reference path;
        # the custom backwards then see the dtypes of their forwards.
        self._dtype = torch.promote_types(features[0].dtype, torch.float32)
        device = features[0].device
        if impl == "auto":
            impl = "triton" if sampling_triton.auto_supported(device) and self._dtype == torch.float32 else "folded"
        self.impl = impl
        if self.impl == "triton":
            if not sampling_triton.available(device) or self._dtype != torch.float32:
                reason = "float64 features" if self._dtype != torch.float32 else f"no Triton for {device.type}"
                self._fall_back(reason, logging.INFO)
            else:
                failure = sampling_triton.self_check(device)
                if failure is not None:
                    self._fall_back(f"the kernels failed on {device} ({failure})", logging.WARNING)
        if self.impl == "triton":
            self._frames = [sampling_triton.channels_last_frames(f, n_groups) for f in self.features]
            self._frame_grads = sampling_triton.FrameGradients()  # one gradient buffer per level for all stages
        elif self.impl == "folded":
            self._frames = [_frame_major(f, n_groups).to(self._dtype) for f in self.features]

    def _fall_back(self, reason, level):
        """Run the folded sampler instead of the Triton one; say why once per reason."""
        if reason not in _warned:
            _warned.add(reason)
            logger.log(level, "MODEL.STM.SAMPLER: Triton sampler: %s; the folded sampler runs instead", reason)
        self.impl = "folded"

    def __call__(self, points):
        """Samples ``[B, G, C/G, T, Q, P]`` at ``points`` ``[B, Q, G * P, 3]``.

        ``points`` come from ``make_sample_points``: x, y in pixels of the padded
        canvas, continuous level z. Value: ``sum_l weight_l(z) * bilinear(map_l[t], x, y)``.
        """
        B, Q, N, _ = points.shape
        if B != self.batch or N % self.n_groups:
            raise ValueError(
                f"points {list(points.shape)} do not fit a batch of {self.batch} clips and {self.n_groups} groups"
            )
        weights = level_weights(points[..., 2], len(self.features))  # [B, Q, G*P, L]
        sample = self._sample_reference if self.impl == "reference" else self._sample_folded
        return sample(points[..., 0:2], weights)

    def sample_means(self, points, keep_samples=False):
        """``(spatial [B, G, C/G, Q, P], temporal [B, G, C/G, T, Q], samples or None)``: the samples' means over
        the frames and over each query's points, what the mixing reads (see ``__call__`` for ``points``).

        The Triton sampler computes the two means inside its kernels and never writes the samples (None
        then); the other samplers, and ``keep_samples`` (traces), take ``self(points)``'s means. The
        means are views whose memory is laid out ``[B, Q, G, P, C/G]`` and ``[B, Q, G, T, C/G]`` on the Triton
        path."""
        B, Q, N, _ = points.shape
        if self.impl == "triton" and not keep_samples and N % self.n_groups == 0 and B == self.batch \
                and sampling_triton.means_supported(N // self.n_groups):
            spatial, temporal = self._sample_means_triton(points)
            return spatial.permute(0, 2, 4, 1, 3), temporal.permute(0, 2, 4, 3, 1), None
        samples = self(points)
        return samples.mean(3), samples.mean(5), samples

    def _sample_means_triton(self, points):
        grids, weights = self._grids(points[..., 0:2], level_weights(points[..., 2], len(self.features)))
        return sampling_triton.TritonSampleMeans.apply(grids.flatten(2, 3), weights.flatten(2, 3), self.n_groups,
                                                       grids.shape[3], self._frame_grads, *self._frames)

    def _grids(self, xy, weights):
        """grid_sample coordinates ``[L, B * G, Q, P, 2]`` and level weights ``[L, B * G, Q, P]`` of ``xy``
        ``[B, Q, G * P, 2]`` with ``weights`` ``[B, Q, G * P, L]``, in the sampling dtype."""
        B, Q, N, _ = xy.shape
        G, L = self.n_groups, len(self.features)
        P = N // G
        xy = xy.reshape(B, Q, G, P, 2).permute(0, 2, 1, 3, 4)
        grids = torch.stack(
            [_normalized_grid(xy, f, s).reshape(B * G, Q, P, 2) for f, s in zip(self.features, self.strides)]
        )
        weights = weights.reshape(B, Q, G, P, L).permute(4, 0, 2, 1, 3).reshape(L, B * G, Q, P)
        return grids.to(self._dtype), weights.to(self._dtype)

    def _sample_reference(self, xy, weights):
        B, Q, N, _ = xy.shape
        G, T = self.n_groups, self.frames
        P = N // G
        out = None
        for level, (feature, stride) in enumerate(zip(self.features, self.strides)):
            grid = xy.view(B, Q, G, P, 2).permute(0, 2, 1, 3, 4).reshape(B * G, Q, P, 2)
            grid = _normalized_grid(grid.repeat(T, 1, 1, 1), feature, stride)  # [T*B*G, Q, P, 2]
            sampled = F.grid_sample(_frame_major(feature, G), grid, **_GRID_SAMPLE_ARGS)  # [T*B*G, C/G, Q, P]
            weight = weights[..., level].view(B, Q, G, P).permute(0, 2, 1, 3).reshape(B * G, 1, Q, P)
            sampled = sampled * weight.repeat(T, 1, 1, 1)
            sampled = sampled.view(T, B, G, -1, Q, P).permute(1, 2, 3, 0, 4, 5)
            out = sampled if out is None else out + sampled
        return out

    def _sample_folded(self, xy, weights):
        """The folded and the Triton samplers: one autograd node for all levels."""
        B, Q, N, _ = xy.shape
        G, T = self.n_groups, self.frames
        P = N // G
        grids, weights = self._grids(xy, weights)
        if self.impl == "triton":  # [T*B*G, C/G, Q*P]
            out = sampling_triton.TritonWeightedSampling.apply(grids.flatten(2, 3), weights.flatten(2, 3),
                                                               self._frame_grads, *self._frames)
        else:  # [T*B*G, C/G, Q, P]
            out = _WeightedLevelSampling.apply(grids, weights, *self._frames)
        return out.view(T, B, G, -1, Q, P).permute(1, 2, 3, 0, 4, 5)
