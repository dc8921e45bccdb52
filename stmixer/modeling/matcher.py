"""Hungarian matching of one stage's predictions to the ground truth of each clip."""

import dataclasses

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..structures.boxes import generalized_box_iou
from .errors import NonFiniteCostError


@dataclasses.dataclass
class Match:
    """The assignment for one clip: query ``src[k]`` is matched to ground truth ``tgt[k]``.

    src, tgt: int64 ``[n]`` on the CPU (src ascending); cost: ``[Q, n_gt]`` the
    cost matrix that was assigned (CPU, the ground truth's dtype: float32 under autocast).
    """

    src: torch.Tensor
    tgt: torch.Tensor
    cost: torch.Tensor


class HungarianMatcher:
    """One-to-one assignment minimizing a weighted objectness + L1 + GIoU cost (scipy ``linear_sum_assignment``).

    ``cost[q, j] = l1_weight * sum|box_q / whwh - gt_j / whwh| - class_weight * p_person(q)
    - giou_weight * GIoU(box_q, gt_j)``, with ``p_person`` the softmax of the
    objectness logits at column 0, L1 on clip-normalized xyxy and GIoU on pixels.
    Action logits do not enter the cost.

    TubeR (``stmixer.modeling.tuber``): ``person_index=1`` (its 3-way actor switch: column 1 is
    "actor") and ``l1_space="cxcywh"`` (L1 between clip-normalized center-size boxes).
    """

    def __init__(self, class_weight=1.0, l1_weight=1.0, giou_weight=1.0, class_cost="softmax", focal_alpha=0.25,
                 focal_gamma=2.0, person_index=0, l1_space="xyxy"):
        """``class_cost``: "softmax" (above) or "focal" (Sparse R-CNN / Deformable DETR: with ``p`` the sigmoid,
        ``alpha (1 - p)^gamma (-log(p + 1e-8)) - (1 - alpha) p^gamma (-log(1 - p + 1e-8))``). When the targets
        carry "labels" (int64 ``[n]`` class indices or float ``[n, C]`` multi-hot), the class cost of a target
        is that of its class column (summed over the positive columns of a multi-hot row) instead of column
        ``person_index``. ``l1_space``: "xyxy" or "cxcywh" (the space of the L1 cost, clip-normalized)."""
        if class_weight == 0 and l1_weight == 0 and giou_weight == 0:
            raise ValueError("HungarianMatcher: the class, L1 and GIoU cost weights cannot all be 0")
        if class_cost not in ("softmax", "focal"):
            raise ValueError(f"HungarianMatcher: class_cost {class_cost!r}; expected 'softmax' or 'focal'")
        if l1_space not in ("xyxy", "cxcywh"):
            raise ValueError(f"HungarianMatcher: l1_space = {l1_space!r}, expected 'xyxy' or 'cxcywh'")
        self.class_weight = class_weight
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        self.class_cost = class_cost
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.person_index = person_index
        self.l1_space = l1_space

    @torch.no_grad()
    def cost_matrix(self, cls_logits, boxes, gt_boxes, whwh, gt_classes=None):
        """Cost ``[Q, n]`` of assigning each query of one clip to each of its ground-truth boxes.

        Computed in the ground truth's dtype (float32 under autocast), with autocast off.

        Args:
            cls_logits: ``[Q, K + 1]`` objectness logits (column 0 person).
            boxes: ``[Q, 4]`` predicted absolute xyxy pixels.
            gt_boxes: ``[n, 4]`` ground-truth absolute xyxy pixels.
            whwh: ``[4]`` clip size (w, h, w, h).
            gt_classes: optional ``[n, C]`` float class weights of the targets (``target_class_weights``).
        """
        return self.batched_cost(cls_logits[None], boxes[None], gt_boxes[None], whwh[None],
                                 None if gt_classes is None else gt_classes[None])[0]

    @torch.no_grad()
    def batched_cost(self, cls_logits, boxes, gt_boxes, whwh, gt_classes=None):
        """Costs ``[B, Q, N]`` of clips whose ground truth is padded to N boxes (padding columns: ignore them).

        Args:
            cls_logits: ``[B, Q, K + 1]``; boxes: ``[B, Q, 4]`` absolute xyxy pixels.
            gt_boxes: ``[B, N, 4]`` absolute xyxy pixels (padding rows must be boxes of positive area).
            whwh: ``[B, 4]`` clip sizes.
            gt_classes: optional ``[B, N, C]`` float class weights (one-hot rows for class indices); None:
                the class cost is column 0's (person).
        """
        dtype = gt_boxes.dtype
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, boxes = cls_logits.to(dtype), boxes.to(dtype)
            if self.class_cost == "focal":
                prob = cls_logits.sigmoid()
                neg = (1 - self.focal_alpha) * (prob ** self.focal_gamma) * (-(1 - prob + 1e-8).log())
                pos = self.focal_alpha * ((1 - prob) ** self.focal_gamma) * (-(prob + 1e-8).log())
                per_class = pos - neg
            else:
                per_class = -cls_logits.softmax(-1)
            if gt_classes is None:
                cost_class = per_class[..., self.person_index:self.person_index + 1].expand(-1, -1, gt_boxes.size(1))
            else:
                cost_class = per_class @ gt_classes.to(dtype).transpose(1, 2)
            scale = whwh[:, None, :]
            if self.l1_space == "cxcywh":
                cost_l1 = torch.cdist(xyxy_to_cxcywh(boxes / scale), xyxy_to_cxcywh(gt_boxes / scale), p=1)
            else:
                cost_l1 = torch.cdist(boxes / scale, gt_boxes / scale, p=1)
            cost_giou = -generalized_box_iou(boxes[:, :, None], gt_boxes[:, None])
            return self.l1_weight * cost_l1 + self.class_weight * cost_class + self.giou_weight * cost_giou

    @torch.no_grad()
    def __call__(self, cls_logits, boxes, targets):
        """Match every clip of a batch with one device-to-host copy of all cost matrices.

        The ground truth is padded to the batch's largest count, the costs of all clips
        are computed at once on the device and copied to the host together; scipy then
        solves each clip. A caller may fold several decoder stages into the batch
        dimension (``SetCriterion`` does) to match them all with one copy.

        Args:
            cls_logits: ``[B, Q, K + 1]``; boxes: ``[B, Q, 4]`` absolute xyxy pixels.
            targets: B dicts with "boxes" ``[n_i, 4]`` (absolute xyxy) and "whwh" ``[4]``.

        Returns:
            list of B ``Match`` (``cost`` in the targets' dtype).

        Raises:
            NonFiniteCostError: naming the first clip whose cost is not finite (its ``clip``
            attribute is that clip's index in the batch).
        """
        counts = [len(t["boxes"]) for t in targets]
        B, Q = boxes.shape[:2]
        N = max(counts, default=0)
        dtype = targets[0]["boxes"].dtype if targets else boxes.dtype
        if N == 0:
            host = torch.zeros(B, Q, 0, dtype=dtype)
        else:
            gt = boxes.new_zeros(B, N, 4, dtype=dtype)
            gt[..., 2:] = 1.0  # a unit box in the padding keeps every padded cost finite
            for i, (target, n) in enumerate(zip(targets, counts)):
                if n:
                    gt[i, :n] = target["boxes"]
            whwh = torch.stack([t["whwh"] for t in targets]).to(dtype)
            classes = None
            if any("labels" in t for t in targets):
                classes = gt.new_zeros(B, N, cls_logits.size(-1))
                for i, (target, n) in enumerate(zip(targets, counts)):
                    if n:
                        classes[i, :n] = target_class_weights(target["labels"], cls_logits.size(-1), dtype)
            host = self.batched_cost(cls_logits, boxes, gt, whwh, classes).cpu()
            _check_finite(host, counts, cls_logits, boxes)
        # the GPU waits while the host solves: one finiteness check for the batch, not one per clip
        return [_solve(host[i, :, :n]) for i, n in enumerate(counts)]

    @torch.no_grad()
    def match_per_clip(self, cls_logits, boxes, targets):
        """Reference path of ``__call__``: one cost matrix and one device-to-host copy per clip (same results)."""
        return [_solve_clip(i, self.cost_matrix(
            cls_logits[i], boxes[i], t["boxes"], t["whwh"],
            target_class_weights(t["labels"], cls_logits.size(-1), t["boxes"].dtype) if "labels" in t else None).cpu(),
            cls_logits, boxes) for i, t in enumerate(targets)]


