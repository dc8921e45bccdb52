"""SeqFormer's matching and set loss on AVA (the TubeR fork's ``models/seqformer/matcher.py`` and its
``models/criterion.py`` ``SetCriterionAVA`` without an actor switch).

Matching (per decoder layer and clip, ``stmixer.modeling.matcher.HungarianMatcher`` with
``class_cost="focal"``, ``l1_space="cxcywh"``, boxes normalized by the clip's unpadded size):
``cost[q, j] = 5 * L1(cxcywh) + 2 * c_qj - 2 * GIoU`` (``MODEL.SEQFORMER.COST_{BBOX,CLASS,GIOU}``, the fork's
``LOSS_COFS.{BBOX,DICE,GIOU}_COF``) with, for ``p = sigmoid(logits_q)``, ``alpha = 0.25``, ``gamma = 2``,

    ``c_qj = sum_{k in U_j} [alpha (1-p_k)^gamma (-log(p_k + 1e-8)) - (1-alpha) p_k^gamma (-log(1-p_k + 1e-8))]``

(the matcher sums it over the positive columns of each target's "labels"). ``match_class_cost``
(``MODEL.SEQFORMER.MATCH_CLASS_COST``): "batch_union" (default, the fork's matcher): ``U_j`` is the union of the
actions of *every* ground truth of the batch (the fork flattens the batch before building it), the same for
every target, so the class cost only ranks queries and one clip's matching depends on the other clips'
labels; "per_target": ``U_j`` is target ``j``'s own actions (as Sparse R-CNN's ``per_target``).

Loss terms of a layer (TubeR's formulas, ``stmixer.modeling.tuber.criterion``):

* ``loss_ce``: ``mean(w_q * BCE(sigmoid(logits), target))`` over ``B*Q*A``, target the matched ground truth's
  multi-hot actions (zeros elsewhere), ``w_q`` = 10 (``MODEL.TUBER.MATCHED_WEIGHT``) for matched queries;
* ``loss_bbox``: ``sum |box - gt|`` (normalized cxcywh) / num_boxes; ``loss_giou``: ``sum(1 - GIoU)`` / num_boxes.

Weights ``loss_ce`` x 2, ``loss_bbox`` x 5, ``loss_giou`` x 2 (the fork's ``weight_dict`` from
``MATCHER.COST_*``; ``MODEL.SEQFORMER.{CLASS,L1,GIOU}_WEIGHT``). Deep supervision (the fork's ``AUX_LOSS``,
False in its SeqFormer yaml; ``MODEL.SEQFORMER.DEEP_SUPERVISION``): the earlier layers too, suffix ``_{i}``.

``num_boxes``: the ground-truth boxes of this process's batch (the fork does not average it over processes,
as TubeR). Fixed silent failure: the fork divides by ``num_boxes`` without a floor, so a batch
without ground truth gives NaN box losses; here at least 1 (as TubeR's port). Float32 quirks
(``MODEL.TUBER.LOSS_FLOAT32``): the same two as TubeR's criterion (float32 BCE targets, a float32
``num_boxes`` promoting the box terms of float64 predictions to float32).
"""

from collections import OrderedDict

import torch
from torch import nn

from ..tuber.criterion import (box_losses, cxcywh_to_xyxy, in_float32, matched_pairs, num_boxes_of,
                               sigmoid_action_loss, stacked_ground_truth, supervised_layers)

TERMS = ("loss_ce", "loss_bbox", "loss_giou")
MATCH_CLASS_COSTS = ("batch_union", "per_target")


