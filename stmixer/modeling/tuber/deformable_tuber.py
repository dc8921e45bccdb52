"""Deformable TubeR: the TubeR fork's D2 / D3 / D4 detectors behind ``MODEL.TUBER.TRANSFORMER "deformable"``.

The TubeR fork (jinsingsangsung/tuber, ``models/old_models/deformable_tuber{2,3,4}.py`` before 50cd09b;
docs/deformable_tuber.md) replaces TubeR's single-map DETR transformer by Deformable DETR's multi-scale
one (``deformable_transformer.DeformableTransformer``) on CSN's ``layer2..layer4`` plus one extra level
(a 3x3 stride-2 convolution of ``layer4``). The three variants (``MODEL.TUBER.DEFORMABLE.VARIANT``)
differ in how they pool time per level and in their heads:

* ``D2`` ("vanilla"): per level ``input_proj`` (1x1 conv + GroupNorm(32); the extra level 3x3 stride 2),
  then temporal convolutions ``conv3d_{l}`` (``Conv3d((k, 1, 1))`` + BatchNorm3d, no activation,
  kernels ``k`` from the clip length: 9, 5, 4 for 32 frames) down to one frame; queries
  ``query_embed`` ``[Q, 2D]``; per decoder layer its own ``class_embed`` (actions) and ``bbox_embed``
  (boxes, with Deformable DETR's iterative refinement), ``class_embed_b`` the actor switch.
* ``D3`` ("DETR + Deformable DETR"): per level ``input_proj`` then a one-query LSTR decoder over the
  frames of every cell (``query_pool`` row ``l``, ``pool_decoder`` of width D); TubeR's DETR transformer
  (``transformer1``, ``query_embed`` ``[Q, D]``) on the layer4 level gives the boxes
  (``bbox_embed2``) and, from its last layer, the positional half of the deformable decoder's queries
  (content half ``query_embed2``); ``transformer2`` (the deformable one, refinement on) gives the actions
  (``class_embed`` per layer) and the actor switch.
* ``D4`` ("Deformable DETR + transformer"): D3's pooling, the deformable transformer with refinement for
  boxes and the switch, and TubeR's action branch (``class_proj`` ``Conv3d((4, 1, 1))`` on layer4, the
  context encoder, ``cross_attn``, ``class_fc``).

Outputs follow ``TubeRHead``'s contract (per decoder layer ``logits_b`` ``[L, B, Q, 3]``, ``boxes``
``[L, B, Q, 4]`` normalized cxcywh of the padded clip, ``logits`` ``[L, B, Q, A]``), so TubeR's
criterion, matcher and detections are used unchanged.

Reproduced quirks: inference scores are ``sigmoid(logits)`` without the actor-switch gate
(``switch_gate``, ``MODEL.TUBER.DEFORMABLE.SWITCH_GATE`` False, as the fork's ``PostProcessAVA``); and
(``batch_time_mix``, ``MODEL.TUBER.DEFORMABLE.BATCH_TIME_MIX``, default True as the
fork): the fork's backbone flattens every level time-major (``[T*B, C, H, W]``, frame ``t`` of clip ``b``
at row ``t*B + b``) and the variants regroup it batch-major (``reshape(B, T, ...)``), so with more than
one clip per batch the temporal pooling of "clip" ``b`` reads rows ``b*T .. b*T + T - 1``, frames of
several clips. With one clip per GPU (the fork's evaluation) nothing changes; in its training (4 clips
per GPU) every clip's features mix the batch. False pools each clip's own frames.

Weights: Deformable DETR's initialization in the transformer; the heads as the fork (``class_embed`` /
``bbox_embed`` deep copies of one module; D2 and D4 set the first box head's last bias ``[2:]`` to -2;
everything else PyTorch's defaults). Modules the fork builds but never calls (D2's ``class_proj``,
``encoder``, ``cross_attn``; D3's ``encoder``, ``cross_attn``) are not built: a fork checkpoint's keys
for them are unused.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.detr import clones
from .deformable_transformer import DeformableTransformer, inverse_sigmoid
from .head import MLP, ContextEncoder, ContextEncoderLayer, PoolDecoder, PoolDecoderLayer
from .transformer import TUBER_TRANSFORMER_REGISTRY, DETRTransformer

VARIANTS = ("D2", "D3", "D4")
# CSN stages feeding the deformable levels (the fork's backbone returns layer1..layer4 and uses [1:]).
BACKBONE_LEVELS = 3


def sine_position_2d(mask, num_pos_feats, dtype, temperature=10000.0):
    """DETR's normalized 2-D sine positions ``[B, 2 * num_pos_feats, H, W]`` (y channels, then x) of a mask
    ``[B, H, W]`` (True on padding), computed in float32 as the fork and cast to ``dtype``."""
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)
    x_embed = not_mask.cumsum(2, dtype=torch.float32)
    eps, scale = 1e-6, 2 * torch.pi
    y_embed = (y_embed - 0.5) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed - 0.5) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(dtype)


def frames_of(x):
    """``[B, C, T, H, W]`` -> ``[T*B, C, H, W]`` time-major (the fork's backbone layout)."""
    b, c, t, h, w = x.shape
    return x.permute(2, 0, 1, 3, 4).reshape(t * b, c, h, w)


def clips_of(frames, batch, batch_time_mix):
    """Time-major frames ``[T*B, ...]`` -> ``[B, T, ...]``: the fork's batch-major regrouping when
    ``batch_time_mix`` (see the module docstring), else each clip's own frames."""
    t = frames.shape[0] // batch
    if batch_time_mix:
        return frames.reshape(batch, t, *frames.shape[1:])
    return frames.reshape(t, batch, *frames.shape[1:]).transpose(0, 1)


def d2_temporal_kernels(num_frames, num_levels):
    """The fork's D2 kernels ``T // 2**(l+2) + 1`` for ``l < L-2`` and ``T // 2**(l+1)`` for ``l = L-2``
    (32 frames, 4 levels: 9, 5, 4)."""
    return [num_frames // 2 ** (l + 2) + 1 if l != num_levels - 2 else num_frames // 2 ** (l + 1)
            for l in range(num_levels - 1)]


def level_projections(level_channels, d_model, num_levels):
    """Deformable DETR's ``input_proj``: per backbone level (``level_channels``) a 1x1 conv + GroupNorm(32) to
    ``d_model``, then for each extra level up to ``num_levels`` a 3x3 stride-2 conv + GroupNorm(32) (the first
    on the last backbone level, the next on the previous extra level). ``nn.ModuleList`` of ``nn.Sequential``."""
    proj = [nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), nn.GroupNorm(32, d_model)) for c in level_channels]
    in_channels = level_channels[-1]
    for _ in range(num_levels - len(level_channels)):
        proj.append(nn.Sequential(nn.Conv2d(in_channels, d_model, kernel_size=3, stride=2, padding=1),
                                  nn.GroupNorm(32, d_model)))
        in_channels = d_model
    return nn.ModuleList(proj)


