"""Proposal-to-ground-truth assignment and RoI sampling of mmaction2's two-stage AVA detectors.

``MaxIoUAssignerAVA`` is mmaction2's assigner of that name (mmdet's ``MaxIoUAssigner`` with
multi-hot labels) and ``RandomSampler`` is mmdet 3.x's ``RandomSampler``, both with plain
arguments. Boxes are absolute xyxy pixels of the network input (any one convention, the same
for proposals and ground truth); IoUs have no "+1" pixel offset (mmdet 3.x ``bbox_overlaps``).

Differences from the official code, all outside what its AVA training reaches:

* labels keep the ground truth's dtype (mmaction2 creates them as float32 whatever the input
  dtype; the values, 0/1 multi-hot rows copied from the ground truth, are the same);
* a clip without ground truth gets all its proposals negative with all-zero label rows
  (mmaction2 returns 1-D ``-1`` labels there, which its sampler cannot concatenate with
  ground-truth labels; AVA training clips always have ground truth).

Randomness: ``RandomSampler.sample`` draws, only when a clip has more positive (or negative)
candidates than it keeps, with ``torch.randperm`` on the given ``torch.Generator`` or, with
``generator=None``, on torch's global RNG as mmdet does (so a seeded run draws the same
indices as mmdet's sampler given the same global RNG state).
"""

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ...errors import UserError


def box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU matrix ``[M, N]`` of xyxy boxes ``[M, 4]`` and ``[N, 4]`` (mmdet 3.x ``bbox_overlaps``,
    mode ``iou``: no pixel offset, the union clamped below at ``eps``)."""
    if boxes1.shape[0] * boxes2.shape[0] == 0:
        return boxes1.new_zeros((boxes1.shape[0], boxes2.shape[0]))
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - overlap
    union = torch.max(union, union.new_tensor([eps]))
    return overlap / union


@dataclass
class AssignResult:
    """Assignment of ``n`` candidate boxes.

    Attributes:
        gt_inds: ``[n]`` long: 0 negative, ``i > 0`` positive for ground truth ``i - 1``, -1 ignored.
        max_overlaps: ``[n]`` IoU with the best-overlapping ground truth.
        labels: ``[n, C]`` the assigned ground truth's multi-hot row (zeros when not positive).
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor

    def add_gt(self, gt_labels: Tensor) -> None:
        """Prepend the ground truths themselves as positives (mmdet's ``add_gt_``)."""
        k = gt_labels.shape[0]
        self.gt_inds = torch.cat([torch.arange(1, k + 1, dtype=torch.long, device=gt_labels.device), self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(k), self.max_overlaps])
        self.labels = torch.cat([gt_labels.to(self.labels.dtype), self.labels])


