"""Sparse R-CNN's set loss: Hungarian matching per stage (``matcher.HungarianMatcher``), then class, L1 and GIoU.

Loss dict (the official names and order, each term already multiplied by its weight):
final stage ``loss_ce, loss_giou, loss_bbox``; with deep supervision then, for every
earlier stage k, ``loss_ce_k, loss_giou_k, loss_bbox_k``.

* ``loss_ce``: focal (``use_focal``): sigmoid focal loss (alpha, gamma) summed over all
  B * Q * C logits, divided by ``num_boxes``; target row of a matched query = the one-hot of
  its target's class (or the target's multi-hot row); softmax: cross-entropy over C + 1 classes
  with class weights ``[1, ..., 1, no_object_weight]``, weighted mean.
  ``class_loss="bce"`` (the TubeR fork's ``SetCriterionAVA``): binary cross-entropy of the sigmoid
  probabilities against the (multi-hot) targets, matched queries weighted ``matched_weight``, the
  others 1, mean over all B * Q * C elements.
* ``loss_bbox``: L1 of matched boxes divided by the image size, summed, / ``num_boxes``.
* ``loss_giou``: ``sum(1 - GIoU) / num_boxes``.

``num_boxes`` as ``losses.average_num_boxes`` (averaged over processes, at least 1).
``match_class_cost="batch_union"`` (the fork's matcher): every target's class cost is that of the
union of all the batch's target classes (the same for every target) instead of its own classes.
The matching and the index bookkeeping are ``losses.SetCriterion``'s.
"""

import torch
import torch.nn.functional as F

from ...structures.boxes import generalized_box_iou
from ..losses import SetCriterion, average_num_boxes
from ..matcher import target_class_weights

