"""Sparse R-CNN (Sun et al. 2021): the shared head of the EVAD person detector and the TubeR fork's detector."""

from .detector import SparseRCNN  # noqa: F401  (registers the detector)
from .criterion import SparseRCNNCriterion, sigmoid_focal_loss
from .head import (DynamicConv, RCNNHead, SparseRCNNHead, SparseRCNNOutputs, StageOutput, apply_deltas,
                   box_cxcywh_to_xyxy, jitter_boxes)
from .pooler import MultiLevelRoIPooler, assign_boxes_to_levels

__all__ = ["DynamicConv", "MultiLevelRoIPooler", "RCNNHead", "SparseRCNN", "SparseRCNNCriterion", "SparseRCNNHead",
           "SparseRCNNOutputs", "StageOutput", "apply_deltas", "assign_boxes_to_levels", "box_cxcywh_to_xyxy",
           "jitter_boxes", "sigmoid_focal_loss"]
