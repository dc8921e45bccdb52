"""SeqFormer's deformable encoder-decoder over the frames of a clip (the TubeR fork's ``models/seqformer/``).

SeqFormer (Wu et al., "SeqFormer: Sequential Transformer for Video Instance Segmentation", ECCV 2022,
wjf5203/SeqFormer) as the TubeR fork (jinsingsangsung/tuber, ``models/seqformer/deformable_transformer.py``
and ``ops/modules/ms_deform_attn.py`` before 50cd09b) uses it for AVA: Deformable DETR's transformer run on
every frame of the clip with one set of instance queries shared by the frames.

* Encoder: Deformable DETR's, applied to each frame on its own (the fork loops over frames; here the
  frames are folded into the batch, ``[B*T, S, C]``, the same arithmetic). The reference grid of every
  frame is scaled by the valid ratios of the clip's *first* frame (the fork's ``m[:, 0]``).
* Decoder layer (two query streams): the content query ``tgt`` ``[B, Q, C]`` (classes) and the box query
  ``tgt_box`` (``[B, Q, C]`` before the first layer, ``[B, T, Q, C]`` after it: one per frame).
  1. ``tgt``: self-attention among queries (``self_attn``, ``norm2``).
  2. ``tgt_box``: self-attention among queries of each frame (``self_attn_box``, ``norm2_box``).
  3. Cross-attention (``cross_attn``, ``SeqFormerMSDeformAttn``): sampling offsets and weights come from the
     box query plus position (shared by all frames before the first layer), one deformable read per frame
     of that frame's memory around the frame's reference; the read goes through two projections,
     ``output_proj`` (for ``tgt``) and ``output_proj_box`` (for ``tgt_box``). The content query itself
     does not steer the sampling.
  4. ``tgt_box`` += box read (``norm1_box``), box FFN (``linear{1,2}_box``, ``norm3_box``).
  5. Temporal weights ``softmax_T(time_attention_weights(tgt_box))``; ``tgt`` += the weighted sum over
     frames of the content reads (``norm1``), FFN (``linear{1,2}``, ``norm3``).
* Box refinement (``decoder.bbox_embed``, the detector's per-layer box heads when ``BOX_REFINE``): each
  frame's reference ``[B, T, Q, 2 or 4]`` is refined from that frame's box query, as Deformable DETR.

Parameter names are the fork's, so its ``transformer.*`` checkpoint keys load one to one, except the
encoder attentions' ``output_proj_box`` (built by the fork, never called: not built here).

Conventions: memory ``[B*T, S, C]`` (frame ``t`` of clip ``b`` at row ``b*T + t``), masks True on padding;
reference points normalized ``(x, y)`` (or boxes ``(cx, cy, w, h)``) of the valid area, scaled by the
valid ratios before sampling (Deformable DETR).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.detr import clones
from ..layers.ms_deform_attn import MSDeformAttn, ms_deform_attn_pytorch
from ..tuber.deformable_transformer import (DeformableTransformer, DeformableTransformerEncoder,
                                            DeformableTransformerEncoderLayer, apply_ffn, ffn_block, inverse_sigmoid,
                                            query_self_attention, self_attention_block)


class SeqFormerMSDeformAttn(MSDeformAttn):
    """The fork's decoder ``MSDeformAttn`` (mode "decode"): one deformable read per frame, two output projections.

    Parameters: ``MSDeformAttn``'s plus ``output_proj_box`` (``Linear(C, C)``; PyTorch's default bias, a Xavier
    weight from the transformer's initialization, as the fork whose ``_reset_parameters`` skips it).
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__(d_model, n_levels, n_heads, n_points)
        self.output_proj_box = nn.Linear(d_model, d_model)

    def forward(self, query_box, reference_points, memory, spatial_shapes, level_start_index=None,
                padding_mask=None):
        """
        Args:
            query_box: ``[B, Q, C]`` (one query for all frames) or ``[B, T, Q, C]``, position already added.
            reference_points: ``[B, T, Q, L, 2 or 4]`` per frame, scaled by the valid ratios.
            memory: ``[B*T, S, C]``; padding_mask: ``[B*T, S]`` or None.

        Returns:
            ``(out, out_box)``: ``output_proj`` and ``output_proj_box`` of the reads, each ``[B, T, Q, C]``.
        """
        b, t, q = reference_points.shape[:3]
        n, len_in, _ = memory.shape
        if n != b * t or int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()) != len_in:
            raise ValueError(f"SeqFormerMSDeformAttn: memory {tuple(memory.shape)} does not match {b} clips x {t} "
                             f"frames and spatial_shapes {spatial_shapes.tolist()}")
        if query_box.dim() == 3:
            query_box = query_box[:, None].expand(b, t, q, query_box.shape[-1])
        value = self.value_proj(memory)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, len_in, self.n_heads, self.d_model // self.n_heads)
        locations, weights = self.sampling(query_box.reshape(n, q, -1), reference_points.flatten(0, 1),
                                           spatial_shapes)
        read = ms_deform_attn_pytorch(value, spatial_shapes, locations, weights).view(b, t, q, -1)
        return self.output_proj(read), self.output_proj_box(read)


