"""The SlowFast backbone (Feichtenhofer et al., 2019) in the PySlowFast layout.

Two pathways: Slow (``pathway0``, T frames, full width) and Fast
(``pathway1``, ALPHA*T frames, width / BETA_INV). After the stem and after
res2..res4 the Fast features are fused into the Slow pathway (``s{k}_fuse``:
conv ``[K,1,1]`` stride (ALPHA,1,1), BN, ReLU, concatenated after the Slow
channels; reference quirk B3). The four returned levels are taken before each
fusion: Slow output concatenated with the Fast output max-pooled over time by
ALPHA (quirk B4).
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..build import BACKBONE_REGISTRY
from . import bn_act
from .conv_bn import conv_bn_act, fused_path
from .resnet3d import (
    SLOW_TEMPORAL_KERNELS,
    MultiPathwayStem,
    ResStage,
    VideoResNet,
    resnet_spec_from_cfg,
    resnet_widths,
    stage_specs_from_cfg,
)

# Temporal kernel size of the stem and of res2..res5 for the Fast pathway.
FAST_TEMPORAL_KERNELS = (5, 3, 3, 3, 3)


class FuseFastToSlow(nn.Module):
    """Fast -> Slow lateral connection: ``[slow, fast]`` -> ``[cat(slow, relu(bn(conv_f2s(fast)))), fast]``.

    conv_f2s: Conv3d ``dim_in -> dim_in * channel_ratio``, kernel ``[kernel,1,1]``,
    stride ``(alpha,1,1)``, padding ``(kernel//2,0,0)``, no bias. With ``norm_act=False``
    (``SLOWFAST.FUSION_BN_RELU False``, mmaction2's ``lateral_norm=False``) the convolution's
    output is concatenated as it is: no BN, no ReLU (and no ``bn.*`` parameters).
    """

    # MODEL.BACKBONE.FUSED_INFERENCE (conv_bn.py): "auto", True or False; set by VideoResNet.set_fused_inference
    fused_inference = False
    # MODEL.BACKBONE.FUSED_TRAINING_BN (bn_act.py): "auto", True or False; set by VideoResNet.set_fused_training_bn
    fused_training_bn = False

    def __init__(self, dim_in, channel_ratio, kernel, alpha, bn, inplace_relu=True, norm_act=True):
        super().__init__()
        self.conv_f2s = nn.Conv3d(
            dim_in, dim_in * channel_ratio, kernel_size=(kernel, 1, 1), stride=(alpha, 1, 1),
            padding=(kernel // 2, 0, 0), bias=False,
        )
        self.norm_act = norm_act
        if norm_act:
            self.bn = bn.make(dim_in * channel_ratio)
            self.relu = nn.ReLU(inplace_relu)

    def forward(self, xs):
        slow, fast = xs
        if self.norm_act and fused_path(self.fused_inference, fast, [self.conv_f2s], [self.bn]):
            fused = conv_bn_act(fast, self.conv_f2s, self.bn)
        elif self.norm_act and bn_act.active(self.fused_training_bn, self.bn, fast):
            fused = bn_act.bn_act(self.fused_training_bn, self.conv_f2s(fast), self.bn, self.relu)
        else:
            fused = self.conv_f2s(fast)
            if self.norm_act:
                fused = self.relu(self.bn(fused))
        if fused.shape[2] != slow.shape[2]:
            raise ValueError(
                f"SlowFast: the Fast pathway has {fast.shape[2]} frames, which the fusion maps to "
                f"{fused.shape[2]} instead of the Slow pathway's {slow.shape[2]} (expected ALPHA x Slow frames)"
            )
        return [torch.cat([slow, fused], dim=1), fast]


class SlowFast(VideoResNet):
    """Two-pathway 3D ResNet.

    Input: ``[slow, fast]`` with slow ``[B, 3, T, H, W]`` and fast
    ``[B, 3, ALPHA*T, H, W]``. Output: 4 maps ``[B, C_l, T, H/s_l, W/s_l]``,
    s_l = 4, 8, 16, 32, C_l = slow + fast channels (288, 576, 1152, 2304 at width 64).

    Args:
        stem_dims_in / stem_dims_out: stem channels per pathway.
        stage_pathways: per stage res2..res5, ``[slow_spec, fast_spec]`` (``PathwayStageSpec``);
            the Slow ``dim_in`` already includes the fused channels.
        alpha: Fast/Slow frame-rate ratio; fusion_channel_ratio / fusion_kernel: the lateral convolution.
        spec: ``ResNetSpec``; frozen_bn: see ``VideoResNet``.
        fusion_norm_act: BN + ReLU after each lateral convolution (PySlowFast); False for mmaction2.
    """

    num_pathways = 2

    def __init__(self, stem_dims_in, stem_dims_out, stage_pathways, alpha, fusion_channel_ratio, fusion_kernel,
                 spec, frozen_bn=False, fusion_norm_act=True):
        super().__init__(frozen_bn)
        self.alpha = alpha
        kernels = [SLOW_TEMPORAL_KERNELS[0], FAST_TEMPORAL_KERNELS[0]]
        self.s1 = MultiPathwayStem(stem_dims_in, stem_dims_out, kernels, spec.bn, spec.inplace_relu)
        # Registration order s1, s1_fuse, s2, s2_fuse, ..., s5 gives the official state_dict order.
        fast_dims = [stem_dims_out[1]] + [pathways[1].dim_out for pathways in stage_pathways[:3]]
        for k, fast_dim in enumerate(fast_dims, start=1):
            if k > 1:
                self.add_module(f"s{k}", ResStage(stage_pathways[k - 2], spec))
            self.add_module(
                f"s{k}_fuse",
                FuseFastToSlow(fast_dim, fusion_channel_ratio, fusion_kernel, alpha, spec.bn, spec.inplace_relu,
                               norm_act=fusion_norm_act),
            )
        self.s5 = ResStage(stage_pathways[3], spec)
        self.out_channels = [pathways[0].dim_out + pathways[1].dim_out for pathways in stage_pathways]
        self.init_weights(spec.zero_init_final_bn)

    def _level(self, xs):
        """Slow map concatenated with the Fast map max-pooled over time by ALPHA."""
        slow, fast = xs
        pooled = F.max_pool3d(fast, kernel_size=(self.alpha, 1, 1), stride=(self.alpha, 1, 1))
        return torch.cat([slow, pooled], dim=1)

    def forward(self, videos):
        """``[slow [B,3,T,H,W], fast [B,3,ALPHA*T,H,W]]`` -> 4 maps ``[B, C_l, T, H_l, W_l]`` (strides 4..32)."""
        self._check_inputs(videos)
        x = self.s1_fuse(self.s1(self._prepare(videos)))
        levels = []
        for s, stage in enumerate((self.s2, self.s3, self.s4, self.s5), start=2):
            x = stage(x)
            levels.append(self._level(x))
            if s < 5:
                x = getattr(self, f"s{s}_fuse")(x)
        return levels

    def last_stage(self, videos):
        """``[slow, fast]`` -> ``[slow res5 [B, C_s, T, H_5, W_5], fast res5 [B, C_f, ALPHA*T, H_5, W_5]]``:
        the two pathways of the last stage, not fused into one map (mmaction2's ``ResNet3dSlowFast``
        output, what its two-stage detectors' RoI extractor reads)."""
        self._check_inputs(videos)
        x = self.s1_fuse(self.s1(self._prepare(videos)))
        for s, stage in enumerate((self.s2, self.s3, self.s4, self.s5), start=2):
            x = stage(x)
            if s < 5:
                x = getattr(self, f"s{s}_fuse")(x)
        return list(x)


@BACKBONE_REGISTRY.register("PySlowfast-R50", "PySlowfast-R101")
def build_slowfast(cfg):
    """SlowFast from ``RESNET.*`` (DEPTH picks R50/R101), ``SLOWFAST.*``, ``NONLOCAL.*``, ``MODEL.BACKBONE.*``."""
    width = cfg.RESNET.WIDTH_PER_GROUP
    beta_inv = cfg.SLOWFAST.BETA_INV
    ratio = cfg.SLOWFAST.FUSION_CONV_CHANNEL_RATIO
    if len(cfg.DATA.INPUT_CHANNEL_NUM) < 2:
        raise ValueError(
            f"DATA.INPUT_CHANNEL_NUM: SlowFast needs one entry per pathway (2), got {cfg.DATA.INPUT_CHANNEL_NUM}"
        )
    widths = resnet_widths(width, cfg.RESNET.NUM_GROUPS)
    slow_out = [width] + [out for out, _ in widths]
    fast_out = [c // beta_inv for c in slow_out]
    slow_dims, fast_dims = [], []
    for s, (out, inner) in enumerate(widths):
        slow_dims.append((slow_out[s] + fast_out[s] * ratio, out, inner))
        fast_dims.append((fast_out[s], out // beta_inv, inner // beta_inv))
    slow_stages = stage_specs_from_cfg(cfg, 0, slow_dims, SLOW_TEMPORAL_KERNELS[1:])
    fast_stages = stage_specs_from_cfg(cfg, 1, fast_dims, FAST_TEMPORAL_KERNELS[1:])
    backbone = SlowFast(
        stem_dims_in=list(cfg.DATA.INPUT_CHANNEL_NUM[:2]),
        stem_dims_out=[width, fast_out[0]],
        stage_pathways=[[slow, fast] for slow, fast in zip(slow_stages, fast_stages)],
        alpha=cfg.SLOWFAST.ALPHA,
        fusion_channel_ratio=ratio,
        fusion_kernel=cfg.SLOWFAST.FUSION_KERNEL_SZ,
        spec=resnet_spec_from_cfg(cfg),
        frozen_bn=cfg.MODEL.BACKBONE.FROZEN_BN,
        fusion_norm_act=cfg.SLOWFAST.FUSION_BN_RELU,
    )
    backbone.channels_last = cfg.MODEL.BACKBONE.CHANNELS_LAST
    backbone.set_float32_stem(cfg.MODEL.BACKBONE.FLOAT32_STEM)
    backbone.set_spatial_conv_2d(cfg.MODEL.BACKBONE.SPATIAL_CONV_2D)
    backbone.set_fused_training_bn(cfg.MODEL.BACKBONE.FUSED_TRAINING_BN)
    return backbone.set_fused_inference(cfg.MODEL.BACKBONE.FUSED_INFERENCE)