def _temporal_convs(channels, kernels):
    return nn.Sequential(*[nn.Sequential(nn.Conv3d(channels, channels, (k, 1, 1)), nn.BatchNorm3d(channels))
                           for k in kernels])


class DeformableTubeRTransformer(DeformableTransformer):
    """Deformable DETR's transformer meeting TubeR's transformer interface (docs/tuber.md).

    ``multi_scale = True``; ``forward(src, mask, query_embed, pos)`` takes lists (one per level, finest
    first) of ``[B, D, 1, H_l, W_l]`` maps / ``[B, 1, H_l, W_l]`` masks / positions and ``query_embed``
    ``[Q, 2D]`` (``query_dim``: positional half, then content half) and returns ``hs`` ``[L, B, Q, D]``,
    the memory per level ``[B, D, 1, H_l, W_l]`` and ``extras["reference_points"]`` ``[L, B, Q, 2 or 4]``
    (the reference each decoder layer started from). ``build_head(cfg)`` builds the fork's Deformable
    TubeR head (``MODEL.TUBER.DEFORMABLE.VARIANT``) around it, which the TubeR detector uses instead of
    ``TubeRHead``.
    """

    multi_scale = True

    @property
    def num_decoder_layers(self):
        return self.decoder.num_layers

    @property
    def query_dim(self):
        return 2 * self.d_model

    def forward(self, src, mask, query_embed, pos):
        if self.decoder.bbox_embed is not None:
            raise ValueError("deformable transformer: the interface forward has no box refinement (its heads are "
                             "shared by all layers); the Deformable TubeR heads call encode/decode")
        for name, value in (("src", src), ("mask", mask), ("pos", pos)):
            if not isinstance(value, (list, tuple)) or any(v.shape[-3] != 1 for v in value):
                raise ValueError(f"deformable transformer: {name} must be a list of single-frame maps (T = 1)")
        if query_embed.shape[-1] != self.query_dim:
            raise ValueError(f"deformable transformer: query_embed has width {query_embed.shape[-1]}, expected "
                             f"query_dim = 2 * d_model = {self.query_dim}")
        levels = self.encode([s[:, :, 0] for s in src], [m[:, 0] for m in mask], [p[:, :, 0] for p in pos])
        hs, init_reference, inter_references = self.decode(levels, query_embed)
        sizes = [s.shape[-2] * s.shape[-1] for s in src]
        memory = [m.transpose(1, 2).reshape(m.shape[0], m.shape[2], 1, *s.shape[-2:])
                  for m, s in zip(levels["memory"].split(sizes, 1), src)]
        references = torch.cat([init_reference[None], inter_references[:-1]]) if hs.dim() == 4 else init_reference[None]
        return hs if hs.dim() == 4 else hs[None], memory, {"reference_points": references}

    def build_head(self, cfg):
        return build_deformable_tuber_head(cfg, self)


