"""Adaptive spatio-temporal sampling: every query reads the feature pyramid at its own points.

A query owns ``G * P`` points ``(x, y, z)``: pixel coordinates on the padded
canvas and a continuous pyramid level ``z``. Channel group ``g`` (channels
``g*C/G .. (g+1)*C/G - 1``) is read only at its own ``P`` points, on every
frame of every level with bilinear interpolation, and the levels are blended
with soft weights ``softmax_l(-(z - 3 - l)^2 / 2)``.

Two exact implementations (same values, same gradients up to float rounding):

* ``"reference"``: the official order of work, one ``grid_sample`` per level
  over ``T * B * G`` images with the points repeated for every frame, after a
  frame-major copy of each feature map. Kept as the checked reference path.
* ``"folded"``: the frames are folded into the channels of one
  ``[B * G, C/G * T, H, W]`` image per level (a free view of the
  ``[B, C, T, H, W]`` map), so each level is one ``grid_sample`` whose
  interpolation weights are computed once per point instead of once per
  frame, with no copy of the features, no repeated points and no repeated
  level weights. Its backward recomputes each level's samples instead of
  keeping them from the forward, so training keeps no sampled tensor per
  level alive (the largest activations of the decoder).

``sample_features`` picks one by name; "auto" is the folded path.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ...structures.boxes import xyzr_to_wh

SAMPLER_IMPLS = ("auto", "reference", "folded")

# Level z maps to pyramid index z - LEVEL_OFFSET (z = log2 of the box scale; level 0 has stride 4).
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


def _check_features(features, strides, n_groups):
    if len(features) != len(strides):
        raise ValueError(f"got {len(features)} feature levels but {len(strides)} strides {tuple(strides)}")
    shapes = [tuple(f.shape) for f in features]
    if any(len(s) != 5 for s in shapes) or len({s[:3] for s in shapes}) != 1:
        raise ValueError(f"feature levels must be [B, C, T, H_l, W_l] with one B, C and T; got shapes {shapes}")
    if shapes[0][1] % n_groups:
        raise ValueError(f"feature channels {shapes[0][1]} are not divisible by N_GROUPS={n_groups}")


def _normalized_grid(xy, feature, stride):
    """Pixel coordinates ``[..., 2]`` -> grid_sample coordinates of a ``[.., H, W]`` map of the given stride."""
    extent = feature.new_tensor([feature.size(-1), feature.size(-2)]) * stride
    return xy / extent * 2.0 - 1.0


def _sample_reference(features, xy, weights, strides, n_groups):
    """Official order of work; see the module docstring. Returns ``[B, G, C/G, T, Q, P]``."""
    B, Q, N, _ = xy.shape
    G = n_groups
    P = N // G
    out = None
    for level, (feature, stride) in enumerate(zip(features, strides)):
        _, C, T, H, W = feature.shape
        grid = xy.view(B, Q, G, P, 2).permute(0, 2, 1, 3, 4).reshape(B * G, Q, P, 2)
        grid = _normalized_grid(grid.repeat(T, 1, 1, 1), feature, stride)  # [T*B*G, Q, P, 2]
        frames = feature.reshape(B * G, C // G, T, H, W).permute(2, 0, 1, 3, 4).flatten(0, 1)
        sampled = F.grid_sample(frames, grid, **_GRID_SAMPLE_ARGS)  # [T*B*G, C/G, Q, P]
        weight = weights[..., level].view(B, Q, G, P).permute(0, 2, 1, 3).reshape(B * G, 1, Q, P)
        sampled = sampled * weight.repeat(T, 1, 1, 1)
        sampled = sampled.view(T, B, G, C // G, Q, P).permute(1, 2, 3, 0, 4, 5)
        out = sampled if out is None else out + sampled
    return out


class _FoldedLevelSampling(torch.autograd.Function):
    """``sum_l weights[l] * grid_sample(values[l], grids[l])`` that recomputes the samples in backward.

    Inputs: grids ``[L, N, Q, P, 2]``, weights ``[L, N, Q, P]``, values ``L x [N, K, H_l, W_l]``.
    Output ``[N, K, Q, P]``. Saves only its inputs (the values are views of the
    feature maps), so no ``[N, K, Q, P]`` tensor per level outlives the forward.
    """

    @staticmethod
    def forward(ctx, grids, weights, *values):
        out = None
        for grid, weight, value in zip(grids, weights, values):
            sampled = F.grid_sample(value, grid, **_GRID_SAMPLE_ARGS).mul_(weight.unsqueeze(1))
            out = sampled if out is None else out.add_(sampled)
        ctx.save_for_backward(grids, weights, *values)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grids, weights, *values = ctx.saved_tensors
        need_grids, need_weights = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_values = ctx.needs_input_grad[2:]
        grad_grids = torch.zeros_like(grids) if need_grids else None
        grad_weights = torch.zeros_like(weights) if need_weights else None
        grad_values = [None] * len(values)
        for level, value in enumerate(values):
            wanted = [(value, need_values[level]), (grids[level], need_grids)]
            leaves = [t.detach().requires_grad_(need) for t, need in wanted]
            with torch.enable_grad():
                sampled = F.grid_sample(leaves[0], leaves[1], **_GRID_SAMPLE_ARGS)
            if need_weights:
                grad_weights[level] = (grad_out * sampled.detach()).sum(1)
            inputs = [leaf for leaf, (_, need) in zip(leaves, wanted) if need]
            if not inputs:
                continue
            grads = iter(torch.autograd.grad(sampled, inputs, grad_out * weights[level].unsqueeze(1)))
            if need_values[level]:
                grad_values[level] = next(grads)
            if need_grids:
                grad_grids[level] = next(grads)
        return (grad_grids, grad_weights, *grad_values)


def _sample_folded(features, xy, weights, strides, n_groups):
    """Frames folded into channels; see the module docstring. Returns ``[B, G, C/G, T, Q, P]``."""
    B, Q, N, _ = xy.shape
    G = n_groups
    P = N // G
    L = len(features)
    _, C, T, _, _ = features[0].shape
    xy = xy.view(B, Q, G, P, 2).permute(0, 2, 1, 3, 4)
    grids = torch.stack(
        [_normalized_grid(xy, f, s).reshape(B * G, Q, P, 2) for f, s in zip(features, strides)]
    )
    weights = weights.view(B, Q, G, P, L).permute(4, 0, 2, 1, 3).reshape(L, B * G, Q, P)
    values = [f.reshape(B * G, (C // G) * T, f.size(3), f.size(4)) for f in features]
    out = _FoldedLevelSampling.apply(grids, weights, *values)  # [B*G, C/G*T, Q, P]
    return out.view(B, G, C // G, T, Q, P)


_IMPLS = {"reference": _sample_reference, "folded": _sample_folded, "auto": _sample_folded}


def sample_features(features, points, strides, n_groups, impl="auto"):
    """Level-weighted bilinear samples of every frame at every query's points.

    Args:
        features: list of L maps ``[B, C, T, H_l, W_l]`` (stride ``strides[l]`` of the padded canvas).
        points: ``[B, Q, G * P, 3]`` from ``make_sample_points``: x, y in pixels
            of the padded canvas (normalized by ``W_l * stride`` and
            ``H_l * stride``, not by the clip size), continuous level z.
        strides: L strides in pixels (4, 8, 16, 32).
        n_groups: G; group g uses channels ``g*C/G .. (g+1)*C/G - 1`` and points ``g*P .. g*P + P - 1``.
        impl: one of ``SAMPLER_IMPLS`` ("auto" = "folded").

    Returns:
        ``[B, G, C/G, T, Q, P]``: ``sum_l weight_l(z) * bilinear(feature_l[t], x, y)``,
        zero outside the map.
    """
    if impl not in _IMPLS:
        raise ValueError(f"unknown sampler {impl!r}; expected one of {SAMPLER_IMPLS}")
    _check_features(features, strides, n_groups)
    if points.size(2) % n_groups:
        raise ValueError(f"{points.size(2)} sampling points per query are not divisible by N_GROUPS={n_groups}")
    weights = level_weights(points[..., 2], len(features))
    return _IMPLS[impl](features, points[..., 0:2], weights, strides, n_groups)
