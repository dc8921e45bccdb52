"""RoI heads of mmaction2's two-stage AVA detectors: 3-D RoI extraction and the AVA bbox head."""

from .bbox_head import BBoxHeadAVA, bbox_targets, class_detections
from . import lfb  # noqa: F401  (registers the LFB shared heads FBONonLocal / FBOMax / FBOAvg / LFBInfer)
from .roi_extractor import RoIExtractor3D

__all__ = ["BBoxHeadAVA", "RoIExtractor3D", "bbox_targets", "class_detections"]