class SeqFormerDecoderLayer(nn.Module):
    """One decoder layer with a content stream and a per-frame box stream (module docstring).

    Args: as ``DeformableTransformerDecoderLayer`` (d_model, d_ffn, dropout, activation, n_levels, n_heads,
    n_points).
    """

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.cross_attn = SeqFormerMSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1_box = nn.Dropout(dropout)
        self.norm1_box = nn.LayerNorm(d_model)
        self.self_attn, self.dropout2, self.norm2 = self_attention_block(d_model, n_heads, dropout)
        self.self_attn_box, self.dropout2_box, self.norm2_box = self_attention_block(d_model, n_heads, dropout)
        self.linear1, self.activation, self.dropout3, self.linear2, self.dropout4, self.norm3 = ffn_block(
            d_model, d_ffn, dropout, activation)
        (self.linear1_box, self.activation_box, self.dropout3_box, self.linear2_box, self.dropout4_box,
         self.norm3_box) = ffn_block(d_model, d_ffn, dropout, activation)
        self.time_attention_weights = nn.Linear(d_model, 1)

    def forward(self, tgt, tgt_box, query_pos, reference_points, memory, spatial_shapes, level_start_index,
                padding_mask=None):
        """
        Args:
            tgt, query_pos: ``[B, Q, C]``; tgt_box: ``[B, Q, C]`` (first layer) or ``[B, T, Q, C]``.
            reference_points: ``[B, T, Q, L, 2 or 4]``; memory: ``[B*T, S, C]``; padding_mask ``[B*T, S]``.

        Returns:
            ``(tgt [B, Q, C], tgt_box [B, T, Q, C])``.
        """
        tgt = self.norm2(tgt + self.dropout2(query_self_attention(self.self_attn, tgt, query_pos)))
        b, t, q = reference_points.shape[:3]
        if tgt_box.dim() == 3:
            tgt_box = self.norm2_box(tgt_box + self.dropout2_box(
                query_self_attention(self.self_attn_box, tgt_box, query_pos)))
            query_box = tgt_box + query_pos
        else:  # every frame's box queries attend among themselves (the fork loops over frames)
            flat = tgt_box.flatten(0, 1)
            pos = query_pos[:, None].expand(b, t, q, -1).flatten(0, 1)
            flat = self.norm2_box(flat + self.dropout2_box(query_self_attention(self.self_attn_box, flat, pos)))
            tgt_box = flat.view(b, t, q, -1)
            query_box = tgt_box + query_pos[:, None]
        read, read_box = self.cross_attn(query_box, reference_points, memory, spatial_shapes, level_start_index,
                                         padding_mask)
        if tgt_box.dim() == 3:
            tgt_box = tgt_box[:, None]
        tgt_box = self.norm1_box(tgt_box + self.dropout1_box(read_box))
        tgt_box = apply_ffn(tgt_box, self.linear1_box, self.activation_box, self.dropout3_box, self.linear2_box,
                            self.dropout4_box, self.norm3_box)
        time_weight = F.softmax(self.time_attention_weights(tgt_box), 1)
        tgt = self.norm1(tgt + self.dropout1((read * time_weight).sum(1)))
        tgt = apply_ffn(tgt, self.linear1, self.activation, self.dropout3, self.linear2, self.dropout4, self.norm3)
        return tgt, tgt_box


class SeqFormerDecoder(nn.Module):
    """``num_layers`` copies of a ``SeqFormerDecoderLayer``, every layer's outputs returned.

    ``bbox_embed`` (default None): the refinement hook, as ``DeformableTransformerDecoder``'s, applied to every
    frame's box query: after layer ``i`` each frame's reference becomes
    ``sigmoid(bbox_embed[i](tgt_box) + inverse_sigmoid(ref))`` (2-d references shift the centre only), detached.
    """

    def __init__(self, decoder_layer, num_layers):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed = None

    def forward(self, tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos,
                padding_mask=None):
        """
        Args:
            tgt, query_pos: ``[B, Q, C]``; reference_points: ``[B, T, Q, 2]`` of the valid area.
            memory: ``[B*T, S, C]``; valid_ratios: ``[B, L, 2]``; padding_mask: ``[B*T, S]``.

        Returns:
            ``(hs [D, B, Q, C], hs_box [D, B, T, Q, C], references [D, B, T, Q, 2 or 4])`` (the reference each
            layer produced).
        """
        output, output_box = tgt, tgt
        hs, hs_box, refs = [], [], []
        for lid, layer in enumerate(self.layers):
            ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            ref_input = reference_points[:, :, :, None] * ratios[:, None, None]
            output, output_box = layer(output, output_box, query_pos, ref_input, memory, spatial_shapes,
                                       level_start_index, padding_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output_box)
                if reference_points.shape[-1] == 4:
                    new_reference = delta + inverse_sigmoid(reference_points)
                else:
                    new_reference = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = new_reference.sigmoid().detach()
            hs.append(output)
            hs_box.append(output_box)
            refs.append(reference_points)
        return torch.stack(hs), torch.stack(hs_box), torch.stack(refs)


