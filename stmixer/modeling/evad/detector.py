"""The EVAD detector: token-pruning ViT -> FPN -> Sparse R-CNN person detector -> context refinement -> actions.

Official ``EVAD`` (``projects/evad/models/video_model_builder.py`` on ``e2e_detector.E2EDetector``) with
``EVADRoIHead`` (``head_helper.py``):

1. the backbone (``backbones/evad_vit.py``, ``EVAD-ViT-B`` / ``EVAD-ViT-L``) drops non-keyframe tokens and hands
   four keyframe maps, the kept tokens and their indices;
2. ``evad_fpn`` (``fpn.py``) turns the four maps into the pyramid ``p2 .. p5``;
3. the person detector (``stmixer.modeling.sparse_rcnn.SparseRCNNHead``: learned proposals, ``NUM_STAGES``
   dynamic-convolution stages, softmax person / no-object classifier) refines boxes on the pyramid;
4. the context-refinement decoder (``context.py``) classifies the last stage's boxes (detached) from the
   restored token grid and the kept tokens, after each of its blocks.

Training: the person stages get the Sparse R-CNN set loss (``SparseRCNNCriterion``: Hungarian matching with
class 2, L1 5, GIoU 2 costs; CE, L1, GIoU losses per stage); the queries matched at the last stage get the
action BCE of every decoder block (``loss.py``, weight 12). Inference: the last stage's person probability,
kept at ``person_threshold`` (none passing: all queries), sigmoid action scores, boxes clipped and normalized
(the ``STMDetector`` contract, so ``test_net``, the evaluator and ``demo.py`` work unchanged).

Official options that do not change the official results and are not reproduced: ``JITTER_BOX`` and
``GT_BOXES_PROB`` write into a copy of the boxes that the action branch never reads (here
``gt_boxes_prob`` does what the option intends; 0 = official); ``SOFTMAX_POSE`` and the focal person loss are
not used by any model-zoo config (the latter raises ``NotImplementedError`` officially).

Module names follow the official state dict below the detector parts: ``evad_fpn.fpn_lateral<s>`` /
``fpn_output<s>``, ``evad_head.det_head.{encoder_to_decoder, mask_token, decoder.blocks.<i>}``; the official
``det_head.s0_headseries.<i>`` and ``init_proposal_{features,boxes}`` are held as ``evad_head.person.head_series.<i>``
and ``evad_head.person.init_proposal_*`` (renamed on load by ``EVADHead.adapt_loaded_state``).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ...structures.boxes import clip_and_normalize
from ..build import DETECTOR_REGISTRY, build_backbone
from ..matcher import HungarianMatcher
from ..sparse_rcnn import SparseRCNNCriterion, SparseRCNNHead
from ..stmixer.decoder import target_dtype
from ..trace import record
from .context import ContextRefinement
from .fpn import EVADFPN
from .loss import evad_action_losses

# Official key prefixes (below ``evad_head.``) -> ours.
_OFFICIAL_PERSON_KEYS = (("det_head.s0_headseries.", "person.head_series."),
                         ("init_proposal_features.", "person.init_proposal_features."),
                         ("init_proposal_boxes.", "person.init_proposal_boxes."))


class EVADHead(nn.Module):
    """EVAD's heads: ``person`` (a ``SparseRCNNHead``), ``det_head`` (a ``ContextRefinement``) and the person
    detector's ``criterion`` (its buffer ``empty_weight`` is rebuilt from the config, not read from official
    files: format ``evad`` lists it as never stored)."""

    def __init__(self, person, det_head, criterion):
        super().__init__()
        self.person = person
        self.det_head = det_head
        self.criterion = criterion

    def adapt_loaded_state(self, state_dict, prefix):
        """Rename the official person-detector keys (``det_head.s0_headseries.*``, ``init_proposal_*``) to ours;
        called by the checkpoint loader with the file's state dict in detector key space."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for official, ours in _OFFICIAL_PERSON_KEYS:
                if rest.startswith(official):
                    state_dict[prefix + ours + rest[len(official):]] = state_dict.pop(key)
                    break


