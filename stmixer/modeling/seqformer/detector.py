"""The SeqFormer detector: ir-CSN (all frames kept) -> ``SeqFormerHead`` -> losses or detections.

``MODEL.META_ARCHITECTURE: "SeqFormer"``; keys ``MODEL.SEQFORMER.*`` plus the transformer widths shared with
TubeR (``MODEL.TUBER.{D_MODEL, NHEAD, ENC_LAYERS, DEC_LAYERS, DIM_FEEDFORWARD, DROPOUT, NUM_QUERIES,
MATCHED_WEIGHT, LOSS_FLOAT32, BACKBONE_LR_FACTOR}``); docs/seqformer.md has the fork's yaml mapped.

It is the TubeR detector (``stmixer.modeling.tuber.TubeR``: same backbone call for multi-level heads, same
target format, same learning-rate groups) with SeqFormer's head, criterion and detections. Attribute names
``backbone`` and ``tuber_head`` (the fork's names below it: ``transformer.*``, ``input_proj.*``,
``query_embed``, ``class_embed.*``, ``bbox_embed.*``).
"""

import torch

from ...config import ConfigError
from ..build import DETECTOR_REGISTRY, build_backbone
from ..matcher import HungarianMatcher
from ..tuber.criterion import cxcywh_to_xyxy
from ..tuber.detector import TubeR
from .criterion import SeqFormerCriterion
from .head import SeqFormerHead
from .transformer import SeqFormerTransformer


class SeqFormer(TubeR):
    """SeqFormer on AVA (``TubeR``'s arguments; ``head`` a ``SeqFormerHead``, ``criterion`` a
    ``SeqFormerCriterion``; no actor switch, so no ``switch_threshold``)."""

    def __init__(self, backbone, head, criterion, backbone_lr_factor=1.0):
        super().__init__(backbone, head, criterion, switch_threshold=0.0, backbone_lr_factor=backbone_lr_factor)

    def detections(self, out):
        """STMDetector-contract detections of the last layer: per clip ``{"scores": [Q, A] sigmoid(logits),
        "boxes": [Q, 4] normalized xyxy clamped to [0, 1], "query_indices": [Q], "person_scores": [Q]}`` (every
        query, as the fork's ``PostProcessAVA``; SeqFormer has no actor score, so ``person_scores`` is each
        query's highest action score)."""
        scores = out["logits"][-1].sigmoid()
        boxes = cxcywh_to_xyxy(out["boxes"][-1]).clamp(0, 1)
        keep = torch.arange(boxes.shape[1], device=boxes.device)
        person = scores.max(-1).values
        return [{"scores": scores[i], "boxes": boxes[i], "query_indices": keep, "person_scores": person[i]}
                for i in range(boxes.shape[0])]


def build_seqformer_head(cfg):
    t, s = cfg.MODEL.TUBER, cfg.MODEL.SEQFORMER
    transformer = SeqFormerTransformer(
        d_model=t.D_MODEL, nhead=t.NHEAD, num_encoder_layers=t.ENC_LAYERS, num_decoder_layers=t.DEC_LAYERS,
        dim_feedforward=t.DIM_FEEDFORWARD, dropout=t.DROPOUT, activation="relu",
        num_feature_levels=s.NUM_FEATURE_LEVELS, dec_n_points=s.DEC_N_POINTS, enc_n_points=s.ENC_N_POINTS)
    return SeqFormerHead(transformer, num_queries=t.NUM_QUERIES, num_actions=cfg.MODEL.STM.ACTION_CLASSES,
                         box_refine=s.BOX_REFINE, batch_time_mix=s.BATCH_TIME_MIX)


def build_seqformer_criterion(cfg):
    t, s = cfg.MODEL.TUBER, cfg.MODEL.SEQFORMER
    matcher = HungarianMatcher(s.COST_CLASS, s.COST_BBOX, s.COST_GIOU, class_cost="focal", focal_alpha=s.FOCAL_ALPHA,
                               focal_gamma=s.FOCAL_GAMMA, l1_space="cxcywh")
    weights = {"loss_ce": s.CLASS_WEIGHT, "loss_bbox": s.L1_WEIGHT, "loss_giou": s.GIOU_WEIGHT}
    return SeqFormerCriterion(matcher, weights, t.MATCHED_WEIGHT, s.MATCH_CLASS_COST, s.DEEP_SUPERVISION,
                              t.LOSS_FLOAT32)


@DETECTOR_REGISTRY.register("SeqFormer")
def build_seqformer(cfg):
    """SeqFormer from MODEL.BACKBONE.* / MODEL.CSN.* (an ir-CSN with TEMPORAL_STRIDE 1), MODEL.TUBER.* widths and
    MODEL.SEQFORMER.*."""
    if not str(cfg.MODEL.BACKBONE.CONV_BODY).startswith("CSN-"):
        raise ConfigError(f"MODEL.BACKBONE.CONV_BODY = {cfg.MODEL.BACKBONE.CONV_BODY!r}: SeqFormer expects an ir-CSN "
                          "backbone (CSN-50 / CSN-152) whose layer2..layer4 it reads")
    if cfg.MODEL.CSN.TEMPORAL_STRIDE != 1:
        raise ConfigError(f"MODEL.CSN.TEMPORAL_STRIDE = {cfg.MODEL.CSN.TEMPORAL_STRIDE!r}: SeqFormer attends to every "
                          "frame of layer2..layer4 at once, which needs the same frame count in each: expected 1 "
                          "(the TubeR fork's ir_CSN_50_variant)")
    t, s = cfg.MODEL.TUBER, cfg.MODEL.SEQFORMER
    if not (isinstance(s.NUM_FEATURE_LEVELS, int) and s.NUM_FEATURE_LEVELS >= 3):
        raise ConfigError(f"MODEL.SEQFORMER.NUM_FEATURE_LEVELS = {s.NUM_FEATURE_LEVELS!r}: expected an integer >= 3 "
                          "(CSN layer2..layer4, then extra stride-2 levels)")
    if t.D_MODEL % 32 or t.D_MODEL % t.NHEAD:
        raise ConfigError(f"MODEL.TUBER.D_MODEL = {t.D_MODEL!r}: SeqFormer expects a multiple of 32 (its input "
                          f"projections use GroupNorm(32)) and of MODEL.TUBER.NHEAD = {t.NHEAD}")
    return SeqFormer(build_backbone(cfg), build_seqformer_head(cfg), build_seqformer_criterion(cfg),
                     cfg.MODEL.TUBER.BACKBONE_LR_FACTOR)
