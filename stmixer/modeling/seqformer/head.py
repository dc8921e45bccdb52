"""SeqFormer's head on the ir-CSN stages (the TubeR fork's ``models/seqformer_ava.py`` ``DeformableDETR``).

From the CSN stages ``layer2..layer4`` (temporal stride 1: every stage keeps the clip's ``T`` frames, the
fork's ``ir_CSN_50_variant``), per frame:

* levels: ``input_proj[l]`` (1x1 conv + GroupNorm(32)) of layer2..layer4, then ``NUM_FEATURE_LEVELS - 3`` extra
  levels (3x3 stride-2 conv + GroupNorm(32): the first of layer4, each next one of the previous extra level);
  masks resized from the clip's padding mask (nearest); DETR's normalized 2-D sine positions (float32, cast);
* ``SeqFormerTransformer`` with ``query_embed`` ``[Q, 2C]``;
* per decoder layer ``k``: actions ``class_embed[k](hs[k])`` ``[B, Q, A]``; boxes: per frame
  ``bbox_embed[k](hs_box[k]) + inverse_sigmoid(reference)`` (a 2-d reference shifts the centre only),
  averaged over the frames *before* the sigmoid: one normalized cxcywh box per query ``[B, Q, 4]``.

``box_refine`` (``MODEL.SEQFORMER.BOX_REFINE``, the fork's yaml: True): per-layer deep copies of the heads
and Deformable DETR's iterative refinement (``transformer.decoder.bbox_embed``); False: one head shared by
all layers, references fixed.

``batch_time_mix`` (``MODEL.SEQFORMER.BATCH_TIME_MIX``): the fork's backbone flattens frames time-major
(``[T*B, ...]``) and the head regroups them batch-major (``reshape(B, T, ...)``), so with more than one clip per
batch the "clip" ``b`` the transformer sees holds frames of several clips (and its valid ratios are those of its
first frame). "train" (default): reproduced in training mode, while inference regroups each clip's own frames,
so detections do not depend on ``TEST.VIDEOS_PER_BATCH`` or the number of GPUs (the fork evaluates one clip
per GPU, where both agree); "always": the fork's code, also at inference; "never": each clip's own frames.

Fixed crashes: with ``NUM_FEATURE_LEVELS > 4`` the fork applies a 2-D convolution to the regrouped 5-D map of
the previous level; here every extra level is computed on the time-major frames. ``NUM_FEATURE_LEVELS`` 1 or 2
crash in the fork (more CSN levels than projections or level embeddings): the builder rejects them.

Initialization as the fork: ``class_embed`` bias ``-log((1 - 0.01) / 0.01)``, last box layer zero with bias
``[2:] = -2`` on the first layer's head (box refinement) or the shared head, ``input_proj`` convs Xavier
(zero bias).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.detr import clones
from ..tuber.deformable_transformer import inverse_sigmoid
from ..tuber.deformable_tuber import clips_of, frames_of, level_projections, sine_position_2d
from ..tuber.head import MLP

BACKBONE_LEVELS = 3  # layer2..layer4 (the fork's Backbone returns layer1..layer4 and uses [1:])
BATCH_TIME_MIX = ("train", "always", "never")


class SeqFormerHead(nn.Module):
    """Args:
        transformer: ``SeqFormerTransformer`` (``num_feature_levels >= 3``).
        num_queries: Q (the fork's yaml: 20).
        num_actions: A (80).
        level_channels: channels of CSN layer2..layer4 (512, 1024, 2048).
        box_refine: see the module docstring.
        batch_time_mix: "train", "always" or "never" (see the module docstring).
    """

    multi_level = True  # the TubeR detector hands this head every CSN stage

    def __init__(self, transformer, num_queries=20, num_actions=80, level_channels=(512, 1024, 2048),
                 box_refine=True, batch_time_mix="train"):
        super().__init__()
        if batch_time_mix not in BATCH_TIME_MIX:
            raise ValueError(f"SeqFormerHead: batch_time_mix = {batch_time_mix!r}, expected one of {BATCH_TIME_MIX}")
        num_levels = transformer.num_feature_levels
        if num_levels < BACKBONE_LEVELS:
            raise ValueError(f"SeqFormerHead: {num_levels} feature levels; the fork's SeqFormer reads CSN layer2.."
                             f"layer4 ({BACKBONE_LEVELS}) plus optional extra levels")
        d = transformer.d_model
        self.transformer = transformer
        self.num_queries = num_queries
        self.box_refine = box_refine
        self.batch_time_mix = batch_time_mix
        self.hidden_dim = d
        self.input_proj = level_projections(level_channels, d, num_levels)
        self.query_embed = nn.Embedding(num_queries, 2 * d)
        class_embed = nn.Linear(d, num_actions)
        bbox_embed = MLP(d, d, 4, 3)
        class_embed.bias.data = torch.ones(num_actions) * -math.log((1 - 0.01) / 0.01)
        nn.init.constant_(bbox_embed.layers[-1].weight.data, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias.data, 0)
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.constant_(p[0].bias, 0)
        num_dec = transformer.decoder.num_layers
        if box_refine:
            self.class_embed = clones(class_embed, num_dec)
            self.bbox_embed = clones(bbox_embed, num_dec)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias.data[2:], -2.0)
            transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias.data[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_dec)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_dec)
            transformer.decoder.bbox_embed = None

    def levels(self, feats, pixel_mask):
        """Per level: maps ``[B, T, C, H_l, W_l]``, masks ``[B, T, H_l, W_l]``, positions ``[B, T, C, H_l, W_l]``."""
        batch = feats[-1].shape[0]
        frames = [self.input_proj[lvl](frames_of(x)) for lvl, x in enumerate(feats[-BACKBONE_LEVELS:])]
        for lvl in range(BACKBONE_LEVELS, len(self.input_proj)):
            source = frames_of(feats[-1]) if lvl == BACKBONE_LEVELS else frames[-1]
            frames.append(self.input_proj[lvl](source))
        mix = self.batch_time_mix == "always" or (self.batch_time_mix == "train" and self.training)
        srcs, masks, poses = [], [], []
        for src in frames:
            t = src.shape[0] // batch
            mask = F.interpolate(pixel_mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            mask = mask[None].expand(t, *mask.shape).flatten(0, 1)  # time-major, as the frames
            pos = sine_position_2d(mask, self.hidden_dim // 2, src.dtype)
            srcs.append(clips_of(src, batch, mix))
            masks.append(clips_of(mask, batch, mix))
            poses.append(clips_of(pos, batch, mix))
        return srcs, masks, poses

    def forward(self, feats, pixel_mask, trace=None):
        """Per-layer predictions.

        Args:
            feats: CSN stage outputs ``[B, C_s, T, H_s, W_s]`` (the last three are used; all with the same T).
            pixel_mask: ``[B, H, W]`` bool, True on padded pixels of the input clip.
            trace: optional dict: receives "srcs", "masks", "pos", "memory", "hs", "hs_box", "init_reference",
                "inter_references", "frame_boxes" (per layer ``[L, B, T, Q, 4]`` box logits before the mean).

        Returns:
            dict of per-layer ``[L, B, Q, *]``: "logits" (A action logits), "boxes" (normalized cxcywh).
        """
        frames = {x.shape[2] for x in feats[-BACKBONE_LEVELS:]}
        if len(frames) != 1:
            raise ValueError(f"SeqFormerHead: CSN layer2..layer4 have {sorted(frames)} frames; SeqFormer needs one "
                             "frame count for all (MODEL.CSN.TEMPORAL_STRIDE 1)")
        srcs, masks, poses = self.levels(feats, pixel_mask)
        out = self.transformer(srcs, masks, poses, self.query_embed.weight)
        hs, hs_box = out["hs"], out["hs_box"]
        logits, boxes, frame_boxes = [], [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(out["init_reference"] if lvl == 0 else out["inter_references"][lvl - 1])
            logits.append(self.class_embed[lvl](hs[lvl]))
            delta = self.bbox_embed[lvl](hs_box[lvl])
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            frame_boxes.append(delta)
            boxes.append(delta.mean(dim=1).sigmoid())
        if trace is not None:
            trace.update({"srcs": srcs, "masks": masks, "pos": poses, "memory": out["memory"], "hs": hs,
                          "hs_box": hs_box, "init_reference": out["init_reference"],
                          "inter_references": out["inter_references"], "frame_boxes": torch.stack(frame_boxes)})
        return {"logits": torch.stack(logits), "boxes": torch.stack(boxes)}

    def key_frame_outputs(self, out):
        """The outputs themselves: one box per query, averaged over the frames (no per-frame query groups)."""
        return out
