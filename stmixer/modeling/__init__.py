"""Backbones, neck, STMixer decoder, matcher, losses and the detector that joins them."""

from . import backbones  # noqa: F401  (registers the backbones)
from .build import BACKBONE_REGISTRY, DETECTOR_REGISTRY, build_backbone, build_detector
from .necks import build_neck
from .detector import STMDetector  # noqa: E402  (registers the detector)
from .fast_rcnn import FastRCNN  # noqa: E402  (registers the two-stage detector)

__all__ = ["STMDetector", "FastRCNN", "BACKBONE_REGISTRY", "DETECTOR_REGISTRY", "build_backbone", "build_detector", "build_neck"]
