"""The TubeR fork's Sparse R-CNN action detector: a video backbone (CSN-50) -> 2-D pyramid -> Sparse R-CNN head.

jinsingsangsung/tuber (branch ``main_sparse``, ``models/sparsercnn/detector.py``) puts
PeizeSun's Sparse R-CNN head on TubeR's CSN-50 with a per-level input projection
(``Conv2d 1x1 + GroupNorm(32)``) and a focal classifier over the AVA actions
(``NUM_CLASSES`` = the dataset's 80, ``USE_FOCAL`` True). The version that was trained
(``main_all`` history, ``configuration/old_models/Sparse_CSN50_AVA21.yaml`` at 50cd09b^) reads
layer2..layer4 plus one extra level (Conv2d 3x3 stride 2 + GroupNorm on the last one), projects
every frame and takes the maximum over time, and trains the C = A action columns with a
weighted BCE (``SetCriterionAVA``) against each ground-truth box's multi-hot actions; the options
below reproduce those choices (docs/sparse_rcnn.md lists them and the fork's defects, which are
not reproduced). At test time each kept query scores ``sigmoid(logits)`` and its person score is
its best action probability.

Inference follows the STMixer detector contract (``stmixer.engine.inference``).
"""

import torch
from torch import nn

from ...config import ConfigError
from ...structures.boxes import clip_and_normalize, find_degenerate_boxes
from ..build import DETECTOR_REGISTRY, build_backbone
from ..matcher import HungarianMatcher
from ..trace import record
from .criterion import SparseRCNNCriterion
from .head import SparseRCNNHead

TEMPORAL_POOLS = ("max", "mean", "keyframe")