class SeqFormerCriterion(nn.Module):
    """Args:
        matcher: ``HungarianMatcher(cost_class, cost_bbox, cost_giou, class_cost="focal", focal_alpha=0.25,
            focal_gamma=2, l1_space="cxcywh")``.
        weights: multiplier per term (``TERMS``).
        matched_weight: BCE weight of matched queries (10).
        match_class_cost: "batch_union" or "per_target" (see the module docstring).
        deep_supervision: supervise every decoder layer.
        float32_quirks: see the module docstring.
    """

    def __init__(self, matcher, weights, matched_weight=10.0, match_class_cost="batch_union", deep_supervision=False,
                 float32_quirks=True):
        super().__init__()
        missing = set(TERMS) - set(weights)
        if missing:
            raise ValueError(f"SeqFormerCriterion: no weight given for {sorted(missing)}")
        if match_class_cost not in MATCH_CLASS_COSTS:
            raise ValueError(f"SeqFormerCriterion: match_class_cost = {match_class_cost!r}, expected one of "
                             f"{MATCH_CLASS_COSTS}")
        self.matcher = matcher
        self.weights = dict(weights)
        self.matched_weight = matched_weight
        self.match_class_cost = match_class_cost
        self.deep_supervision = deep_supervision
        self.float32_quirks = float32_quirks

    def match_labels(self, targets):
        """Per clip ``[n_i, A]``: the classes each ground truth's matching class cost sums over (module docstring)."""
        labels = [t["actions"] for t in targets]
        if self.match_class_cost == "per_target" or not labels:
            return labels
        union = (torch.cat(labels).sum(0) > 0).to(labels[0].dtype)
        return [union.expand(len(a), -1) for a in labels]

    def forward(self, outputs, targets, trace=None):
        """Weighted loss dict of the per-layer predictions.

        Args:
            outputs: "logits" ``[L, B, Q, A]``, "boxes" ``[L, B, Q, 4]`` normalized cxcywh.
            targets: B dicts: "boxes" ``[n_i, 4]`` absolute xyxy pixels, "actions" ``[n_i, A]`` multi-hot,
                "whwh" ``[4]`` the size the boxes are normalized by.
            trace: optional dict; receives ``match/layer{k}`` (list of ``Match`` per clip).
        """
        return in_float32(self._forward, outputs, targets, trace)

    def _forward(self, outputs, targets, trace):
        num_layers, B = outputs["boxes"].shape[:2]
        final = num_layers - 1
        layers = supervised_layers(num_layers, self.deep_supervision)
        device = outputs["boxes"].device
        norm_targets = [{"boxes": t["boxes"] / t["whwh"], "whwh": torch.ones_like(t["whwh"])} for t in targets]
        matching = [{**nt, "labels": labels} for nt, labels in zip(norm_targets, self.match_labels(targets))]
        folded = self.matcher(torch.cat([outputs["logits"][k] for k in layers]),
                              torch.cat([cxcywh_to_xyxy(outputs["boxes"][k]) for k in layers]), matching * len(layers))
        num_boxes = num_boxes_of(targets, self.float32_quirks, device)
        gt_xyxy, gt_actions, offsets = stacked_ground_truth(targets, norm_targets, outputs)
        losses = OrderedDict()
        for j, k in enumerate(layers):
            matches = folded[j * B:(j + 1) * B]
            if trace is not None:
                trace[f"match/layer{k}"] = matches
            idx, tgt_idx = matched_pairs(matches, offsets, device)
            terms = self.layer_losses(outputs["boxes"][k], outputs["logits"][k], idx, gt_xyxy[tgt_idx],
                                      gt_actions[tgt_idx], num_boxes)
            suffix = "" if k == final else f"_{k}"
            for name in TERMS:
                losses[name + suffix] = terms[name] * self.weights[name]
        return losses

    def layer_losses(self, boxes, logits, idx, gt_xyxy, gt_actions, num_boxes):
        """Unweighted terms of one layer; ``idx`` = (clip, query) of the matched pairs."""
        loss_ce = sigmoid_action_loss(logits, idx, gt_actions, self.matched_weight, self.float32_quirks)
        loss_bbox, loss_giou = box_losses(boxes, idx, gt_xyxy, num_boxes)
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
