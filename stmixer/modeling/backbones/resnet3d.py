"""3D ResNet building blocks in the PySlowFast layout, and the SlowOnly backbone.

Module names follow PySlowFast (and hence the official STMixer checkpoints):
stem ``s1.pathway{p}_stem.{conv,bn}``, stages ``s2``..``s5`` holding blocks
``pathway{p}_res{i}`` (``branch1``/``branch1_bn`` shortcut, ``branch2.{a,b,c}``
and ``branch2.{a,b,c}_bn``) and non-local blocks ``pathway{p}_nonlocal{i}``.
A "pathway" is one input stream: SlowOnly has one, SlowFast two (slow, fast).

Tensors are videos / feature maps ``[B, C, T, H, W]``. No block strides in
time; the stem and stages res3..res5 halve H and W, so the four stage outputs
have spatial strides 4, 8, 16, 32 (reference quirks B1, B2).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from ..build import BACKBONE_REGISTRY
from ..weight_init import c2_msra_fill
from . import bn_act
from .conv_bn import conv_bn_act, fused_path
from .spatial_conv import Conv3d

# Residual blocks of res2..res5 per ResNet depth.
STAGE_DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# Layouts of the non-local block (NONLOCAL.STYLE): see NonLocalBlock.
NONLOCAL_STYLES = ("pyslowfast", "mmaction2")

# Temporal kernel size of the stem and of res2..res5 for the Slow pathway (SlowOnly and SlowFast).
SLOW_TEMPORAL_KERNELS = (1, 1, 1, 3, 3)


@dataclass(frozen=True)
class BatchNormSpec:
    """BatchNorm3d hyper-parameters shared by every BN of a backbone (PyTorch momentum convention)."""

    eps: float = 1e-5
    momentum: float = 0.1

    def make(self, channels):
        """A ``BatchNorm3d(channels)`` with these settings."""
        return nn.BatchNorm3d(channels, eps=self.eps, momentum=self.momentum)


@dataclass(frozen=True)
class PathwayStageSpec:
    """What one pathway of one ResNet stage looks like.

    Attributes:
        dim_in / dim_out / dim_inner: channels entering the stage, leaving each
            block, and inside the bottleneck.
        temporal_kernels: temporal kernel of each block's first convolution (one int per block).
        stride: spatial stride of the first block.
        dilation: spatial dilation of the 3x3 convolutions.
        num_groups: groups of the 3x3 convolution (ResNeXt when > 1).
        nonlocal_indices: blocks followed by a non-local block.
        nonlocal_group: temporal groups a non-local block attends within.
        nonlocal_pool: max-pool kernel ``[T, H, W]`` on the non-local keys/values.
    """

    dim_in: int
    dim_out: int
    dim_inner: int
    temporal_kernels: tuple
    stride: int = 1
    dilation: int = 1
    num_groups: int = 1
    nonlocal_indices: tuple = ()
    nonlocal_group: int = 1
    nonlocal_pool: tuple = (1, 2, 2)

    @property
    def num_blocks(self):
        """Residual blocks in the stage."""
        return len(self.temporal_kernels)


@dataclass(frozen=True)
class ResNetSpec:
    """Hyper-parameters shared by all stages (the ``RESNET``/``NONLOCAL`` config sections as plain values)."""

    trans_func: str = "bottleneck_transform"
    stride_1x1: bool = False
    inplace_relu: bool = True
    zero_init_final_bn: bool = False
    nonlocal_instantiation: str = "dot_product"
    nonlocal_style: str = "pyslowfast"
    bn: BatchNormSpec = field(default_factory=BatchNormSpec)


def stage_temporal_kernels(kernel, num_blocks, num_block_temp_kernel):
    """Temporal kernel per block: the first ``num_block_temp_kernel`` blocks use ``kernel``, the rest 1."""
    if not 0 <= num_block_temp_kernel <= num_blocks:
        raise ValueError(
            f"RESNET.NUM_BLOCK_TEMP_KERNEL: {num_block_temp_kernel} blocks with a temporal kernel requested "
            f"in a stage of {num_blocks} blocks"
        )
    return (kernel,) * num_block_temp_kernel + (1,) * (num_blocks - num_block_temp_kernel)


class ResNetBasicStem(nn.Module):
    """Conv ``[kt, 7, 7]`` stride (1, 2, 2) -> BN -> ReLU -> max-pool [1, 3, 3] stride (1, 2, 2).

    ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H/4, W/4]`` (ceil-free floor arithmetic).
    """

    # MODEL.BACKBONE.FUSED_INFERENCE (conv_bn.py): "auto", True or False; set by VideoResNet.set_fused_inference
    fused_inference = False
    # MODEL.BACKBONE.FLOAT32_STEM: under CUDA autocast, run in float32; set by VideoResNet.set_float32_stem
    float32_under_autocast = False
    # MODEL.BACKBONE.FUSED_TRAINING_BN (bn_act.py): "auto", True or False; set by VideoResNet.set_fused_training_bn
    fused_training_bn = False

    def __init__(self, dim_in, dim_out, temporal_kernel, bn, inplace_relu=True):
        super().__init__()
        self.conv = Conv3d(
            dim_in, dim_out, kernel_size=(temporal_kernel, 7, 7), stride=(1, 2, 2),
            padding=(temporal_kernel // 2, 3, 3), bias=False,
        )
        self.bn = bn.make(dim_out)
        self.relu = nn.ReLU(inplace_relu)
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x):
        if self.float32_under_autocast and x.is_cuda and torch.is_autocast_enabled("cuda"):
            with torch.autocast("cuda", enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x):
        if fused_path(self.fused_inference, x, [self.conv], [self.bn]):
            return self.pool(conv_bn_act(x, self.conv, self.bn, stem=True))
        if bn_act.active(self.fused_training_bn, self.bn, x):
            return self.pool(bn_act.bn_act(self.fused_training_bn, self.conv(x), self.bn, self.relu))
        return self.pool(self.relu(self.bn(self.conv(x))))


class MultiPathwayStem(nn.Module):
    """One ``ResNetBasicStem`` per pathway, named ``pathway{p}_stem``; maps a list of videos to a list of maps."""

    def __init__(self, dims_in, dims_out, temporal_kernels, bn, inplace_relu=True):
        super().__init__()
        self.num_pathways = len(dims_in)
        for p, (d_in, d_out, kt) in enumerate(zip(dims_in, dims_out, temporal_kernels)):
            self.add_module(f"pathway{p}_stem", ResNetBasicStem(d_in, d_out, kt, bn, inplace_relu))

    def forward(self, xs):
        return [getattr(self, f"pathway{p}_stem")(x) for p, x in enumerate(xs)]


class BottleneckTransform(nn.Module):
    """Conv ``[kt,1,1]`` -> BN -> ReLU -> conv ``[1,3,3]`` (groups, dilation) -> BN -> ReLU -> conv 1x1x1 -> BN.

    The spatial stride sits on the 3x3 conv, or on the first conv when ``stride_1x1``.
    """

    def __init__(self, dim_in, dim_out, temporal_kernel, stride, dim_inner, num_groups, dilation, bn,
                 stride_1x1=False, inplace_relu=True):
        super().__init__()
        stride_a, stride_b = (stride, 1) if stride_1x1 else (1, stride)
        self.a = Conv3d(
            dim_in, dim_inner, kernel_size=(temporal_kernel, 1, 1), stride=(1, stride_a, stride_a),
            padding=(temporal_kernel // 2, 0, 0), bias=False,
        )
        self.a_bn = bn.make(dim_inner)
        self.a_relu = nn.ReLU(inplace_relu)
        self.b = Conv3d(
            dim_inner, dim_inner, kernel_size=(1, 3, 3), stride=(1, stride_b, stride_b),
            padding=(0, dilation, dilation), dilation=(1, dilation, dilation), groups=num_groups, bias=False,
        )
        self.b_bn = bn.make(dim_inner)
        self.b_relu = nn.ReLU(inplace_relu)
        self.c = Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.c_bn = bn.make(dim_out)
        self.c_bn.is_final_bn = True

    def forward(self, x):
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))

    def fused_forward(self, x, shortcut):
        """``relu(forward(x) + shortcut)`` with every BN folded into its convolution (eval only, see conv_bn.py)."""
        x = conv_bn_act(x, self.a, self.a_bn)
        x = conv_bn_act(x, self.b, self.b_bn)
        return conv_bn_act(x, self.c, self.c_bn, residual=shortcut)

    def bn_act_forward(self, x, shortcut, mode, relu):
        """``relu(forward(x) + shortcut)`` with each BN (+ residual) + ReLU through ``bn_act.bn_act(mode, ...)``."""
        x = bn_act.bn_act(mode, self.a(x), self.a_bn, self.a_relu)
        x = bn_act.bn_act(mode, self.b(x), self.b_bn, self.b_relu)
        return bn_act.bn_act(mode, self.c(x), self.c_bn, relu, residual=shortcut)


class BasicTransform(nn.Module):
    """Conv ``[kt,3,3]`` (spatial stride) -> BN -> ReLU -> conv ``[1,3,3]`` (dilation) -> BN (ResNet-18 style)."""

    def __init__(self, dim_in, dim_out, temporal_kernel, stride, dim_inner, num_groups, dilation, bn,
                 stride_1x1=False, inplace_relu=True):
        super().__init__()
        del dim_inner, num_groups, stride_1x1  # not used by this block type (as in PySlowFast)
        self.a = Conv3d(
            dim_in, dim_out, kernel_size=(temporal_kernel, 3, 3), stride=(1, stride, stride),
            padding=(temporal_kernel // 2, 1, 1), bias=False,
        )
        self.a_bn = bn.make(dim_out)
        self.a_relu = nn.ReLU(inplace_relu)
        self.b = Conv3d(
            dim_out, dim_out, kernel_size=(1, 3, 3), padding=(0, dilation, dilation),
            dilation=(1, dilation, dilation), bias=False,
        )
        self.b_bn = bn.make(dim_out)
        self.b_bn.is_final_bn = True

    def forward(self, x):
        return self.b_bn(self.b(self.a_relu(self.a_bn(self.a(x)))))

    def fused_forward(self, x, shortcut):
        """``relu(forward(x) + shortcut)`` with every BN folded into its convolution (eval only, see conv_bn.py)."""
        return conv_bn_act(conv_bn_act(x, self.a, self.a_bn), self.b, self.b_bn, residual=shortcut)

    def bn_act_forward(self, x, shortcut, mode, relu):
        """``relu(forward(x) + shortcut)`` with each BN (+ residual) + ReLU through ``bn_act.bn_act(mode, ...)``."""
        x = bn_act.bn_act(mode, self.a(x), self.a_bn, self.a_relu)
        return bn_act.bn_act(mode, self.b(x), self.b_bn, relu, residual=shortcut)


TRANSFORMS = {"bottleneck_transform": BottleneckTransform, "basic_transform": BasicTransform}


class ResBlock(nn.Module):
    """``relu(shortcut(x) + branch2(x))``; the shortcut is conv 1x1x1 (spatial stride) + BN when shape changes."""

    # MODEL.BACKBONE.FUSED_INFERENCE (conv_bn.py): "auto", True or False; set by VideoResNet.set_fused_inference
    fused_inference = False
    # MODEL.BACKBONE.FUSED_TRAINING_BN (bn_act.py): "auto", True or False; set by VideoResNet.set_fused_training_bn
    fused_training_bn = False

    def __init__(self, dim_in, dim_out, temporal_kernel, stride, dim_inner, num_groups, dilation, spec):
        super().__init__()
        if spec.trans_func not in TRANSFORMS:
            raise ValueError(f"RESNET.TRANS_FUNC: unknown {spec.trans_func!r}; choices: {', '.join(TRANSFORMS)}")
        if dim_in != dim_out or stride != 1:
            self.branch1 = Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, stride, stride), bias=False)
            self.branch1_bn = spec.bn.make(dim_out)
        self.branch2 = TRANSFORMS[spec.trans_func](
            dim_in, dim_out, temporal_kernel, stride, dim_inner, num_groups, dilation, spec.bn,
            stride_1x1=spec.stride_1x1, inplace_relu=spec.inplace_relu,
        )
        self.relu = nn.ReLU(spec.inplace_relu)

    def forward(self, x):
        t = self.branch2
        convs = [t.a, t.b] + ([t.c] if hasattr(t, "c") else [])
        bns = [t.a_bn, t.b_bn] + ([t.c_bn] if hasattr(t, "c_bn") else [])
        if fused_path(self.fused_inference, x, convs, bns):
            # the shortcut's BN stays a separate pass: folding it saves nothing (no ReLU to fuse)
            return t.fused_forward(x, self._shortcut(x))
        mode = self.fused_training_bn
        if bn_act.active(mode, t.a_bn, x):
            return t.bn_act_forward(x, self._shortcut(x, mode), mode, self.relu)
        return self.relu(self._shortcut(x) + t(x))

    def _shortcut(self, x, mode=False):
        """``x``, or its projection ``branch1_bn(branch1(x))`` (the BN through ``bn_act.bn_act(mode, ...)``)."""
        if not hasattr(self, "branch1"):
            return x
        return bn_act.bn_act(mode, self.branch1(x), self.branch1_bn)


class NonLocalBlock(nn.Module):
    """Non-local block (Wang et al. 2018) with residual: ``x + BN(conv_out(y))``.

    theta = conv_theta(x); phi, g = conv_phi / conv_g of x, max-pooled by ``pool`` (floor);
    affinity = theta^T phi, divided by the number of pooled positions ("dot_product")
    or scaled by ``dim_inner**-0.5`` and soft-maxed ("softmax", mmcv's "embedded_gaussian"
    with ``use_scale``); y = affinity . g. ``[B, C, T, H, W]`` -> same shape.

    ``style`` (``NONLOCAL.STYLE``):
      * ``"pyslowfast"``: x is pooled before conv_phi / conv_g; all four 1x1x1 convolutions have biases.
      * ``"mmaction2"`` (mmcv ``NonLocal3d`` with ``sub_sample`` and a norm): conv_phi / conv_g are
        applied first and their outputs pooled (max-pooling does not commute with a 1x1x1
        convolution); conv_out has no bias (its BN follows).
    """

    # MODEL.BACKBONE.FUSED_TRAINING_BN (bn_act.py): "auto", True or False; set by VideoResNet.set_fused_training_bn
    fused_training_bn = False

    def __init__(self, dim, dim_inner, pool, instantiation, bn, style="pyslowfast"):
        super().__init__()
        if instantiation not in ("dot_product", "softmax"):
            raise ValueError(f"NONLOCAL.INSTANTIATION: unknown {instantiation!r}; choices: dot_product, softmax")
        if style not in NONLOCAL_STYLES:
            raise ValueError(f"NONLOCAL.STYLE: unknown {style!r}; choices: {', '.join(NONLOCAL_STYLES)}")
        self.style = style
        pool = tuple(int(p) for p in pool)
        if len(pool) != 3:
            raise ValueError(f"NONLOCAL.POOL: a non-local block needs a [T, H, W] pool kernel, got {list(pool)}")
        self.dim_inner = dim_inner
        self.instantiation = instantiation
        self.conv_theta = nn.Conv3d(dim, dim_inner, kernel_size=1)
        self.conv_phi = nn.Conv3d(dim, dim_inner, kernel_size=1)
        self.conv_g = nn.Conv3d(dim, dim_inner, kernel_size=1)
        self.conv_out = nn.Conv3d(dim_inner, dim, kernel_size=1, bias=style == "pyslowfast")
        self.bn = bn.make(dim)
        self.bn.is_final_bn = True
        self.pool = nn.MaxPool3d(kernel_size=pool, stride=pool) if any(p > 1 for p in pool) else nn.Identity()

    def forward(self, x):
        n, _, t, h, w = x.shape
        theta = self.conv_theta(x).view(n, self.dim_inner, -1)
        if self.style == "pyslowfast":
            pooled = self.pool(x)
            phi = self.conv_phi(pooled).view(n, self.dim_inner, -1)
            g = self.conv_g(pooled).view(n, self.dim_inner, -1)
        else:
            phi = self.pool(self.conv_phi(x)).view(n, self.dim_inner, -1)
            g = self.pool(self.conv_g(x)).view(n, self.dim_inner, -1)
        affinity = torch.einsum("nct,ncp->ntp", theta, phi)
        if self.instantiation == "softmax":
            affinity = (affinity * self.dim_inner**-0.5).softmax(dim=2)
        else:
            affinity = affinity / affinity.shape[2]
        y = torch.einsum("ntg,ncg->nct", affinity, g).view(n, self.dim_inner, t, h, w)
        if bn_act.active(self.fused_training_bn, self.bn, x):
            return bn_act.bn_act(self.fused_training_bn, self.conv_out(y), self.bn, residual=x)
        return x + self.bn(self.conv_out(y))


class ResStage(nn.Module):
    """One ResNet stage for every pathway: blocks ``pathway{p}_res{i}``, non-local ``pathway{p}_nonlocal{i}``.

    ``forward`` maps a list of per-pathway maps to a list of per-pathway maps.
    """

    def __init__(self, pathways, spec):
        super().__init__()
        self.pathways = tuple(pathways)
        for p, pw in enumerate(self.pathways):
            for i, kt in enumerate(pw.temporal_kernels):
                block = ResBlock(
                    pw.dim_in if i == 0 else pw.dim_out, pw.dim_out, kt, pw.stride if i == 0 else 1,
                    pw.dim_inner, pw.num_groups, pw.dilation, spec,
                )
                self.add_module(f"pathway{p}_res{i}", block)
                if i in pw.nonlocal_indices:
                    nonlocal_block = NonLocalBlock(
                        pw.dim_out, pw.dim_out // 2, pw.nonlocal_pool, spec.nonlocal_instantiation, spec.bn,
                        style=spec.nonlocal_style,
                    )
                    self.add_module(f"pathway{p}_nonlocal{i}", nonlocal_block)
            bad = [i for i in pw.nonlocal_indices if not 0 <= i < pw.num_blocks]
            if bad:
                raise ValueError(f"NONLOCAL.LOCATION: block indices {bad} outside a stage of {pw.num_blocks} blocks")

    def forward(self, xs):
        outputs = []
        for p, x in enumerate(xs):
            pw = self.pathways[p]
            for i in range(pw.num_blocks):
                x = getattr(self, f"pathway{p}_res{i}")(x)
                if i in pw.nonlocal_indices:
                    x = _grouped_nonlocal(getattr(self, f"pathway{p}_nonlocal{i}"), x, pw.nonlocal_group)
            outputs.append(x)
        return outputs


def _grouped_nonlocal(block, x, groups):
    """Apply ``block`` within ``groups`` equal temporal chunks of ``x`` ``[B, C, T, H, W]`` (folded into batch)."""
    if groups == 1:
        return block(x)
    b, c, t, h, w = x.shape
    if t % groups:
        raise ValueError(f"NONLOCAL.GROUP: {groups} temporal groups do not divide {t} frames")
    folded = x.permute(0, 2, 1, 3, 4).reshape(b * groups, t // groups, c, h, w).permute(0, 2, 1, 3, 4)
    out = block(folded)
    return out.permute(0, 2, 1, 3, 4).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def freeze_batchnorm_statistics(module):
    """Put every BatchNorm (incl. SyncBatchNorm) below ``module`` in eval mode: running statistics are used
    and not updated. Affine parameters still receive gradients (reference quirk T1)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class VideoResNet(nn.Module):
    """Common base of the ResNet video backbones: weight init, frozen BatchNorm, input checks.

    ``train(mode)`` keeps every BatchNorm of the backbone in eval mode when
    ``frozen_bn`` is set (``MODEL.BACKBONE.FROZEN_BN``), so the trainer only has
    to call ``model.train()``.

    Subclasses set ``num_pathways`` and ``out_channels`` (4 ints) and build their modules.
    """

    num_pathways = 1
    # MODEL.BACKBONE.CHANNELS_LAST: on CUDA, weights and inputs in channels_last_3d (set by the builders).
    channels_last = False

    def __init__(self, frozen_bn=False):
        super().__init__()
        self.frozen_bn = frozen_bn
        self._weights_channels_last = False

    def use_channels_last(self):
        """Put the 5-D weights in ``torch.channels_last_3d`` (NDHWC) once; the parameters stay the same
        objects (an optimizer built before keeps them). cuDNN runs its 3-D convolutions on NDHWC tensors
        without the layout transposes NCDHW needs (1.37x the SlowFast-R50 training step at 8 clips per
        H200, benchmarks/README.md). Called on the first CUDA forward, or by the runner before DDP."""
        if not self._weights_channels_last:
            self.to(memory_format=torch.channels_last_3d)
            self._weights_channels_last = True

    def set_fused_inference(self, mode):
        """``MODEL.BACKBONE.FUSED_INFERENCE``: "auto" (CUDA), True (any device) or False. In eval mode without
        gradients, each conv + BN (+ residual) + ReLU of the stems, residual blocks and SlowFast lateral
        connections runs as one folded convolution (``conv_bn.py``); training is unchanged."""
        for m in self.modules():
            if hasattr(type(m), "fused_inference"):
                m.fused_inference = mode
        return self

    def set_fused_training_bn(self, mode):
        """``MODEL.BACKBONE.FUSED_TRAINING_BN``: "auto" (CUDA, compute capability 8.0+), True or False. In
        training (batch statistics, or frozen BatchNorm with gradients), each BatchNorm (+ residual) (+ ReLU)
        runs as Triton kernels where ``bn_act.fusable`` (``bn_act.py``); elsewhere the modules run."""
        for m in self.modules():
            if hasattr(type(m), "fused_training_bn"):
                m.fused_training_bn = mode
        return self

    def set_spatial_conv_2d(self, mode):
        """``MODEL.BACKBONE.SPATIAL_CONV_2D``: "auto" (CUDA channels_last_3d, few channels), True or False. Each
        ``1 x k x k`` convolution of the stems and residual blocks runs as a 2-D convolution over the frames
        folded into the batch (``spatial_conv.py``), in training and inference alike."""
        for m in self.modules():
            if isinstance(m, Conv3d):
                m.as_2d = mode
        return self

    def set_float32_stem(self, flag):
        """``MODEL.BACKBONE.FLOAT32_STEM``: under CUDA autocast, the stems (3-channel input) run in float32.
        cuDNN has no tensor-core kernel for 3-channel NDHWC bfloat16 3-D convolutions: the SlowFast-R50 Fast
        stem takes 24.0 ms at 8 clips on an H100 in bfloat16 and 6.5 ms in float32 (TF32)."""
        for m in self.modules():
            if isinstance(m, ResNetBasicStem):
                m.float32_under_autocast = bool(flag)
        return self

    def _prepare(self, videos):
        """Inputs for the stem: on CUDA with ``channels_last``, the weights (once) and the videos in
        channels_last_3d; elsewhere (the CPU, parity runs) the videos unchanged."""
        videos = list(videos)
        if self.channels_last and videos[0].is_cuda:
            self.use_channels_last()
            videos = [v.contiguous(memory_format=torch.channels_last_3d) for v in videos]
        return videos

    def train(self, mode=True):
        super().train(mode)
        if mode and self.frozen_bn:
            freeze_batchnorm_statistics(self)
        return self

    def init_weights(self, zero_init_final_bn):
        """PySlowFast initialization: MSRA-fill convolutions, BN weight 1 (0 for each residual branch's
        last BN when ``zero_init_final_bn``), BN bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                c2_msra_fill(m)
            elif isinstance(m, nn.BatchNorm3d):
                final = getattr(m, "is_final_bn", False)
                nn.init.constant_(m.weight, 0.0 if final and zero_init_final_bn else 1.0)
                nn.init.zeros_(m.bias)

    def _check_inputs(self, videos):
        if not isinstance(videos, (list, tuple)) or len(videos) != self.num_pathways:
            got = f"a list of {len(videos)}" if isinstance(videos, (list, tuple)) else type(videos).__name__
            raise ValueError(
                f"{type(self).__name__} expects a list of {self.num_pathways} video tensor(s) "
                f"[B, 3, T, H, W], got {got}"
            )
        for v in videos:
            if v.dim() != 5:
                raise ValueError(f"{type(self).__name__}: video tensors must be [B, C, T, H, W], got shape {tuple(v.shape)}")


def resnet_widths(width_per_group, num_groups):
    """Per stage res2..res5: (block output channels, bottleneck inner channels) of the Slow pathway."""
    inner = num_groups * width_per_group
    return [(width_per_group * 4 * 2**s, inner * 2**s) for s in range(4)]


class SlowOnly(VideoResNet):
    """Single-pathway 3D ResNet (SlowOnly; PySlowFast "slow" temporal kernels 1,1,1,3,3).

    Input: ``[video]`` with video ``[B, 3, T, H, W]``. Output: 4 maps res2..res5
    ``[B, C_l, T, H/s_l, W/s_l]``, s_l = 4, 8, 16, 32, C_l = ``out_channels``
    (256, 512, 1024, 2048 at width 64).

    Args:
        stage_pathways: per stage res2..res5, a list with one ``PathwayStageSpec``.
        stem_dim_in / stem_dim_out / stem_temporal_kernel: the stem convolution.
        spec: ``ResNetSpec``; frozen_bn: see ``VideoResNet``.
    """

    num_pathways = 1

    def __init__(self, stem_dim_in, stem_dim_out, stem_temporal_kernel, stage_pathways, spec, frozen_bn=False):
        super().__init__(frozen_bn)
        self.s1 = MultiPathwayStem([stem_dim_in], [stem_dim_out], [stem_temporal_kernel], spec.bn, spec.inplace_relu)
        for s, pathways in enumerate(stage_pathways):
            self.add_module(f"s{s + 2}", ResStage(pathways, spec))
        self.out_channels = [pathways[0].dim_out for pathways in stage_pathways]
        self.init_weights(spec.zero_init_final_bn)

    def forward(self, videos):
        """``[video [B,3,T,H,W]]`` -> list of 4 maps ``[B, C_l, T, H_l, W_l]`` (strides 4, 8, 16, 32)."""
        self._check_inputs(videos)
        x = self.s1(self._prepare(videos))
        levels = []
        for stage in (self.s2, self.s3, self.s4, self.s5):
            x = stage(x)
            levels.append(x[0])
        return levels

    def last_stage(self, videos):
        """``[video [B,3,T,H,W]]`` -> ``[res5 [B, C_5, T, H_5, W_5]]``: the last stage only, as
        mmaction2's ``ResNet3dSlowOnly`` returns it to the two-stage detectors (``FastRCNN``)."""
        self._check_inputs(videos)
        x = self.s1(self._prepare(videos))
        for stage in (self.s2, self.s3, self.s4, self.s5):
            x = stage(x)
        return [x[0]]


