"""mmaction2's two-stage action detector (``FastRCNN`` with ``AVARoIHead``): backbone -> RoI head.

The backbone's last stage (SlowOnly: one map; SlowFast: the slow and fast pathways of res5, not
fused) is read by the RoI head at the person proposals: ground truth plus proposals, assigned and
sampled, in training; every proposal at test time. Attribute names are mmaction2's
(``backbone``, ``roi_head.bbox_head``, ``roi_head.shared_head``), so its detector checkpoints load
key for key through the ``mmaction2`` checkpoint format.

Labels: our datasets give ``[n, A]`` multi-hot rows over the A = 80 AVA actions; mmaction2's head
has ``A + 1`` columns with the background column 0 (never set), which this detector adds.
"""

from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError
from ..errors import UserError
from .build import DETECTOR_REGISTRY, build_backbone, lookup
from .roi_heads.assigner import MaxIoUAssignerAVA, RandomSampler
from .roi_heads.ava_roi_head import AVARoIHead
from .roi_heads.bbox_head import BBoxHeadAVA
from .roi_heads.roi_extractor import RoIExtractor3D
from .roi_heads.shared_heads import SHARED_HEAD_REGISTRY
from .trace import record


def img_key(video_id: str, timestamp: int) -> str:
    """mmaction2's ``img_key`` of a keyframe: ``f"{video_id},{timestamp:04d}"`` (the LFB bank's key)."""
    return f"{video_id},{int(timestamp):04d}"


