"""RoI heads of mmaction2's two-stage AVA detectors: 3-D RoI extraction and the AVA bbox head."""

from .bbox_head import BBoxHeadAVA, bbox_targets, class_detections
from .lfb import FBOAvg, FBOHead, FBOMax, FBONonLocal, LFBInferHead
from .roi_extractor import RoIExtractor3D

__all__ = ["BBoxHeadAVA", "FBOAvg", "FBOHead", "FBOMax", "FBONonLocal", "LFBInferHead", "RoIExtractor3D",
           "bbox_targets", "class_detections"]