def resnet_spec_from_cfg(cfg):
    """The ``ResNetSpec`` of ``cfg`` (RESNET.*, NONLOCAL.INSTANTIATION, MODEL.BACKBONE.BN_*)."""
    return ResNetSpec(
        trans_func=cfg.RESNET.TRANS_FUNC,
        stride_1x1=cfg.RESNET.STRIDE_1X1,
        inplace_relu=cfg.RESNET.INPLACE_RELU,
        zero_init_final_bn=cfg.RESNET.ZERO_INIT_FINAL_BN,
        nonlocal_instantiation=cfg.NONLOCAL.INSTANTIATION,
        nonlocal_style=cfg.NONLOCAL.STYLE,
        bn=BatchNormSpec(eps=cfg.MODEL.BACKBONE.BN_EPSILON, momentum=cfg.MODEL.BACKBONE.BN_MOMENTUM),
    )


def _per_pathway(cfg_node, key, stage, pathway):
    """``cfg.<key>[stage][pathway]`` with an error naming the key when the list is too short."""
    value = cfg_node
    for part in key.split("."):
        value = value[part]
    try:
        return value[stage][pathway]
    except (IndexError, TypeError):
        raise ValueError(
            f"{key}: expected one entry per stage (4) and per pathway; no entry [{stage}][{pathway}] in {value!r}"
        ) from None


