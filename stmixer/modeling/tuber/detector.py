"""The TubeR detector: ir-CSN backbone -> ``TubeRHead`` (pooling, transformer, heads) -> losses or detections.

``MODEL.META_ARCHITECTURE: "TubeR"``; keys ``MODEL.TUBER.*`` (docs/tuber.md has the official-yaml table).
Attribute names ``backbone`` (the ``IrCSN``) and ``tuber_head`` (TubeR's own names below it) are what
``stmixer.checkpoint`` maps a TubeR ``.pth`` onto.

Boxes: the detector takes and returns the STMDetector contract (ground truth absolute xyxy pixels of
the resized clip with its unpadded size ``whwh``; detections normalized xyxy); inside, as TubeR, the
heads predict clip-normalized cxcywh (normalized by the unpadded size, DETR's convention).
"""

import torch
from torch import nn

from ...config import ConfigError
from ..build import DETECTOR_REGISTRY, build_backbone, lookup
from ..matcher import HungarianMatcher
from .criterion import TubeRCriterion, cxcywh_to_xyxy
from .head import TubeRHead
from .transformer import TUBER_TRANSFORMER_REGISTRY


def pixel_padding_mask(video, whwh):
    """``[B, H, W]`` bool, True on the padded pixels of a batch ``video [B, 3, T, H, W]`` whose clips have the
    unpadded sizes ``whwh [B, 4]`` (TubeR's ``nested_tensor_from_tensor_list`` mask)."""
    B, H, W = video.shape[0], video.shape[-2], video.shape[-1]
    mask = torch.ones(B, H, W, dtype=torch.bool, device=video.device)
    for i, (w, h) in enumerate(whwh[:, :2].round().long().tolist()):
        mask[i, :h, :w] = False
    return mask


