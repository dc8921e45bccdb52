"""ACRN, the actor-centric relation shared head (mmaction2's ``ACRNHead``; Sun et al., ECCV 2018).

Each RoI feature is max-pooled to one vector per actor, tiled over the clip's whole (pooled)
feature map and concatenated with it along channels; a 1x1x1 conv and one or more (1, 3, 3)
convs (each conv -> BatchNorm3d -> ReLU, no conv bias) then mix actor and scene into a relation
feature map per actor, which the bbox head pools and classifies.

Used as ``MODEL.ROI_HEAD.SHARED_HEAD "ACRN"`` between ``RoIExtractor3D`` and ``BBoxHeadAVA``
(see ``shared_heads.py`` for the interface). In mmaction2's ACRN config the extractor pools time
(``with_temporal_pool=True``, mean), so both inputs have ``T' = 1``, and the head's output keeps
the feature map's spatial size (stride 1), e.g. ``[K, 2304, 1, 16, 16]`` for a 256-pixel input.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ...errors import UserError
from .shared_heads import SHARED_HEAD_REGISTRY

NORMS = ("BN3d", "none")
ACTIVATIONS = ("ReLU", "none")


class ConvNormAct3d(nn.Module):
    """``Conv3d`` (no bias) -> optional ``BatchNorm3d`` -> optional ReLU, as mmcv's ``ConvModule``.

    Submodule names equal ``ConvModule``'s (``conv``, ``bn``, ``activate``), so its state-dict keys
    (``conv.weight``, ``bn.weight``, ``bn.bias``, ``bn.running_mean``, ...) load unchanged.
    ``norm_requires_grad=False`` freezes the BatchNorm's affine parameters (mmcv's
    ``norm_cfg.requires_grad``); its running statistics still update in training mode.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 norm: str = "BN3d", act: str = "ReLU", norm_requires_grad: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        if norm == "BN3d":
            self.bn = nn.BatchNorm3d(out_channels)
            for p in self.bn.parameters():
                p.requires_grad_(norm_requires_grad)
        self.with_norm = norm != "none"
        if act == "ReLU":
            self.activate = nn.ReLU(inplace=True)
        self.with_activation = act != "none"

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.with_norm:
            x = self.bn(x)
        if self.with_activation:
            x = self.activate(x)
        return x