def stage_specs_from_cfg(cfg, pathway, dims, temporal_kernels):
    """``PathwayStageSpec`` of res2..res5 for one pathway.

    Args:
        pathway: pathway index (selects the per-pathway config entries).
        dims: per stage ``(dim_in, dim_out, dim_inner)``.
        temporal_kernels: the pathway's temporal kernel for res2..res5 (4 ints).
    """
    depth = cfg.RESNET.DEPTH
    if depth not in STAGE_DEPTHS:
        raise ValueError(f"RESNET.DEPTH: {depth} is not supported; choices: {sorted(STAGE_DEPTHS)}")
    specs = []
    for s in range(4):
        num_blocks = STAGE_DEPTHS[depth][s]
        dim_in, dim_out, dim_inner = dims[s]
        nonlocal_indices = tuple(_per_pathway(cfg, "NONLOCAL.LOCATION", s, pathway))
        specs.append(PathwayStageSpec(
            dim_in=dim_in, dim_out=dim_out, dim_inner=dim_inner,
            temporal_kernels=stage_temporal_kernels(
                temporal_kernels[s], num_blocks, _per_pathway(cfg, "RESNET.NUM_BLOCK_TEMP_KERNEL", s, pathway)
            ),
            stride=_per_pathway(cfg, "RESNET.SPATIAL_STRIDES", s, pathway),
            dilation=_per_pathway(cfg, "RESNET.SPATIAL_DILATIONS", s, pathway),
            num_groups=cfg.RESNET.NUM_GROUPS,
            nonlocal_indices=nonlocal_indices,
            nonlocal_group=_per_pathway(cfg, "NONLOCAL.GROUP", s, pathway),
            nonlocal_pool=tuple(_per_pathway(cfg, "NONLOCAL.POOL", s, pathway)) if nonlocal_indices else (1, 1, 1),
        ))
    return specs


