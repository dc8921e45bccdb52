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

import contextlib
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..structures.boxes import generalized_box_iou
from ..utils import distributed as comm
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


class BoxCount:
    """Ground-truth boxes of a per-process batch averaged over all processes, at least 1.

    The all-reduce is issued when the object is made and waited for by ``value()``: the
    trainer makes it at the start of a step from the batch's host-side boxes, so the
    collective runs beside the forward pass instead of stalling it in the loss (where every
    process would wait for the slowest one's forward). ``value()`` is a Python float in a
    single process (counted on the host: no device work) and a 0-dim float32 tensor on
    ``device`` when distributed (the loss divides by it without a host synchronization).
    """

    def __init__(self, count, device):
        self.count = int(count)
        self._pending, self._value = None, max(float(self.count), 1.0)
        if comm.is_distributed():  # a fill kernel, not a host-to-device copy of a Python list
            self._pending = comm.all_reduce_mean_async(
                torch.full((1,), float(self.count), dtype=torch.float32, device=device))

    def value(self):
        if self._pending is not None:
            self._value = torch.clamp(self._pending.wait(), min=1)[0]
            self._pending = None
        return self._value


_BOX_COUNTS = []


@contextlib.contextmanager
def prefetched_box_count(box_count):
    """Within this context ``average_num_boxes`` of a batch holding ``box_count.count`` boxes is ``box_count``'s."""
    _BOX_COUNTS.append(box_count)
    try:
        yield box_count
    finally:
        _BOX_COUNTS.pop()


def average_num_boxes(targets, device):
    """Ground-truth boxes per process: the batch's count averaged over all processes, at least 1.

    A Python float in a single process; when distributed, a 0-dim tensor on ``device``
    (``BoxCount``): the one of an active ``prefetched_box_count`` context when it counted the
    same number of boxes, else an all-reduce issued here.
    """
    count = sum(len(t["boxes"]) for t in targets)
    if _BOX_COUNTS and _BOX_COUNTS[-1].count == count:
        return _BOX_COUNTS[-1].value()
    return BoxCount(count, device).value()


@dataclasses.dataclass(frozen=True)
class AccumulatedBatch:
    """The whole per-process batch of one optimizer step split into micro-batches (``SOLVER.GRAD_ACCUM_STEPS``).

    While ``accumulate(...)`` is active the loss of each micro-batch is its share of the
    whole batch's loss: box terms divide by ``num_boxes`` of the whole step (every
    micro-batch of every process), the objectness cross-entropy by the class-weight sum of
    the whole per-process batch, the action BCE by its matched-element count. The
    gradients of the micro-batches then add up to the gradient of the whole batch.

    Args:
        gt_counts: ground-truth boxes of every clip of the per-process batch (all micro-batches).
        box_count: the step's ``BoxCount`` (its all-reduce issued when the step starts).
    """

    gt_counts: tuple
    box_count: BoxCount

    @property
    def num_boxes(self):
        """The step's ``average_num_boxes`` (Python float, or a 0-dim device tensor when distributed)."""
        return self.box_count.value()

    @classmethod
    def from_counts(cls, gt_counts, device):
        """The totals of a per-process batch whose clips hold ``gt_counts`` boxes (one all-reduce when distributed)."""
        gt_counts = tuple(int(n) for n in gt_counts)
        return cls(gt_counts, BoxCount(sum(gt_counts), device))


_ACCUMULATED = []


def active_accumulation():
    """The ``AccumulatedBatch`` of the innermost active ``accumulate`` context, or None."""
    return _ACCUMULATED[-1] if _ACCUMULATED else None


@contextlib.contextmanager
def accumulate(batch):
    """Within this context ``SetCriterion`` normalizes every loss by the totals of ``batch`` (an ``AccumulatedBatch``)."""
    _ACCUMULATED.append(batch)
    try:
        yield batch
    finally:
        _ACCUMULATED.pop()


def stacks_losses(setting, device):
    """Whether ``SetCriterion(batched_losses=setting)`` stacks the stage losses of predictions on ``device``:
    True / False as given; "auto": on CUDA only (the CPU keeps the official per-stage order bit for bit)."""
    return torch.device(device).type == "cuda" if setting == "auto" else setting


