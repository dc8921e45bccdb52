"""Interaction-reduced channel-separated 3-D ResNets (ir-CSN-50 / ir-CSN-152), as TubeR uses them.

ir-CSN (Tran et al., "Video Classification with Channel-Separated Convolutional
Networks", ICCV 2019) replaces the 3x3x3 convolution of every bottleneck by a
depthwise one (``groups = channels``). This is TubeR's backbone
(amazon-science/tubelet-transformer, ``models/backbones/ir_CSN_{50,152}.py``),
written stage by stage with TubeR's module names so that its state-dict keys
map one to one (``backbone.body.<name>`` in a TubeR ``.pth`` is ``<name>`` here):

==========================================  ===============================================
ours / TubeR (below ``backbone.body.``)     Caffe2 blob (VMZ ``.pkl`` / TubeR ``.mat``)
==========================================  ===============================================
``conv1.weight``                            ``conv1_w``
``bn1.{weight,bias,running_mean,_var}``     ``conv1_spatbn_relu_{s,b,rm,riv}``
``layer{L}.{i}.conv{1,3,4}.weight``         ``comp_{n}_conv_{1,3,4}_w``
``layer{L}.{i}.bn{1,3,4}.*``                ``comp_{n}_spatbn_{1,3,4}_{s,b,rm,riv}``
``layer{L}.0.down_sample.0.weight``         ``shortcut_projection_{n}_w``
``layer{L}.0.down_sample.1.*``              ``shortcut_projection_{n}_spatbn_{s,b,rm,riv}``
==========================================  ===============================================

``n`` counts blocks over the whole network (``STAGE_STARTS``); ``layer1..layer4`` are
the paper's res2..res5. (Caffe2 names the depthwise convolution ``conv_3``: the middle
index is skipped, hence ``conv1/conv3/conv4``.) ``stmixer.checkpoint.csn`` does the mapping.

Block (``CSNBottleneck``): conv 1x1x1 -> BN -> ReLU -> depthwise conv 3x3x3 (stride
``(temporal_stride, stride, stride)``) -> BN -> ReLU -> conv 1x1x1 (x4 channels) -> BN,
plus the shortcut (conv 1x1x1 with the same strides + BN on the first block of every
stage, identity otherwise), then ReLU. Stem: conv ``[3, 7, 7]`` stride (1, 2, 2) -> BN ->
ReLU -> max-pool ``[1, 3, 3]`` stride (1, 2, 2).

Strides of the stage outputs for an input ``[B, 3, T, H, W]`` (TubeR):

=======  ========  ===============  =====================================
stage    channels  temporal stride  spatial stride
=======  ========  ===============  =====================================
layer1   256       1                4
layer2   512       2                8
layer3   1024      4                16
layer4   2048      8                32, or 16 with ``last_stride=False``
=======  ========  ===============  =====================================

TubeR consumes only ``layer4`` (``last_stride=False`` in all its configs: stride 16,
temporal stride 8, e.g. 32 frames of 256^2 -> ``[B, 2048, 4, 16, 16]``).

BatchNorm: ``BatchNorm3d(eps=1e-3, momentum=0.1)`` (the Caffe2 models' epsilon, PyTorch
momentum convention); TubeR keeps them in training mode (running statistics update,
``frozen_bn=False``). Its optional "Affine" replacement (``use_affine``) is dead code in
TubeR (``build_CSN`` always passes ``use_affine=False``) and is not reproduced.
Weights are left at PyTorch's default initialization, as TubeR's (a CSN is always
loaded from Kinetics weights or a TubeR checkpoint).
"""

from torch import nn

from ..build import BACKBONE_REGISTRY
from .resnet3d import VideoResNet

# Bottleneck blocks of layer1..layer4 per depth.
CSN_STAGE_DEPTHS = {50: (3, 4, 6, 3), 152: (3, 8, 36, 3)}
# Output channels of layer1..layer4 (bottleneck width x 4).
CSN_OUT_CHANNELS = (256, 512, 1024, 2048)


