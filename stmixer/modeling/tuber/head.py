"""TubeR's AVA head (``models/tuber_ava.py`` ``DETR`` minus the CSN): everything after the backbone.

Flow for a backbone map ``x`` = ir-CSN layer4 ``[B, C, T', H', W']`` (C = 2048; 32 frames of 256^2 ->
``[B, 2048, 4, 16, 16]``):

1. ``TemporalPool`` -> ``[B, C, 1, H', W']`` (``MODEL.TUBER.TEMPORAL_POOL``; TubeR's AVA configs:
   "decode", one learned 2048-wide query attending over the T' frames of every cell).
2. padding mask ``[B, 1, H', W']`` (nearest-resized from the pixel mask) and the 3-D sine positions;
   ``input_proj`` (1x1x1 conv) -> the transformer (docs/tuber.md) -> ``hs`` ``[L, B, Q, D]``.
3. per decoder layer: the actor switch ``class_embed_b(hs)`` ``[L, B, Q, 3]`` (softmax; column 1 is
   "actor", 2 "no actor", 0 unused on AVA), boxes ``sigmoid(bbox_embed(hs))`` ``[L, B, Q, 4]``
   normalized cxcywh of the key frame (AVA: one frame per tubelet), and the actions:
   ``class_proj(x)`` (the un-pooled map) ``[B, D, T', H', W']`` -> one ``ContextEncoderLayer``
   (spatial then temporal self-attention, no positions) -> ``cross_attn`` from each layer's queries
   -> ``class_fc(dropout 0.5)`` ``[L, B, Q, A]`` logits (sigmoid).

Module names are TubeR's (``query_pool``, ``pool_decoder``, ``transformer``, ``query_embed``,
``input_proj``, ``class_proj``, ``encoder``, ``cross_attn``, ``class_embed_b``, ``bbox_embed``,
``class_fc``), so ``tuber_head.<name>`` holds a TubeR checkpoint's ``<name>`` (``stmixer.checkpoint.csn``).

Quirks of the official code reproduced, each behind an argument:

* ``input_channels``: the input width of ``input_proj`` and ``class_proj`` is TubeR's
  ``DIM_FEEDFORWARD`` (its ``Backbone`` is built with ``num_channels=DIM_FEEDFORWARD``), not the
  backbone's width; both are 2048 for CSN, and ``MODEL.TUBER.PROJ_IN_CHANNELS`` 0 means "as official".
* ``cross_attn_dim``: the action cross-attention is ``MultiheadAttention(256, 8)`` whatever ``D_MODEL``
  (``MODEL.TUBER.CROSS_ATTN_DIM``; TubeR only works with D = 256).
* the context encoder is ``(D, 8 heads, FFN 2048, dropout 0.1)`` whatever the transformer's settings
  (``context_ffn``), and it runs on L copies of the class map (one per decoder layer, as TubeR
  repeats it: independent dropout in training, identical values in eval).

JHMDB / UCF101-24 head (``head="frame"``, ``MODEL.TUBER.HEAD``; TubeR's ``models/tuber_ava.py`` with
``DATASET_NAME != "ava"``, the model its ``train_tuber_jhmdb.py`` / ``eval_tuber_jhmdb.py`` build):

* ``query_frames`` = F (TubeR: ``TEMP_LEN``) groups of Q queries, ``query_embed`` ``[F*Q, D]``, frame-major
  (query ``f*Q + j`` is slot j of frame f); the decoder and the heads run on all F*Q queries, the
  criterion and the detections read the key frame's group (``key_frame_outputs``: frame ``F // 2``,
  TubeR's ``key_pos = clip_len // 2``);
* the switch is 2-way and per clip: ``class_embed_b`` = ``Linear(C, 2)`` on the spatio-temporal average of
  the un-pooled backbone map (column 1 "an actor is visible on the key frame"), the same for every
  decoder layer;
* ``class_fc`` has ``A + 1`` outputs (softmax; the last is "no action").
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.detr import detr_layer_modules
from .position_encoding import PositionEmbeddingSine3D

TEMPORAL_POOLS = ("decode", "avg", "max", "center")
SWITCHES = ("query", "clip")


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box MLP; ``layers.{i}``)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class PoolDecoderLayer(nn.Module):
    """TubeR's ``LSTRTransformerDecoderLayer`` (post-norm; no positions): ``[N_q, N, C]`` queries, ``[S, N, C]``
    memory. Its attention equals ``nn.MultiheadAttention`` (same parameter names)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        (self.linear1, self.dropout, self.linear2, self.norm1, self.norm2, self.norm3, self.dropout1, self.dropout2,
         self.dropout3) = detr_layer_modules(d_model, dim_feedforward, dropout, 3)

    def forward(self, tgt, memory):
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(tgt, tgt, tgt)[0]))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(tgt, memory, memory)[0]))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class PoolDecoder(nn.Module):
    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layer if i == 0 else _clone(layer) for i in range(num_layers))
        self.norm = norm

    def forward(self, tgt, memory):
        for layer in self.layers:
            tgt = layer(tgt, memory)
        return tgt if self.norm is None else self.norm(tgt)