class DeformableTubeRHead(nn.Module):
    """The fork's Deformable TubeR after the backbone (module docstring).

    Args:
        transformer: a ``DeformableTransformer`` with ``num_feature_levels = 4`` (3 CSN levels + 1 extra).
        variant: "D2", "D3" or "D4".
        num_queries: Q (the fork: 15).
        num_actions: A (80).
        level_channels: channels of CSN layer2..layer4 (512, 1024, 2048).
        num_frames: frames of the input clip (D2's temporal kernels; D4's ``class_proj`` spans layer4's
            ``num_frames // 8`` frames).
        batch_time_mix: reproduce the fork's time/batch regrouping (module docstring).
        detr_transformer: D3's ``transformer1`` (TubeR's ``DETRTransformer``), else None.
        pool_heads: heads of D3/D4's LSTR pool decoder (8; its FFN width is D).
        cross_attn_dim, context_ffn: D4's action cross-attention width (256) and context-encoder FFN (2048).
        switch_gate: read by ``TubeR.detections``: gate the action scores by the actor switch as TubeR (True), or
            not, as the fork's ``PostProcessAVA`` (False, the fork's evaluation: it computes the gated scores and
            then overwrites them with ``sigmoid(logits)``).
    """

    multi_level = True  # the TubeR detector hands this head every CSN stage
    switch = "query"  # a 3-way actor switch per query, as TubeR's AVA head

    def __init__(self, transformer, variant="D2", num_queries=15, num_actions=80, level_channels=(512, 1024, 2048),
                 num_frames=32, batch_time_mix=True, detr_transformer=None, pool_heads=8, cross_attn_dim=256,
                 context_ffn=2048, switch_gate=False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"DeformableTubeRHead: variant {variant!r}, expected one of {VARIANTS}")
        num_levels = transformer.num_feature_levels
        if num_levels != BACKBONE_LEVELS + 1:
            raise ValueError(f"DeformableTubeRHead: the fork's variants use {BACKBONE_LEVELS + 1} levels "
                             f"(layer2..layer4 + one extra), the transformer has {num_levels}")
        if (variant == "D3") != (detr_transformer is not None):
            raise ValueError("DeformableTubeRHead: D3, and only D3, takes a DETR transformer (transformer1)")
        d = transformer.d_model
        num_dec = transformer.decoder.num_layers
        self.variant = variant
        self.batch_time_mix = batch_time_mix
        self.switch_gate = switch_gate
        self.hidden_dim = d
        self.num_queries = num_queries
        self.num_frames = num_frames
        if variant == "D2":
            kernels = d2_temporal_kernels(num_frames, num_levels)
            for i in range(num_levels):
                setattr(self, f"conv3d_{i}", _temporal_convs(d, kernels[min(i, num_levels - 2):]))
        else:
            self.query_pool = nn.Embedding(num_levels, d)
            self.pool_decoder = PoolDecoder(PoolDecoderLayer(d, pool_heads, d, 0.1), 1, nn.LayerNorm(d))
        self.input_proj = level_projections(level_channels, d, num_levels)
        if variant == "D3":
            self.query_embed2 = nn.Embedding(num_queries, d)
            self.query_embed = nn.Embedding(num_queries, d)
            self.transformer1 = detr_transformer
            self.transformer2 = transformer
        else:
            self.transformer = transformer
            self.query_embed = nn.Embedding(num_queries, 2 * d)
        if variant == "D4":
            self.class_proj = nn.Conv3d(level_channels[-1], d, kernel_size=(max(num_frames // 8, 1), 1, 1))
            self.encoder = ContextEncoder(ContextEncoderLayer(d, 8, context_ffn, 0.1), 1)
            self.cross_attn = nn.MultiheadAttention(cross_attn_dim, num_heads=8, dropout=0.1)
        self.class_embed_b = nn.Linear(d, 3)
        class_embed = nn.Linear(d, num_actions)
        bbox_embed = MLP(d, d, 4, 3)
        if variant == "D3":
            self.bbox_embed2 = MLP(d, d, 4, 3)
        self.dropout = nn.Dropout(0.5)
        if variant == "D4":
            self.class_fc = class_embed
        else:
            self.class_embed = clones(class_embed, num_dec)
        self.bbox_embed = clones(bbox_embed, num_dec)
        if variant != "D3":
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias.data[2:], -2.0)
        transformer.decoder.bbox_embed = self.bbox_embed

    @property
    def deformable(self):
        return self.transformer2 if self.variant == "D3" else self.transformer

    def pool_level(self, level, frames, batch):
        """Time-major projected frames ``[T*B, D, H, W]`` of level ``level`` -> one frame ``[B, D, H, W]``."""
        clips = clips_of(frames, batch, self.batch_time_mix)  # [B, T, D, H, W]
        if self.variant == "D2":
            return getattr(self, f"conv3d_{level}")(clips.transpose(1, 2))[:, :, 0]
        b, t, c, h, w = clips.shape
        memory = clips.flatten(3).permute(1, 0, 3, 2).contiguous().flatten(1, 2)  # [T, B*H*W, D]
        query = self.query_pool.weight[level:level + 1].unsqueeze(1).repeat(1, b * h * w, 1)
        pooled = self.pool_decoder(query, memory)  # [1, B*H*W, D]
        return pooled.view(b, h * w, c).permute(0, 2, 1).reshape(b, c, h, w)

    def levels(self, feats, pixel_mask):
        """The deformable levels: maps ``[B, D, H_l, W_l]``, masks ``[B, H_l, W_l]``, 2-D sine positions."""
        batch = feats[0].shape[0]
        srcs = []
        for lvl, x in enumerate(feats[-BACKBONE_LEVELS:]):
            srcs.append(self.pool_level(lvl, self.input_proj[lvl](frames_of(x)), batch))
        for lvl in range(BACKBONE_LEVELS, len(self.input_proj)):
            srcs.append(self.pool_level(lvl, self.input_proj[lvl](frames_of(feats[-1])), batch))
        masks, poses = [], []
        for src in srcs:
            mask = F.interpolate(pixel_mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            masks.append(mask)
            poses.append(sine_position_2d(mask, self.hidden_dim // 2, src.dtype))
        return srcs, masks, poses

    def forward(self, feats, pixel_mask, trace=None):
        """Per-layer predictions from the CSN stages.

        Args:
            feats: CSN's stage outputs ``[B, C_s, T_s, H_s, W_s]`` (layer1..layer4 or layer2..layer4; the last
                three are used).
            pixel_mask: ``[B, H, W]`` bool, True on padded pixels of the input clip.
            trace: optional dict: receives "srcs", "masks", "pos", "memory", "hs", "init_reference",
                "inter_references" (and D3's "hs_detr").

        Returns:
            dict of per-layer ``[L, B, Q, *]``: "logits_b" (3 switch logits), "boxes" (normalized cxcywh),
            "logits" (A action logits).
        """
        srcs, masks, poses = self.levels(feats, pixel_mask)
        transformer = self.deformable
        batch = srcs[0].shape[0]
        if self.variant == "D3":
            hs_detr = self.transformer1(srcs[-2].unsqueeze(2), masks[-2].unsqueeze(1), self.query_embed.weight,
                                        poses[-2].unsqueeze(2))[0]
            query = torch.cat([hs_detr[-1], self.query_embed2.weight.unsqueeze(0).repeat(batch, 1, 1)], dim=2)
        else:
            query = self.query_embed.weight
        levels = transformer.encode(srcs, masks, poses)
        hs, init_reference, inter_references = transformer.decode(levels, query)
        logits_b = self.class_embed_b(hs)
        if self.variant == "D3":
            boxes = self.bbox_embed2(hs_detr).sigmoid()
        else:
            boxes = []
            for lvl in range(hs.shape[0]):
                reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
                delta = self.bbox_embed[lvl](hs[lvl])
                if reference.shape[-1] == 4:
                    delta = delta + reference
                else:
                    delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
                boxes.append(delta.sigmoid())
            boxes = torch.stack(boxes)
        if self.variant == "D4":
            logits = self.context_logits(hs, feats[-1], batch)
        else:
            logits = torch.stack([self.class_embed[lvl](hs[lvl]) for lvl in range(hs.shape[0])])
        if trace is not None:
            trace.update({"srcs": srcs, "masks": masks, "pos": poses, "memory": levels["memory"], "hs": hs,
                          "init_reference": init_reference, "inter_references": inter_references})
            if self.variant == "D3":
                trace["hs_detr"] = hs_detr
        return {"logits_b": logits_b, "boxes": boxes, "logits": logits}

    def context_logits(self, hs, x, batch):
        """D4's actions: ``class_proj`` of layer4 (regrouped as the fork), the context encoder over it, the
        queries' cross-attention, ``class_fc``."""
        num_layers, _, q, d = hs.shape
        clips = clips_of(frames_of(x), batch, self.batch_time_mix).transpose(1, 2)  # [B, C, T, H, W]
        src_c = self.class_proj(clips)
        tokens = src_c.reshape(1, batch, d, -1).repeat(num_layers, 1, 1, 1).view(num_layers * batch, d, -1)
        tokens = self.encoder(tokens.permute(2, 0, 1).contiguous(), src_c.shape[2:])
        queries = hs.contiguous().view(num_layers * batch, q, d).permute(1, 0, 2).contiguous()
        q_class = self.cross_attn(queries, tokens, tokens)[0]
        q_class = q_class.permute(1, 0, 2).contiguous().view(num_layers, batch, q, d)
        return self.class_fc(self.dropout(q_class))

    def key_frame_outputs(self, out):
        """The outputs themselves: one query group per tubelet (no per-frame queries)."""
        return out


def build_deformable_tuber_head(cfg, transformer):
    t = cfg.MODEL.TUBER  # widths checked by stmixer.config.validate (_tuber_problems)
    variant = t.DEFORMABLE.VARIANT
    detr = None
    if variant == "D3":
        detr = DETRTransformer(t.D_MODEL, t.NHEAD, t.ENC_LAYERS, t.DEC_LAYERS, t.DIM_FEEDFORWARD, t.DROPOUT, "relu",
                               t.NORMALIZE_BEFORE)
    return DeformableTubeRHead(transformer, variant, num_queries=t.NUM_QUERIES,
                               num_actions=cfg.MODEL.STM.ACTION_CLASSES, num_frames=cfg.DATA.NUM_FRAMES,
                               batch_time_mix=t.DEFORMABLE.BATCH_TIME_MIX, detr_transformer=detr,
                               cross_attn_dim=t.CROSS_ATTN_DIM, switch_gate=t.DEFORMABLE.SWITCH_GATE)


@TUBER_TRANSFORMER_REGISTRY.register("deformable")
def build_deformable_transformer(cfg):
    """Deformable DETR's transformer from ``MODEL.TUBER.{D_MODEL, NHEAD, ENC_LAYERS, DEC_LAYERS, DIM_FEEDFORWARD,
    DROPOUT}`` and ``MODEL.TUBER.DEFORMABLE.{NUM_FEATURE_LEVELS, ENC_N_POINTS, DEC_N_POINTS}``
    (the fork's ``build_deformable_transformer_og``: every decoder layer returned, single-stage)."""
    t = cfg.MODEL.TUBER
    return DeformableTubeRTransformer(
        d_model=t.D_MODEL, nhead=t.NHEAD, num_encoder_layers=t.ENC_LAYERS, num_decoder_layers=t.DEC_LAYERS,
        dim_feedforward=t.DIM_FEEDFORWARD, dropout=t.DROPOUT, activation="relu", return_intermediate_dec=True,
        num_feature_levels=t.DEFORMABLE.NUM_FEATURE_LEVELS, dec_n_points=t.DEFORMABLE.DEC_N_POINTS,
        enc_n_points=t.DEFORMABLE.ENC_N_POINTS)