FINAL_ORDER = ("loss_ce", "loss_giou", "loss_bbox")
CLASS_LOSSES = ("focal", "bce")
MATCH_CLASS_COSTS = ("per_target", "batch_union")


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Elementwise focal loss (Lin et al. 2017) of logits and float targets of the same shape (no reduction)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class SparseRCNNCriterion(SetCriterion):
    """Matches the supervised stages to the targets and returns the weighted loss dict.

    Args:
        matcher: a ``HungarianMatcher`` (``class_cost="focal"`` with focal, else "softmax").
        num_classes: C (softmax: class C is "no object").
        weights: ``{"loss_ce", "loss_bbox", "loss_giou"}`` multipliers.
        no_object_weight: softmax cross-entropy weight of the no-object class (buffer ``empty_weight``).
        deep_supervision: also supervise every stage before the last.
        use_focal: focal class loss (else softmax cross-entropy); focal_alpha, focal_gamma: its parameters.
        focal_float32: compute the focal loss in float32 whatever the logits' dtype, as the official code
            does (fvcore's ``sigmoid_focal_loss_jit`` casts to float32; its value is then float32); False
            keeps the logits' dtype. No effect on float32 or mixed-precision training.
        class_loss: with ``use_focal``: "focal" (Sparse R-CNN) or "bce" (the TubeR fork, see the module
            docstring); matched_weight: its weight of the matched queries.
        match_class_cost: "per_target" or "batch_union" (see the module docstring).
    """

    def __init__(self, matcher, num_classes, weights, no_object_weight=0.1, deep_supervision=True, use_focal=True,
                 focal_alpha=0.25, focal_gamma=2.0, focal_float32=True, class_loss="focal", matched_weight=10.0,
                 match_class_cost="per_target"):
        missing = set(FINAL_ORDER) - set(weights)
        if missing:
            raise ValueError(f"SparseRCNNCriterion: no weight given for {sorted(missing)}")
        super().__init__(matcher, num_classes, dict(weights, loss_bce=0.0), no_object_weight,
                         intermediate_supervision=deep_supervision)
        # the no-object class weight is a constant of the configuration, not a model weight: kept out of
        # checkpoints (the official focal models have no such buffer)
        self.register_buffer("empty_weight", self.empty_weight, persistent=False)
        self.use_focal = use_focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.focal_float32 = focal_float32
        if class_loss not in CLASS_LOSSES or (class_loss == "bce" and not use_focal):
            raise ValueError(f"Sparse R-CNN class loss {class_loss!r}: expected one of {CLASS_LOSSES} ('bce' needs the "
                             "sigmoid classifier)")
        if match_class_cost not in MATCH_CLASS_COSTS:
            raise ValueError(f"Sparse R-CNN match class cost {match_class_cost!r}: expected one of {MATCH_CLASS_COSTS}")
        self.class_loss = class_loss
        self.matched_weight = matched_weight
        self.match_class_cost = match_class_cost

    def forward(self, outputs, targets, trace=None):
        """Weighted loss dict (see ``losses_and_matches``)."""
        return self.losses_and_matches(outputs, targets, trace)[0]

    def losses_and_matches(self, outputs, targets, trace=None):
        """Losses and the matches they used.

        Args:
            outputs: ``SparseRCNNOutputs`` (lists over stages of class_logits ``[B, Q, C(+1)]`` and boxes
                ``[B, Q, 4]`` absolute xyxy).
            targets: B dicts: "boxes" ``[n_i, 4]`` absolute xyxy, "labels" int64 ``[n_i]`` class indices
                (or, focal only, float ``[n_i, C]`` multi-hot), "whwh" ``[4]`` image size; their dtype is the
                dtype of the costs and losses.
            trace: optional dict; receives ``match/stage{k}`` (a list of ``matcher.Match`` per image).

        Returns:
            (ordered loss dict, ``{k: int64 [3, n_k]}`` rows (image, query, flat target index) of the matched
            pairs of every supervised stage k; the final stage's key is ``S - 1``).
        """
        num_stages = len(outputs.class_logits)
        final = num_stages - 1
        device = outputs.class_logits[final].device
        num_boxes = average_num_boxes(targets, device)
        stages = [final] + (list(range(final)) if self.intermediate_supervision else [])
        indices = self.match(outputs, self._match_targets(targets, outputs.class_logits[final].size(-1)), stages, trace)
        flat = {
            "boxes": torch.cat([t["boxes"] for t in targets]),
            "labels": torch.cat([t["labels"] for t in targets]),
            "whwh": torch.cat([t["whwh"].expand(len(t["boxes"]), 4) for t in targets]),
        }
        losses = {}
        for k in stages:
            terms = self.stage_losses(outputs.class_logits[k], outputs.boxes[k], flat, indices[k], num_boxes)
            suffix = "" if k == final else f"_{k}"
            for name in FINAL_ORDER:
                losses[name + suffix] = terms[name] * self.weights[name]
        return losses, indices

    def _match_targets(self, targets, num_columns):
        """``targets`` as the matcher sees them: with "batch_union" every "labels" row is the union (multi-hot)
        of the batch's target classes."""
        if self.match_class_cost == "per_target" or not targets:
            return targets
        rows = [target_class_weights(t["labels"], num_columns, t["boxes"].dtype) for t in targets]
        union = torch.cat(rows).amax(0) if sum(len(r) for r in rows) else rows[0].new_zeros(num_columns)
        return [dict(t, labels=union.expand(len(t["boxes"]), num_columns)) for t in targets]

    def stage_losses(self, class_logits, boxes, flat_targets, index, num_boxes):
        """Unweighted ``{"loss_ce", "loss_giou", "loss_bbox"}`` of one stage (matched pairs ``index`` ``[3, n]``)."""
        dtype = flat_targets["boxes"].dtype
        with torch.autocast(device_type=class_logits.device.type, enabled=False):
            class_logits, boxes = class_logits.to(dtype), boxes.to(dtype)
            batch_idx, src_idx, tgt_idx = index
            labels = flat_targets["labels"][tgt_idx]
            if self.use_focal:
                target = torch.zeros_like(class_logits)
                if labels.dim() == 1:
                    target[batch_idx, src_idx, labels] = 1
                else:
                    target[batch_idx, src_idx] = labels.to(dtype)
                if self.class_loss == "bce":
                    weight = torch.ones_like(class_logits[..., :1])
                    weight[batch_idx, src_idx] = self.matched_weight
                    loss_ce = F.binary_cross_entropy(class_logits.sigmoid(), target, weight=weight.expand_as(target))
                else:
                    if self.focal_float32:
                        class_logits, target = class_logits.float(), target.float()
                    loss_ce = sigmoid_focal_loss(class_logits, target, self.focal_alpha, self.focal_gamma).sum() \
                        / num_boxes
            else:
                if labels.dim() != 1:
                    raise ValueError("softmax Sparse R-CNN needs int64 class-index labels, got multi-hot rows")
                target_classes = torch.full(class_logits.shape[:2], self.num_object_classes, dtype=torch.int64,
                                            device=class_logits.device)
                target_classes[batch_idx, src_idx] = labels
                loss_ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes,
                                          self.empty_weight.to(dtype))
            src_boxes = boxes[batch_idx, src_idx]
            tgt_boxes, sizes = flat_targets["boxes"][tgt_idx], flat_targets["whwh"][tgt_idx]
            loss_giou = (1 - generalized_box_iou(src_boxes, tgt_boxes)).sum() / num_boxes
            loss_bbox = F.l1_loss(src_boxes / sizes, tgt_boxes / sizes, reduction="none").sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_giou": loss_giou, "loss_bbox": loss_bbox}