def _clone(module):
    return copy.deepcopy(module)


class ContextEncoderLayer(nn.Module):
    """TubeR's action-context encoder layer (``transformer_layers.TransformerEncoderLayer``, post-norm).

    On tokens ``[T*H*W, N, D]`` (t-major) of a map ``[*, D, T, H, W]``: ``self_attn_t`` attends over the
    ``H*W`` cells of each frame (TubeR names it "t"), ``self_attn_s`` over the ``T`` frames of each cell;
    each with a residual and its own norm; the two are concatenated (``2D``) into the FFN
    (``linear1`` 2D -> F, ``linear2`` F -> D), added to the input and normalized (``norm2``).
    """

    def __init__(self, d_model, nhead=8, dim_feedforward=2048, dropout=0.1):
        super().__init__()
        self.self_attn_t = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.self_attn_s = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model * 2, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1_t = nn.LayerNorm(d_model)
        self.norm1_s = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, shape):
        """src ``[T*H*W, N, D]``; shape ``(T, H, W)``. Returns ``[T*H*W, N, D]``."""
        t, h, w = shape
        n, ch = src.shape[1], src.shape[2]
        src_t = src.view(t, h * w, n, ch).permute(1, 0, 2, 3).contiguous().view(h * w, -1, ch)
        src_t = src_t + self.dropout1(self.self_attn_t(src_t, src_t, value=src_t)[0])
        src_t = self.norm1_t(src_t).view(h * w, t, n, ch).permute(1, 0, 2, 3).contiguous().view(t * h * w, n, ch)
        src_s = src.view(t, h * w * n, ch)
        src_s = src_s + self.dropout1(self.self_attn_s(src_s, src_s, value=src_s)[0])
        src_s = self.norm1_s(src_s).view(t * h * w, n, ch)
        src2 = self.linear2(self.dropout(F.relu(self.linear1(torch.cat((src_t, src_s), dim=-1)))))
        return self.norm2(src + self.dropout2(src2))


class ContextEncoder(nn.Module):
    def __init__(self, layer, num_layers=1):
        super().__init__()
        self.layers = nn.ModuleList(layer if i == 0 else _clone(layer) for i in range(num_layers))

    def forward(self, src, shape):
        for layer in self.layers:
            src = layer(src, shape)
        return src


