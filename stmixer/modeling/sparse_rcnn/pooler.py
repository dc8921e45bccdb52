"""Multi-level RoI pooling of Sparse R-CNN: detectron2's ``ROIPooler`` (ROIAlignV2) over torchvision's ``roi_align``.

Each box is pooled from one level of the feature pyramid, chosen from its size:
``level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))``,
clamped to the levels present (level k has stride ``2**k``). ROIAlignV2 is
``torchvision.ops.roi_align(..., aligned=True)`` (the half-pixel shift). As detectron2 (whose ``Boxes``
store float32), the boxes are rounded to float32 before the level assignment and the pooling
(``float32_boxes``; a no-op for float32 boxes, it matters for float64 parity).
"""

import math

import torch
from torch import nn
from torchvision.ops import roi_align

CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


def assign_boxes_to_levels(boxes, min_level, max_level, canonical_box_size=CANONICAL_BOX_SIZE,
                           canonical_level=CANONICAL_LEVEL):
    """Pyramid level of each box, as an offset from ``min_level``.

    Args:
        boxes: ``[M, 4]`` absolute xyxy pixels (all images concatenated).
        min_level, max_level: the levels present (level k has stride ``2**k``).

    Returns:
        int64 ``[M]`` in ``[0, max_level - min_level]``.
    """
    size = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    level = torch.floor(canonical_level + torch.log2(size / canonical_box_size + 1e-8))
    return torch.clamp(level, min=min_level, max=max_level).to(torch.int64) - min_level


class MultiLevelRoIPooler(nn.Module):
    """RoIAlign (``aligned=True``) of each box on its pyramid level (no parameters).

    Args:
        output_size: R (the pooled maps are ``R x R``).
        strides: stride in pixels of each level, finest first, powers of 2 (e.g. ``(4, 8, 16, 32)``).
        sampling_ratio: sampling points per bin side (0: adaptive, as torchvision).
        canonical_box_size, canonical_level: the level-assignment rule (detectron2's 224 and 4).
        float32_boxes: round the boxes to float32 first, as detectron2's ``Boxes`` do (the reference);
            False keeps their dtype.
    """

    def __init__(self, output_size, strides, sampling_ratio=2, canonical_box_size=CANONICAL_BOX_SIZE,
                 canonical_level=CANONICAL_LEVEL, float32_boxes=True):
        super().__init__()
        self.output_size = int(output_size)
        self.strides = tuple(strides)
        levels = [math.log2(s) for s in self.strides]
        if any(abs(lv - round(lv)) > 1e-9 for lv in levels) or \
                [round(lv) for lv in levels] != list(range(round(levels[0]), round(levels[0]) + len(levels))):
            raise ValueError(f"RoI pooler strides {self.strides}: expected consecutive powers of 2, finest first")
        self.min_level = round(levels[0])
        self.max_level = round(levels[-1])
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.float32_boxes = float32_boxes

    def forward(self, features, boxes):
        """Pool ``B`` images' boxes.

        Args:
            features: list of L maps ``[B, C, H_l, W_l]`` (strides ``self.strides``).
            boxes: ``[B, Q, 4]`` absolute xyxy pixels of the padded input.

        Returns:
            ``[B * Q, C, R, R]`` (image-major order).
        """
        if len(features) != len(self.strides):
            raise ValueError(f"the RoI pooler has {len(self.strides)} levels (strides {self.strides}), "
                             f"got {len(features)} feature maps")
        B, Q = boxes.shape[:2]
        flat = boxes.reshape(B * Q, 4)
        if self.float32_boxes:
            flat = flat.to(torch.float32)
        index = torch.arange(B, dtype=flat.dtype, device=flat.device).repeat_interleave(Q)
        rois = torch.cat([index[:, None], flat], dim=1).to(features[0].dtype)
        R = self.output_size
        if len(features) == 1:
            return roi_align(features[0], rois, R, 1.0 / self.strides[0], self.sampling_ratio, aligned=True)
        levels = assign_boxes_to_levels(flat, self.min_level, self.max_level, self.canonical_box_size,
                                        self.canonical_level)
        out = features[0].new_zeros(B * Q, features[0].size(1), R, R)
        for k, (feature, stride) in enumerate(zip(features, self.strides)):
            inds = torch.nonzero(levels == k).flatten()
            out.index_put_((inds,), roi_align(feature, rois[inds], R, 1.0 / stride, self.sampling_ratio,
                                              aligned=True))
        return out
