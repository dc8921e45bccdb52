"""EVAD's context-refinement decoder: the action branch over the kept ViT tokens and the person RoIs.

Official code: ``EVADRoIHead.forward`` (``projects/evad/models/head_helper.py``, the classification branch)
and ``ContextRefinementDecoder`` / ``Block`` (``projects/evad/models/vit_model.py``). Given the backbone's
final tokens (keyframe first, then the kept non-keyframe tokens, see ``backbones/evad_vit.py``) and the
person boxes of the last person-detector stage (absolute xyxy pixels of the padded input):

1. ``encoder_to_decoder`` (Linear, no bias) maps the tokens to the decoder width C;
2. the full token grid ``(t, h, w)`` is restored: kept tokens at their places, every dropped token replaced
   by ``mask_token``, plus the decoder's position table (the VideoMAE sine table for the pre-training grid,
   resized as the backbone's); the kept tokens themselves get their position embedding added;
3. each person box is enlarged by ``roi_extension`` (x, y: ``(x2 - x1 + 1) * s / 2`` on each side), clipped
   to ``[0, w - 1] x [0, h - 1]`` of its clip, and RoIAlign (aligned, ``roi_resolution`` bins, sampling
   ratio ``roi_sampling_ratio``, scale ``1 / patch``) reads every temporal slice of the restored grid;
   max over the bins, then mean over time -> one ``[C]`` feature per person;
4. the decoder (``depth`` pre-norm transformer blocks of width C over ``[kept tokens, person features]``)
   classifies the person features after every block: Linear (no bias) -> LayerNorm -> ReLU (``num_act_layers``
   times, width ``act_dim``) -> Linear -> action logits (deep supervision: one set per block).

Restoring order (``restore_shuffle``, official default True): the official code writes the kept tokens with
boolean-mask assignment, which fills the kept *positions in increasing order* with the tokens in the
backbone's ranking order; so the k-th kept token goes to (and gets the position embedding of) the k-th
smallest kept position instead of its own. With keep rate 1 both orders are the same. False puts every token
at its own position (``kept_index``).
"""

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import roi_align

from ..backbones.vit import Block, init_vit_weights, position_embedding, sinusoid_position_table


class ContextRefinementBlock(Block):
    """A decoder block (VideoMAE pre-norm block, q/v biases, LayerNorm eps 1e-6) with an action classifier.

    ``x`` ``[B, N + P, C]`` -> (``x'`` ``[B, N + P, C]``, action logits ``[B, P, num_actions]`` of the last
    ``num_queries`` = P tokens). Official ``vit_model.Block``.
    """

    def __init__(self, dim, num_heads, mlp_ratio, drop, attn_drop, drop_path_rate, num_actions, act_dim,
                 num_act_layers, num_queries):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=True, qk_scale=None, drop=drop, attn_drop=attn_drop,
                         drop_path_rate=drop_path_rate, init_values=0.0)
        if num_act_layers < 1:
            raise ValueError(f"EVAD.NUM_ACT_LAYERS must be at least 1, got {num_act_layers}")
        layers = []
        for i in range(num_act_layers):
            layers += [nn.Linear(dim if i == 0 else act_dim, act_dim, bias=False), nn.LayerNorm(act_dim),
                       nn.ReLU(inplace=True)]
        self.act_module = nn.ModuleList(layers)
        self.action_logits = nn.Linear(act_dim, num_actions)
        self.num_queries = num_queries

    def forward(self, x):
        x = super().forward(x)
        actions = x[:, -self.num_queries:]
        for layer in self.act_module:
            actions = layer(actions)
        return x, self.action_logits(actions)


