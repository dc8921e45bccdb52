"""The Deformable DETR encoder-decoder of the Deformable TubeR variants (issue #17).

The TubeR fork (jinsingsangsung/tuber, removed in 50cd09b "old files") builds all three of its
Deformable TubeR variants (D2 "vanilla", D3 "DETR + Deformable DETR", D4 "Deformable DETR +
transformer") on one transformer: Deformable DETR's ``DeformableTransformer``
(``models/old_models/deformable_detr/deformable_transformer.py``, built by
``build_deformable_transformer_og`` with ``return_intermediate_dec=True``, ``two_stage=False``)
with iterative box refinement switched on by the detector (it hands its per-layer box heads to
``decoder.bbox_embed``). This module is that transformer, with Deformable DETR's module names
(so a fork checkpoint's ``transformer.*`` keys load one to one) and plain arguments.

Inputs are 2-D multi-scale maps: the Deformable TubeR detectors pool the CSN levels over time
before the transformer (D2: temporal convolutions, D3/D4: a one-query LSTR decoder per level),
so nothing here is temporal.

Conventions: maps ``[B, C, H_l, W_l]`` per level; masks ``[B, H_l, W_l]`` bool, True on padding;
reference points normalized ``(x, y)`` (or boxes ``(cx, cy, w, h)`` after refinement) in
``[0, 1]`` of the *valid* (unpadded) area, as Deformable DETR: they are scaled by the valid
ratios before sampling.

Float32 as in the official code: the encoder's reference grid and the valid ratios are computed
in float32 whatever the model's dtype (``torch.linspace(..., dtype=float32)``, ``mask.float()``),
then promoted where they meet float64 tensors. A float64 model therefore carries float32-rounded
encoder reference points, exactly as the official one does; the float64 fixtures rely on it.

Not reproduced: Deformable DETR's two-stage mode (``two_stage=True``: encoder proposals as
queries): no Deformable TubeR variant uses it.
"""

import torch
from torch import nn

from ..layers.detr import activation_fn, clones
from ..layers.ms_deform_attn import MSDeformAttn

def _activation(name):
    return activation_fn(name, "deformable transformer")


def ffn_block(d_model, d_ffn, dropout, activation):
    """The modules of a post-norm FFN block, in creation order: ``(linear1, activation, dropout_in, linear2,
    dropout_out, norm)`` (``apply_ffn`` runs them). Shared by the Deformable DETR layers and SeqFormer's."""
    return (nn.Linear(d_model, d_ffn), _activation(activation), nn.Dropout(dropout), nn.Linear(d_ffn, d_model),
            nn.Dropout(dropout), nn.LayerNorm(d_model))


def apply_ffn(x, linear1, activation, dropout_in, linear2, dropout_out, norm):
    """``norm(x + dropout_out(linear2(dropout_in(activation(linear1(x))))))`` for ``x`` ``[..., C]``."""
    return norm(x + dropout_out(linear2(dropout_in(activation(linear1(x))))))


def self_attention_block(d_model, n_heads, dropout):
    """``(nn.MultiheadAttention, dropout, norm)`` of a post-norm self-attention block among queries."""
    return nn.MultiheadAttention(d_model, n_heads, dropout=dropout), nn.Dropout(dropout), nn.LayerNorm(d_model)


def query_self_attention(attn, x, pos=None):
    """``attn(x + pos, x + pos, x)`` (``pos`` None: ``x``) over the query axis of ``x`` ``[N, Q, C]``; returns
    ``[N, Q, C]`` (the residual input of a post-norm block)."""
    q = x if pos is None else x + pos
    return attn(q.transpose(0, 1), q.transpose(0, 1), x.transpose(0, 1))[0].transpose(0, 1)


