"""One STMixer decoder stage: query self-attention, adaptive sampling + mixing, FFNs, heads, box refinement.

Order inside a stage (the official one): IoF attention bias and box
positional embedding of the input proposals -> self-attention of the spatial
and of the temporal queries -> sampling + mixing -> FFNs -> objectness, box
and action heads -> refinement of the proposals. The state-dict keys are the
official ones (``attention_s.attn.in_proj_weight``, ``ffn_s.layers.0.0.weight``,
``human_cls_fcs.0.weight``, ...), so official checkpoints load unchanged.
"""

import dataclasses
import math

import torch
import torch.nn as nn

from ...structures.boxes import box_iof, xyzr_to_xyxy
from ..cuda_graphs import device_constant
from ..trace import record
from .mixing import AdaptiveSTSamplingMixing, MixingLinear

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def make_activation(name):
    """The activation module named ``name`` (``MODEL.STM.ACTIVATION``: "ReLU" or "GELU", any case)."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"MODEL.STM.ACTIVATION = {name!r} is not supported; expected one of ReLU, GELU") from None


def box_position_embedding(xyzr, dim):
    """Sinusoidal embedding ``[..., dim]`` of proposals ``[..., 4]`` (x, y pixels, z, r).

    ``c = (x / 1000, y / 1000, z, r)``; for each coordinate ``F = dim / 4``
    values ``sin(c / f_0), cos(c / f_1), sin(c / f_2), ...`` with
    ``f_j = 10000^(2 * floor(j / 2) / F)``; blocks in the order x, y, z, r.
    The frequencies are computed in float32 whatever the input dtype (as the
    official code does), then used in the input's precision.
    """
    num_feats = dim // 4
    coords = xyzr / device_constant(xyzr, [1000.0, 1000.0, 1.0, 1.0])
    index = torch.arange(num_feats, dtype=torch.float32, device=xyzr.device)
    freqs = 10000 ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = coords.unsqueeze(-1) / freqs  # [..., 4, F]
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-3)


def log_iof(xyzr):
    """``log(IoF + 1e-7)`` ``[B, Q, Q]`` between the proposals ``[B, Q, 4]`` of each clip (rows = foreground)."""
    boxes = xyzr_to_xyxy(xyzr)
    return (box_iof(boxes[:, :, None], boxes[:, None, :]) + 1e-7).log()


def refine_xyzr(xyzr, delta):
    """Apply regression deltas ``[B, Q, 4]`` (dx, dy, dz, dr) to proposals ``[B, Q, 4]``.

    ``x += dx * 2^z``, ``y += dy * 2^z``, ``z += dz``, ``r += dr`` with the input z.
    """
    z = xyzr[..., 2:3]
    xy = xyzr[..., 0:2] + delta[..., 0:2] * (2 ** z)
    zr = xyzr[..., 2:4] + delta[..., 2:4]
    return torch.cat([xy, zr], dim=-1)


class QueryAttention(nn.Module):
    """Multi-head self-attention among the queries of each clip, with a residual connection.

    Args:
        dim: query width D.
        num_heads: H.
        dropout: dropout probability on the attention weights (``MODEL.STM.DROPOUT``).
    """

    def __init__(self, dim, num_heads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout)

    def forward(self, x, bias):
        """``x + MHA(x, x, x)`` for ``x`` ``[B, Q, D]`` and an additive float mask ``bias`` ``[B * H, Q, Q]``."""
        seq = x.transpose(0, 1)
        out = self.attn(seq, seq, seq, attn_mask=bias, need_weights=False)[0]
        return x + out.transpose(0, 1)


class FFN(nn.Module):
    """``x + Linear(act(Linear(x)))`` (``num_fcs`` linear layers in all, hidden width ``hidden_dim``)."""

    def __init__(self, dim, hidden_dim, num_fcs, activation):
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"MODEL.STM.NUM_FCS = {num_fcs}: an FFN needs at least 2 linear layers")
        widths = [dim] + [hidden_dim] * (num_fcs - 1)
        hidden = [nn.Sequential(nn.Linear(i, o), make_activation(activation)) for i, o in zip(widths, widths[1:])]
        self.layers = nn.Sequential(*hidden, nn.Linear(hidden_dim, dim))

    def forward(self, x):
        """``[..., D]`` -> ``[..., D]``."""
        return x + self.layers(x)


def head_trunk(dim, num_layers, activation):
    """``num_layers`` x (Linear(dim, dim), LayerNorm, activation); keys ``0, 1, 3, 4, ...`` as the official list."""
    layers = []
    for _ in range(num_layers):
        layers += [nn.Linear(dim, dim), nn.LayerNorm(dim), make_activation(activation)]
    return nn.Sequential(*layers)


@dataclasses.dataclass
class StageOutput:
    """What one stage produces, for ``B`` clips and ``Q`` queries.

    cls_logits ``[B, Q, K + 1]`` (column 0 person, last no-object),
    action_logits ``[B, Q, A]``, delta_xyzr ``[B, Q, 4]``, xyzr ``[B, Q, 4]``
    (refined proposals), boxes ``[B, Q, 4]`` (xyxy pixels of the refined
    proposals), q_s and q_t ``[B, Q, D]`` (queries for the next stage).
    """

    cls_logits: torch.Tensor
    action_logits: torch.Tensor
    delta_xyzr: torch.Tensor
    xyzr: torch.Tensor
    boxes: torch.Tensor
    q_s: torch.Tensor
    q_t: torch.Tensor


class DecoderStage(nn.Module):
    """One decoder stage (the official ``AMStage``); see the module docstring.

    Args:
        query_dim: D. num_heads: H. ffn_dim: FFN hidden width. num_ffn_fcs: FFN linear layers.
        dropout: attention-weight dropout. activation: "ReLU" or "GELU".
        spatial_points, temporal_points, out_multiplier, n_groups: see ``AdaptiveSTSamplingMixing``.
        num_cls_fcs, num_reg_fcs, num_action_fcs: trunk depths of the three heads.
        object_classes: K (the objectness head has K + 1 outputs). action_classes: A.
    """

    def __init__(self, query_dim, num_heads, ffn_dim, num_ffn_fcs, dropout, activation, spatial_points,
                 temporal_points, out_multiplier, n_groups, num_cls_fcs, num_reg_fcs, num_action_fcs,
                 object_classes, action_classes):
        super().__init__()
        self.num_heads = num_heads
        self.attention_s = QueryAttention(query_dim, num_heads, dropout)
        self.attention_norm_s = nn.LayerNorm(query_dim)
        self.ffn_s = FFN(query_dim, ffn_dim, num_ffn_fcs, activation)
        self.ffn_norm_s = nn.LayerNorm(query_dim)
        # Per-head temperature of the IoF attention bias.
        self.iof_tau = nn.Parameter(torch.ones(num_heads))
        self.attention_t = QueryAttention(query_dim, num_heads, dropout)
        self.attention_norm_t = nn.LayerNorm(query_dim)
        self.ffn_t = FFN(query_dim, ffn_dim, num_ffn_fcs, activation)
        self.ffn_norm_t = nn.LayerNorm(query_dim)
        self.samplingmixing = AdaptiveSTSamplingMixing(
            query_dim, spatial_points, temporal_points, out_multiplier, n_groups
        )
        self.human_cls_fcs = head_trunk(query_dim, num_cls_fcs, activation)
        self.human_fc_cls = nn.Linear(query_dim, object_classes + 1)
        self.reg_fcs = head_trunk(query_dim, num_reg_fcs, activation)
        self.fc_reg = nn.Linear(query_dim, 4)
        self.action_cls_fcs = head_trunk(2 * query_dim, num_action_fcs, activation)
        self.fc_action = nn.Linear(2 * query_dim, action_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        """Official initialization: xavier-uniform matrices, action bias for a 1% prior, zero box head,
        offsets of ``initial_offset_bias``; the mixing layers were initialized when built (``MixingLinear``)."""
        mixing = {id(p) for m in self.modules() if isinstance(m, MixingLinear) for p in m.parameters()}
        for p in self.parameters():
            if p.dim() > 1 and id(p) not in mixing:
                nn.init.xavier_uniform_(p)
        nn.init.constant_(self.fc_action.bias, -math.log((1 - 0.01) / 0.01))
        nn.init.zeros_(self.fc_reg.weight)
        nn.init.zeros_(self.fc_reg.bias)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        self.samplingmixing.init_offset_generator()

    def forward(self, sampler, xyzr, q_s, q_t, trace=None):
        """Run the stage.

        Args:
            sampler: the batch's ``sampling.PyramidSampler`` (maps ``[B, D, T', H_l, W_l]``).
            xyzr: ``[B, Q, 4]`` input proposals (x, y pixels of the padded canvas, z, r).
            q_s, q_t: ``[B, Q, D]`` spatial and temporal queries.
            trace: optional dict receiving intermediate tensors (see ``modeling.trace``).

        Returns:
            StageOutput.
        """
        B, Q, D = q_s.shape
        with torch.no_grad():
            iof = log_iof(xyzr)
            pe = box_position_embedding(xyzr, D)
        bias = (iof.unsqueeze(1) * self.iof_tau.view(1, -1, 1, 1)).flatten(0, 1)  # [B*H, Q, Q]
        attn_in_s = q_s + pe
        attn_in_t = q_t + pe
        q_s = self.attention_norm_s(self.attention_s(attn_in_s, bias))
        q_t = self.attention_norm_t(self.attention_t(attn_in_t, bias))
        record(trace, "detail/pe", pe)
        record(trace, "detail/attn_in_s", attn_in_s)
        record(trace, "detail/attn_in_t", attn_in_t)
        record(trace, "detail/attn_bias_s", bias.view(B, self.num_heads, Q, Q))
        record(trace, "detail/attn_bias_t", bias.view(B, self.num_heads, Q, Q))
        record(trace, "detail/q_s_attn", q_s)
        record(trace, "detail/q_t_attn", q_t)

        q_s, q_t = self.samplingmixing(sampler, xyzr, q_s, q_t, trace)
        q_s = self.ffn_norm_s(self.ffn_s(q_s))
        q_t = self.ffn_norm_t(self.ffn_t(q_t))

        cls_logits = self.human_fc_cls(self.human_cls_fcs(q_s))
        delta = self.fc_reg(self.reg_fcs(q_s))
        action_logits = self.fc_action(self.action_cls_fcs(torch.cat([q_s, q_t], dim=-1)))
        new_xyzr = refine_xyzr(xyzr, delta)
        out = StageOutput(cls_logits, action_logits, delta, new_xyzr, xyzr_to_xyxy(new_xyzr), q_s, q_t)
        for field in dataclasses.fields(out):
            record(trace, field.name, getattr(out, field.name))
        return out
