"""Adaptive mixing: each query turns its sampled features into an update with weights it generates itself.

``AdaptiveMixing`` (AdaMixer's operator) mixes channels, then points, with
matrices produced from the query by a linear layer. ``AdaptiveSTSamplingMixing``
is one decoder stage's sampling + mixing block: it places the sampling points
from the spatial query, samples the pyramid once, and updates the spatial
query from the frame-averaged samples and the temporal query from the
point-averaged samples.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..trace import record
from .sampling import make_sample_points


class MixingLinear(nn.Linear):
    """A linear layer of adaptive mixing, initialized once, as the official stage leaves it: weight
    xavier-uniform, or zeros with ``zero_weight`` (the parameter generators: their bias alone decides the
    initial mixing); bias uniform in +-1/sqrt(in_features) (PyTorch's default, kept by the official code).

    These layers hold ~23M of the ~26M weights of a full-size stage; drawing their values once, instead of
    PyTorch's default followed by the stage's, makes building a full-size decoder several times faster.
    """

    def __init__(self, in_features, out_features, zero_weight=False):
        self.zero_weight = zero_weight
        super().__init__(in_features, out_features)

    @torch.no_grad()
    def reset_parameters(self):
        if self.zero_weight:
            nn.init.zeros_(self.weight)
        else:
            nn.init.xavier_uniform_(self.weight)
        bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
        nn.init.uniform_(self.bias, -bound, bound)


class AdaptiveMixing(nn.Module):
    """Channel mixing then point mixing with per-query generated weights, projected back to the query.

    Args:
        channels: C, channels of the sampled features (split into ``n_groups`` groups of C/G).
        query_dim: D, width of the query.
        in_points: n_in, points per group in the input.
        out_points: n_out, points per group after point mixing.
        n_groups: G.
    """

    def __init__(self, channels, query_dim, in_points, out_points, n_groups):
        super().__init__()
        self.group_channels = channels // n_groups
        self.in_points = in_points
        self.out_points = out_points
        self.n_groups = n_groups
        self.channel_params = self.group_channels * self.group_channels
        self.point_params = in_points * out_points
        self.parameter_generator = nn.Sequential(
            MixingLinear(query_dim, n_groups * (self.channel_params + self.point_params), zero_weight=True)
        )
        self.out_proj = MixingLinear(self.group_channels * out_points * n_groups, query_dim)

    def forward(self, x, query):
        """Mix ``x`` ``[B, Q, G, n_in, C/G]`` under ``query`` ``[B, Q, D]``; returns ``query + update`` ``[B, Q, D]``.

        Per query and group: ``y = x @ W`` (W ``[C/G, C/G]``), layer norm over
        the whole ``[n_in, C/G]`` block (no affine), ReLU; ``y = K @ y`` (K
        ``[n_out, n_in]``), layer norm over ``[n_out, C/G]``, ReLU; flattened in
        the order (group, point, channel) and projected to D.
        """
        B, Q, G, n_in, C = x.shape
        if (G, n_in, C) != (self.n_groups, self.in_points, self.group_channels):
            raise ValueError(
                f"adaptive mixing expects input [B, Q, {self.n_groups}, {self.in_points}, {self.group_channels}] "
                f"(groups, points, channels per group), got {list(x.shape)}"
            )
        params = self.parameter_generator(query).reshape(B * Q, G, -1)
        channel_mix, point_mix = params.split([self.channel_params, self.point_params], 2)
        channel_mix = channel_mix.reshape(B * Q, G, C, C)
        point_mix = point_mix.reshape(B * Q, G, self.out_points, n_in)
        out = torch.matmul(x.reshape(B * Q, G, n_in, C), channel_mix)
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        out = torch.matmul(point_mix, out)
        out = F.relu(F.layer_norm(out, out.shape[-2:]))
        return query + self.out_proj(out.reshape(B, Q, -1))


class AdaptiveSTSamplingMixing(nn.Module):
    """Sampling + spatial and temporal adaptive mixing of one decoder stage.

    Args:
        query_dim: D (also the feature channels).
        spatial_points: P, points per channel group.
        temporal_points: T', frames of the features.
        out_multiplier: M; the mixing outputs ``P * M`` (spatial) and ``T' * M`` (temporal) points.
        n_groups: G.
    """

    def __init__(self, query_dim, spatial_points, temporal_points, out_multiplier, n_groups):
        super().__init__()
        self.spatial_points = spatial_points
        self.temporal_points = temporal_points
        self.n_groups = n_groups
        self.offset_generator = nn.Sequential(nn.Linear(query_dim, spatial_points * n_groups * 3))
        self.norm_s = nn.LayerNorm(query_dim)
        self.norm_t = nn.LayerNorm(query_dim)
        self.adaptive_mixing_s = AdaptiveMixing(
            query_dim, query_dim, spatial_points, spatial_points * out_multiplier, n_groups
        )
        self.adaptive_mixing_t = AdaptiveMixing(
            query_dim, query_dim, temporal_points, temporal_points * out_multiplier, n_groups
        )

    @torch.no_grad()
    def init_offset_generator(self):
        """Official initialization of the offset generator: zero weight, bias ``initial_offset_bias``
        (the mixing layers initialize themselves, see ``MixingLinear``)."""
        generator = self.offset_generator[-1]
        nn.init.zeros_(generator.weight)
        generator.bias.copy_(initial_offset_bias(self.n_groups, self.spatial_points))

    def forward(self, sampler, xyzr, q_s, q_t, trace=None):
        """Update the queries from the features they sample.

        Args:
            sampler: the batch's ``sampling.PyramidSampler`` (maps ``[B, D, T', H_l, W_l]``).
            xyzr: ``[B, Q, 4]`` the stage's input proposals (x, y pixels, z, r).
            q_s, q_t: ``[B, Q, D]`` spatial and temporal queries (after self-attention).
            trace: optional dict receiving intermediate tensors (see ``modeling.trace``).

        Returns:
            ``(q_s, q_t)`` ``[B, Q, D]`` each, after mixing, residual and layer norm.
        """
        G, P = self.n_groups, self.spatial_points
        offsets = self.offset_generator(q_s)
        points = make_sample_points(offsets, xyzr, G * P)
        # means of the samples [B, G, C/G, T, Q, P] over T and over P (the Triton sampler never writes the samples)
        spatial, temporal, sampled = sampler.sample_means(points, keep_samples=trace is not None)
        spatial_feats = spatial.permute(0, 3, 1, 4, 2)  # [B, Q, G, P, C/G]
        temporal_feats = temporal.permute(0, 4, 1, 3, 2)  # [B, Q, G, T, C/G]
        q_s_mixed = self.adaptive_mixing_s(spatial_feats, q_s)
        q_t_mixed = self.adaptive_mixing_t(temporal_feats, q_t)
        record(trace, "detail/offsets", offsets)
        record(trace, "detail/sample_points", points)
        if sampled is not None:
            record(trace, "detail/sampled", sampled.permute(0, 2, 1, 3, 5, 4))  # official layout [B, C/G, G, T, P, Q]
        record(trace, "detail/spatial_feats", spatial_feats)
        record(trace, "detail/temporal_feats", temporal_feats)
        record(trace, "detail/q_s_mixed_prenorm", q_s_mixed)
        record(trace, "detail/q_t_mixed_prenorm", q_t_mixed)
        q_s = self.norm_s(q_s_mixed)
        q_t = self.norm_t(q_t_mixed)
        record(trace, "detail/q_s_mix", q_s)
        record(trace, "detail/q_t_mix", q_t)
        return q_s, q_t


def initial_offset_bias(n_groups, spatial_points):
    """Initial offset-generator bias ``[G * P * 3]``: where each point starts relative to its box.

    For a perfect square ``P = h * h``, the points start on an ``h x h`` grid of
    cell centres in ``[-0.5, 0.5]`` (in units of the box size; point ``i * h + j``
    at ``(c_i, c_j)``, the official order); otherwise uniformly at random in
    ``[-0.5, 0.5]^2``. The level offset starts at 0. (The official code crashes
    on perfect squares; this is the grid it meant to build.)
    """
    bias = torch.empty(n_groups, spatial_points, 3)
    side = int(round(spatial_points ** 0.5))
    if side * side == spatial_points:
        centres = torch.linspace(-0.5, 0.5, side + 1)[:-1] + 0.5 / side
        bias[:, :, 0] = centres.repeat_interleave(side)
        bias[:, :, 1] = centres.repeat(side)
    else:
        nn.init.uniform_(bias, -0.5, 0.5)
    bias[:, :, 2] = 0.0
    return bias.flatten()