@BACKBONE_REGISTRY.register("PySlowonly")
def build_slowonly(cfg):
    """SlowOnly ResNet from ``RESNET.*``, ``NONLOCAL.*``, ``MODEL.BACKBONE.*`` and ``DATA.INPUT_CHANNEL_NUM``."""
    width = cfg.RESNET.WIDTH_PER_GROUP
    widths = resnet_widths(width, cfg.RESNET.NUM_GROUPS)
    dims_in = [width] + [out for out, _ in widths[:-1]]
    dims = [(d_in, out, inner) for d_in, (out, inner) in zip(dims_in, widths)]
    stages = stage_specs_from_cfg(cfg, 0, dims, SLOW_TEMPORAL_KERNELS[1:])
    backbone = SlowOnly(
        stem_dim_in=cfg.DATA.INPUT_CHANNEL_NUM[0],
        stem_dim_out=width,
        stem_temporal_kernel=SLOW_TEMPORAL_KERNELS[0],
        stage_pathways=[[spec] for spec in stages],
        spec=resnet_spec_from_cfg(cfg),
        frozen_bn=cfg.MODEL.BACKBONE.FROZEN_BN,
    )
    backbone.channels_last = cfg.MODEL.BACKBONE.CHANNELS_LAST
    backbone.set_float32_stem(cfg.MODEL.BACKBONE.FLOAT32_STEM)
    backbone.set_spatial_conv_2d(cfg.MODEL.BACKBONE.SPATIAL_CONV_2D)
    backbone.set_fused_training_bn(cfg.MODEL.BACKBONE.FUSED_TRAINING_BN)
    return backbone.set_fused_inference(cfg.MODEL.BACKBONE.FUSED_INFERENCE)