class FastRCNN(nn.Module):
    """Two-stage AVA detector.

    Args:
        backbone: a ResNet backbone with ``last_stage(videos)`` -> list of pathway maps
            ``[B, C_p, T_p, H/16, W/16]`` (``num_pathways`` 1 or 2).
        roi_head: ``AVARoIHead``.
        action_thr: test-time score threshold (mmaction2's ``action_thr``): scores ``<=`` it are
            returned as 0 (mmaction2's ``bbox2result`` drops them).
        generator: optional ``torch.Generator`` of the sampler (None: torch's global RNG, as mmdet).
    """

    def __init__(self, backbone: nn.Module, roi_head: AVARoIHead, action_thr: float = 0.002,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.backbone = backbone
        self.roi_head = roi_head
        self.action_thr = float(action_thr)
        self.generator = generator
        self.train_metrics = {}

    def extract_feat(self, slow_video: Tensor, fast_video: Optional[Tensor] = None) -> List[Tensor]:
        """The backbone's last-stage pathway maps (see ``backbone``)."""
        videos = [slow_video] if self.backbone.num_pathways == 1 else [slow_video, fast_video]
        return self.backbone.last_stage(videos)

    def _labels(self, labels: Tensor) -> Tensor:
        """``[n, A]`` (or already ``[n, num_classes]``) -> ``[n, num_classes]`` with the background column."""
        num_classes = self.roi_head.bbox_head.num_classes
        background = self.roi_head.bbox_head.background_class
        if labels.dim() == 2 and labels.shape[1] == num_classes:
            return labels
        if background and labels.dim() == 2 and labels.shape[1] == num_classes - 1:
            return F.pad(labels, (1, 0))
        raise UserError(f"FastRCNN: labels of shape {tuple(labels.shape)} do not fit MODEL.ROI_HEAD.NUM_CLASSES = "
                        f"{num_classes} (expected [n, {num_classes - 1 if background else num_classes}])")

    def forward(self, slow_video: Tensor, fast_video: Optional[Tensor], whwh: Tensor,
                gt_boxes: Optional[Sequence[Tensor]] = None, gt_labels: Optional[Sequence[Tensor]] = None,
                proposals: Optional[Sequence[Tensor]] = None, img_keys: Optional[Sequence[str]] = None,
                trace=None):
        """Loss terms (train mode) or detections (eval mode).

        Args:
            slow_video, fast_video: ``[B, 3, T, H, W]`` clips (fast None for single-pathway backbones).
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.
            gt_boxes, gt_labels: train mode: per clip ``[n_i, 4]`` absolute xyxy pixels and ``[n_i, A]``
                multi-hot actions.
            proposals: per clip ``[m_i, 4]`` person proposals, absolute xyxy pixels of the same frame.
                Train mode: None means the ground truth alone (mmaction2's fallback for keyframes without
                proposals). Eval mode: required.
            img_keys: per clip ``"video_id,SSSS"`` (see ``img_key``), read by feature-bank heads.
            trace: optional dict (``modeling.trace``): train: ``rois``, ``labels``, ``label_weights``,
                ``roi_feats``, ``cls_score`` and per clip the sampler's ``pos_inds``, ``neg_inds``,
                ``pos_gt_labels``, ``pos_is_gt``; eval: per clip ``scores`` (every column, background
                included, before ``action_thr``).

        Returns:
            train: ``OrderedDict(loss_action_cls=...)``; the bbox head's recall / precision metrics are
            left in ``self.train_metrics`` (floats, for logging; never summed).
            eval: per clip ``{"boxes": [m_i, 4] normalized xyxy, "scores": [m_i, A] sigmoid scores}``
            (the background column dropped; scores ``<= action_thr`` set to 0).
        """
        feats = self.extract_feat(slow_video, fast_video)
        feats = feats[0] if len(feats) == 1 else feats
        if self.training:
            if gt_boxes is None or gt_labels is None:
                raise UserError("FastRCNN: training needs gt_boxes and gt_labels")
            gt_boxes = [b.to(slow_video.dtype) for b in gt_boxes]
            if proposals is None:
                proposals = [b[:, :0].new_zeros((0, 4)) for b in gt_boxes]
            labels = [self._labels(lab).to(slow_video.dtype) for lab in gt_labels]
            losses, metrics = self.roi_head.loss(feats, [p.to(slow_video.dtype) for p in proposals], gt_boxes, labels,
                                                 img_keys, generator=self.generator)
            for name in ("rois", "labels", "label_weights", "roi_feats", "cls_score"):
                record(trace, name, metrics[f"_{name}"])
            for s in metrics["_sampling"]:
                for name in ("pos_inds", "neg_inds", "pos_gt_labels", "pos_is_gt"):
                    record(trace, name, getattr(s, name))
            self.train_metrics = {k: float(v) for k, v in metrics.items() if not k.startswith("_")}
            return OrderedDict(losses)
        if proposals is None:
            raise UserError("FastRCNN: inference needs person proposals (PROPOSALS.TEST_FILE, or STMixer "
                            "detections given as proposals)")
        img_shapes = [(float(s[1]), float(s[0])) for s in whwh.tolist()]
        results = self.roi_head.predict(feats, [p.to(slow_video.dtype) for p in proposals], img_shapes, img_keys)
        out = []
        for boxes, scores in results:
            record(trace, "scores", scores)
            if self.roi_head.bbox_head.background_class:
                scores = scores[:, 1:]
            scores = scores.masked_fill(scores <= self.action_thr, 0.0)
            out.append({"boxes": boxes, "scores": scores})
        return out


def featmap_stride(cfg) -> int:
    """Spatial stride of the ResNet backbone's last stage: 4 (stem) x the stage strides (first pathway)."""
    stride = 4
    for per_stage in cfg.RESNET.SPATIAL_STRIDES:
        stride *= int(per_stage[0])
    return stride


@DETECTOR_REGISTRY.register("FastRCNN")
def build_fast_rcnn(cfg):
    """FastRCNN from MODEL.BACKBONE.* / RESNET.* / SLOWFAST.* / NONLOCAL.* and MODEL.ROI_HEAD.*."""
    rh = cfg.MODEL.ROI_HEAD
    if "vit" in cfg.MODEL.BACKBONE.CONV_BODY.lower():
        raise ConfigError(f"MODEL.BACKBONE.CONV_BODY = {cfg.MODEL.BACKBONE.CONV_BODY!r}: FastRCNN needs a ResNet "
                          "backbone (PySlowonly, PySlowfast-R50, PySlowfast-R101)")
    if featmap_stride(cfg) != rh.FEATMAP_STRIDE:
        raise ConfigError(f"MODEL.ROI_HEAD.FEATMAP_STRIDE = {rh.FEATMAP_STRIDE}: the backbone's last stage has stride "
                          f"{featmap_stride(cfg)} (RESNET.SPATIAL_STRIDES = {cfg.RESNET.SPATIAL_STRIDES}; mmaction2's "
                          "layout is [[1], [2], [2], [1]] with stride 16)")
    backbone = build_backbone(cfg)
    if not hasattr(backbone, "last_stage"):
        raise ConfigError(f"MODEL.BACKBONE.CONV_BODY = {cfg.MODEL.BACKBONE.CONV_BODY!r} has no last-stage output")
    extractor = RoIExtractor3D(featmap_stride=rh.FEATMAP_STRIDE, output_size=rh.OUTPUT_SIZE,
                               sampling_ratio=rh.SAMPLING_RATIO, aligned=rh.ALIGNED,
                               with_temporal_pool=rh.WITH_TEMPORAL_POOL, temporal_pool_mode=rh.TEMPORAL_POOL_MODE,
                               with_global=rh.WITH_GLOBAL)
    # channels of the RoI features: the last stage's pathways concatenated (x2 with the global feature)
    in_channels = backbone.out_channels[-1] * (2 if rh.WITH_GLOBAL else 1)
    shared_head = None
    if rh.SHARED_HEAD:
        shared_head = lookup(SHARED_HEAD_REGISTRY, rh.SHARED_HEAD)(cfg, in_channels)
        in_channels = shared_head.out_channels
    bbox_head = BBoxHeadAVA(in_channels=in_channels, num_classes=rh.NUM_CLASSES, background_class=rh.BACKGROUND_CLASS,
                            temporal_pool_type=rh.HEAD_TEMPORAL_POOL, spatial_pool_type=rh.HEAD_SPATIAL_POOL,
                            dropout_ratio=rh.DROPOUT, dropout_before_pool=rh.DROPOUT_BEFORE_POOL,
                            mlp_head=rh.MLP_HEAD, focal_alpha=rh.FOCAL_ALPHA, focal_gamma=rh.FOCAL_GAMMA,
                            multilabel=rh.MULTILABEL, topk=tuple(rh.TOPK))
    assigner = MaxIoUAssignerAVA(pos_iou_thr=rh.POS_IOU_THR, neg_iou_thr=rh.NEG_IOU_THR, min_pos_iou=rh.MIN_POS_IOU)
    sampler = RandomSampler(num=rh.SAMPLER_NUM, pos_fraction=rh.SAMPLER_POS_FRACTION, neg_pos_ub=rh.SAMPLER_NEG_POS_UB,
                            add_gt_as_proposals=rh.ADD_GT_AS_PROPOSALS)
    roi_head = AVARoIHead(extractor, bbox_head, shared_head, assigner, sampler, pos_weight=rh.POS_WEIGHT)
    return FastRCNN(backbone, roi_head, action_thr=rh.ACTION_THR)