class TubeRHead(nn.Module):
    """Temporal pooling, transformer and heads of TubeR on AVA (see module docstring).

    Args:
        transformer: a module meeting the interface of docs/tuber.md.
        num_queries: Q tubelet queries (15).
        num_actions: A (80).
        backbone_channels: C of the backbone map (2048).
        input_channels: input width of ``input_proj`` / ``class_proj`` (TubeR: its DIM_FEEDFORWARD, 2048);
            a mismatch with ``backbone_channels`` fails at the first forward, as in TubeR.
        temporal_pool: one of ``TEMPORAL_POOLS``; pool_frames: the kernel of "avg" / "max"
            (TubeR: ``TEMP_LEN // DS_RATE``).
        pool_heads, pool_ffn: the "decode" pool's heads (8) and FFN width (2048); its width is ``backbone_channels``.
        cross_attn_dim, cross_attn_heads: the action cross-attention (256, 8).
        context_ffn, context_heads, context_dropout: the context encoder layer (2048, 8, 0.1).
        class_dropout: dropout before ``class_fc`` (0.5).
        position_float32: see ``PositionEmbeddingSine3D``.
        switch: "query" (AVA: 3-way ``Linear(D, 3)`` per query and layer) or "clip" (JHMDB / UCF: 2-way
            ``Linear(backbone_channels, 2)`` on the averaged backbone map); see module docstring.
        query_frames: F groups of ``num_queries`` queries (AVA 1; JHMDB / UCF: the clip length).
        no_action_class: ``class_fc`` has ``num_actions + 1`` outputs (softmax with "no action" last).
    """

    # The head interface the TubeR detector reads (Deformable TubeR's and SeqFormer's heads set their own):
    multi_level = False  # the detector hands the head layer4 only (True: every CSN stage)
    switch_gate = True  # detections gate the action scores by the actor switch

    def __init__(self, transformer, num_queries=15, num_actions=80, backbone_channels=2048, input_channels=2048,
                 temporal_pool="decode", pool_frames=4, pool_heads=8, pool_ffn=2048, cross_attn_dim=256,
                 cross_attn_heads=8, context_ffn=2048, context_heads=8, context_dropout=0.1, class_dropout=0.5,
                 position_float32=True, switch="query", query_frames=1, no_action_class=False):
        super().__init__()
        if temporal_pool not in TEMPORAL_POOLS:
            raise ValueError(f"TubeRHead: temporal_pool = {temporal_pool!r}, expected one of {TEMPORAL_POOLS}")
        if switch not in SWITCHES:
            raise ValueError(f"TubeRHead: switch = {switch!r}, expected one of {SWITCHES}")
        if query_frames < 1:
            raise ValueError(f"TubeRHead: query_frames = {query_frames}, expected >= 1")
        hidden = transformer.d_model
        self.temporal_pool = temporal_pool
        if temporal_pool == "decode":
            self.query_pool = nn.Embedding(1, backbone_channels)
            self.pool_decoder = PoolDecoder(PoolDecoderLayer(backbone_channels, pool_heads, pool_ffn, 0.1), 1,
                                            nn.LayerNorm(backbone_channels))
        elif temporal_pool in ("avg", "max"):
            pool = nn.AvgPool3d if temporal_pool == "avg" else nn.MaxPool3d
            self.pool = pool((pool_frames, 1, 1))
        self.position = PositionEmbeddingSine3D(hidden, normalize=True, float32_compute=position_float32)
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_queries * query_frames, hidden)
        self.input_proj = nn.Conv3d(input_channels, hidden, kernel_size=1)
        self.class_proj = nn.Conv3d(input_channels, hidden, kernel_size=1)
        self.encoder = ContextEncoder(ContextEncoderLayer(hidden, context_heads, context_ffn, context_dropout), 1)
        self.cross_attn = nn.MultiheadAttention(cross_attn_dim, num_heads=cross_attn_heads, dropout=0.1)
        self.switch = switch
        self.class_embed_b = nn.Linear(hidden, 3) if switch == "query" else nn.Linear(backbone_channels, 2)
        self.bbox_embed = MLP(hidden, hidden, 4, 3)
        self.class_fc = nn.Linear(hidden, num_actions + int(no_action_class))
        self.dropout = nn.Dropout(class_dropout)
        self.hidden_dim = hidden
        self.num_queries = num_queries
        self.query_frames = query_frames

    def pool_time(self, x):
        """``[B, C, T', H', W']`` -> ``[B, C, 1, H', W']`` (``temporal_pool``)."""
        B, C, T, H, W = x.shape
        if self.temporal_pool == "decode":
            memory = x.view(B, C, T, H * W).permute(2, 0, 3, 1).contiguous().view(T, B * H * W, C)
            query = self.query_pool.weight.unsqueeze(1).repeat(1, B * H * W, 1)
            pooled = self.pool_decoder(query, memory)
            return pooled.view(1, B, H * W, C).permute(1, 3, 0, 2).contiguous().view(B, C, 1, H, W)
        if self.temporal_pool in ("avg", "max"):
            return self.pool(x)
        return x[:, :, T // 2:T // 2 + 1]

    def forward(self, x, pixel_mask, trace=None):
        """Per-layer predictions of a backbone map.

        Args:
            x: ``[B, C, T', H', W']`` the backbone's last stage.
            pixel_mask: ``[B, H, W]`` bool, True on padded pixels of the input clip.
            trace: optional dict: receives "pooled", "pos", "memory", "hs", "context".

        Returns:
            dict of per-layer tensors ``[L, B, F*Q, *]`` (F = ``query_frames``, 1 on AVA): "logits_b" (3 switch
            logits; switch "clip": ``[L, B, 2]``, one pair per clip), "boxes" (normalized cxcywh), "logits"
            (A action logits; ``no_action_class``: A + 1).
        """
        pooled = self.pool_time(x)
        mask = F.interpolate(pixel_mask[None].float(), size=pooled.shape[-2:]).to(torch.bool)[0]
        mask = mask.unsqueeze(1).repeat(1, pooled.shape[2], 1, 1)
        pos = self.position(mask, dtype=pooled.dtype)
        src = self.input_proj(pooled)
        if getattr(self.transformer, "multi_scale", False):
            hs, memory, extras = self.transformer([src], [mask], self.query_embed.weight, [pos])
        else:
            hs, memory, extras = self.transformer(src, mask, self.query_embed.weight, pos)
        L, B, Q, D = hs.shape
        if self.switch == "query":
            logits_b = self.class_embed_b(hs)
        else:  # TubeR: class_embed_b(AdaptiveAvgPool3d(1)(x)), repeated for every layer
            logits_b = self.class_embed_b(F.adaptive_avg_pool3d(x, 1).flatten(1))[None].repeat(L, 1, 1)
        src_c = self.class_proj(x)
        tokens = src_c.view(1, B, D, -1).repeat(L, 1, 1, 1).view(L * B, D, -1).permute(2, 0, 1).contiguous()
        tokens = self.encoder(tokens, src_c.shape[2:])
        queries = hs.contiguous().view(L * B, Q, D).permute(1, 0, 2).contiguous()
        q_class = self.cross_attn(queries, tokens, tokens)[0]
        q_class = q_class.permute(1, 0, 2).contiguous().view(L, B, Q, D)
        logits = self.class_fc(self.dropout(q_class))
        box_delta = self.bbox_embed(hs)
        if "reference_points" in extras:
            box_delta = _refine(box_delta, extras["reference_points"])
        boxes = box_delta.sigmoid()
        if trace is not None:
            trace.update({"pooled": pooled, "pos": pos, "memory": memory, "hs": hs, "context": tokens})
        return {"logits_b": logits_b, "boxes": boxes, "logits": logits}

    def key_frame_outputs(self, out):
        """The key frame's ``num_queries`` queries of ``forward``'s outputs (``query_frames`` > 1: group
        ``query_frames // 2``, TubeR's ``key_pos``); the outputs themselves when ``query_frames`` is 1."""
        if self.query_frames == 1:
            return out
        start = (self.query_frames // 2) * self.num_queries
        picked = {k: v[:, :, start:start + self.num_queries] for k, v in out.items() if k in ("boxes", "logits")}
        return {**out, **picked}


def _refine(delta, reference, eps=1e-5):
    """Deformable-DETR box refinement: ``delta + inverse_sigmoid(reference)`` on the reference's coordinates."""
    reference = reference.clamp(0, 1)
    inv = torch.log(reference.clamp(min=eps) / (1 - reference).clamp(min=eps))
    if inv.shape[-1] == 4:
        return delta + inv
    return torch.cat((delta[..., :2] + inv, delta[..., 2:]), dim=-1)
