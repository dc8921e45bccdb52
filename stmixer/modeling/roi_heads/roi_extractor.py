"""3-D RoI feature extraction for two-stage action detectors (mmaction2's ``SingleRoIExtractor3D``).

Each person box is pooled from every temporal slice of a 3-D feature map with RoIAlign
(``torchvision.ops.roi_align``, which equals mmcv's CPU ``roi_align`` bit for bit), after an
optional temporal pooling of the map. Optionally a global context feature (the whole frame,
adaptively average-pooled to the RoI output size) is concatenated to every RoI's channels.
"""

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ...errors import UserError

TEMPORAL_POOL_MODES = ("avg", "max")


class RoIExtractor3D(nn.Module):
    """Per-frame RoIAlign on a single-level 3-D feature map (one or several pathways).

    Args:
        featmap_stride: stride of the feature map relative to the input image; RoI boxes are
            scaled by ``1 / featmap_stride`` (mmaction2 default 16).
        output_size: RoIAlign output size, an int or ``(height, width)`` (mmaction2 default 16;
            its AVA configs use 8).
        sampling_ratio: sampling points per output bin along each axis; 0 = adaptive
            (``ceil(roi_size / output_size)``), as mmcv/torchvision.
        aligned: if True, pixel centres are shifted by -0.5 (mmcv/torchvision ``aligned=True``).
        with_temporal_pool: pool the time axis to length 1 before RoIAlign.
        temporal_pool_mode: ``'avg'`` (mean over T) or ``'max'`` (max over T).
        with_global: concatenate, per RoI and frame, the frame's global feature
            (``AdaptiveAvgPool2d(output_size)`` of the whole map) after the RoI feature's channels.

    Shapes (forward):
        feats: ``[B, C, T, H, W]`` or a sequence of pathways ``[B, C_i, T_i, H_i, W_i]`` (SlowFast:
            slow then fast). With several pathways every one is resized with nearest
            interpolation to ``(max_i T_i, H_0, W_0)`` and they are concatenated along channels
            (in the given order) after temporal pooling.
        rois: ``[K, 5]``, rows ``(batch_index, x1, y1, x2, y2)`` with boxes in absolute pixels
            of the (padded) network input, same dtype as the features.
        returns ``(roi_feats, feat)``: ``roi_feats`` ``[K, C', T', oh, ow]`` with
            ``C' = sum C_i`` (``2 * sum C_i`` with ``with_global``) and ``T' = 1`` with temporal
            pooling, else ``max_i T_i``; ``feat`` ``[B, sum C_i, T', H_0, W_0]`` (the pooled,
            concatenated map that context heads such as ACRN read).
    """

    def __init__(self, featmap_stride: int = 16, output_size: Union[int, Tuple[int, int]] = 16,
                 sampling_ratio: int = 0, aligned: bool = True, with_temporal_pool: bool = True,
                 temporal_pool_mode: str = "avg", with_global: bool = False):
        super().__init__()
        if temporal_pool_mode not in TEMPORAL_POOL_MODES:
            raise UserError(f"temporal_pool_mode: expected one of {TEMPORAL_POOL_MODES}, got "
                            f"{temporal_pool_mode!r}")
        if not featmap_stride or featmap_stride <= 0:
            raise UserError(f"featmap_stride: expected a positive number, got {featmap_stride!r}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2 or min(output_size) <= 0:
            raise UserError(f"output_size: expected a positive int or (height, width), got {output_size!r}")
        if sampling_ratio < 0:
            raise UserError(f"sampling_ratio: expected >= 0 (0 = adaptive), got {sampling_ratio!r}")
        self.featmap_stride = featmap_stride
        self.spatial_scale = 1.0 / featmap_stride
        self.output_size = output_size
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.with_temporal_pool = bool(with_temporal_pool)
        self.temporal_pool_mode = temporal_pool_mode
        self.with_global = bool(with_global)
        self.global_pool = nn.AdaptiveAvgPool2d(self.output_size)

    def extra_repr(self):
        return (f"featmap_stride={self.featmap_stride}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"with_temporal_pool={self.with_temporal_pool}, "
                f"temporal_pool_mode={self.temporal_pool_mode!r}, with_global={self.with_global}")

    def _check(self, feats, rois):
        for i, x in enumerate(feats):
            if not torch.is_tensor(x) or x.dim() != 5:
                raise UserError(f"feats[{i}]: expected a [B, C, T, H, W] tensor, got "
                                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
            if x.shape[0] != feats[0].shape[0] or x.dtype != feats[0].dtype:
                raise UserError(f"feats[{i}]: batch size / dtype {x.shape[0]}/{x.dtype} differ from "
                                f"feats[0]'s {feats[0].shape[0]}/{feats[0].dtype}")
        if not torch.is_tensor(rois) or rois.dim() != 2 or rois.shape[1] != 5:
            raise UserError(f"rois: expected a [K, 5] tensor (batch_index, x1, y1, x2, y2), got "
                            f"{tuple(rois.shape) if torch.is_tensor(rois) else type(rois).__name__}")
        if rois.dtype != feats[0].dtype:
            raise UserError(f"rois: dtype {rois.dtype} differs from the features' {feats[0].dtype}")
        if rois.shape[0]:
            index = rois[:, 0]
            if (index != index.round()).any() or index.min() < 0 or index.max() >= feats[0].shape[0]:
                raise UserError(f"rois[:, 0]: expected integer batch indices in [0, {feats[0].shape[0]}), "
                                f"got {index.tolist()}")

    def forward(self, feats: Union[Tensor, Sequence[Tensor]], rois: Tensor) -> Tuple[Tensor, Tensor]:
        """RoI features ``[K, C', T', oh, ow]`` and the pooled map ``[B, sum C_i, T', H, W]`` (see class doc)."""
        feats = [feats] if torch.is_tensor(feats) else list(feats)
        if not feats:
            raise UserError("feats: expected at least one feature map")
        self._check(feats, rois)
        if len(feats) >= 2:
            # every pathway to the longest T and the first pathway's H, W (nearest)
            size = (max(x.shape[2] for x in feats),) + tuple(feats[0].shape[3:])
            feats = [F.interpolate(x, size).contiguous() for x in feats]
        if self.with_temporal_pool:
            if self.temporal_pool_mode == "avg":
                feats = [x.mean(2, keepdim=True) for x in feats]
            else:
                feats = [x.max(2, keepdim=True)[0] for x in feats]
        feat = torch.cat(feats, dim=1).contiguous()

        batch_index = rois[:, 0].long()
        roi_feats = []
        for t in range(feat.shape[2]):
            frame = feat[:, :, t].contiguous()
            roi_feat = roi_align(frame, rois, self.output_size, spatial_scale=self.spatial_scale,
                                 sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            if self.with_global:
                global_feat = self.global_pool(frame)[batch_index]
                roi_feat = torch.cat([roi_feat, global_feat], dim=1).contiguous()
            roi_feats.append(roi_feat)
        return torch.stack(roi_feats, dim=2), feat