class ContextRefinementDecoder(nn.Module):
    """The stack of ``ContextRefinementBlock`` s: ``[B, N + P, C]`` -> list (one per block) of action logits
    ``[B, P, A]``. ``use_checkpoint``: recompute each block in the backward pass (training with grad only)."""

    def __init__(self, embed_dim, depth, num_heads, mlp_ratio, drop_rate, attn_drop_rate, drop_path_rate,
                 num_actions, act_dim, num_act_layers, num_queries, use_checkpoint=False):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, depth, dtype=torch.float32, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            ContextRefinementBlock(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, rates[i], num_actions,
                                   act_dim, num_act_layers, num_queries)
            for i in range(depth))
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        logits = []
        for block in self.blocks:
            x, out = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            logits.append(out)
        return logits


def extend_boxes(boxes, whwh, scale):
    """Enlarge boxes ``[P, 4]`` (absolute xyxy pixels) by ``scale = (sx, sy)``: each side moves out by
    ``s * (size + 1) / 2`` (the official "+1" width); then clip x to ``[0, w - 1]`` and y to ``[0, h - 1]``
    with ``whwh`` ``[4]`` = (w, h, w, h) of the clip. Returns a new ``[P, 4]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    pad_x = float(scale[0]) * (x2 - x1 + 1) / 2
    pad_y = float(scale[1]) * (y2 - y1 + 1) / 2
    out = torch.stack([x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y], dim=-1)
    return torch.minimum(out.clamp(min=0), whwh - 1)


class ContextRefinement(nn.Module):
    """EVAD's action branch (see the module docstring); parameters under the official ``det_head`` names.

    Args:
        encoder_dim: the ViT width D.
        embed_dim, depth, num_heads, mlp_ratio: the decoder (official ``MODEL.CRD.*``; zoo: 384 / 512, 6, 6, 4).
        drop_rate, attn_drop_rate, drop_path_rate: dropout, attention dropout, stochastic depth of the decoder.
        num_actions: action classes A.
        act_dim, num_act_layers: the classifier tower (official ``SparseRCNN.ACT_FC_DIM`` 2048, ``NUM_ACT`` 1).
        num_queries: person queries P per clip.
        roi_extension: ``(sx, sy)`` box enlargement before RoIAlign (zoo: (0.4, 0.2), keep-1.0 row (0, 0)).
        roi_resolution, roi_sampling_ratio: RoIAlign bins per side and samples per bin (official 7, 2).
        patch_size: the ViT patch (RoIAlign scale ``1 / patch_size``; official ``DETECTION.SPATIAL_SCALE_FACTOR``).
        pos_grid: ``(t0, h0, w0)`` grid of the position table (``DATA.NUM_FRAMES / tubelet``, pre-training side).
        use_learnable_pos_emb: a learned table (parameter ``pos_embed`` ``[1, t0*h0*w0, C]``) instead of the sine one.
        use_checkpoint: recompute the decoder blocks in the backward pass.
        restore_shuffle: place the kept tokens as the official code does (see the module docstring).
        float32_boxes: round the extended boxes to float32 before RoIAlign, as detectron2's ``Boxes`` do in the
            official code (a no-op for float32 boxes; it matters for float64 parity only).
    """

    def __init__(self, encoder_dim, embed_dim=384, depth=6, num_heads=6, mlp_ratio=4.0, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, num_actions=80, act_dim=2048, num_act_layers=1,
                 num_queries=100, roi_extension=(0.0, 0.0), roi_resolution=7, roi_sampling_ratio=2, patch_size=16,
                 pos_grid=(8, 14, 14), use_learnable_pos_emb=False, use_checkpoint=False, restore_shuffle=True,
                 float32_boxes=True):
        super().__init__()
        if len(roi_extension) not in (1, 2):
            raise ValueError(f"EVAD.ROI_EXTENSION {list(roi_extension)}: expected (x, y) or one value for both")
        self.roi_extension = tuple(float(s) for s in roi_extension) * (2 if len(roi_extension) == 1 else 1)
        self.roi_resolution = int(roi_resolution)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.spatial_scale = 1.0 / patch_size
        self.pos_grid = tuple(pos_grid)
        self.restore_shuffle = bool(restore_shuffle)
        self.float32_boxes = bool(float32_boxes)
        self.num_queries = num_queries
        num_positions = self.pos_grid[0] * self.pos_grid[1] * self.pos_grid[2]
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None
            self._fixed_table = sinusoid_position_table(num_positions, embed_dim)
            self._table_cache = OrderedDict()
            self._captured_tables = {}  # tables read by CUDA graph captures (kept alive)
        self.encoder_to_decoder = nn.Linear(encoder_dim, embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder = ContextRefinementDecoder(embed_dim, depth, num_heads, mlp_ratio, drop_rate, attn_drop_rate,
                                                drop_path_rate, num_actions, act_dim, num_act_layers, num_queries,
                                                use_checkpoint)
        self.reset_parameters()

    def reset_parameters(self):
        """Official initialization: decoder Linear xavier-uniform / bias 0, LayerNorm 1 / 0, then xavier-uniform
        on every parameter of more than one dimension (``mask_token`` and ``pos_embed`` included)."""
        for m in self.modules():
            init_vit_weights(m)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def position_embedding(self, grid, dtype, device):
        """Decoder position table for the token grid ``(t, h, w)``: ``[1, t*h*w, C]`` (order t, y, x); the
        backbone's ``position_embedding`` (same tables, resizing and cache)."""
        return position_embedding(self, grid, dtype, device)

    def forward(self, tokens, kept_index, grid, boxes, whwh):
        """Per-block action logits of the person queries.

        Args:
            tokens: ``[B, S + K, D]`` the backbone's final tokens (S = h*w keyframe tokens, then the K kept ones).
            kept_index: ``[B, K]`` non-keyframe index of each kept token (``EVADFeatures.kept_index``).
            grid: the token grid ``(t, h, w)``.
            boxes: ``[B, P, 4]`` person boxes, absolute xyxy pixels of the padded input (not differentiated).
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.

        Returns:
            list (one per decoder block) of ``[B, P, A]`` action logits.
        """
        t, h, w = grid
        s = h * w
        x = self.encoder_to_decoder(tokens)
        b, _, c = x.shape
        pos = self.position_embedding(grid, x.dtype, x.device).expand(b, -1, -1)
        key_start, key_end = s * (t // 2), s * (t // 2 + 1)
        pos_key = pos[:, key_start:key_end]
        pos_other = torch.cat([pos[:, :key_start], pos[:, key_end:]], dim=1)
        positions = kept_index.sort(dim=1).values if self.restore_shuffle else kept_index
        gather = positions.unsqueeze(-1).expand(-1, -1, c)
        x_key, x_kept = x[:, :s], x[:, s:]
        others = self.mask_token.to(x.dtype).expand(b, pos_other.shape[1], c).scatter(1, gather, x_kept)
        full = torch.cat([others[:, :key_start], x_key, others[:, key_start:]], dim=1) + pos
        x = x + torch.cat([pos_key, torch.gather(pos_other, 1, gather)], dim=1)
        rois = self.roi_features(full, grid, boxes.detach(), whwh)
        return self.decoder(torch.cat([x, rois], dim=1))

    def roi_features(self, full, grid, boxes, whwh):
        """``[B, t*h*w, C]`` restored grid, ``[B, P, 4]`` boxes -> ``[B, P, C]``: RoIAlign of the extended boxes on
        every temporal slice, max over the bins, mean over time."""
        t, h, w = grid
        b, _, c = full.shape
        maps = full.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).reshape(b, c * t, h, w)
        extended = [extend_boxes(bx, wh.to(bx.dtype), self.roi_extension) for bx, wh in zip(boxes, whwh)]
        if self.float32_boxes:
            extended = [bx.float().to(bx.dtype) for bx in extended]
        pooled = roi_align(maps, extended, output_size=self.roi_resolution, spatial_scale=self.spatial_scale,
                           sampling_ratio=self.roi_sampling_ratio, aligned=True)
        pooled = pooled.reshape(-1, c, t, self.roi_resolution * self.roi_resolution).amax(dim=-1).mean(dim=-1)
        return pooled.reshape(b, boxes.shape[1], c)
