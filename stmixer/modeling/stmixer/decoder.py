"""The STMixer decoder (the detector's ``stm_head``): queries -> stages -> detections or losses.

``STMDecoder(features, whwh, gt_boxes=None, gt_labels=None, trace=None)``:
learned spatial and temporal queries and whole-clip initial proposals go
through ``NUM_STAGES`` ``DecoderStage``s. In eval mode the final stage gives
the detections of every clip; in train mode every stage is matched to the
ground truth and the weighted loss dict is returned (``losses.SetCriterion``).
The state-dict keys are the official ``STMDecoder`` ones.
"""

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...structures.boxes import clip_and_normalize, find_degenerate_boxes, xyxy_to_xyzr
from ..losses import SetCriterion
from ..matcher import HungarianMatcher
from ..trace import record
from .sampling import SAMPLER_IMPLS, PyramidSampler
from .stage import DecoderStage

# Strides (pixels of the padded canvas) of the four pyramid levels the decoder reads.
FEATMAP_STRIDES = (4, 8, 16, 32)
# When no query of a clip reaches the person threshold, this many top-scoring queries are kept.
FALLBACK_TOP_K = 3


def target_dtype(feature_dtype):
    """The dtype of ``whwh``, the targets, the matching costs and the box losses for features of ``feature_dtype``.

    At least float32: under autocast (bf16 / fp16 features) the clip sizes and the
    ground truth stay exact (a bf16 width of 455 would be 456, a box edge of 10.3 would
    be 10.3125) and the matching costs float32, as the official code keeps them;
    float64 features give float64.
    """
    return torch.promote_types(feature_dtype, torch.float32)


@dataclasses.dataclass
class DecoderOutputs:
    """Per-stage predictions, stage 0 first: lists of ``S`` tensors.

    cls_logits ``[B, Q, K + 1]``, action_logits ``[B, Q, A]``, boxes ``[B, Q, 4]``
    (absolute xyxy pixels of the refined proposals).
    """

    cls_logits: list
    action_logits: list
    boxes: list

    def flat(self):
        """All tensors in one tuple: the S cls_logits, then the S action_logits, then the S boxes."""
        return (*self.cls_logits, *self.action_logits, *self.boxes)

    @classmethod
    def from_flat(cls, tensors):
        """Inverse of ``flat``."""
        S = len(tensors) // 3
        return cls(list(tensors[:S]), list(tensors[S:2 * S]), list(tensors[2 * S:]))


