"""mmaction2's ``AVARoIHead``: RoI extraction -> optional shared head -> ``BBoxHeadAVA``.

Training (``loss``): per clip the proposals are assigned to the ground truth
(``MaxIoUAssignerAVA``) and sampled (``RandomSampler``, ground truth added as candidates), the
sampled boxes of all clips form the RoIs (``(batch_index, x1, y1, x2, y2)``, per clip positives
first then negatives), and the bbox head's loss is taken on them with mmaction2's
``bbox_target`` labels. Inference (``predict``): every proposal is classified, and its box is
normalised to ``[0, 1]`` of the clip (undoing a flip / crop when given), as mmaction2's
``predict_by_feat``.

Boxes are absolute xyxy pixels of the network input throughout (the padded input's frame;
padding only adds right / bottom pixels, so pixel coordinates are those of the unpadded clip).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ...errors import UserError
from .assigner import MaxIoUAssignerAVA, RandomSampler, SamplingResult
from .bbox_head import BBoxHeadAVA, bbox_targets
from .roi_extractor import RoIExtractor3D

# Names of the bbox head's loss dict that are metrics (logged, never summed into the loss).
METRIC_PREFIXES = ("recall@", "prec@")


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """``[sum n_i, 5]`` rows ``(i, x1, y1, x2, y2)`` of per-clip boxes ``[n_i, 4]`` (mmdet ``bbox2roi``)."""
    rois = [torch.cat([b.new_full((b.shape[0], 1), float(i)), b[:, :4]], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)


class AVARoIHead(nn.Module):
    """RoI head of the two-stage AVA detectors (``roi_head`` of mmaction2's ``FastRCNN``).

    Args:
        bbox_roi_extractor: ``RoIExtractor3D``.
        bbox_head: ``BBoxHeadAVA`` (its ``in_channels`` are the extractor's, or the shared head's
            ``out_channels``).
        shared_head: optional module of ``SHARED_HEAD_REGISTRY``'s interface, called as
            ``shared_head(roi_feats, feat, rois, img_keys)``; None = none.
        assigner, sampler: ``MaxIoUAssignerAVA`` and ``RandomSampler`` of training.
        pos_weight: ``train_cfg.rcnn.pos_weight`` (weight of positive RoIs in ``bbox_targets``;
            mmaction2's loss does not read the weights).

    Attribute names are mmaction2's, so its ``roi_head.bbox_head.*`` / ``roi_head.shared_head.*``
    checkpoint keys are ours.
    """

    def __init__(self, bbox_roi_extractor: RoIExtractor3D, bbox_head: BBoxHeadAVA,
                 shared_head: Optional[nn.Module] = None, assigner: Optional[MaxIoUAssignerAVA] = None,
                 sampler: Optional[RandomSampler] = None, pos_weight: float = 1.0):
        super().__init__()
        self.bbox_roi_extractor = bbox_roi_extractor
        if shared_head is not None:
            self.shared_head = shared_head
        self.with_shared_head = shared_head is not None
        self.bbox_head = bbox_head
        self.assigner = assigner if assigner is not None else MaxIoUAssignerAVA()
        self.sampler = sampler if sampler is not None else RandomSampler()
        self.pos_weight = float(pos_weight)

    def forward_rois(self, feats: Union[Tensor, Sequence[Tensor]], rois: Tensor,
                     img_keys: Optional[Sequence[str]] = None) -> Tuple[Tensor, Tensor]:
        """``(cls_score [K, num_classes], roi_feats)`` of ``rois`` ``[K, 5]`` on the backbone's
        last-stage map(s) ``feats`` (``[B, C, T, H, W]`` or a list of pathways); ``roi_feats`` is what
        the bbox head reads (after the shared head). Under autocast (maps in bf16 / fp16, boxes in float32)
        the maps are cast to the boxes' dtype for RoI extraction, as torchvision's roi_align autocasts."""
        maps = [feats] if torch.is_tensor(feats) else list(feats)
        if maps[0].dtype != rois.dtype and torch.is_autocast_enabled(maps[0].device.type):
            maps = [m.to(rois.dtype) for m in maps]
            feats = maps[0] if torch.is_tensor(feats) else maps
        roi_feats, feat = self.bbox_roi_extractor(feats, rois)
        if self.with_shared_head:
            roi_feats = self.shared_head(roi_feats, feat, rois, img_keys)
        return self.bbox_head(roi_feats), roi_feats

    def sample(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
               generator: Optional[torch.Generator] = None) -> List[SamplingResult]:
        """Per clip, assign ``proposals[i]`` ``[n_i, 4]`` to ``gt_boxes[i]`` ``[k_i, 4]`` with labels
        ``gt_labels[i]`` ``[k_i, num_classes]`` and sample them (see the module doc)."""
        if not len(proposals) == len(gt_boxes) == len(gt_labels):
            raise UserError(f"AVARoIHead: {len(proposals)} proposal sets for {len(gt_boxes)} clips of ground truth")
        results = []
        for props, boxes, labels in zip(proposals, gt_boxes, gt_labels):
            props = props[:, :4].to(boxes.dtype)
            assign = self.assigner.assign(props, boxes, labels)
            results.append(self.sampler.sample(assign, props, boxes, labels, generator=generator))
        return results

    def loss(self, feats: Union[Tensor, Sequence[Tensor]], proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor],
             gt_labels: Sequence[Tensor], img_keys: Optional[Sequence[str]] = None,
             generator: Optional[torch.Generator] = None) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """Loss terms and metrics of one batch.

        Returns:
            ``(losses, metrics)``: ``losses`` holds ``loss_action_cls`` only (the sum the trainer
            back-propagates); ``metrics`` the bbox head's ``recall@thr=0.5``, ``prec@thr=0.5``,
            ``recall@top{k}``, ``prec@top{k}`` (detached, for logging), plus under ``"_"``-prefixed
            names the intermediate results (``_rois``, ``_labels``, ``_label_weights``,
            ``_cls_score``, ``_roi_feats``; ``_sampling``: the per-clip ``SamplingResult`` list).
        """
        sampling = self.sample(proposals, gt_boxes, gt_labels, generator)
        rois = boxes_to_rois([s.priors for s in sampling])
        cls_score, roi_feats = self.forward_rois(feats, rois, img_keys)
        labels, label_weights = bbox_targets([s.pos_gt_labels for s in sampling],
                                             [s.neg_priors.shape[0] for s in sampling], self.pos_weight)
        out = self.bbox_head.loss(cls_score, labels)
        losses = {k: v for k, v in out.items() if not k.startswith(METRIC_PREFIXES)}
        metrics = {k: v.detach() for k, v in out.items() if k.startswith(METRIC_PREFIXES)}
        metrics.update(_rois=rois, _labels=labels, _label_weights=label_weights, _cls_score=cls_score,
                       _roi_feats=roi_feats, _sampling=sampling)
        return losses, metrics

    def predict(self, feats: Union[Tensor, Sequence[Tensor]], proposals: Sequence[Tensor],
                img_shapes: Sequence[Tuple[int, int]], img_keys: Optional[Sequence[str]] = None,
                flips: Optional[Sequence[bool]] = None,
                crop_quadruples: Optional[Sequence[Optional[Sequence[float]]]] = None) -> List[Tuple[Tensor, Tensor]]:
        """Per clip ``(boxes [n_i, 4] normalised xyxy, scores [n_i, num_classes])`` of every proposal.

        Args:
            proposals: per clip ``[n_i, 4]`` (a 5th score column is ignored), absolute pixels.
            img_shapes: per clip ``(height, width)`` of the clip in the network input (the
                normalisation), mmaction2's ``img_shape``.
            flips, crop_quadruples: per clip, as ``BBoxHeadAVA.predict`` (None: no flip / no crop).
        """
        num = [p.shape[0] for p in proposals]
        rois = boxes_to_rois([p[:, :4] for p in proposals])
        cls_score, _ = self.forward_rois(feats, rois, img_keys)
        results = []
        for i, (r, s) in enumerate(zip(rois.split(num), cls_score.split(num))):
            flip = bool(flips[i]) if flips is not None else False
            crop = crop_quadruples[i] if crop_quadruples is not None else None
            results.append(self.bbox_head.predict(r, s, tuple(img_shapes[i]), flip=flip, crop_quadruple=crop))
        return results
