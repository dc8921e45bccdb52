"""The set loss of STMixer: Hungarian matching per stage, then objectness, box and action losses.

Loss dict (names and order as the official code, every term already
multiplied by its weight): final stage ``loss_bce, loss_ce, loss_giou,
loss_bbox``; then, with intermediate supervision, for every earlier stage k
``loss_ce_k, loss_giou_k, loss_bbox_k, loss_bce_k``.

* ``loss_ce``: 2-way (person / no-object) cross-entropy over all B*Q queries,
  target person for matched queries; class weights ``[1, BACKGROUND_WEIGHT]``,
  reduced as the weighted mean ``sum(w_t * CE) / sum(w_t)``.
* ``loss_bbox``: L1 between matched boxes normalized by the clip size,
  summed over pairs and coordinates, divided by ``num_boxes``.
* ``loss_giou``: ``sum(1 - GIoU) / num_boxes`` (pixels).
* ``loss_bce``: action binary cross-entropy with logits of the matched
  queries, mean over all ``n_matched * A`` elements (0 when nothing is matched,
  where the official code gives NaN).

``num_boxes`` = ground-truth boxes of the batch, averaged over processes
(``all_reduce`` sum / world size), at least 1.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..structures.boxes import generalized_box_iou
from ..utils.distributed import all_reduce_mean
from .errors import NonFiniteCostError
from .trace import record

LOSS_REDUCTIONS = ("mean", "sum")
FINAL_STAGE_ORDER = ("loss_bce", "loss_ce", "loss_giou", "loss_bbox")
EARLIER_STAGE_ORDER = ("loss_ce", "loss_giou", "loss_bbox", "loss_bce")


def reduce_losses(losses, reduction="mean"):
    """The scalar to backpropagate from a loss dict.

    ``"mean"``: sum of the terms divided by their number, what the official
    trainer backpropagates (``MODEL.STM.LOSS_REDUCTION`` default; with 6 stages
    and intermediate supervision that is the sum / 24). ``"sum"``: the plain sum.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"MODEL.STM.LOSS_REDUCTION = {reduction!r}; expected one of {LOSS_REDUCTIONS}")
    if not losses:
        raise ValueError("reduce_losses: the loss dict is empty")
    total = sum(losses.values())
    return total / len(losses) if reduction == "mean" else total


def average_num_boxes(targets, device):
    """Ground-truth boxes per process: the batch's count averaged over all processes, at least 1 (a float)."""
    count = torch.tensor([float(sum(len(t["boxes"]) for t in targets))], dtype=torch.float32, device=device)
    return torch.clamp(all_reduce_mean(count), min=1).item()


class SetCriterion(nn.Module):
    """Matches every supervised stage to the targets and returns the weighted loss dict.

    Args:
        matcher: a ``HungarianMatcher``.
        num_object_classes: K (1, person); class index K is "no object".
        weights: multiplier per loss name: ``loss_ce, loss_bbox, loss_giou, loss_bce``.
        background_weight: cross-entropy weight of the no-object class (held in
            the float32 buffer ``empty_weight``, part of official checkpoints).
        intermediate_supervision: also supervise every stage before the last.
    """

    def __init__(self, matcher, num_object_classes, weights, background_weight, intermediate_supervision=True):
        super().__init__()
        missing = set(FINAL_STAGE_ORDER) - set(weights)
        if missing:
            raise ValueError(f"SetCriterion: no weight given for {sorted(missing)}")
        self.matcher = matcher
        self.num_object_classes = num_object_classes
        self.weights = dict(weights)
        self.intermediate_supervision = intermediate_supervision
        empty_weight = torch.ones(num_object_classes + 1, dtype=torch.float32)
        empty_weight[-1] = background_weight
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs, targets, trace=None):
        """Loss dict of the decoder's per-stage outputs.

        Args:
            outputs: ``DecoderOutputs`` (lists over stages of cls_logits ``[B, Q, K + 1]``,
                action_logits ``[B, Q, A]``, boxes ``[B, Q, 4]`` absolute xyxy).
            targets: B dicts: "boxes" ``[n_i, 4]`` absolute xyxy, "actions" ``[n_i, A]``
                float multi-hot, "whwh" ``[4]``, in the predictions' dtype and device.
            trace: optional dict; receives ``match/stage{k}`` (a list of ``Match`` per clip).

        Returns:
            ordered dict of scalar tensors (see the module docstring).
        """
        num_stages = len(outputs.cls_logits)
        final = num_stages - 1
        num_boxes = average_num_boxes(targets, outputs.cls_logits[final].device)
        stages = [final] + (list(range(final)) if self.intermediate_supervision else [])
        losses = {}
        for k in stages:
            cls_logits, boxes, action_logits = outputs.cls_logits[k], outputs.boxes[k], outputs.action_logits[k]
            try:
                matches = self.matcher(cls_logits, boxes, targets)
            except NonFiniteCostError as e:
                raise NonFiniteCostError(f"decoder stage {k} of {num_stages}: {e}") from None
            record(trace, f"match/stage{k}", matches)
            terms = self.stage_losses(cls_logits, boxes, action_logits, targets, matches, num_boxes)
            suffix, order = ("", FINAL_STAGE_ORDER) if k == final else (f"_{k}", EARLIER_STAGE_ORDER)
            for name in order:
                losses[name + suffix] = terms[name] * self.weights[name]
        return losses

    def stage_losses(self, cls_logits, boxes, action_logits, targets, matches, num_boxes):
        """Unweighted ``{"loss_ce", "loss_bbox", "loss_giou", "loss_bce"}`` of one stage given its matches."""
        device = cls_logits.device
        batch_idx = torch.cat([torch.full_like(m.src, i) for i, m in enumerate(matches)]).to(device)
        src_idx = torch.cat([m.src for m in matches]).to(device)
        tgt_per_clip = [m.tgt.to(device) for m in matches]

        target_classes = torch.full(cls_logits.shape[:2], self.num_object_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, src_idx] = 0
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), target_classes, self.empty_weight)

        src_boxes = boxes[batch_idx, src_idx]
        tgt_boxes = torch.cat([t["boxes"][j] for t, j in zip(targets, tgt_per_clip)])
        sizes = torch.cat([t["whwh"].expand(len(j), 4) for t, j in zip(targets, tgt_per_clip)])
        loss_giou = (1 - generalized_box_iou(src_boxes, tgt_boxes)).sum() / num_boxes
        loss_bbox = F.l1_loss(src_boxes / sizes, tgt_boxes / sizes, reduction="none").sum() / num_boxes

        src_actions = action_logits[batch_idx, src_idx]
        if src_actions.numel():
            tgt_actions = torch.cat([t["actions"][j] for t, j in zip(targets, tgt_per_clip)])
            loss_bce = F.binary_cross_entropy_with_logits(src_actions, tgt_actions)
        else:  # nothing matched in this batch: no action signal (keeps the graph connected for DDP)
            loss_bce = action_logits.sum() * 0.0
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss_bce": loss_bce}