class SetCriterion(nn.Module):
    """Matches every supervised stage to the targets and returns the weighted loss dict.

    Args:
        matcher: a ``HungarianMatcher``.
        num_object_classes: K (1, person); class index K is "no object".
        weights: multiplier per loss name: ``loss_ce, loss_bbox, loss_giou, loss_bce``.
        background_weight: cross-entropy weight of the no-object class (held in
            the float32 buffer ``empty_weight``, part of official checkpoints).
        intermediate_supervision: also supervise every stage before the last.
        batched_matching: match all supervised stages and clips with one device-to-host copy
            of the costs and one host-to-device copy of the indices (default); False is the
            reference path (one matcher call per stage, one copy per clip), with the same results.
        batched_losses: compute the losses of all supervised stages as one stack (fewer kernel
            launches in the loss and its backward; ``MODEL.STM.STACKED_LOSSES``); False (default)
            is the reference path, one ``stage_losses`` call per stage; "auto": stacked for CUDA
            predictions, per stage otherwise. Same values up to the order of floating-point sums
            (float32: ~1e-7), which is enough to move a training trajectory.
    """

    def __init__(self, matcher, num_object_classes, weights, background_weight, intermediate_supervision=True,
                 batched_matching=True, batched_losses=False):
        super().__init__()
        missing = set(FINAL_STAGE_ORDER) - set(weights)
        if missing:
            raise ValueError(f"SetCriterion: no weight given for {sorted(missing)}")
        self.matcher = matcher
        self.num_object_classes = num_object_classes
        self.weights = dict(weights)
        self.intermediate_supervision = intermediate_supervision
        self.batched_matching = batched_matching
        if batched_losses not in (True, False, "auto"):
            raise ValueError(f"SetCriterion: batched_losses must be True, False or 'auto', got {batched_losses!r}")
        self.batched_losses = batched_losses
        empty_weight = torch.ones(num_object_classes + 1, dtype=torch.float32)
        empty_weight[-1] = background_weight
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs, targets, trace=None):
        """Loss dict of the decoder's per-stage outputs.

        Args:
            outputs: ``DecoderOutputs`` (lists over stages of cls_logits ``[B, Q, K + 1]``,
                action_logits ``[B, Q, A]``, boxes ``[B, Q, 4]`` absolute xyxy).
            targets: B dicts: "boxes" ``[n_i, 4]`` absolute xyxy, "actions" ``[n_i, A]``
                float multi-hot, "whwh" ``[4]``, on the predictions' device; their dtype
                (float32 under autocast) is the dtype of the costs and of the losses.
            trace: optional dict; receives ``match/stage{k}`` (a list of ``Match`` per clip).

        Returns:
            ordered dict of scalar tensors (see the module docstring).
        """
        num_stages = len(outputs.cls_logits)
        final = num_stages - 1
        device = outputs.cls_logits[final].device
        accumulated = _ACCUMULATED[-1] if _ACCUMULATED else None
        num_boxes = accumulated.num_boxes if accumulated is not None else average_num_boxes(targets, device)
        stages = [final] + (list(range(final)) if self.intermediate_supervision else [])
        indices = self.match(outputs, targets, stages, trace)
        flat = {
            "boxes": torch.cat([t["boxes"] for t in targets]) if targets else None,
            "actions": torch.cat([t["actions"] for t in targets]) if targets else None,
            "whwh": torch.cat([t["whwh"].expand(len(t["boxes"]), 4) for t in targets]) if targets else None,
        }
        if stacks_losses(self.batched_losses, device) and len({indices[k].size(1) for k in stages}) == 1:
            stacked = self.stacked_losses(outputs, stages, flat, indices, num_boxes, accumulated)
            weighted = {name: value * self.weights[name] for name, value in stacked.items()}
            per_stage = {k: {name: value[j] for name, value in weighted.items()} for j, k in enumerate(stages)}
        else:
            per_stage = {}
            for k in stages:
                terms = self.stage_losses(outputs.cls_logits[k], outputs.boxes[k], outputs.action_logits[k], flat,
                                          indices[k], num_boxes, accumulated)
                per_stage[k] = {name: value * self.weights[name] for name, value in terms.items()}
        losses = {}
        for k in stages:
            suffix, order = ("", FINAL_STAGE_ORDER) if k == final else (f"_{k}", EARLIER_STAGE_ORDER)
            for name in order:
                losses[name + suffix] = per_stage[k][name]
        return losses

    def match(self, outputs, targets, stages, trace=None):
        """Hungarian matching of ``stages``; returns ``{k: int64 [3, n_k] (clip, query, flat target index)}``
        on the predictions' device (flat target index: into the concatenated targets of the batch)."""
        num_stages = len(outputs.cls_logits)
        device = outputs.cls_logits[-1].device
        B = len(targets)
        try:
            if self.batched_matching:
                folded = self.matcher(torch.cat([outputs.cls_logits[k] for k in stages]),
                                      torch.cat([outputs.boxes[k] for k in stages]), list(targets) * len(stages))
                per_stage = {k: folded[j * B:(j + 1) * B] for j, k in enumerate(stages)}
            else:
                per_stage = {}
                for j, k in enumerate(stages):
                    try:
                        per_stage[k] = self.matcher.match_per_clip(outputs.cls_logits[k], outputs.boxes[k], targets)
                    except NonFiniteCostError as e:
                        e.clip = getattr(e, "clip", 0) + j * B
                        raise
        except NonFiniteCostError as e:
            clip = getattr(e, "clip", None)
            if clip is None or B == 0:
                raise
            k = stages[clip // B]
            detail = str(e).split(": ", 1)[1]
            raise NonFiniteCostError(f"decoder stage {k} of {num_stages}: clip {clip % B} of the batch: {detail}") \
                from None
        for k in stages:
            record(trace, f"match/stage{k}", per_stage[k])
        # (clip, query, flat target) rows of all stages' matches, stage after stage, made with a few host
        # operations for the whole batch (the GPU waits for them)
        matches = [m for k in stages for m in per_stage[k]]
        pairs = torch.tensor([len(m.src) for m in matches], dtype=torch.int64)
        if B:
            offsets = torch.tensor([0] + [len(t["boxes"]) for t in targets[:-1]], dtype=torch.int64).cumsum(0)
            clip = torch.arange(B).repeat(len(stages)).repeat_interleave(pairs)
            host = torch.stack([clip, torch.cat([m.src for m in matches]),
                                torch.cat([m.tgt for m in matches]) + offsets[clip]])
        else:
            host = torch.zeros(3, 0, dtype=torch.int64)
        sizes = pairs.view(len(stages), B).sum(1).tolist()
        if not self.batched_matching:  # reference path: one copy per stage
            return {k: index.to(device) for k, index in zip(stages, host.split(sizes, dim=1))}
        return dict(zip(stages, host.to(device, non_blocking=True).split(sizes, dim=1)))

    def stage_losses(self, cls_logits, boxes, action_logits, flat_targets, index, num_boxes, accumulated=None):
        """Unweighted ``{"loss_ce", "loss_bbox", "loss_giou", "loss_bce"}`` of one stage.

        ``index``: int64 ``[3, n]`` rows (clip, query, flat target index) of the matched pairs;
        ``flat_targets``: the batch's "boxes", "actions" and per-box "whwh" concatenated over clips.
        Computed in the targets' dtype with autocast off; ``accumulated``: see ``AccumulatedBatch``.
        """
        dtype = self.empty_weight.dtype if flat_targets["boxes"] is None else flat_targets["boxes"].dtype
        with torch.autocast(device_type=cls_logits.device.type, enabled=False):
            cls_logits, boxes, action_logits = cls_logits.to(dtype), boxes.to(dtype), action_logits.to(dtype)
            batch_idx, src_idx, tgt_idx = index
            target_classes, src_actions, tgt_actions, giou_terms, l1_terms = self._matched_pairs(
                cls_logits, boxes, action_logits, flat_targets, (batch_idx, src_idx), tgt_idx)
            loss_giou = giou_terms.sum() / num_boxes
            loss_bbox = l1_terms.sum() / num_boxes
            if accumulated is None:
                loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), target_classes, self.empty_weight)
                if src_actions.numel():
                    loss_bce = F.binary_cross_entropy_with_logits(src_actions, tgt_actions)
                else:  # nothing matched in this batch: no action signal (keeps the graph connected for DDP)
                    loss_bce = action_logits.sum() * 0.0
            else:
                loss_ce, loss_bce = self._accumulated_ce_bce(
                    cls_logits, target_classes, action_logits, src_actions, tgt_actions, accumulated)
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss_bce": loss_bce}

    def _matched_pairs(self, cls_logits, boxes, action_logits, flat_targets, query_index, tgt_idx):
        """What the losses read of the matched pairs.

        ``query_index``: index tensors ``(..., clip, query)`` of the matched queries into the leading
        dimensions of the predictions ``[..., B, Q, *]``; ``tgt_idx``: their flat target indices.
        Returns ``(target_classes [..., B, Q], src_actions, tgt_actions, 1 - GIoU per pair, L1 of the
        size-normalized boxes per pair and coordinate)``.
        """
        target_classes = torch.full(cls_logits.shape[:-1], self.num_object_classes, dtype=torch.int64,
                                    device=cls_logits.device)
        target_classes[query_index] = 0
        src_boxes = boxes[query_index]
        src_actions = action_logits[query_index]
        if flat_targets["boxes"] is None:
            tgt_boxes = sizes = src_boxes
            tgt_actions = src_actions
        else:
            tgt_boxes, sizes = flat_targets["boxes"][tgt_idx], flat_targets["whwh"][tgt_idx]
            tgt_actions = flat_targets["actions"][tgt_idx]
        giou_terms = 1 - generalized_box_iou(src_boxes, tgt_boxes)
        l1_terms = F.l1_loss(src_boxes / sizes, tgt_boxes / sizes, reduction="none")
        return target_classes, src_actions, tgt_actions, giou_terms, l1_terms

    def stacked_losses(self, outputs, stages, flat_targets, indices, num_boxes, accumulated=None):
        """The losses of ``stage_losses`` for all ``stages`` at once: ``{name: [len(stages)]}``.

        Every stage matches the same number of pairs (each clip's ``min(Q, n_i)``), so the
        stages' predictions and matched pairs stack into one leading dimension.
        """
        dtype = self.empty_weight.dtype if flat_targets["boxes"] is None else flat_targets["boxes"].dtype
        device = outputs.cls_logits[stages[0]].device
        S = len(stages)
        with torch.autocast(device_type=device.type, enabled=False):
            cls_logits = torch.stack([outputs.cls_logits[k] for k in stages]).to(dtype)  # [S, B, Q, K + 1]
            boxes = torch.stack([outputs.boxes[k] for k in stages]).to(dtype)  # [S, B, Q, 4]
            action_logits = torch.stack([outputs.action_logits[k] for k in stages]).to(dtype)  # [S, B, Q, A]
            batch_idx, src_idx, tgt_idx = torch.stack([indices[k] for k in stages]).unbind(1)  # [S, n] each
            stage_idx = torch.arange(S, device=device).view(S, 1).expand_as(batch_idx)
            target_classes, src_actions, tgt_actions, giou_terms, l1_terms = self._matched_pairs(
                cls_logits, boxes, action_logits, flat_targets, (stage_idx, batch_idx, src_idx), tgt_idx)
            loss_giou = giou_terms.sum(-1) / num_boxes  # [S]
            loss_bbox = l1_terms.sum((1, 2)) / num_boxes
            # weighted cross-entropy per query; 'mean' in stage_losses is sum(w_t * CE) / sum(w_t) per stage
            ce = F.cross_entropy(cls_logits.flatten(0, 1).transpose(1, 2), target_classes.flatten(0, 1),
                                 self.empty_weight, reduction="none").view(S, -1)
            if accumulated is None:
                loss_ce = ce.sum(1) / self.empty_weight[target_classes].view(S, -1).sum(1)
                if src_actions.numel():
                    loss_bce = F.binary_cross_entropy_with_logits(
                        src_actions, tgt_actions, reduction="none").mean((1, 2))
                else:  # nothing matched in this batch: no action signal (keeps the graph connected for DDP)
                    loss_bce = action_logits.sum((1, 2, 3)) * 0.0
            else:
                A = action_logits.size(-1)
                matched, weight_sum = self._accumulated_denominators(cls_logits.size(2), accumulated)
                loss_ce = ce.sum(1) / weight_sum
                if matched and src_actions.numel():
                    loss_bce = F.binary_cross_entropy_with_logits(
                        src_actions, tgt_actions, reduction="none").sum((1, 2)) / (matched * A)
                else:
                    loss_bce = action_logits.sum((1, 2, 3)) * 0.0
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou, "loss_bce": loss_bce}

    def _accumulated_denominators(self, Q, accumulated):
        """``(matched pairs, class-weight sum)`` of the whole batch of ``accumulated`` with ``Q`` queries per clip."""
        matched = sum(min(Q, n) for n in accumulated.gt_counts)
        weight_sum = matched * self.empty_weight[0] + (Q * len(accumulated.gt_counts) - matched) * self.empty_weight[-1]
        return matched, weight_sum

    def _accumulated_ce_bce(self, cls_logits, target_classes, action_logits, src_actions, tgt_actions, accumulated):
        """Cross-entropy and BCE of a micro-batch as its share of the whole batch's weighted means.

        The whole batch's denominators follow from its box counts alone: clip i has
        ``m_i = min(Q, n_i)`` matched queries, so the class-weight sum is
        ``sum_i m_i * w_person + (Q - m_i) * w_empty`` and the BCE averages ``sum_i m_i * A`` elements.
        """
        A = action_logits.size(-1)
        matched, weight_sum = self._accumulated_denominators(cls_logits.size(1), accumulated)
        ce = F.cross_entropy(cls_logits.transpose(1, 2), target_classes, self.empty_weight, reduction="sum")
        loss_ce = ce / weight_sum
        if matched and src_actions.numel():
            loss_bce = F.binary_cross_entropy_with_logits(src_actions, tgt_actions, reduction="sum") / (matched * A)
        else:
            loss_bce = action_logits.sum() * 0.0
        return loss_ce, loss_bce