class STMDecoder(nn.Module):
    """Sparse spatio-temporal decoder with set-prediction training.

    Args:
        num_queries: Q.
        hidden_dim: D (queries and feature channels).
        num_stages: S.
        person_threshold: eval keeps the queries whose person score is at least this.
        criterion: the ``SetCriterion`` used in train mode (its ``empty_weight`` is part of the state dict).
        featmap_strides: strides of the feature levels in pixels.
        sampler: feature-sampling implementation (``sampling.SAMPLER_IMPLS``; ``MODEL.STM.SAMPLER``).
        **stage_args: the remaining ``DecoderStage`` arguments (num_heads, ffn_dim, ...).
    """

    def __init__(self, num_queries, hidden_dim, num_stages, person_threshold, criterion,
                 featmap_strides=FEATMAP_STRIDES, sampler="auto", **stage_args):
        super().__init__()
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.temporal_points = stage_args["temporal_points"]
        self.n_groups = stage_args["n_groups"]
        if sampler not in SAMPLER_IMPLS:
            raise ValueError(f"MODEL.STM.SAMPLER = {sampler!r}; expected one of {SAMPLER_IMPLS}")
        self.sampler = sampler
        self.person_threshold = person_threshold
        self.featmap_strides = tuple(featmap_strides)
        self.init_spatial_queries = nn.Embedding(num_queries, hidden_dim)
        self.init_temporal_queries = nn.Embedding(num_queries, hidden_dim)
        self.decoder_stages = nn.ModuleList(
            DecoderStage(hidden_dim, **stage_args) for _ in range(num_stages)
        )
        self.criterion = criterion

    def initial_state(self, whwh):
        """Initial proposals and queries for clips of size ``whwh`` ``[B, 4]`` (w, h, w, h pixels).

        Returns ``(xyzr [B, Q, 4], q_s [B, Q, D], q_t [B, Q, D])``: every proposal
        is its whole clip (x = w/2, y = h/2, z = log2 sqrt(w h), r = log2(h / w));
        the queries are the embeddings layer-normalized without affine.
        """
        B = whwh.size(0)
        clip = torch.cat([torch.zeros_like(whwh[:, :2]), whwh[:, :2]], dim=-1)  # (0, 0, w, h)
        xyzr = xyxy_to_xyzr(clip)[:, None, :].expand(B, self.num_queries, 4)
        q_s = F.layer_norm(self.init_spatial_queries.weight, [self.hidden_dim])
        q_t = F.layer_norm(self.init_temporal_queries.weight, [self.hidden_dim])
        return xyzr, q_s.expand(B, -1, -1), q_t.expand(B, -1, -1)

    def _check_inputs(self, features, whwh):
        if len(features) != len(self.featmap_strides):
            raise ValueError(
                f"the decoder needs {len(self.featmap_strides)} feature levels (strides {self.featmap_strides}), "
                f"got {len(features)}"
            )
        B = whwh.size(0)
        for level, feature in enumerate(features):
            if feature.dim() != 5 or feature.size(0) != B or feature.size(1) != self.hidden_dim:
                raise ValueError(
                    f"feature level {level} has shape {list(feature.shape)}; expected [B={B}, "
                    f"MODEL.STM.HIDDEN_DIM={self.hidden_dim}, T, H, W]"
                )
            if feature.size(2) != self.temporal_points:
                raise ValueError(
                    f"feature level {level} has {feature.size(2)} frames but MODEL.STM.TEMPORAL_POINTS is "
                    f"{self.temporal_points}; they must be equal"
                )

    def decode(self, features, whwh, trace=None):
        """Run every stage; returns ``DecoderOutputs`` (see ``forward`` for the arguments)."""
        self._check_inputs(features, whwh)
        xyzr, q_s, q_t = self.initial_state(whwh)
        record(trace, "init_xyzr", xyzr)
        record(trace, "init_q_s", q_s[0])
        record(trace, "init_q_t", q_t[0])
        sampler = PyramidSampler(features, self.featmap_strides, self.n_groups, self.sampler)
        outputs = DecoderOutputs([], [], [])
        for stage in self.decoder_stages:
            out = stage(sampler, xyzr, q_s, q_t, trace)
            xyzr, q_s, q_t = out.xyzr, out.q_s, out.q_t
            outputs.cls_logits.append(out.cls_logits)
            outputs.action_logits.append(out.action_logits)
            outputs.boxes.append(out.boxes)
        return outputs

    def forward(self, features, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """Detections (eval mode) or the loss dict (train mode).

        Args:
            features: 4 maps ``[B, D, T', H_l, W_l]`` of strides 4, 8, 16, 32 of the padded canvas.
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels (cast to ``target_dtype`` of the
                features' dtype: float32 under autocast).
            gt_boxes: train mode: list of B tensors ``[n_i, 4]``, absolute xyxy pixels of the clip.
            gt_labels: train mode: list of B tensors ``[n_i, A]``, multi-hot actions (any numeric dtype).
            trace: optional dict receiving intermediate results under the reference
                fixture names (see ``modeling.trace``).

        Returns:
            eval: list of B dicts ``{"scores": [n, A] action probabilities, "boxes": [n, 4]
            normalized xyxy (clipped to the clip, divided by its size), "query_indices": [n],
            "person_scores": [n] person probabilities of the kept queries}``.
            train: ordered dict of weighted loss terms (``losses.SetCriterion``).
        """
        whwh = self.clip_sizes(whwh, features[0])
        return self.finish(self.decode(features, whwh, trace), whwh, gt_boxes, gt_labels, trace)

    @staticmethod
    def clip_sizes(whwh, like):
        """``whwh`` as a tensor on ``like``'s device in ``target_dtype(like.dtype)``."""
        return torch.as_tensor(whwh).to(device=like.device, dtype=target_dtype(like.dtype))

    def finish(self, outputs, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """From the stages' ``DecoderOutputs`` to detections (eval mode) or losses (train mode); see ``forward``.

        ``whwh`` as ``clip_sizes`` gives it. The part of the forward that depends on the number
        of ground-truth boxes and detections (never inside a CUDA graph)."""
        if not self.training:
            return self.detections(outputs, whwh, trace)
        if gt_boxes is None or gt_labels is None:
            raise ValueError("train mode needs gt_boxes and gt_labels (lists with one tensor per clip)")
        targets = self.make_targets(gt_boxes, gt_labels, whwh)
        return self.criterion(outputs, targets, trace)

    def detections(self, outputs, whwh, trace=None):
        """Final-stage detections per clip (see ``forward``).

        Queries with person score (softmax of the objectness logits, column 0)
        at least ``person_threshold`` are kept in query order; if none is, the
        ``FALLBACK_TOP_K`` best, best first. Scores are sigmoids of the action
        logits (not multiplied by the person score; no NMS).
        """
        person = F.softmax(outputs.cls_logits[-1], dim=-1)[..., 0]
        actions = torch.sigmoid(outputs.action_logits[-1])
        boxes = outputs.boxes[-1]
        record(trace, "person_scores", person)
        results = []
        # one device -> host copy for the kept queries of every clip
        kept = (person >= self.person_threshold).cpu()
        for i in range(person.size(0)):
            keep = torch.nonzero(kept[i]).flatten().to(person.device)
            if keep.numel() == 0:
                keep = torch.topk(person[i], k=min(FALLBACK_TOP_K, person.size(1))).indices
            results.append({
                "scores": actions[i, keep],
                "boxes": clip_and_normalize(boxes[i, keep], whwh[i]),
                "query_indices": keep,
                "person_scores": person[i, keep],
            })
        return results

    def make_targets(self, gt_boxes, gt_labels, whwh):
        """Per-clip target dicts ``{"boxes": [n, 4], "actions": [n, A], "whwh": [4]}`` in ``whwh``'s dtype.

        Raises ValueError naming the clip (index in the batch) and box when a
        box is not finite or has x2 < x1 or y2 < y1 (the official code stops on
        an assertion there).
        """
        if not (len(gt_boxes) == len(gt_labels) == whwh.size(0)):
            raise ValueError(
                f"got {len(gt_boxes)} gt_boxes and {len(gt_labels)} gt_labels entries for {whwh.size(0)} clips"
            )
        dtype, device = whwh.dtype, whwh.device
        targets = []
        for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
            boxes = torch.as_tensor(boxes).to(device=device, dtype=dtype).reshape(-1, 4)
            labels = torch.as_tensor(labels).to(device=device, dtype=dtype)
            if labels.dim() != 2 or labels.size(0) != boxes.size(0):
                raise ValueError(
                    f"clip {i} of the batch: gt_labels has shape {list(labels.shape)}; expected "
                    f"[{boxes.size(0)}, num_actions] (one multi-hot row per gt box)"
                )
            targets.append({"boxes": boxes, "actions": labels, "whwh": whwh[i]})
        # one check (one device synchronization) for the boxes of all clips
        bad = find_degenerate_boxes(torch.cat([t["boxes"] for t in targets])).tolist() if targets else []
        if bad:
            offset = 0
            for i, target in enumerate(targets):
                n = len(target["boxes"])
                in_clip = [k - offset for k in bad if offset <= k < offset + n]
                if in_clip:
                    j = in_clip[0]
                    raise ValueError(
                        f"clip {i} of the batch: ground-truth box {j} = {target['boxes'][j].tolist()} is "
                        f"degenerate ({len(in_clip)} such boxes); expected finite absolute x1 <= x2, y1 <= y2 pixels"
                    )
                offset += n
        return targets


def build_stm_decoder(cfg):
    """The decoder described by ``cfg.MODEL.STM`` (randomly initialized as the official code does)."""
    stm = cfg.MODEL.STM
    if stm.MEM_ACTIVE:
        raise ValueError("MODEL.STM.MEM_ACTIVE = True (long-term memory) is not supported; set it to False")
    D = stm.HIDDEN_DIM
    for key, divisor in (("NUM_HEADS", stm.NUM_HEADS), ("N_GROUPS", stm.N_GROUPS)):
        if D % divisor:
            raise ValueError(f"MODEL.STM.HIDDEN_DIM = {D} must be divisible by MODEL.STM.{key} = {divisor}")
    if D % 8:
        raise ValueError(f"MODEL.STM.HIDDEN_DIM = {D} must be a multiple of 8 (box positional embedding)")
    matcher = HungarianMatcher(class_weight=stm.OBJECT_WEIGHT, l1_weight=stm.L1_WEIGHT, giou_weight=stm.GIOU_WEIGHT)
    criterion = SetCriterion(
        matcher,
        num_object_classes=stm.OBJECT_CLASSES,
        weights={"loss_ce": stm.OBJECT_WEIGHT, "loss_bbox": stm.L1_WEIGHT,
                 "loss_giou": stm.GIOU_WEIGHT, "loss_bce": stm.ACTION_WEIGHT},
        background_weight=stm.BACKGROUND_WEIGHT,
        intermediate_supervision=stm.INTERMEDIATE_SUPERVISION,
        batched_losses=stm.STACKED_LOSSES,
    )
    return STMDecoder(
        num_queries=stm.NUM_QUERIES,
        hidden_dim=D,
        num_stages=stm.NUM_STAGES,
        person_threshold=stm.PERSON_THRESHOLD,
        criterion=criterion,
        num_heads=stm.NUM_HEADS,
        ffn_dim=stm.DIM_FEEDFORWARD,
        num_ffn_fcs=stm.NUM_FCS,
        dropout=stm.DROPOUT,
        activation=stm.ACTIVATION,
        spatial_points=stm.SPATIAL_POINTS,
        temporal_points=stm.TEMPORAL_POINTS,
        out_multiplier=stm.OUT_MULTIPLIER,
        n_groups=stm.N_GROUPS,
        num_cls_fcs=stm.NUM_CLS,
        num_reg_fcs=stm.NUM_REG,
        num_action_fcs=stm.NUM_ACT,
        object_classes=stm.OBJECT_CLASSES,
        action_classes=stm.ACTION_CLASSES,
        sampler=stm.SAMPLER,
    )
