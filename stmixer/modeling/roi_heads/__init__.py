"""RoI heads of mmaction2's two-stage AVA detectors: 3-D RoI extraction, assignment and sampling,
the AVA bbox head and the ``AVARoIHead`` that joins them."""

from .assigner import MaxIoUAssignerAVA, RandomSampler, box_iou
from .ava_roi_head import AVARoIHead, boxes_to_rois
from .bbox_head import BBoxHeadAVA, bbox_targets, class_detections
from .roi_extractor import RoIExtractor3D

__all__ = ["AVARoIHead", "BBoxHeadAVA", "MaxIoUAssignerAVA", "RandomSampler", "RoIExtractor3D", "bbox_targets",
           "box_iou", "boxes_to_rois", "class_detections"]