class EVAD(nn.Module):
    """The EVAD action detector (see the module docstring).

    Args:
        backbone: an ``EVADVisionTransformer`` (``backbone([video])`` -> ``EVADFeatures``).
        fpn: an ``EVADFPN`` over the backbone's four keyframe maps.
        person: a ``SparseRCNNHead`` with a softmax person / no-object classifier (1 class).
        context: a ``ContextRefinement``.
        criterion: the person detector's ``SparseRCNNCriterion`` (deep supervision).
        action_weight: weight of every decoder block's action BCE.
        person_threshold: inference: minimum person probability of a reported query.
        num_eval_act_classes: inference: keep the k best action scores of each person (others 0); 0 = all.
        gt_boxes_prob: training: probability per step of reading the matched queries' action RoIs at their
            ground-truth boxes (see the module docstring; 0 = official).
        head_lr_scale: learning-rate multiplier of the person stages and the decoder (``param_optim_overrides``).
    """

    task = "detection"
    num_pathways = 1

    def __init__(self, backbone, fpn, person, context, criterion, action_weight=12.0, person_threshold=0.7,
                 num_eval_act_classes=0, gt_boxes_prob=0.0, head_lr_scale=1.0):
        super().__init__()
        self.backbone = backbone
        self.evad_fpn = fpn
        self.evad_head = EVADHead(person, context, criterion)
        self.action_weight = float(action_weight)
        self.person_threshold = float(person_threshold)
        self.num_eval_act_classes = int(num_eval_act_classes)
        self.gt_boxes_prob = float(gt_boxes_prob)
        self.head_lr_scale = float(head_lr_scale)

    def param_optim_overrides(self, name):
        """``(lr multiplier, exempt from weight decay)`` of parameter ``name`` for the optimizer, as the official
        EVAD solver: the official ``det_head.*`` (person stages and context-refinement decoder) learn at
        ``head_lr_scale`` x the base rate, and its ``mask_token`` / ``pos_embed`` get no weight decay."""
        head = name.startswith(("evad_head.det_head.", "evad_head.person.head_series."))
        no_decay = name.startswith("evad_head.det_head.") and ("mask_token" in name or "pos_embed" in name)
        return (self.head_lr_scale if head else 1.0), no_decay

    def forward(self, slow_video, fast_video, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """Detections (eval mode) or the weighted loss dict (train mode).

        Args:
            slow_video: ``[B, 3, T, H, W]`` normalized, zero-padded clips (H, W multiples of 2 * patch).
            fast_video: unused (None).
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.
            gt_boxes: train mode: list of B tensors ``[n_i, 4]``, absolute xyxy pixels of the resized clip.
            gt_labels: train mode: list of B tensors ``[n_i, A]`` multi-hot actions.
            trace: optional dict (``modeling.trace``): ``kept_index``, ``fpn_p<s>``, the person head's
                ``stage<k>/class_logits`` / ``stage<k>/boxes``, ``action_logits`` (one entry per decoder block),
                in train mode ``match`` (the last stage's ``[3, m]`` (clip, query, flat target) rows).

        Returns:
            eval: per clip ``{"scores": [n, A] action probabilities, "boxes": [n, 4] normalized xyxy,
            "query_indices": [n], "person_scores": [n]}``; train: ordered dict of weighted loss terms
            (``loss_ce, loss_giou, loss_bbox``, the same with ``_<k>`` for the earlier stages k, then
            ``loss_bce_0 .. loss_bce_{L-2}``, ``loss_bce``: the official names and order).
        """
        feats = self.backbone([slow_video])
        record(trace, "kept_index", feats.kept_index)
        pyramid = self.evad_fpn(feats.features)
        for level, p in enumerate(pyramid):
            record(trace, f"fpn_p{level + 2}", p)
        whwh = torch.as_tensor(whwh).to(device=pyramid[0].device, dtype=target_dtype(pyramid[0].dtype))
        person = self.evad_head.person(pyramid, whwh, trace)
        boxes = person.boxes[-1].detach()
        if self.training:
            if gt_boxes is None or gt_labels is None:
                raise ValueError("EVAD in train mode needs gt_boxes and gt_labels (lists with one tensor per clip)")
            targets = [{"boxes": b.to(whwh.dtype), "labels": torch.zeros(len(b), dtype=torch.int64, device=b.device),
                        "whwh": wh} for b, wh in zip(gt_boxes, whwh)]
            losses, indices = self.evad_head.criterion.losses_and_matches(person, targets)
            clip_index, query_index, target_index = indices[len(person.boxes) - 1]
            record(trace, "match", indices[len(person.boxes) - 1])
            if self.gt_boxes_prob > 0 and torch.rand(()).item() < self.gt_boxes_prob:
                boxes = boxes.clone()
                boxes[clip_index, query_index] = torch.cat([t["boxes"] for t in targets])[target_index]
        actions = self.evad_head.det_head(feats.tokens, feats.kept_index, feats.grid, boxes, whwh)
        for logits in actions:
            record(trace, "action_logits", logits)
        if self.training:
            labels = torch.cat([torch.as_tensor(g) for g in gt_labels]).to(boxes.device)[target_index]
            out = OrderedDict(losses)
            out.update(evad_action_losses(actions, clip_index, query_index, labels, self.action_weight))
            return out
        return self.detections(person.class_logits[-1], boxes, actions[-1], whwh)

    def detections(self, class_logits, boxes, action_logits, whwh):
        """Per clip: queries with person probability (softmax, column 0) >= ``person_threshold`` in query order,
        all queries when none passes (official); sigmoid action scores (top ``num_eval_act_classes`` kept when
        set); boxes clipped into the clip and normalized."""
        person = F.softmax(class_logits, dim=-1)[..., 0]
        scores = torch.sigmoid(action_logits)
        if self.num_eval_act_classes > 0:
            top = torch.topk(scores, k=min(self.num_eval_act_classes, scores.shape[-1]), dim=-1)
            scores = torch.zeros_like(scores).scatter(-1, top.indices, top.values)
        results = []
        for i in range(person.shape[0]):
            keep = torch.nonzero(person[i] >= self.person_threshold).flatten()
            if keep.numel() == 0:
                keep = torch.arange(person.shape[1], device=person.device)
            results.append({"scores": scores[i, keep], "boxes": clip_and_normalize(boxes[i, keep], whwh[i]),
                            "query_indices": keep, "person_scores": person[i, keep]})
        return results


@DETECTOR_REGISTRY.register("EVAD")
def build_evad(cfg):
    """EVAD from ``MODEL.BACKBONE.CONV_BODY`` (``EVAD-ViT-B`` / ``EVAD-ViT-L``), ``ViT.*``, ``EVAD.*`` and
    ``EVAD.PERSON.*``; ``MODEL.STM.ACTION_CLASSES`` actions."""
    e, p, v = cfg.EVAD, cfg.EVAD.PERSON, cfg.ViT
    backbone = build_backbone(cfg)
    if not hasattr(backbone, "keep_rates"):
        raise ValueError(f"MODEL.BACKBONE.CONV_BODY = {cfg.MODEL.BACKBONE.CONV_BODY!r}: the EVAD detector needs an "
                         "EVAD backbone (EVAD-ViT-B / EVAD-ViT-L)")
    fpn = EVADFPN(backbone.out_channels, p.HIDDEN_DIM)
    person = SparseRCNNHead(
        p.NUM_PROPOSALS, p.HIDDEN_DIM, 1, p.NUM_STAGES,
        featmap_strides=(v.PATCH_SIZE / 4, v.PATCH_SIZE / 2, v.PATCH_SIZE, v.PATCH_SIZE * 2),
        pooler_resolution=p.POOLER_RESOLUTION, sampling_ratio=p.POOLER_SAMPLING_RATIO, use_focal=False,
        dim_feedforward=p.DIM_FEEDFORWARD, nhead=p.NHEADS, dropout=p.DROPOUT, activation=p.ACTIVATION,
        dim_dynamic=p.DIM_DYNAMIC, num_dynamic=p.NUM_DYNAMIC, num_cls=p.NUM_CLS, num_reg=p.NUM_REG)
    t0 = cfg.DATA.NUM_FRAMES // v.TUBELET_SIZE
    side = v.PRETRAIN_IMG_SIZE // v.PATCH_SIZE
    context = ContextRefinement(
        v.EMBED_DIM, embed_dim=e.DECODER_DIM, depth=e.DECODER_DEPTH, num_heads=e.DECODER_HEADS,
        mlp_ratio=e.DECODER_MLP_RATIO, drop_rate=e.DECODER_DROP_RATE, attn_drop_rate=e.DECODER_ATTN_DROP_RATE,
        drop_path_rate=e.DECODER_DROP_PATH_RATE, num_actions=cfg.MODEL.STM.ACTION_CLASSES, act_dim=e.ACT_FC_DIM,
        num_act_layers=e.NUM_ACT_LAYERS, num_queries=p.NUM_PROPOSALS, roi_extension=tuple(e.ROI_EXTENSION),
        roi_resolution=e.ROI_RESOLUTION, roi_sampling_ratio=e.ROI_SAMPLING_RATIO, patch_size=v.PATCH_SIZE,
        pos_grid=(t0, side, side), use_learnable_pos_emb=e.DECODER_LEARNABLE_POS_EMB,
        use_checkpoint=v.USE_CHECKPOINT, restore_shuffle=e.RESTORE_SHUFFLE)
    matcher = HungarianMatcher(class_weight=p.CLASS_WEIGHT, l1_weight=p.L1_WEIGHT, giou_weight=p.GIOU_WEIGHT,
                               class_cost="softmax")
    criterion = SparseRCNNCriterion(
        matcher, 1, {"loss_ce": p.CLASS_WEIGHT, "loss_bbox": p.L1_WEIGHT, "loss_giou": p.GIOU_WEIGHT},
        no_object_weight=p.NO_OBJECT_WEIGHT, deep_supervision=True, use_focal=False)
    return EVAD(backbone, fpn, person, context, criterion, action_weight=e.ACTION_WEIGHT,
                person_threshold=e.PERSON_THRESHOLD, num_eval_act_classes=e.NUM_EVAL_ACT_CLASSES,
                gt_boxes_prob=e.GT_BOXES_PROB, head_lr_scale=e.HEAD_LR_SCALE)
