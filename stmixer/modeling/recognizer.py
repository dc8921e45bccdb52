"""Video recognizers: a backbone of ``BACKBONE_REGISTRY`` -> a classification head of ``HEAD_REGISTRY``.

``Recognizer3D`` is registered in ``DETECTOR_REGISTRY`` (the registry of whole models, detectors
and recognizers alike) as ``MODEL.META_ARCHITECTURE: "Recognizer3D"``, so ``build_detector(cfg)``
builds it. Its attribute names are ``backbone`` and ``head``: the backbone keys are the
detectors' (a recognizer checkpoint is a backbone checkpoint for ``--transfer``), and the
``linear`` head's parameters are PySlowFast's ``head.projection.*`` (the K400 SlowOnly / SlowFast
checkpoints load as classifiers; see ``stmixer.checkpoint``).

Another head (e.g. an attention branch) registers itself with ``@HEAD_REGISTRY.register(name)``;
its builder takes ``(cfg, backbone)`` and returns a module ``head(maps)`` ->
``[B, K]`` logits, or a dict with "logits" ``[B, K]`` and further entries (see ``ClassifierHead``).
A head that reads other backbone features than the last stage (e.g. res4, to run its own res5
branches) defines ``backbone_features(backbone, videos)`` returning what its ``forward`` takes.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.registry import Registry
from .build import DETECTOR_REGISTRY, build_backbone, lookup
from .losses import active_accumulation

# MODEL.RECOGNIZER.HEAD -> builder(cfg, backbone) returning the classification head.
HEAD_REGISTRY = Registry("recognizer head", config_key="MODEL.RECOGNIZER.HEAD")


def backbone_maps(backbone, videos):
    """The maps a recognition head reads: per pathway the last stage ``[B, C_p, T_p, H, W]``
    (ResNets: ``last_stage``, SlowFast's two pathways unfused) or the last level of ``forward``."""
    if hasattr(backbone, "last_stage"):
        return list(backbone.last_stage(videos))
    return [backbone(videos)[-1]]


class ClassifierHead(nn.Module):
    """Interface of the recognition heads: ``forward(maps)`` -> logits ``[B, K]`` (or a dict with
    "logits" and head-specific tensors; then ``loss(outputs, labels)`` may add loss terms).

    ``maps`` is what ``backbone_features(backbone, videos)`` returns: by default ``backbone_maps``
    (the last stage per pathway); a head may override it to read other levels."""

    def backbone_features(self, backbone, videos):
        """The backbone features ``forward`` takes (default: the last stage of each pathway)."""
        return backbone_maps(backbone, videos)

    def loss(self, outputs, labels, label_smoothing=0.0, normalizer=None):
        """Loss terms of the head: ``{"loss_cls": cross entropy}`` of "logits" against ``labels`` ``[B]``.

        ``normalizer``: divide the summed per-clip losses by it (gradient accumulation: the clips of the
        whole step); None: the mean over the batch."""
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        losses = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="none")
        return {"loss_cls": losses.mean() if normalizer is None else losses.sum() / normalizer}


class LinearHead(ClassifierHead):
    """PySlowFast's ``ResNetBasicHead`` with global pooling: average each pathway's map over
    T, H, W, concatenate the pathways (in order), dropout, ``projection`` (Linear).

    Args:
        dim_in: channels of the concatenated pathways (SlowOnly R50: 2048; SlowFast R50: 2048 + 256).
        num_classes: K.
        dropout_rate: dropout before the projection (training only).
        init_std: the projection weights start from N(0, init_std) and bias 0 (PySlowFast's FC_INIT_STD).

    Input: list of pathway maps ``[B, C_p, T_p, H_p, W_p]``; output: logits ``[B, K]``.
    """

    def __init__(self, dim_in, num_classes, dropout_rate=0.0, init_std=0.01):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.projection = nn.Linear(dim_in, num_classes)
        nn.init.normal_(self.projection.weight, std=init_std)
        nn.init.zeros_(self.projection.bias)

    def forward(self, maps):
        pooled = torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], dim=1)
        return self.projection(self.dropout(pooled))


@HEAD_REGISTRY.register("linear")
def build_linear_head(cfg, backbone):
    """LinearHead over the backbone's last stage (``out_channels[-1]`` channels, pathways together)."""
    return LinearHead(backbone.out_channels[-1], cfg.MODEL.RECOGNIZER.NUM_CLASSES, cfg.MODEL.RECOGNIZER.DROPOUT_RATE)


class Recognizer3D(nn.Module):
    """Video classifier: ``backbone`` -> ``head``.

    Args:
        backbone: a backbone of ``BACKBONE_REGISTRY`` (with ``num_pathways`` and ``out_channels``).
        head: a ClassifierHead.
        label_smoothing: of the cross-entropy loss.
    """

    #: What the engine runs this model on (detectors have no attribute: "detection").
    task = "recognition"

    def __init__(self, backbone, head, label_smoothing=0.0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.label_smoothing = float(label_smoothing)

    def forward(self, slow_video, fast_video=None, whwh=None, gt_boxes=None, gt_labels=None, labels=None):
        """Loss dict (train mode) or class probabilities (eval mode).

        Args:
            slow_video: ``[B, 3, T, H, W]`` normalized clips (the only pathway of single-pathway backbones).
            fast_video: ``[B, 3, ALPHA*T, H, W]`` for SlowFast, else None.
            whwh, gt_boxes: unused (the detectors' batch layout; recognition batches carry no boxes).
            gt_labels / labels: train mode: the classes, int64 ``[B]`` or a list of B tensors ``[1]``
                (the batch dict's "labels").

        Returns:
            train: ``{"loss_cls": scalar}`` (plus a head's own terms);
            eval: float ``[B, K]`` softmax scores.
        """
        videos = [slow_video] if self.backbone.num_pathways == 1 else [slow_video, fast_video]
        extract = getattr(self.head, "backbone_features", None)
        features = extract(self.backbone, videos) if extract is not None else backbone_maps(self.backbone, videos)
        outputs = self.head(features)
        if not self.training:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs
            return logits.float().softmax(dim=1)
        targets = labels if labels is not None else gt_labels
        if targets is None:
            raise ValueError("Recognizer3D in train mode needs labels")
        if isinstance(targets, (list, tuple)):
            targets = torch.cat([t.reshape(-1) for t in targets])
        targets = targets.to(device=slow_video.device, dtype=torch.int64)
        accumulated = active_accumulation()
        normalizer = len(accumulated.gt_counts) if accumulated is not None else None
        return self.head.loss(outputs, targets, self.label_smoothing, normalizer)


@DETECTOR_REGISTRY.register("Recognizer3D")
def build_recognizer(cfg):
    """Recognizer3D from MODEL.BACKBONE.* (and the backbone's keys) and MODEL.RECOGNIZER.*."""
    head_builder = lookup(HEAD_REGISTRY, cfg.MODEL.RECOGNIZER.HEAD)
    backbone = build_backbone(cfg)
    return Recognizer3D(backbone, head_builder(cfg, backbone), cfg.MODEL.RECOGNIZER.LABEL_SMOOTHING)
