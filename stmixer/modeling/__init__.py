"""Backbones, neck, STMixer decoder, matcher, losses, the detectors that join them and the recognizers."""

from . import backbones  # noqa: F401  (registers the backbones)
from .build import BACKBONE_REGISTRY, DETECTOR_REGISTRY, build_backbone, build_detector
from .necks import build_neck
from .detector import STMDetector  # noqa: E402  (registers the detector)
from .fast_rcnn import FastRCNN  # noqa: E402  (registers the two-stage detector)
from .recognizer import HEAD_REGISTRY, Recognizer3D  # noqa: E402  (registers the recognizer and its heads)
from .sparse_rcnn import SparseRCNN  # noqa: E402,F401  (registers the Sparse R-CNN detector)
from .tuber import TubeR  # noqa: E402,F401  (registers the TubeR detector)
from . import evad  # noqa: E402,F401  (registers the EVAD detector)
from . import stabn  # noqa: E402,F401  (registers the ST-ABN recognizer head)
from .seqformer import SeqFormer  # noqa: E402,F401  (registers the SeqFormer detector)

__all__ = ["STMDetector", "FastRCNN", "Recognizer3D", "HEAD_REGISTRY", "BACKBONE_REGISTRY", "DETECTOR_REGISTRY",
           "build_backbone", "build_detector", "build_neck"]