class SparseRCNN(nn.Module):
    """Backbone -> per-level temporal pooling + projection -> ``SparseRCNNHead`` -> detections or losses.

    Args:
        backbone: video backbone; ``backbone(videos)`` -> L maps ``[B, C_l, T_l, H_l, W_l]``
            (``num_pathways``, ``out_channels``).
        head: a ``SparseRCNNHead`` with ``use_focal`` (C = A action classes).
        criterion: a ``SparseRCNNCriterion`` (focal, multi-hot targets).
        hidden_dim: d (the projection width).
        temporal_pool: every frame of a level is projected, then reduced over T_l: "max" (the fork),
            "mean", or "keyframe" (slice ``T_l // 2``).
        gn_groups: GroupNorm groups of the projections (the fork's 32).
        extra_levels: levels added after the backbone's, each ``Conv2d 3x3 stride 2 + GroupNorm`` of the
            previous (pooled) level (the fork: 1); the head reads the last ``len(strides) - extra_levels``
            backbone levels and these.
        detections_per_clip: test time: the queries kept per clip (best person score first).
    """

    def __init__(self, backbone, head, criterion, hidden_dim, temporal_pool="max", gn_groups=32,
                 detections_per_clip=100, extra_levels=0):
        super().__init__()
        if temporal_pool not in TEMPORAL_POOLS:
            raise ConfigError(f"MODEL.SPARSE_RCNN.TEMPORAL_POOL = {temporal_pool!r}; expected one of {TEMPORAL_POOLS}")
        self.backbone = backbone
        channels = [sum(c) if isinstance(c, (list, tuple)) else c for c in backbone.out_channels]
        num_levels = len(head.box_pooler.strides)
        if not 0 <= extra_levels < num_levels:
            raise ConfigError(f"MODEL.SPARSE_RCNN.EXTRA_LEVELS = {extra_levels}: expected 0 .. {num_levels - 1} "
                              f"(MODEL.SPARSE_RCNN.FEATMAP_STRIDES has {num_levels} levels)")
        if num_levels - extra_levels > len(channels):
            raise ConfigError(f"MODEL.SPARSE_RCNN.FEATMAP_STRIDES has {num_levels} levels, {extra_levels} extra: the "
                              f"backbone gives only {len(channels)}")
        self.num_backbone_levels = num_levels - extra_levels
        # the fork's input_proj, under the name of our detectors' projection part (checkpoint MODEL_PARTS)
        self.lateral_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, kernel_size=1), nn.GroupNorm(gn_groups, hidden_dim))
            for c in channels[-self.num_backbone_levels:])
        self.extra_convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, stride=2, padding=1),
                          nn.GroupNorm(gn_groups, hidden_dim))
            for _ in range(extra_levels))
        for proj in list(self.lateral_convs) + list(self.extra_convs):  # DETR's input_proj initialization
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.head = head
        self.criterion = criterion
        self.temporal_pool = temporal_pool
        self.detections_per_clip = detections_per_clip

    def features(self, slow_video, fast_video=None):
        """The head's input: L maps ``[B, d, H_l, W_l]`` (the last L backbone levels, pooled over time, projected)."""
        videos = [slow_video] if self.backbone.num_pathways == 1 else [slow_video, fast_video]
        levels = self.backbone(videos)[-self.num_backbone_levels:]
        strides = self.head.box_pooler.strides
        out = []
        for i, (level, proj, stride) in enumerate(zip(levels, self.lateral_convs, strides)):
            expected = -(-slow_video.size(-1) // stride)
            if level.size(-1) != expected:
                raise ConfigError(
                    f"backbone level {i} is {level.size(-1)} wide for a {slow_video.size(-1)}-pixel input; "
                    f"MODEL.SPARSE_RCNN.FEATMAP_STRIDES = {list(strides)} expects stride {stride} ({expected} wide)")
            if self.temporal_pool == "keyframe":
                out.append(proj(level[:, :, level.size(2) // 2]))
                continue
            B, C, T, H, W = level.shape
            frames = proj(level.transpose(1, 2).reshape(B * T, C, H, W)).view(B, T, -1, H, W)
            out.append(frames.amax(1) if self.temporal_pool == "max" else frames.mean(1))
        for conv in self.extra_convs:
            out.append(conv(out[-1]))
        return out

    def forward(self, slow_video, fast_video, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """Detections (eval mode) or the weighted loss dict (train mode).

        Args:
            slow_video, fast_video: ``[B, 3, T, H, W]`` normalized, zero-padded clips (fast: None
                for single-pathway backbones).
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.
            gt_boxes: train mode: B tensors ``[n_i, 4]`` absolute xyxy pixels.
            gt_labels: train mode: B tensors ``[n_i, A]`` multi-hot actions.
            trace: optional dict (``modeling.trace``): ``mapped_l{i}``, the head's names, ``match/stage{k}``.

        Returns:
            eval: per clip ``{"scores": [n, A] action probabilities, "boxes": [n, 4] normalized xyxy,
            "query_indices": [n], "person_scores": [n] (best action probability)}``, n =
            ``min(detections_per_clip, Q)`` best first; train: ordered dict of weighted loss terms.
        """
        features = self.features(slow_video, fast_video)
        for i, f in enumerate(features):
            record(trace, f"mapped_l{i}", f)
        dtype = torch.promote_types(features[0].dtype, torch.float32)
        whwh = torch.as_tensor(whwh).to(device=features[0].device, dtype=dtype)
        outputs = self.head(features, whwh, trace)
        if not self.training:
            return self.detections(outputs, whwh)
        if gt_boxes is None or gt_labels is None:
            raise ValueError("SparseRCNN: train mode needs gt_boxes and gt_labels (lists with one tensor per clip)")
        return self.criterion(outputs, self.make_targets(gt_boxes, gt_labels, whwh), trace)

    def detections(self, outputs, whwh):
        """Per clip the ``detections_per_clip`` queries of best person score (see ``forward``)."""
        scores = torch.sigmoid(outputs.class_logits[-1])
        person = scores.max(-1).values
        k = min(self.detections_per_clip, person.size(1))
        results = []
        for i in range(person.size(0)):
            keep = torch.topk(person[i], k).indices
            results.append({"scores": scores[i, keep], "boxes": clip_and_normalize(outputs.boxes[-1][i, keep], whwh[i]),
                            "query_indices": keep, "person_scores": person[i, keep]})
        return results

    def make_targets(self, gt_boxes, gt_labels, whwh):
        """Criterion targets ``{"boxes", "labels" (float multi-hot), "whwh"}`` in ``whwh``'s dtype."""
        if not (len(gt_boxes) == len(gt_labels) == whwh.size(0)):
            raise ValueError(f"got {len(gt_boxes)} gt_boxes and {len(gt_labels)} gt_labels entries for "
                             f"{whwh.size(0)} clips")
        targets = []
        for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            boxes = torch.as_tensor(boxes).to(device=whwh.device, dtype=whwh.dtype).reshape(-1, 4)
            labels = torch.as_tensor(labels).to(device=whwh.device, dtype=whwh.dtype)
            if labels.dim() != 2 or labels.size(0) != boxes.size(0) or labels.size(1) != self.head.num_classes:
                raise ValueError(f"clip {i} of the batch: gt_labels has shape {list(labels.shape)}; expected "
                                 f"[{boxes.size(0)}, {self.head.num_classes}] (MODEL.STM.ACTION_CLASSES columns)")
            bad = find_degenerate_boxes(boxes)
            if bad.numel():
                raise ValueError(f"clip {i} of the batch: ground-truth box {int(bad[0])} = "
                                 f"{boxes[bad[0]].tolist()} is degenerate; expected finite x1 <= x2, y1 <= y2 pixels")
            targets.append({"boxes": boxes, "labels": labels, "whwh": whwh[i]})
        return targets


@DETECTOR_REGISTRY.register("SparseRCNN")
def build_sparse_rcnn(cfg):
    """SparseRCNN from MODEL.BACKBONE.* (+ its backbone's keys), MODEL.SPARSE_RCNN.* and MODEL.STM.ACTION_CLASSES."""
    sr = cfg.MODEL.SPARSE_RCNN
    d = sr.HIDDEN_DIM
    for key, divisor in (("NHEADS", sr.NHEADS), ("PROJ_GN_GROUPS", sr.PROJ_GN_GROUPS)):
        if divisor <= 0 or d % divisor:
            raise ConfigError(f"MODEL.SPARSE_RCNN.HIDDEN_DIM = {d} must be a multiple of MODEL.SPARSE_RCNN.{key} = "
                              f"{divisor}")
    try:
        head = SparseRCNNHead(
            sr.NUM_PROPOSALS, d, cfg.MODEL.STM.ACTION_CLASSES, sr.NUM_STAGES, featmap_strides=tuple(sr.FEATMAP_STRIDES),
            pooler_resolution=sr.POOLER_RESOLUTION, sampling_ratio=sr.SAMPLING_RATIO, use_focal=True,
            prior_prob=sr.PRIOR_PROB, dim_feedforward=sr.DIM_FEEDFORWARD, nhead=sr.NHEADS, dropout=sr.DROPOUT,
            activation=sr.ACTIVATION.lower(), dim_dynamic=sr.DIM_DYNAMIC, num_dynamic=sr.NUM_DYNAMIC,
            num_cls=sr.NUM_CLS, num_reg=sr.NUM_REG)
        criterion = SparseRCNNCriterion(
            HungarianMatcher(sr.CLASS_WEIGHT, sr.L1_WEIGHT, sr.GIOU_WEIGHT, class_cost="focal", focal_alpha=sr.ALPHA,
                             focal_gamma=sr.GAMMA),
            cfg.MODEL.STM.ACTION_CLASSES,
            {"loss_ce": sr.CLASS_WEIGHT, "loss_bbox": sr.L1_WEIGHT, "loss_giou": sr.GIOU_WEIGHT},
            deep_supervision=sr.DEEP_SUPERVISION, use_focal=True, focal_alpha=sr.ALPHA, focal_gamma=sr.GAMMA,
            class_loss=sr.CLASS_LOSS, matched_weight=sr.MATCHED_WEIGHT, match_class_cost=sr.MATCH_CLASS_COST)
    except ValueError as e:
        raise ConfigError(f"MODEL.SPARSE_RCNN: {e}") from None
    backbone = build_backbone(cfg)
    return SparseRCNN(backbone, head, criterion, d, temporal_pool=sr.TEMPORAL_POOL, gn_groups=sr.PROJ_GN_GROUPS,
                      detections_per_clip=sr.DETECTIONS_PER_CLIP, extra_levels=sr.EXTRA_LEVELS)