class MaxIoUAssignerAVA:
    """mmaction2's ``MaxIoUAssignerAVA`` (mmdet ``MaxIoUAssigner`` with multi-hot AVA labels).

    Steps (order matters): every candidate -1; IoU with its best ground truth in ``[0, neg_iou_thr)``
    -> 0 (negative); ``>= pos_iou_thr`` -> that ground truth; then, with ``match_low_quality``,
    each ground truth whose best IoU is ``>= min_pos_iou`` takes the candidates of that IoU (all
    of them with ``gt_max_assign_all``, else the first), in ground-truth order.

    Args:
        pos_iou_thr, neg_iou_thr, min_pos_iou: thresholds (mmaction2's AVA configs: 0.9, 0.9, 0.9).
        neg_iou_thr may also be a ``(low, high)`` pair.
        match_low_quality, gt_max_assign_all: mmdet's options (defaults True, as in the AVA configs).
    """

    def __init__(self, pos_iou_thr: float = 0.9, neg_iou_thr: Union[float, Tuple[float, float]] = 0.9,
                 min_pos_iou: float = 0.9, match_low_quality: bool = True, gt_max_assign_all: bool = True):
        if isinstance(neg_iou_thr, (list, tuple)):
            if len(neg_iou_thr) != 2:
                raise UserError(f"neg_iou_thr: expected a number or a (low, high) pair, got {neg_iou_thr!r}")
            neg_iou_thr = (float(neg_iou_thr[0]), float(neg_iou_thr[1]))
        else:
            neg_iou_thr = float(neg_iou_thr)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = float(min_pos_iou)
        self.match_low_quality = bool(match_low_quality)
        self.gt_max_assign_all = bool(gt_max_assign_all)

    def assign(self, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> AssignResult:
        """Assign candidates ``priors`` ``[n, 4]`` to ground truth ``gt_boxes`` ``[k, 4]`` with
        multi-hot ``gt_labels`` ``[k, C]``; see ``AssignResult``."""
        if gt_labels.dim() != 2 or gt_labels.shape[0] != gt_boxes.shape[0]:
            raise UserError(f"assign: expected gt_labels [k={gt_boxes.shape[0]}, C], got {tuple(gt_labels.shape)}")
        n, k = priors.shape[0], gt_boxes.shape[0]
        overlaps = box_iou(gt_boxes, priors[:, :4])  # [k, n]
        gt_inds = torch.full((n,), -1, dtype=torch.long, device=priors.device)
        labels = gt_labels.new_zeros((n, gt_labels.shape[1]))
        if k == 0 or n == 0:
            if k == 0:
                gt_inds[:] = 0
            return AssignResult(gt_inds, overlaps.new_zeros(n), labels)
        max_overlaps, argmax = overlaps.max(dim=0)
        gt_max, gt_argmax = overlaps.max(dim=1)
        if isinstance(self.neg_iou_thr, tuple):
            low, high = self.neg_iou_thr
            gt_inds[(max_overlaps >= low) & (max_overlaps < high)] = 0
        else:
            gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1
        if self.match_low_quality:
            for i in range(k):
                if gt_max[i] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[overlaps[i] == gt_max[i]] = i + 1
                    else:
                        gt_inds[gt_argmax[i]] = i + 1
        positive = gt_inds > 0
        labels[positive] = gt_labels[gt_inds[positive] - 1]
        return AssignResult(gt_inds, max_overlaps, labels)


@dataclass
class SamplingResult:
    """Sampled RoIs of one clip (positives first, then negatives, as mmdet's ``SamplingResult``).

    Attributes:
        pos_inds, neg_inds: ``[p]``, ``[q]`` indices into the candidates (ground truth first when added).
        pos_priors, neg_priors: ``[p, 4]``, ``[q, 4]`` their boxes.
        pos_gt_labels: ``[p, C]`` labels of the positives.
        pos_is_gt: ``[p]`` uint8, 1 where the positive is a ground-truth box added as a candidate.
        pos_assigned_gt_inds: ``[p]`` 0-based ground-truth index of each positive.
    """

    pos_inds: Tensor
    neg_inds: Tensor
    pos_priors: Tensor
    neg_priors: Tensor
    pos_gt_labels: Tensor
    pos_is_gt: Tensor
    pos_assigned_gt_inds: Tensor

    @property
    def priors(self) -> Tensor:
        """``[p + q, 4]`` positives then negatives (what the RoIs are built from)."""
        return torch.cat([self.pos_priors, self.neg_priors])


class RandomSampler:
    """mmdet's ``RandomSampler``: keep at most ``num * pos_fraction`` positives and fill up to
    ``num`` with negatives (at most ``neg_pos_ub * max(1, positives)`` when ``neg_pos_ub >= 0``),
    drawn uniformly without replacement when there are more candidates than places.

    Args:
        num: RoIs per clip (AVA configs: 32).
        pos_fraction: upper bound of the positives' share (AVA configs: 1).
        neg_pos_ub: negatives per positive upper bound; -1 = none.
        add_gt_as_proposals: prepend the ground-truth boxes to the candidates (as positives).
    """

    def __init__(self, num: int = 32, pos_fraction: float = 1.0, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True):
        if num <= 0 or not 0 <= pos_fraction <= 1:
            raise UserError(f"RandomSampler: expected num > 0 and pos_fraction in [0, 1], got {num}, {pos_fraction}")
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = bool(add_gt_as_proposals)

    @staticmethod
    def _choice(gallery: Tensor, num: int, generator: Optional[torch.Generator]) -> Tensor:
        if gallery.numel() <= num:
            return gallery
        perm = torch.randperm(gallery.numel(), generator=generator)[:num].to(gallery.device)
        return gallery[perm]

    def sample(self, assign: AssignResult, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
               generator: Optional[torch.Generator] = None) -> SamplingResult:
        """Sample the candidates ``priors`` ``[n, 4]`` of one clip; ``assign`` is their
        ``AssignResult`` (updated in place when the ground truth is added, as mmdet's)."""
        priors = priors[:, :4]
        gt_flags = priors.new_zeros((priors.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals and gt_boxes.shape[0] > 0:
            priors = torch.cat([gt_boxes.to(priors.dtype), priors])
            assign.add_gt(gt_labels)
            gt_flags = torch.cat([priors.new_ones(gt_boxes.shape[0], dtype=torch.uint8), gt_flags])
        pos_inds = self._choice(torch.nonzero(assign.gt_inds > 0).flatten(), int(self.num * self.pos_fraction),
                                generator).unique()
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._choice(torch.nonzero(assign.gt_inds == 0).flatten(), num_neg, generator).unique()
        return SamplingResult(pos_inds=pos_inds, neg_inds=neg_inds, pos_priors=priors[pos_inds],
                              neg_priors=priors[neg_inds], pos_gt_labels=assign.labels[pos_inds],
                              pos_is_gt=gt_flags[pos_inds], pos_assigned_gt_inds=assign.gt_inds[pos_inds] - 1)