def inverse_sigmoid(x, eps=1e-5):
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to ``>= eps`` (Deformable DETR's)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN.

    Args:
        d_model: channels ``C``.
        d_ffn: hidden width of the FFN.
        dropout: dropout after attention and in the FFN.
        activation: "relu", "gelu" or "glu".
        n_levels, n_heads, n_points: of the deformable attention.
    """

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1, self.activation, self.dropout2, self.linear2, self.dropout3, self.norm2 = ffn_block(
            d_model, d_ffn, dropout, activation)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """``src``, ``pos``: ``[B, S, C]``; ``reference_points``: ``[B, S, L, 2]``; returns ``[B, S, C]``."""
        query = src if pos is None else src + pos
        src = self.norm1(src + self.dropout1(
            self.self_attn(query, reference_points, src, spatial_shapes, level_start_index, padding_mask)))
        return apply_ffn(src, self.linear1, self.activation, self.dropout2, self.linear2, self.dropout3, self.norm2)


class DeformableTransformerEncoder(nn.Module):
    """``num_layers`` copies of ``encoder_layer`` (deep copies, as Deformable DETR's ``_get_clones``)."""

    def __init__(self, encoder_layer, num_layers):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios, device):
        """Pixel centres of every level as reference points for every level: ``[B, S, L, 2]`` ``(x, y)``.

        Centres ``(j + 0.5)`` are normalized by the valid size of their own level, then multiplied by
        every level's valid ratio (float32 grid, as the official code).
        """
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                          torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                          indexing="ij")
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        """``src``, ``pos``: ``[B, S, C]``; ``valid_ratios``: ``[B, L, 2]``; returns the memory ``[B, S, C]``."""
        output = src
        reference_points = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
        for layer in self.layers:
            output = layer(output, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return output


class DeformableTransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention among queries (``nn.MultiheadAttention``), deformable
    cross-attention into the memory, FFN. Arguments as :class:`DeformableTransformerEncoderLayer`."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn, self.dropout2, self.norm2 = self_attention_block(d_model, n_heads, dropout)
        self.linear1, self.activation, self.dropout3, self.linear2, self.dropout4, self.norm3 = ffn_block(
            d_model, d_ffn, dropout, activation)

    def forward(self, tgt, query_pos, reference_points, src, spatial_shapes, level_start_index, padding_mask=None):
        """``tgt``, ``query_pos``: ``[B, Q, C]``; ``reference_points``: ``[B, Q, L, 2 or 4]`` (already scaled
        by the valid ratios); ``src``: memory ``[B, S, C]``. Returns ``[B, Q, C]``."""
        tgt = self.norm2(tgt + self.dropout2(query_self_attention(self.self_attn, tgt, query_pos)))
        query = tgt if query_pos is None else tgt + query_pos
        attn = self.cross_attn(query, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        return apply_ffn(tgt, self.linear1, self.activation, self.dropout3, self.linear2, self.dropout4, self.norm3)


class DeformableTransformerDecoder(nn.Module):
    """``num_layers`` decoder layers with Deformable DETR's iterative box refinement.

    ``bbox_embed`` (default None) is the refinement hook: the detector sets it to its per-layer box
    heads (a sequence of ``num_layers`` modules mapping ``[B, Q, C]`` to ``[B, Q, 4]`` logits), as
    Deformable DETR's ``with_box_refine`` does (the same modules, so their parameters appear under
    both names in a state dict). After layer ``i`` the reference becomes
    ``sigmoid(bbox_embed[i](out) + inverse_sigmoid(ref))`` (a 2-d reference only shifts the centre
    and takes the head's ``w, h`` logits as they are), detached. Without it the references stay.
    """

    def __init__(self, decoder_layer, num_layers, return_intermediate=False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, reference_points, src, spatial_shapes, level_start_index, valid_ratios,
                query_pos=None, padding_mask=None):
        """
        Args:
            tgt, query_pos: ``[B, Q, C]`` content and positional parts of the queries.
            reference_points: ``[B, Q, 2]`` normalized ``(x, y)`` of the valid area (or ``[B, Q, 4]`` boxes).
            src: memory ``[B, S, C]``; valid_ratios: ``[B, L, 2]``.

        Returns:
            ``(hs, references)``: with ``return_intermediate`` every layer's output ``[D, B, Q, C]`` and
            the reference each layer *produced* ``[D, B, Q, 2 or 4]``; else the last of each.
        """
        output = tgt
        intermediate, intermediate_refs = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            output = layer(output, query_pos, ref_input, src, spatial_shapes, level_start_index, padding_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_reference = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_reference = delta
                    new_reference[..., :2] = delta[..., :2] + inverse_sigmoid(reference_points)
                    new_reference = new_reference.sigmoid()
                reference_points = new_reference.detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_refs.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_refs)
        return output, reference_points


class DeformableTransformer(nn.Module):
    """Deformable DETR's encoder-decoder over multi-scale 2-D maps (single-stage).

    Args:
        d_model: channels ``C`` of maps, positions and queries.
        nhead: attention heads (deformable and query self-attention).
        num_encoder_layers, num_decoder_layers: depths.
        dim_feedforward: FFN hidden width of both.
        dropout: dropout of both.
        activation: FFN activation ("relu", "gelu", "glu").
        return_intermediate_dec: return every decoder layer (the fork always does).
        num_feature_levels: ``L``.
        dec_n_points, enc_n_points: sampling points per head and level.

    Parameters: ``encoder``, ``decoder``, ``level_embed`` ``[L, C]`` (added to the positions of each
    level), ``reference_points`` (``Linear(C, 2)``: initial reference point from a query's
    positional part). Initialization as Deformable DETR: Xavier-uniform for every matrix, then each
    attention's own scheme, Xavier for ``reference_points`` (zero bias), ``level_embed ~ N(0, 1)``.
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, activation="relu", return_intermediate_dec=False, num_feature_levels=4,
                 dec_n_points=4, enc_n_points=4):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.num_feature_levels = num_feature_levels
        encoder_layer = DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation,
                                                          num_feature_levels, nhead, enc_n_points)
        self.encoder = DeformableTransformerEncoder(encoder_layer, num_encoder_layers)
        decoder_layer = DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, activation,
                                                          num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableTransformerDecoder(decoder_layer, num_decoder_layers, return_intermediate_dec)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reference_points = nn.Linear(d_model, 2)
        self.reset_parameters()

    def reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def get_valid_ratio(mask):
        """``[B, 2]`` float32 ``(valid width / W, valid height / H)`` of a mask ``[B, H, W]`` (True on padding),
        counted along the first column / row."""
        _, h, w = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    def flatten_levels(self, srcs, masks, pos_embeds):
        """Flatten the levels: ``(src [B, S, C], mask [B, S], pos + level_embed [B, S, C], spatial_shapes [L, 2],
        level_start_index [L], valid_ratios [B, L, 2])``."""
        src_flatten, mask_flatten, pos_flatten, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(tuple(src.shape[-2:]))
            src_flatten.append(src.flatten(2).transpose(1, 2))
            mask_flatten.append(mask.flatten(1))
            pos_flatten.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(src_flatten, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)
        return (src_flatten, torch.cat(mask_flatten, 1), torch.cat(pos_flatten, 1), spatial_shapes,
                level_start_index, valid_ratios)

    def forward(self, srcs, masks, pos_embeds, query_embed):
        """
        Args:
            srcs: ``L`` maps ``[B, C, H_l, W_l]`` (already projected to ``C``).
            masks: ``L`` bool masks ``[B, H_l, W_l]`` (True on padding), or None (nothing padded).
            pos_embeds: ``L`` positional embeddings ``[B, C, H_l, W_l]``.
            query_embed: ``[Q, 2C]`` (shared by the batch) or ``[B, Q, 2C]`` (per clip, as D3 feeds it):
                the first ``C`` channels are the queries' positional part, the last ``C`` their content.

        Returns:
            ``(hs, init_reference, inter_references, None, None)`` (Deformable DETR's tuple; the last two
            are the two-stage outputs): ``hs`` ``[D, B, Q, C]`` (``[B, Q, C]`` without intermediate),
            ``init_reference`` ``[B, Q, 2]`` normalized ``(x, y)`` = ``sigmoid(reference_points(pos))``,
            ``inter_references`` ``[D, B, Q, 2 or 4]`` the reference each decoder layer produced.
        """
        levels = self.encode(srcs, masks, pos_embeds)
        hs, init_reference, inter_references = self.decode(levels, query_embed)
        return hs, init_reference, inter_references, None, None

    def encode(self, srcs, masks, pos_embeds):
        """The encoder part of ``forward``: a dict with ``memory`` ``[B, S, C]``, ``mask`` ``[B, S]``,
        ``spatial_shapes``, ``level_start_index``, ``valid_ratios`` (what ``decode`` takes)."""
        if len(srcs) != self.num_feature_levels or len(pos_embeds) != len(srcs):
            raise ValueError(f"deformable transformer: built for {self.num_feature_levels} levels, got "
                             f"{len(srcs)} maps and {len(pos_embeds)} positional embeddings")
        if masks is None:
            masks = [torch.zeros((s.shape[0],) + tuple(s.shape[-2:]), dtype=torch.bool, device=s.device)
                     for s in srcs]
        src, mask, pos, spatial_shapes, level_start_index, valid_ratios = self.flatten_levels(srcs, masks, pos_embeds)
        memory = self.encoder(src, spatial_shapes, level_start_index, valid_ratios, pos, mask)
        return {"memory": memory, "mask": mask, "spatial_shapes": spatial_shapes,
                "level_start_index": level_start_index, "valid_ratios": valid_ratios}

    def decode(self, levels, query_embed):
        """The decoder part of ``forward`` on ``encode``'s dict: ``(hs, init_reference, inter_references)``."""
        memory = levels["memory"]
        bs, _, c = memory.shape
        if query_embed.dim() == 2:
            query_pos, tgt = torch.split(query_embed, c, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)
            tgt = tgt.unsqueeze(0).expand(bs, -1, -1)
        else:
            query_pos, tgt = torch.split(query_embed, c, dim=2)
        reference_points = self.reference_points(query_pos).sigmoid()
        hs, inter_references = self.decoder(tgt, reference_points, memory, levels["spatial_shapes"],
                                            levels["level_start_index"], levels["valid_ratios"], query_pos,
                                            levels["mask"])
        return hs, reference_points, inter_references
