"""Backbones, neck, STMixer decoder, matcher, losses and the detector that joins them."""

from .build import BACKBONE_REGISTRY, DETECTOR_REGISTRY, build_backbone, build_detector

__all__ = ["BACKBONE_REGISTRY", "DETECTOR_REGISTRY", "build_backbone", "build_detector"]