def stage_starts(depth):
    """Global index of the first block of layer1..layer4 (the ``n`` of the Caffe2 blob names):
    (0, 3, 7, 13) for depth 50, (0, 3, 11, 47) for 152."""
    blocks = CSN_STAGE_DEPTHS[depth]
    return tuple(sum(blocks[:s]) for s in range(4))


class CSNBottleneck(nn.Module):
    """ir-CSN bottleneck: ``[B, C_in, T, H, W]`` -> ``[B, 4*planes, T/temporal_stride, H/stride, W/stride]``.

    Args:
        in_planes: input channels.
        planes: bottleneck width (channels of conv1 / conv3); the block outputs ``expansion * planes``.
        stride / temporal_stride: spatial / temporal stride of the depthwise conv (and of the shortcut).
        down_sample: shortcut module (``nn.Sequential(conv 1x1x1, BN)``) or None (identity).
        bn_eps / bn_momentum: BatchNorm settings.
    """

    expansion = 4

    def __init__(self, in_planes, planes, stride=1, temporal_stride=1, down_sample=None, bn_eps=1e-3,
                 bn_momentum=0.1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes, eps=bn_eps, momentum=bn_momentum)
        self.conv3 = nn.Conv3d(planes, planes, kernel_size=3, stride=(temporal_stride, stride, stride),
                               padding=1, groups=planes, bias=False)
        self.bn3 = nn.BatchNorm3d(planes, eps=bn_eps, momentum=bn_momentum)
        self.conv4 = nn.Conv3d(planes, out_planes, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm3d(out_planes, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.down_sample = down_sample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn3(self.conv3(out)))
        out = self.bn4(self.conv4(out))
        shortcut = x if self.down_sample is None else self.down_sample(x)
        return self.relu(out + shortcut)


def make_csn_stage(in_planes, planes, num_blocks, stride, temporal_stride, bn_eps, bn_momentum):
    """One stage (``nn.Sequential`` of ``num_blocks`` bottlenecks, indices ``0..num_blocks-1``).

    The first block always has a projection shortcut ``down_sample = Sequential(conv, BN)`` (TubeR
    builds one even for layer1, where only the channels change)."""
    out_planes = planes * CSNBottleneck.expansion
    down_sample = nn.Sequential(
        nn.Conv3d(in_planes, out_planes, kernel_size=1, stride=(temporal_stride, stride, stride), bias=False),
        nn.BatchNorm3d(out_planes, eps=bn_eps, momentum=bn_momentum),
    )
    blocks = [CSNBottleneck(in_planes, planes, stride, temporal_stride, down_sample, bn_eps, bn_momentum)]
    blocks += [CSNBottleneck(out_planes, planes, bn_eps=bn_eps, bn_momentum=bn_momentum)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class IrCSN(VideoResNet):
    """ir-CSN-50 / ir-CSN-152 backbone (see the module docstring for layout, names and strides).

    Input: ``[video]``, video ``[B, 3, T, H, W]``. ``forward`` returns the 4 stage outputs
    (layer1..layer4, ``out_channels`` = 256, 512, 1024, 2048); ``last_stage`` returns only
    ``[layer4]``, what TubeR consumes.

    Args:
        depth: 50 or 152.
        last_stride: spatial stride 2 in layer4 (True) or 1 (False, TubeR's configs: output stride 16).
        bn_eps / bn_momentum: every BatchNorm3d (TubeR: 1e-3, 0.1).
        frozen_bn: keep every BatchNorm in eval mode while training (TubeR: False).
        frozen_stages: -1 freezes nothing; k >= 0 sets ``requires_grad=False`` on the stem
            (conv1, bn1) and layer1..layer k (mmaction2's convention). TubeR does this with
            ``tune_point=4`` (= ``frozen_stages=2``) only when it loads the Kinetics ``.mat``
            weights; BatchNorm statistics of frozen stages still update unless ``frozen_bn``.
        in_channels: input channels (3).
        temporal_stride: temporal stride of layer2..layer4 (2: TubeR's ir-CSN, temporal strides 1, 2, 4, 8; 1: the
            TubeR fork's ``ir_CSN_50_variant`` that its SeqFormer uses, every stage keeps all T frames; the
            weights are the same).
    """

    num_pathways = 1

    def __init__(self, depth=50, last_stride=False, bn_eps=1e-3, bn_momentum=0.1, frozen_bn=False,
                 frozen_stages=-1, in_channels=3, temporal_stride=2):
        super().__init__(frozen_bn)
        if temporal_stride not in (1, 2):
            raise ValueError(f"MODEL.CSN.TEMPORAL_STRIDE: expected 1 or 2, got {temporal_stride}")
        if depth not in CSN_STAGE_DEPTHS:
            raise ValueError(f"ir-CSN depth {depth} is not supported; choices: {sorted(CSN_STAGE_DEPTHS)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"MODEL.CSN.FROZEN_STAGES: expected -1..4, got {frozen_stages}")
        self.depth = depth
        self.conv1 = nn.Conv3d(in_channels, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3),
                               bias=False)
        self.bn1 = nn.BatchNorm3d(64, eps=bn_eps, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        blocks = CSN_STAGE_DEPTHS[depth]
        # (in_planes, planes, spatial stride, temporal stride) of layer1..layer4
        ts = temporal_stride
        stages = [(64, 64, 1, 1), (256, 128, 2, ts), (512, 256, 2, ts), (1024, 512, 2 if last_stride else 1, ts)]
        for s, ((in_planes, planes, stride, t_stride), n) in enumerate(zip(stages, blocks)):
            self.add_module(f"layer{s + 1}", make_csn_stage(in_planes, planes, n, stride, t_stride, bn_eps,
                                                            bn_momentum))
        self.out_channels = list(CSN_OUT_CHANNELS)
        self.spatial_strides = [4, 8, 16, 32 if last_stride else 16]
        self.temporal_strides = [1, ts, ts ** 2, ts ** 3]
        self.frozen_stages = frozen_stages
        self._freeze_stages()

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        modules = [self.conv1, self.bn1] + [getattr(self, f"layer{s}") for s in range(1, self.frozen_stages + 1)]
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)

    def stem(self, x):
        """``[B, 3, T, H, W]`` -> ``[B, 64, T, H/4, W/4]``."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, videos):
        """``[video [B,3,T,H,W]]`` -> 4 maps ``[B, C_l, T/t_l, H/s_l, W/s_l]`` (layer1..layer4; strides in
        ``temporal_strides`` / ``spatial_strides``)."""
        self._check_inputs(videos)
        x = self.stem(videos[0])
        levels = []
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
            levels.append(x)
        return levels

    def last_stage(self, videos):
        """``[video [B,3,T,H,W]]`` -> ``[layer4 [B, 2048, T/8, H/16 (or /32), W/16 (or /32)]]``: what TubeR's
        ``Backbone`` takes from its CSN (``xs``) before its temporal pooling."""
        self._check_inputs(videos)
        x = self.stem(videos[0])
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return [x]


def _build_csn(cfg, depth):
    return IrCSN(
        depth=depth,
        last_stride=cfg.MODEL.CSN.LAST_STRIDE,
        bn_eps=cfg.MODEL.CSN.BN_EPSILON,
        bn_momentum=cfg.MODEL.BACKBONE.BN_MOMENTUM,
        frozen_bn=cfg.MODEL.BACKBONE.FROZEN_BN,
        frozen_stages=cfg.MODEL.CSN.FROZEN_STAGES,
        in_channels=cfg.DATA.INPUT_CHANNEL_NUM[0],
        temporal_stride=cfg.MODEL.CSN.TEMPORAL_STRIDE,
    )


@BACKBONE_REGISTRY.register("CSN-50")
def build_csn50(cfg):
    """ir-CSN-50 from ``MODEL.CSN.*``, ``MODEL.BACKBONE.{BN_MOMENTUM,FROZEN_BN}`` and ``DATA.INPUT_CHANNEL_NUM``."""
    return _build_csn(cfg, 50)


@BACKBONE_REGISTRY.register("CSN-152")
def build_csn152(cfg):
    """ir-CSN-152 (same keys as ``CSN-50``)."""
    return _build_csn(cfg, 152)