class SeqFormerTransformer(nn.Module):
    """SeqFormer's encoder-decoder (module docstring).

    Args: as ``DeformableTransformer`` (d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward,
    dropout, activation, num_feature_levels, dec_n_points, enc_n_points); every decoder layer is returned.

    Parameters: ``encoder`` (Deformable DETR's), ``decoder``, ``level_embed`` ``[L, C]``, ``reference_points``
    (``Linear(C, 2)``). Initialization as the fork: Xavier-uniform for every matrix, each attention's own scheme,
    Xavier ``reference_points`` (zero bias), ``level_embed ~ N(0, 1)``.
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, activation="relu", num_feature_levels=4, dec_n_points=4, enc_n_points=4):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        self.encoder = DeformableTransformerEncoder(
            DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels,
                                              nhead, enc_n_points), num_encoder_layers)
        self.decoder = SeqFormerDecoder(
            SeqFormerDecoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead,
                                  dec_n_points), num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    reset_parameters = DeformableTransformer.reset_parameters
    get_valid_ratio = staticmethod(DeformableTransformer.get_valid_ratio)

    def forward(self, srcs, masks, pos_embeds, query_embed):
        """
        Args:
            srcs: ``L`` maps ``[B, T, C, H_l, W_l]`` (projected to ``C``).
            masks: ``L`` bool ``[B, T, H_l, W_l]`` (True on padding).
            pos_embeds: ``L`` ``[B, T, C, H_l, W_l]``.
            query_embed: ``[Q, 2C]``: positional half, then content half.

        Returns:
            dict: "hs" ``[D, B, Q, C]``, "hs_box" ``[D, B, T, Q, C]``, "init_reference" ``[B, T, Q, 2]``,
            "inter_references" ``[D, B, T, Q, 2 or 4]``, "memory" ``[B*T, S, C]``, "valid_ratios" ``[B, L, 2]``.
        """
        if len(srcs) != self.num_feature_levels or len(masks) != len(srcs) or len(pos_embeds) != len(srcs):
            raise ValueError(f"SeqFormerTransformer: built for {self.num_feature_levels} levels, got {len(srcs)} "
                             f"maps, {len(masks)} masks and {len(pos_embeds)} positional embeddings")
        b, t = srcs[0].shape[:2]
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(tuple(src.shape[-2:]))
            src_flat.append(src.flatten(3).transpose(2, 3))  # [B, T, HW, C]
            mask_flat.append(mask.flatten(2))
            pos_flat.append(pos.flatten(3).transpose(2, 3) + self.level_embed[lvl].view(1, 1, 1, -1))
        src_flat = torch.cat(src_flat, 2).flatten(0, 1)
        mask_flat = torch.cat(mask_flat, 2).flatten(0, 1)
        pos_flat = torch.cat(pos_flat, 2).flatten(0, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        # the clip's first frame sets the valid ratios of all its frames (the fork's m[:, 0])
        valid_ratios = torch.stack([self.get_valid_ratio(m[:, 0]) for m in masks], 1)
        memory = self.encoder(src_flat, spatial_shapes, level_start_index, valid_ratios.repeat_interleave(t, 0),
                              pos_flat, mask_flat)
        c = memory.shape[-1]
        query_pos, tgt = torch.split(query_embed, c, dim=1)
        query_pos = query_pos.unsqueeze(0).expand(b, -1, -1)
        tgt = tgt.unsqueeze(0).expand(b, -1, -1)
        init_reference = self.reference_points(query_pos).sigmoid().unsqueeze(1).repeat(1, t, 1, 1)
        hs, hs_box, refs = self.decoder(tgt, init_reference, memory, spatial_shapes, level_start_index, valid_ratios,
                                        query_pos, mask_flat)
        return {"hs": hs, "hs_box": hs_box, "init_reference": init_reference, "inter_references": refs,
                "memory": memory, "valid_ratios": valid_ratios}