def target_class_weights(labels, num_columns, dtype):
    """``[n, C]`` float class weights of a target's "labels": one-hot rows of int64 ``[n]`` class indices,
    or a float ``[n, C]`` multi-hot as given."""
    if labels.dtype in (torch.int64, torch.int32) and labels.dim() == 1:
        return torch.nn.functional.one_hot(labels.long(), num_columns).to(dtype)
    if labels.dim() != 2 or labels.size(1) != num_columns:
        raise ValueError(f"target labels of shape {list(labels.shape)}: expected int64 [n] class indices or a "
                         f"float [n, {num_columns}] multi-hot")
    return labels.to(dtype)


def xyxy_to_cxcywh(boxes):
    """``[..., 4]`` x1,y1,x2,y2 -> center x, center y, width, height (same units)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def _check_finite(host, counts, cls_logits, boxes):
    """``_solve_clip``'s NonFiniteCostError for the first clip whose costs are not finite, checked on the padded
    host costs ``[B, Q, N]`` of the whole batch at once (clip i's columns: the first ``counts[i]``)."""
    valid = torch.arange(host.size(-1)) < torch.tensor(counts).view(-1, 1)  # [B, N]
    bad = (~torch.isfinite(host) & valid[:, None, :]).flatten(1).any(1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        _solve_clip(i, host[i, :, :counts[i]], cls_logits, boxes)


def _solve_clip(i, cost, cls_logits, boxes):
    """``_solve`` of clip ``i``'s host cost ``[Q, n]``; NonFiniteCostError naming the clip (``clip`` = i) and
    what in its predictions ``cls_logits[i]`` / ``boxes[i]`` is not finite when the cost is not."""
    if not torch.isfinite(cost).all():
        error = NonFiniteCostError(f"clip {i} of the batch: {_nonfinite_culprit(cls_logits[i], boxes[i])}")
        error.clip = i
        raise error
    return _solve(cost)


def _solve(cost):
    """Optimal assignment of one host cost matrix ``[Q, n]`` (scipy), as a ``Match``."""
    src, tgt = linear_sum_assignment(cost.numpy())
    src, tgt = (torch.from_numpy(index.astype(np.int64, copy=False)) for index in (src, tgt))
    return Match(src, tgt, cost)


def _nonfinite_culprit(cls_logits, boxes):
    """What made a clip's matching cost non-finite, e.g. "the predicted boxes hold 3 NaN/inf values"."""
    for what, tensor in (("the predicted boxes", boxes), ("the objectness logits", cls_logits)):
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            return f"{what} hold {bad} NaN/inf value{'s' if bad > 1 else ''}, so the matching cost is not finite"
    return "the matching cost is not finite (its terms overflow)"