class ACRNHead(nn.Module):
    """Actor-centric relations of each RoI with its clip's feature map.

    Args:
        in_channels: input channels of the first (1x1x1) conv: the RoI features' channels plus the
            feature map's (mmaction2's meaning; its SlowFast-R50 config: 4608 = 2304 + 2304).
        out_channels: channels of every conv's output and of the returned features (2304 there).
        stride: spatial stride of the first (1, 3, 3) conv.
        num_convs: number of (1, 3, 3) convs (>= 1); the ones after the first have stride 1.
        norm: ``"BN3d"`` (mmaction2's default ``norm_cfg=dict(type='BN3d')``) or ``"none"``.
        act: ``"ReLU"`` (default) or ``"none"``.
        norm_requires_grad: train the BatchNorm scale and shift (mmaction2's ``requires_grad=True``).

    Parameter names equal mmaction2's (``conv1.conv.weight``, ``conv1.bn.*``, ``conv2.*``,
    ``convs.<i>.*``), so its checkpoints load with the ``roi_head.shared_head.`` prefix removed.
    Weights start as mmaction2's ``init_weights`` leaves them: conv weights Kaiming-normal
    (``fan_out``, ReLU gain), BatchNorm scale 1 and shift 0.

    Shapes (forward):
        roi_feats: ``[K, C_roi, T', oh, ow]`` (``RoIExtractor3D``'s RoI features);
        feat: ``[B, C_map, T', H, W]`` (its pooled, concatenated map), ``C_roi + C_map = in_channels``;
        rois: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, absolute pixels of the padded input
            (only the batch index is read);
        img_keys: ignored (part of the shared-head interface);
        returns ``[K, out_channels, T', H_o, W_o]`` with ``H_o = floor((H - 1) / stride) + 1``
        (``W_o`` likewise).

    Each RoI's max-pooled vector is tiled over ``T' x H x W``. mmaction2 tiles it over ``H x W``
    only, which works for ``T' = 1`` (its configs pool time in the extractor) and fails with a
    size mismatch otherwise; for ``T' = 1`` the two are identical.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, num_convs: int = 1,
                 norm: str = "BN3d", act: str = "ReLU", norm_requires_grad: bool = True):
        super().__init__()
        if norm not in NORMS:
            raise UserError(f"ACRN norm: expected one of {NORMS}, got {norm!r}")
        if act not in ACTIVATIONS:
            raise UserError(f"ACRN act: expected one of {ACTIVATIONS}, got {act!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("stride", stride),
                            ("num_convs", num_convs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"ACRN {name}: expected an integer >= 1, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.num_convs = num_convs
        self.norm = norm
        self.act = act
        self.max_pool = nn.AdaptiveMaxPool3d(1)
        kw = dict(norm=norm, act=act, norm_requires_grad=norm_requires_grad)
        self.conv1 = ConvNormAct3d(in_channels, out_channels, 1, **kw)
        self.conv2 = ConvNormAct3d(out_channels, out_channels, (1, 3, 3), stride=(1, stride, stride),
                                   padding=(0, 1, 1), **kw)
        self.convs = nn.ModuleList(ConvNormAct3d(out_channels, out_channels, (1, 3, 3), padding=(0, 1, 1), **kw)
                                   for _ in range(num_convs - 1))
        self.init_weights()

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}, "
                f"num_convs={self.num_convs}, norm={self.norm!r}, act={self.act!r}")

    def init_weights(self):
        """mmaction2's ``ACRNHead.init_weights``: Kaiming-normal convs (fan_out, ReLU), BatchNorm 1 / 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check(self, roi_feats, feat, rois):
        if not torch.is_tensor(roi_feats) or roi_feats.dim() != 5:
            raise UserError(f"ACRN roi_feats: expected a [K, C, T, oh, ow] tensor, got "
                            f"{tuple(roi_feats.shape) if torch.is_tensor(roi_feats) else type(roi_feats).__name__}")
        if not torch.is_tensor(feat) or feat.dim() != 5:
            raise UserError(f"ACRN feat: expected the [B, C, T, H, W] feature map, got "
                            f"{tuple(feat.shape) if torch.is_tensor(feat) else type(feat).__name__}")
        if roi_feats.shape[1] + feat.shape[1] != self.in_channels:
            raise UserError(f"ACRN: RoI features ({roi_feats.shape[1]} channels) + feature map ({feat.shape[1]}) "
                            f"do not add up to in_channels = {self.in_channels} (MODEL.ROI_HEAD.ACRN: the head's "
                            f"input is the RoI features tiled over the map and concatenated with it)")
        if roi_feats.shape[2] != feat.shape[2]:
            raise UserError(f"ACRN: RoI features have T = {roi_feats.shape[2]}, the feature map "
                            f"T = {feat.shape[2]}; expected the same (both from RoIExtractor3D)")
        if not torch.is_tensor(rois) or rois.dim() != 2 or rois.shape[1] != 5 or rois.shape[0] != roi_feats.shape[0]:
            raise UserError(f"ACRN rois: expected [{roi_feats.shape[0]}, 5] rows (batch_index, x1, y1, x2, y2), got "
                            f"{tuple(rois.shape) if torch.is_tensor(rois) else type(rois).__name__}")

    def forward(self, roi_feats: Tensor, feat: Tensor, rois: Tensor,
                img_keys: Optional[Sequence[str]] = None) -> Tensor:
        """Relation features ``[K, out_channels, T', H_o, W_o]`` (see the class doc)."""
        self._check(roi_feats, feat, rois)
        t, h, w = feat.shape[2:]
        if roi_feats.shape[0] == 0:  # no RoI in the batch: nothing to relate (BatchNorm needs values)
            h_o, w_o = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
            return feat.new_zeros((0, self.out_channels, t, h_o, w_o))
        actor = self.max_pool(roi_feats).expand(-1, -1, t, h, w)  # [K, C_roi, T', H, W]
        scene = feat[rois[:, 0].long()]  # [K, C_map, T', H, W]
        x = self.conv2(self.conv1(torch.cat([actor, scene], dim=1)))
        for conv in self.convs:
            x = conv(x)
        return x


def _acrn_channels(in_channels: int, with_global: bool) -> int:
    """Channels of the extractor's feature map, given its RoI features' ``in_channels``."""
    if with_global:
        if in_channels % 2:
            raise UserError(f"MODEL.ROI_HEAD.WITH_GLOBAL: RoI features of {in_channels} channels cannot be "
                            f"RoI + global halves")
        return in_channels // 2
    return in_channels


@SHARED_HEAD_REGISTRY.register("ACRN")
def build_acrn(cfg, in_channels: int) -> ACRNHead:
    """``ACRNHead`` from ``MODEL.ROI_HEAD.ACRN.*`` on RoI features of ``in_channels`` channels.

    The first conv reads the RoI features plus the extractor's feature map, whose channels are
    ``in_channels`` (half of it with ``MODEL.ROI_HEAD.WITH_GLOBAL``, whose RoI features are RoI +
    global halves). ``OUT_CHANNELS`` 0 keeps ``in_channels`` (mmaction2's SlowFast-R50 config:
    4608 in, 2304 out).
    """
    acrn = cfg.MODEL.ROI_HEAD.ACRN
    with_global = bool(cfg.MODEL.ROI_HEAD.get("WITH_GLOBAL", False))
    out_channels = acrn.OUT_CHANNELS or in_channels
    return ACRNHead(in_channels + _acrn_channels(in_channels, with_global), out_channels, stride=acrn.STRIDE,
                    num_convs=acrn.NUM_CONVS, norm=acrn.NORM, act=acrn.ACT,
                    norm_requires_grad=acrn.NORM_REQUIRES_GRAD)