class TubeR(nn.Module):
    """TubeR on AVA.

    Args:
        backbone: ``IrCSN`` (``last_stage``).
        head: ``TubeRHead``.
        criterion: ``TubeRCriterion``.
        switch_threshold: inference: action scores of queries whose actor probability is at or below it are 0
            (TubeR's ``PostProcessAVA``: ``sigmoid(logits) * p * (p > 0.8)``).
        backbone_lr_factor: learning-rate factor of the backbone and the temporal pooling (``param_optim_overrides``).
    """

    task = "detection"

    def __init__(self, backbone, head, criterion, switch_threshold=0.8, backbone_lr_factor=1.0):
        super().__init__()
        self.backbone = backbone
        self.tuber_head = head
        self.criterion = criterion
        self.switch_threshold = switch_threshold
        self.backbone_lr_factor = backbone_lr_factor

    def param_optim_overrides(self, name):
        """``(lr multiplier, exempt from weight decay)`` of parameter ``name`` (``stmixer.solver``):
        ``backbone_lr_factor`` for the CSN and the temporal pooling (TubeR's ``backbone.*`` groups,
        LR_BACKBONE), 1 for the rest; weight decay as grouped."""
        # Deformable TubeR's pooling lives in its head, outside the fork's "backbone" learning-rate group
        pooling = () if self.tuber_head.multi_level else ("tuber_head.query_pool.", "tuber_head.pool_decoder.")
        if name.startswith(("backbone.",) + pooling):
            return self.backbone_lr_factor, False
        return 1.0, False

    def predictions(self, slow_video, whwh, trace=None):
        """Per-layer head outputs (``TubeRHead.forward``: all ``query_frames * num_queries`` queries) of a clip
        batch ``[B, 3, T, H, W]``; ``forward`` reads the key frame's queries of them."""
        if self.tuber_head.multi_level:  # Deformable TubeR, SeqFormer: every CSN stage
            x = self.backbone([slow_video])
        else:
            x = self.backbone.last_stage([slow_video])[0]
        if trace is not None:
            trace["backbone"] = x
        return self.tuber_head(x, pixel_padding_mask(slow_video, whwh), trace=trace)

    def forward(self, slow_video, fast_video, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """Detections (eval mode) or the weighted loss dict (train mode).

        Args:
            slow_video: ``[B, 3, T, H, W]`` normalized, zero-padded clips; fast_video: unused (None).
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.
            gt_boxes: train: B tensors ``[n_i, 4]`` absolute xyxy pixels; gt_labels: B tensors ``[n_i, A]`` multi-hot.
            trace: optional dict of intermediate tensors (backbone, pooled, memory, hs, ..., match/layer{k}).

        Returns:
            eval: per clip ``{"scores": [Q, A], "boxes": [Q, 4] normalized xyxy clamped to [0, 1],
            "query_indices": [Q], "person_scores": [Q]}`` (every query, as TubeR's AVA evaluation; head
            "frame": see ``frame_detections``);
            train: ordered dict of weighted loss terms (``TubeRCriterion``).
        """
        out = self.tuber_head.key_frame_outputs(self.predictions(slow_video, whwh, trace))
        if self.training:
            targets = [{"boxes": b, "actions": a.to(b.dtype), "whwh": s.to(b.dtype)}
                       for b, a, s in zip(gt_boxes, gt_labels, whwh)]
            return self.criterion(out, targets, trace=trace)
        return self.detections(out)

    def detections(self, out):
        """STMDetector-contract detections of the last layer (see ``forward``) of the key frame's outputs."""
        if self.tuber_head.switch == "clip":
            return self.frame_detections(out)
        p_actor = out["logits_b"][-1].softmax(-1)[..., 1]
        gate = (p_actor > self.switch_threshold).to(p_actor.dtype) * p_actor
        if not self.tuber_head.switch_gate:  # the TubeR fork's PostProcessAVA (Deformable TubeR)
            gate = torch.ones_like(p_actor)
        scores = out["logits"][-1].sigmoid() * gate[..., None]
        boxes = cxcywh_to_xyxy(out["boxes"][-1]).clamp(0, 1)
        Q = boxes.shape[1]
        keep = torch.arange(Q, device=boxes.device)
        return [{"scores": scores[i], "boxes": boxes[i], "query_indices": keep, "person_scores": p_actor[i]}
                for i in range(boxes.shape[0])]

    def frame_detections(self, out):
        """JHMDB / UCF101-24 detections (head "frame"), as TubeR's evaluation reads its ``PostProcess`` output
        (``evaluates/evaluate_ucf.py``): per key-frame query ``p = softmax(logits)`` over ``A + 1``; a query whose
        argmax is "no action" (the last column) is dropped; the others keep one score, ``p`` of their best
        action, in that action's column (the other columns 0).

        Returns per clip ``{"scores": [n, A], "boxes": [n, 4] normalized xyxy clamped to [0, 1],
        "query_indices": [n] (kept queries of the key frame, ascending), "person_scores": [n]}`` with
        ``person_scores`` the clip switch's probability that an actor is visible (TubeR writes it, its
        evaluation does not use it).
        """
        prob = out["logits"][-1].softmax(-1)
        A = prob.shape[-1] - 1
        best, label = prob[..., :A].max(-1)
        keep = prob.argmax(-1) != A
        scores = torch.zeros_like(prob[..., :A]).scatter_(-1, label[..., None], best[..., None])
        boxes = cxcywh_to_xyxy(out["boxes"][-1]).clamp(0, 1)
        p_visible = out["logits_b"][-1].softmax(-1)[:, 1]
        result = []
        for i in range(boxes.shape[0]):
            index = keep[i].nonzero().flatten()
            result.append({"scores": scores[i, index], "boxes": boxes[i, index], "query_indices": index,
                           "person_scores": p_visible[i].expand(len(index))})
        return result


def build_tuber_head(cfg, transformer):
    t = cfg.MODEL.TUBER
    frame = t.HEAD == "frame"  # JHMDB / UCF101-24: per-frame queries, clip switch, "no action" class
    return TubeRHead(
        transformer, num_queries=t.NUM_QUERIES, num_actions=cfg.MODEL.STM.ACTION_CLASSES, backbone_channels=2048,
        input_channels=t.PROJ_IN_CHANNELS or t.DIM_FEEDFORWARD, temporal_pool=t.TEMPORAL_POOL,
        pool_frames=max(cfg.DATA.NUM_FRAMES // 8, 1), cross_attn_dim=t.CROSS_ATTN_DIM,
        position_float32=t.POSITION_FLOAT32, switch="clip" if frame else "query",
        query_frames=cfg.DATA.NUM_FRAMES if frame else 1, no_action_class=frame)


def build_tuber_criterion(cfg):
    t = cfg.MODEL.TUBER
    frame = t.HEAD == "frame"
    matcher = HungarianMatcher(t.COST_CLASS, t.COST_BBOX, t.COST_GIOU, person_index=1, l1_space="cxcywh")
    weights = {"loss_ce": t.ACTION_WEIGHT, "loss_ce_b": t.SWITCH_WEIGHT, "loss_bbox": t.L1_WEIGHT,
               "loss_giou": t.GIOU_WEIGHT}
    return TubeRCriterion(matcher, weights, t.MATCHED_WEIGHT, t.EOS_COEF, "softmax" if frame else t.CLASS_LOSS,
                          t.FOCAL_GAMMA, t.DEEP_SUPERVISION, t.LOSS_FLOAT32, switch="clip" if frame else "query")


@DETECTOR_REGISTRY.register("TubeR")
def build_tuber(cfg):
    """TubeR from MODEL.BACKBONE.* / MODEL.CSN.* (the ir-CSN) and MODEL.TUBER.*; loads MODEL.TUBER.DETR_WEIGHT."""
    if not str(cfg.MODEL.BACKBONE.CONV_BODY).startswith("CSN-"):
        raise ConfigError(f"MODEL.BACKBONE.CONV_BODY = {cfg.MODEL.BACKBONE.CONV_BODY!r}: TubeR expects an ir-CSN "
                          "backbone (CSN-50 / CSN-152), whose 2048-channel last stage its heads read")
    backbone = build_backbone(cfg)
    transformer = lookup(TUBER_TRANSFORMER_REGISTRY, cfg.MODEL.TUBER.TRANSFORMER)(cfg)
    # a transformer that brings its own head (Deformable TubeR's D2/D3/D4) builds it
    head = transformer.build_head(cfg) if hasattr(transformer, "build_head") else build_tuber_head(cfg, transformer)
    model = TubeR(backbone, head, build_tuber_criterion(cfg), cfg.MODEL.TUBER.SWITCH_THRESHOLD,
                  cfg.MODEL.TUBER.BACKBONE_LR_FACTOR)
    if cfg.MODEL.TUBER.DETR_WEIGHT:
        from .detr_weights import load_detr_weights

        load_detr_weights(model, cfg.MODEL.TUBER.DETR_WEIGHT)
    return model
