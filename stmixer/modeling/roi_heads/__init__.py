"""RoI heads of mmaction2's two-stage AVA detectors: 3-D RoI extraction, shared heads (ACRN) and the AVA bbox head."""

from .acrn import ACRNHead  # registers SHARED_HEAD_REGISTRY "ACRN"
from .bbox_head import BBoxHeadAVA, bbox_targets, class_detections
from .roi_extractor import RoIExtractor3D

__all__ = ["ACRNHead", "BBoxHeadAVA", "RoIExtractor3D", "bbox_targets", "class_detections"]
