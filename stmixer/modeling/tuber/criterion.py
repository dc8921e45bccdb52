"""TubeR's set criterion on AVA (``models/criterion.py`` ``SetCriterionAVA``) and its Hungarian matching.

Matching (per decoder layer and clip, ``stmixer.modeling.matcher.HungarianMatcher`` with
``person_index=1, l1_space="cxcywh"``): ``cost = 5 * L1(cxcywh) - 12 * p_actor - 2 * GIoU`` on
clip-normalized boxes (``MODEL.TUBER.COST_{BBOX,CLASS,GIOU}``), ``p_actor`` the softmax of the switch
at column 1. Loss terms of a layer, given the matched pairs:

* ``loss_ce`` (actions): ``mean(w_q * BCE(sigmoid(logits), target))`` over all ``B*Q*A`` elements,
  target the matched ground truth's multi-hot actions (zeros for unmatched queries), ``w_q`` =
  ``matched_weight`` (10, ``LOSS_COFS.WEIGHT``) for matched queries, 1 otherwise. Option "focal"
  (``MODEL.TUBER.CLASS_LOSS``): ``-sum(w_q * ((1-p)^g t log(p + 1e-8) + p^g (1-t) log(1 - p + 1e-8)))``
  with g = 2, the focal form of the seed branch (jinsingsangsung/tuber ``models/criterion.py``).
* ``loss_ce_b`` (actor switch): 3-way cross-entropy over all queries, target 1 for matched queries,
  2 otherwise, class weights ``[1, 1, eos_coef]`` (0.1), weighted mean.
* ``loss_bbox``: ``sum |box - gt|`` (normalized cxcywh) / num_boxes; ``loss_giou``: ``sum(1 - GIoU)`` / num_boxes.

``num_boxes``: the ground-truth boxes of this process's batch (TubeR does not average it over
processes), at least 1 (TubeR divides by 0 -> NaN on a batch without boxes).

Float32 hard-codes of the official code (``float32_quirks``, ``MODEL.TUBER.LOSS_FLOAT32``, default True):
TubeR builds the BCE targets and weights with ``dtype=float32`` (a crash for float64 logits there:
here they are cast to the logits' dtype, the values 0 / 1 / 10 are exact) and divides the box terms
by a float32 ``num_boxes`` tensor of shape ``[1]``, which promotes ``loss_bbox`` / ``loss_giou`` of
float64 predictions to float32 (rounded values and gradients). True reproduces the latter; False keeps
every term in the predictions' dtype (float64-clean). In float32 training the two are identical.

Weighted loss dict: ``loss_ce`` x 12, ``loss_ce_b`` x 1, ``loss_bbox`` x 5, ``loss_giou`` x 2 (TubeR's
``weight_dict``; ``MODEL.TUBER.LOSS_WEIGHTS``), last layer first, then layer i (0-based) of the earlier
ones with suffix ``_{i}`` (deep supervision, ``AUX_LOSS``); TubeR's trainer sums them
(``MODEL.STM.LOSS_REDUCTION: "sum"`` in the TubeR configs). Every term is a 0-dim tensor.

JHMDB / UCF101-24 (``MODEL.TUBER.HEAD "frame"``: ``class_loss="softmax"``, ``switch="clip"``; TubeR's
``models/criterion.py`` ``SetCriterion`` with ``models/detr/matcher_ucf.py``), on the key frame's queries:

* matching: ``cost = 5 * L1(cxcywh) - 1 * softmax(logits)[class of the gt] - 2 * GIoU`` (the shared matcher with
  int64 "labels": the ground truth's action, the first positive column of its multi-hot row);
* ``loss_ce``: ``A + 1``-way cross-entropy over all queries, target the matched ground truth's action, "no
  action" (the last column) for unmatched queries, class weights ``[1, ..., 1, eos_coef]`` (built in float32
  as TubeR's buffer, so ``eos_coef`` is float32(0.1) in float64 too), weighted mean;
* ``loss_ce_b``: 2-way cross-entropy of the clip switch ``[B, 2]``, target 1 when the clip has ground truth
  (TubeR's ``vis``), mean over clips; ``loss_bbox`` / ``loss_giou`` as on AVA;
* weights (``Tuber_CSN152_JHMDB.yaml``): ``loss_ce`` x 1, ``loss_ce_b`` x 1, ``loss_bbox`` x 5, ``loss_giou`` x 2.
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ...structures.boxes import generalized_box_iou
from ..matcher import xyxy_to_cxcywh

CLASS_LOSSES = ("bce", "focal", "softmax")
SWITCHES = ("query", "clip")
TERMS = ("loss_ce", "loss_ce_b", "loss_bbox", "loss_giou")
ACTOR, NO_ACTOR = 1, 2


def cxcywh_to_xyxy(boxes):
    """``[..., 4]`` center x, center y, width, height -> x1, y1, x2, y2 (TubeR's ``box_cxcywh_to_xyxy``)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def in_float32(loss_fn, outputs, targets, trace):
    """``loss_fn(outputs, targets, trace)`` outside autocast, float16 / bfloat16 tensors of ``outputs`` and of
    the target dicts cast to float32 (mixed precision: the matching and the losses in float32; BCE on
    half-precision probabilities is unsafe). Shared by the TubeR-fork criteria (TubeR, SeqFormer)."""
    with torch.autocast(device_type=outputs["boxes"].device.type, enabled=False):
        low = (torch.float16, torch.bfloat16)
        outputs = {k: v.float() if v.dtype in low else v for k, v in outputs.items()}
        targets = [{k: v.float() if v.dtype in low else v for k, v in t.items()} for t in targets]
        return loss_fn(outputs, targets, trace)


def supervised_layers(num_layers, deep_supervision):
    """Decoder layers a loss is computed for: the last one first, then (deep supervision) the others."""
    final = num_layers - 1
    return [final] + (list(range(final)) if deep_supervision else [])


def num_boxes_of(targets, float32_quirks, device):
    """The loss normalizer ``max(#ground truth, 1)``: a float32 ``[1]`` tensor (``float32_quirks``, as the fork)
    or a Python float."""
    count = sum(len(t["boxes"]) for t in targets)
    if float32_quirks:
        return torch.as_tensor([max(count, 1)], dtype=torch.float32, device=device)
    return float(max(count, 1))


def stacked_ground_truth(targets, norm_targets, outputs):
    """``(gt_xyxy [N, 4] normalized, gt_actions [N, A], offsets)``: every clip's ground truth concatenated,
    ``offsets[i]`` the row of clip i's first one."""
    B = len(targets)
    gt_xyxy = torch.cat([t["boxes"] for t in norm_targets]) if B else outputs["boxes"].new_zeros(0, 4)
    gt_actions = (torch.cat([t["actions"] for t in targets]) if B
                  else outputs["logits"].new_zeros(0, outputs["logits"].shape[-1]))
    offsets = [0]
    for t in targets:
        offsets.append(offsets[-1] + len(t["boxes"]))
    return gt_xyxy, gt_actions, offsets


def matched_pairs(matches, offsets, device):
    """``((clip index, query index), ground-truth row)`` of one layer's matches (one ``Match`` per clip)."""
    batch_idx = torch.cat([torch.full_like(m.src, i) for i, m in enumerate(matches)]).to(device)
    src_idx = torch.cat([m.src for m in matches]).to(device)
    tgt_idx = torch.cat([m.tgt + offsets[i] for i, m in enumerate(matches)]).to(device)
    return (batch_idx, src_idx), tgt_idx


def box_losses(boxes, idx, gt_xyxy, num_boxes):
    """``(L1 of cxcywh, 1 - GIoU)`` of the matched queries ``boxes[idx]`` (normalized cxcywh) against
    ``gt_xyxy`` (normalized xyxy), each summed and divided by ``num_boxes``; 0-d tensors."""
    src = boxes[idx]
    loss_bbox = F.l1_loss(src, xyxy_to_cxcywh(gt_xyxy), reduction="none").sum() / num_boxes
    loss_giou = (1 - generalized_box_iou(cxcywh_to_xyxy(src), gt_xyxy)).sum() / num_boxes
    return loss_bbox.reshape(()), loss_giou.reshape(())


def sigmoid_action_loss(logits, idx, gt_actions, matched_weight, float32_quirks, class_loss="bce",
                        focal_gamma=2.0):
    """Weighted BCE (``class_loss`` "bce") or focal ("focal", exponent ``focal_gamma``) over the ``A`` action
    columns of ``logits`` ``[B, Q, A]``: targets ``gt_actions`` at the matched ``idx``, 0 elsewhere; weight
    ``matched_weight`` for matched queries, 1 for the others. ``float32_quirks``: targets and weights built in
    float32, then cast (TubeR's ``dtype=float32``; see the module docstring)."""
    dtype = logits.dtype
    hard = torch.float32 if float32_quirks else dtype
    target = torch.zeros(logits.shape, dtype=hard, device=logits.device)
    weights = torch.ones(logits.shape[:2], dtype=hard, device=logits.device)
    weights[idx] = matched_weight
    target[idx] = gt_actions.to(hard)
    target, weights = target.to(dtype), weights.to(dtype)[..., None]
    prob = logits.sigmoid()
    if class_loss == "bce":
        return F.binary_cross_entropy(prob, target, weight=weights)
    eps, g = 1e-8, focal_gamma
    return -(((1 - prob) ** g * target * torch.log(prob + eps)
              + prob ** g * (1 - target) * torch.log(1 - prob + eps)) * weights).sum()


class TubeRCriterion(nn.Module):
    """Args:
        matcher: ``HungarianMatcher(class_weight, l1_weight, giou_weight, person_index=1, l1_space="cxcywh")``.
        weights: multiplier per term (``TERMS``).
        matched_weight: BCE weight of matched queries (10).
        eos_coef: switch cross-entropy weight of "no actor" (0.1).
        class_loss: "bce" | "focal"; focal_gamma: g of "focal" (2).
        deep_supervision: supervise every decoder layer (TubeR: ``AUX_LOSS True``).
        float32_quirks: see module docstring.
        switch: "query" (AVA: 3-way per query) or "clip" (JHMDB / UCF: 2-way per clip, target "clip has
            ground truth"); class_loss "softmax" (JHMDB / UCF) matches on the action logits instead of the switch.
    """

    def __init__(self, matcher, weights, matched_weight=10.0, eos_coef=0.1, class_loss="bce", focal_gamma=2.0,
                 deep_supervision=True, float32_quirks=True, switch="query"):
        super().__init__()
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"TubeRCriterion: class_loss = {class_loss!r}, expected one of {CLASS_LOSSES}")
        if switch not in SWITCHES:
            raise ValueError(f"TubeRCriterion: switch = {switch!r}, expected one of {SWITCHES}")
        self.switch = switch
        self.eos_coef = eos_coef
        missing = set(TERMS) - set(weights)
        if missing:
            raise ValueError(f"TubeRCriterion: no weight given for {sorted(missing)}")
        self.matcher = matcher
        self.weights = dict(weights)
        self.matched_weight = matched_weight
        self.class_loss = class_loss
        self.focal_gamma = focal_gamma
        self.deep_supervision = deep_supervision
        self.float32_quirks = float32_quirks
        empty_weight = torch.ones(3, dtype=torch.float32)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)  # rebuilt from the config, not saved

    def normalized_targets(self, targets):
        """Targets for matching: "boxes" clip-normalized xyxy (``boxes / whwh``), "whwh" ones; class_loss
        "softmax": "labels" int64 ``[n]``, the action of each ground truth (first positive column)."""
        out = [{"boxes": t["boxes"] / t["whwh"], "whwh": torch.ones_like(t["whwh"])} for t in targets]
        if self.class_loss == "softmax":
            for o, t in zip(out, targets):
                o["labels"] = t["actions"].argmax(-1)
        return out

    def forward(self, outputs, targets, trace=None):
        """Weighted loss dict of the per-layer predictions.

        Args:
            outputs: ``TubeRHead`` outputs: "logits_b" ``[L, B, Q, 3]``, "boxes" ``[L, B, Q, 4]`` normalized
                cxcywh, "logits" ``[L, B, Q, A]``.
            targets: B dicts: "boxes" ``[n_i, 4]`` absolute xyxy pixels, "actions" ``[n_i, A]`` float multi-hot,
                "whwh" ``[4]`` the size the boxes are normalized by.
            trace: optional dict; receives ``match/layer{k}`` (list of ``Match`` per clip).
        """
        return in_float32(self._forward, outputs, targets, trace)

    def _forward(self, outputs, targets, trace):
        final = outputs["boxes"].shape[0] - 1
        layers = supervised_layers(final + 1, self.deep_supervision)
        norm_targets = self.normalized_targets(targets)
        B = len(targets)
        match_logits = outputs["logits"] if self.class_loss == "softmax" else outputs["logits_b"]
        folded = self.matcher(torch.cat([match_logits[k] for k in layers]),
                              torch.cat([cxcywh_to_xyxy(outputs["boxes"][k]) for k in layers]),
                              norm_targets * len(layers))
        num_boxes = num_boxes_of(targets, self.float32_quirks, outputs["boxes"].device)
        gt_xyxy, gt_actions, offsets = stacked_ground_truth(targets, norm_targets, outputs)
        visible = torch.tensor([int(len(t["boxes"]) > 0) for t in targets], dtype=torch.int64,
                               device=outputs["boxes"].device)
        losses = OrderedDict()
        for j, k in enumerate(layers):
            matches = folded[j * B:(j + 1) * B]
            if trace is not None:
                trace[f"match/layer{k}"] = matches
            idx, tgt_idx = matched_pairs(matches, offsets, outputs["boxes"].device)
            terms = self.layer_losses(outputs["logits_b"][k], outputs["boxes"][k], outputs["logits"][k], idx,
                                      gt_xyxy[tgt_idx], gt_actions[tgt_idx], num_boxes, visible)
            suffix = "" if k == final else f"_{k}"
            for name in TERMS:
                losses[name + suffix] = terms[name] * self.weights[name]
        return losses

    def layer_losses(self, logits_b, boxes, logits, idx, gt_xyxy, gt_actions, num_boxes, visible=None):
        """Unweighted terms of one layer; ``idx`` = (clip, query) of the matched pairs, ``gt_xyxy`` /
        ``gt_actions`` their ground truth (normalized xyxy, multi-hot); ``visible`` int64 ``[B]``: the clip has
        ground truth (switch "clip")."""
        if self.switch == "clip":
            loss_ce_b = F.cross_entropy(logits_b, visible)
        else:
            target_b = torch.full(logits_b.shape[:2], NO_ACTOR, dtype=torch.int64, device=logits_b.device)
            target_b[idx] = ACTOR
            loss_ce_b = F.cross_entropy(logits_b.transpose(1, 2), target_b, self.empty_weight.to(logits_b.dtype))
        if self.class_loss == "softmax":
            loss_ce = self.softmax_action_loss(logits, idx, gt_actions)
        else:
            loss_ce = self.sigmoid_action_loss(logits, idx, gt_actions)
        loss_bbox, loss_giou = box_losses(boxes, idx, gt_xyxy, num_boxes)
        return {"loss_ce": loss_ce, "loss_ce_b": loss_ce_b, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def softmax_action_loss(self, logits, idx, gt_actions):
        """``A + 1``-way weighted cross-entropy (JHMDB / UCF); see module docstring."""
        num_columns = logits.shape[-1]
        target = torch.full(logits.shape[:2], num_columns - 1, dtype=torch.int64, device=logits.device)
        target[idx] = gt_actions.argmax(-1)
        weight = torch.ones(num_columns, dtype=torch.float32, device=logits.device)
        weight[-1] = self.eos_coef
        return F.cross_entropy(logits.transpose(1, 2), target, weight.to(logits.dtype))

    def sigmoid_action_loss(self, logits, idx, gt_actions):
        """Weighted BCE or focal over the ``A`` action columns (AVA); see module docstring."""
        return sigmoid_action_loss(logits, idx, gt_actions, self.matched_weight, self.float32_quirks,
                                   self.class_loss, self.focal_gamma)
