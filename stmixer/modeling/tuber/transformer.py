"""TubeR's DETR encoder-decoder (``models/transformer/transformer.py``) and the transformer registry.

Post-norm (``normalize_before=False``, TubeR's configs) or pre-norm DETR layers over the flattened
``T*H*W`` tokens of the projected backbone map; the decoder starts from zeros with the learned
queries as positional input and returns the output of every layer through the shared final
``LayerNorm`` (DETR's ``return_intermediate``). Module names are TubeR's (``encoder.layers.{i}``:
``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2``; ``decoder.layers.{i}``: also
``multihead_attn``, ``norm3``; ``decoder.norm``), which are also DETR's, so TubeR checkpoints and
COCO DETR weights map key for key. Every matrix parameter is Xavier-uniform initialized (DETR).

The interface every transformer of ``TUBER_TRANSFORMER_REGISTRY`` meets is in docs/tuber.md.
"""

import torch
from torch import nn

from ...utils.registry import Registry
from ..layers.detr import activation_fn, clones, detr_layer_modules

# MODEL.TUBER.TRANSFORMER -> builder(cfg) returning the transformer (interface: docs/tuber.md).
TUBER_TRANSFORMER_REGISTRY = Registry("TubeR transformer", config_key="MODEL.TUBER.TRANSFORMER")



def _with_pos(tensor, pos):
    return tensor if pos is None else tensor + pos


class EncoderLayer(nn.Module):
    """Self-attention + FFN over ``[S, B, D]`` tokens (sequence first)."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        (self.linear1, self.dropout, self.linear2, self.norm1, self.norm2, self.dropout1,
         self.dropout2) = detr_layer_modules(d_model, dim_feedforward, dropout, 2)
        self.activation = activation_fn(activation, "TubeR transformer")
        self.normalize_before = normalize_before

    def forward(self, src, key_padding_mask=None, pos=None):
        """src, pos: ``[S, B, D]``; key_padding_mask: ``[B, S]`` bool. Returns ``[S, B, D]``."""
        if self.normalize_before:
            src2 = self.norm1(src)
            q = k = _with_pos(src2, pos)
            src = src + self.dropout1(self.self_attn(q, k, value=src2, key_padding_mask=key_padding_mask)[0])
            src2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm2(src)))))
            return src + self.dropout2(src2)
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask)[0]))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class DecoderLayer(nn.Module):
    """Query self-attention, cross-attention to the memory, FFN; tokens ``[Q, B, D]``."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        (self.linear1, self.dropout, self.linear2, self.norm1, self.norm2, self.norm3, self.dropout1, self.dropout2,
         self.dropout3) = detr_layer_modules(d_model, dim_feedforward, dropout, 3)
        self.activation = activation_fn(activation, "TubeR transformer")
        self.normalize_before = normalize_before

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        """tgt, query_pos: ``[Q, B, D]``; memory, pos: ``[S, B, D]``; mask ``[B, S]``. Returns ``[Q, B, D]``."""
        if self.normalize_before:
            tgt2 = self.norm1(tgt)
            q = k = _with_pos(tgt2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, value=tgt2)[0])
            tgt2 = self.multihead_attn(query=_with_pos(self.norm2(tgt), query_pos), key=_with_pos(memory, pos),
                                       value=memory, key_padding_mask=memory_key_padding_mask)[0]
            tgt = tgt + self.dropout2(tgt2)
            tgt2 = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
            return tgt + self.dropout3(tgt2)
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        tgt2 = self.multihead_attn(query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos), value=memory,
                                   key_padding_mask=memory_key_padding_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers, norm=None):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = norm

    def forward(self, src, key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, key_padding_mask=key_padding_mask, pos=pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        """Every layer's output through ``norm``: ``[L, Q, B, D]``."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            outputs.append(self.norm(tgt))
        return outputs


class DETRTransformer(nn.Module):
    """TubeR's ``Transformer`` (``MODEL.TUBER.TRANSFORMER: "detr"``).

    Args:
        d_model: token width D (``MODEL.TUBER.D_MODEL``, 256).
        nhead: attention heads (8).
        num_encoder_layers, num_decoder_layers: 6 and 6 in TubeR.
        dim_feedforward: FFN width (2048).
        dropout: dropout of attention weights and residual branches (0.1).
        activation: "relu" | "gelu" | "glu".
        normalize_before: pre-norm layers (adds an encoder final norm); TubeR: False.
    """

    multi_scale = False

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation="relu", normalize_before=False):
        super().__init__()
        self.encoder = TransformerEncoder(
            EncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before), num_encoder_layers,
            nn.LayerNorm(d_model) if normalize_before else None)
        self.decoder = TransformerDecoder(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before), num_decoder_layers,
            nn.LayerNorm(d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model = d_model
        self.nhead = nhead
        self.num_decoder_layers = num_decoder_layers

    def forward(self, src, mask, query_embed, pos):
        """See docs/tuber.md: src, pos ``[B, D, T, H, W]``; mask ``[B, T, H, W]`` bool; query_embed ``[Q, D]``.

        Returns:
            hs ``[L, B, Q, D]``, memory ``[B, D, T, H, W]``, extras ``{}``.
        """
        B, D, T, H, W = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos = pos.flatten(2).permute(2, 0, 1)
        query_pos = query_embed.unsqueeze(1).repeat(1, B, 1)
        mask = mask.flatten(1)
        memory = self.encoder(src, key_padding_mask=mask, pos=pos)
        tgt = query_pos.new_zeros(query_pos.shape)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=mask, pos=pos, query_pos=query_pos)
        hs = torch.stack(hs).transpose(1, 2)
        return hs, memory.permute(1, 2, 0).reshape(B, D, T, H, W), {}


@TUBER_TRANSFORMER_REGISTRY.register("detr")
def build_detr_transformer(cfg):
    """TubeR's transformer from ``MODEL.TUBER.{D_MODEL, NHEAD, ENC_LAYERS, DEC_LAYERS, DIM_FEEDFORWARD, DROPOUT,
    NORMALIZE_BEFORE}``."""
    t = cfg.MODEL.TUBER
    return DETRTransformer(t.D_MODEL, t.NHEAD, t.ENC_LAYERS, t.DEC_LAYERS, t.DIM_FEEDFORWARD, t.DROPOUT, "relu",
                           t.NORMALIZE_BEFORE)
