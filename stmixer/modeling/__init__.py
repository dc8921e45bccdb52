"""Backbones, neck, STMixer decoder, matcher, losses and the detector that joins them."""

from . import backbones  # noqa: F401  (registers the backbones)
from .build import BACKBONE_REGISTRY, DETECTOR_REGISTRY, build_backbone, build_detector
from .necks import build_neck
from .detector import STMDetector  # noqa: E402  (registers the detector)

__all__ = ["STMDetector", "BACKBONE_REGISTRY", "DETECTOR_REGISTRY", "build_backbone", "build_detector", "build_neck"]
