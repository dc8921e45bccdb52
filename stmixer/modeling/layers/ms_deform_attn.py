"""Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), pure PyTorch.

Each query looks at ``n_points`` locations per head and per feature level, placed around a
reference point by learned offsets, reads the value maps there by bilinear interpolation and
sums them with softmax weights (one softmax over all levels x points of a head).

This is the attention of Deformable DETR (fundamentalvision/Deformable-DETR,
``models/ops``) as the TubeR fork's Deformable TubeR variants and SeqFormer use it. Their
``MSDeformAttnFunction`` calls a compiled CUDA op (``MultiScaleDeformableAttention``); its
pure-PyTorch reference ``ms_deform_attn_core_pytorch`` is what :func:`ms_deform_attn_pytorch`
computes (``grid_sample``, bilinear, zero padding, ``align_corners=False``), and it is the only
path here: it runs on every device, is differentiable in all three inputs (value, sampling
locations, attention weights) and needs no build step. No fused kernel is provided (issue #17
allows one only when measured faster and tested equal).

Coordinates: sampling locations and reference points are normalized ``(x, y)`` in ``[0, 1]``
of a level's map *including its padded area* (top-left corner 0, bottom-right corner 1;
pixel ``j`` spans ``[j / W, (j + 1) / W]``, so its centre is ``(j + 0.5) / W``). Points
outside ``[0, 1]`` read zeros.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def _level_shapes(spatial_shapes):
    """``[(H_l, W_l)]`` as Python ints from a ``[L, 2]`` tensor or a sequence of pairs."""
    if torch.is_tensor(spatial_shapes):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights):
    """Sample every level at the given locations and sum with the attention weights.

    Args:
        value: ``[N, S, M, D]``: the flattened value maps of all levels (``S = sum_l H_l * W_l``,
            level by level, each row-major ``(y, x)``), ``M`` heads of ``D`` channels.
        spatial_shapes: ``[L, 2]`` long tensor (or pairs) ``(H_l, W_l)`` per level.
        sampling_locations: ``[N, Lq, M, L, P, 2]`` normalized ``(x, y)`` (see the module docstring).
        attention_weights: ``[N, Lq, M, L, P]`` (normally softmax-normalized over ``L * P``).

    Returns:
        ``[N, Lq, M * D]``: per query, the heads' results concatenated.
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = _level_shapes(spatial_shapes)
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1] convention
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_l = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # [N*M, D, Lq, P]
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with its projections (Deformable DETR's ``MSDeformAttn``).

    Parameters (names as in Deformable DETR, so its checkpoints load unchanged):
    ``sampling_offsets`` (``d_model -> n_heads * n_levels * n_points * 2``), ``attention_weights``
    (``d_model -> n_heads * n_levels * n_points``), ``value_proj`` and ``output_proj``
    (``d_model -> d_model``).

    Initialization (Deformable DETR's): offsets weight 0 and bias pointing head ``h`` along the
    angle ``2 pi h / n_heads`` (scaled so the larger coordinate is 1), point ``k`` at ``k + 1``
    times that, the same for every level; attention weights 0 (uniform softmax); value and
    output projections Xavier-uniform with zero bias.

    Args:
        d_model: channels of queries and values (divisible by ``n_heads``).
        n_levels: feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's initialization (see the class docstring); the offset bias is built in
        float32 as there and copied into the parameter's dtype."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    # kept under Deformable DETR's name: DeformableTransformer re-runs it after its Xavier pass
    _reset_parameters = reset_parameters

    def sampling(self, query, reference_points, spatial_shapes):
        """Sampling locations ``[N, Lq, M, L, P, 2]`` and softmax weights ``[N, Lq, M, L, P]``.

        ``reference_points`` ``[N, Lq, L, 2]`` are points ``(x, y)``: offsets are in pixels of each
        level (divided by ``(W_l, H_l)``); ``[N, Lq, L, 4]`` are boxes ``(cx, cy, w, h)``: offsets
        are in units of half the box size divided by ``n_points``.
        """
        n, lq, _ = query.shape
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"MSDeformAttn: reference_points must end in 2 (points) or 4 (boxes), got "
                             f"{tuple(reference_points.shape)}")
        return locations, weights

    def forward(self, query, reference_points, input_flatten, spatial_shapes, level_start_index=None,
                padding_mask=None):
        """
        Args:
            query: ``[N, Lq, C]`` (positional embedding already added by the caller).
            reference_points: ``[N, Lq, L, 2]`` normalized ``(x, y)`` or ``[N, Lq, L, 4]`` normalized
                ``(cx, cy, w, h)`` per level, in ``[0, 1]`` of the padded map.
            input_flatten: ``[N, S, C]`` the flattened maps of all levels (``S = sum_l H_l W_l``).
            spatial_shapes: ``[L, 2]`` long tensor ``(H_l, W_l)``.
            level_start_index: ``[L]`` offsets of each level in ``S`` (accepted for Deformable DETR's
                call signature; the pure-PyTorch path derives them from ``spatial_shapes``).
            padding_mask: ``[N, S]`` bool, True on padded positions (their values are zeroed), or None.

        Returns:
            ``[N, Lq, C]``.
        """
        n, len_in, _ = input_flatten.shape
        expected = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
        if expected != len_in:
            raise ValueError(f"MSDeformAttn: input_flatten has {len_in} positions but spatial_shapes "
                             f"{spatial_shapes.tolist()} hold {expected}")
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)
        out = ms_deform_attn_pytorch(value, spatial_shapes, locations, weights)
        return self.output_proj(out)

