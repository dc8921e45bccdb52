"""Necks: map the 4 backbone levels to ``MODEL.STM.HIDDEN_DIM`` channels for the decoder.

The detector holds the neck as ``lateral_convs`` (an ``nn.ModuleList``), so its
state-dict keys are the official ``lateral_convs.<i>...`` ones.

* ResNet backbones: one Conv3d 1x1x1 with bias per level (reference quirk B8).
* ViT backbones: the simple feature pyramid of quirk B9, built from the single
  1/16 map: x4 (two transposed convs), x2 (one), x1, x1/2 (max-pool), each
  followed by conv 1x1x1 (no bias) -> channel LayerNorm -> conv 3x3x3 (no bias).
"""

import torch
from torch import nn

from .layers.compiled import CompiledFunction
from .weight_init import c2_xavier_fill


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, T, H, W]`` with weight and bias (eps 1e-6 by default).

    Computed as the official code: ``(x - mean) / sqrt(var + eps) * weight + bias``, biased variance.
    """

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class LateralConvs(nn.ModuleList):
    """Per-level Conv3d 1x1x1 with bias: level i ``[B, C_i, T, H_i, W_i]`` -> ``[B, out_channels, T, H_i, W_i]``.

    Weights are initialized with Caffe2 Xavier fill, biases with 0 (as the official detector).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        for c in in_channels:
            conv = nn.Conv3d(c, out_channels, kernel_size=1)
            c2_xavier_fill(conv)
            self.append(conv)

    def forward(self, features):
        """List of 4 maps -> list of 4 maps with ``out_channels`` channels (same T, H, W)."""
        if len(features) != len(self):
            raise ValueError(f"LateralConvs expects {len(self)} feature levels, got {len(features)}")
        return [conv(f) for conv, f in zip(self, features)]


def _pyramid_level(scale, dim, out_channels):
    """The layers of one pyramid level (module indices as in the official ``nn.Sequential``)."""
    up = dict(kernel_size=(1, 2, 2), stride=(1, 2, 2))
    if scale == 4:
        layers = [nn.ConvTranspose3d(dim, dim // 2, **up), ChannelLayerNorm(dim // 2), nn.GELU(),
                  nn.ConvTranspose3d(dim // 2, dim // 4, **up)]
        dim = dim // 4
    elif scale == 2:
        layers = [nn.ConvTranspose3d(dim, dim // 2, **up)]
        dim = dim // 2
    elif scale == 1:
        layers = []
    else:
        layers = [nn.MaxPool3d(**up)]
    layers += [
        nn.Conv3d(dim, out_channels, kernel_size=1, bias=False),
        ChannelLayerNorm(out_channels),
        nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
    ]
    return nn.Sequential(*layers)


def _pyramid_levels(neck, *features):
    """Every level of ``neck`` on its map: 4 x ``[B, C_i, T, H, W]`` -> 4 x ``[B, out_channels, T, H*s, W*s]``."""
    return [level(f) for level, f in zip(neck, features)]


# The pyramid, compiled where ``SimpleFeaturePyramid.compile_mode`` asks (``ViT.COMPILE``): its channel
# LayerNorms are eight elementwise passes and two reductions each over the largest maps of the step.
PYRAMID_LEVELS = CompiledFunction(_pyramid_levels, "ViT neck")


class SimpleFeaturePyramid(nn.ModuleList):
    """ViT neck: 4 levels at scales x4, x2, x1, x1/2 of the input maps (strides 4, 8, 16, 32 for a 1/16 map).

    ``forward(features)`` takes 4 maps ``[B, C_i, T, H, W]`` (the ViT gives the same
    map four times) and returns 4 maps ``[B, out_channels, T, H*s, W*s]``. ``compile_mode`` ("auto",
    True, False) runs the levels through ``torch.compile`` (``PYRAMID_LEVELS``).
    """

    SCALES = (4, 2, 1, 0.5)

    def __init__(self, in_channels, out_channels, compile_mode=False):
        super().__init__()
        for scale, c in zip(self.SCALES, in_channels):
            self.append(_pyramid_level(scale, c, out_channels))
        self.compile_mode = compile_mode

    def forward(self, features):
        if len(features) != len(self):
            raise ValueError(f"SimpleFeaturePyramid expects {len(self)} feature levels, got {len(features)}")
        return PYRAMID_LEVELS(self.compile_mode, self, *features)


def is_vit_backbone(conv_body):
    """True for the ViT backbones (official rule: "vit" in ``MODEL.BACKBONE.CONV_BODY``, any case)."""
    return "vit" in conv_body.lower()


def build_neck(cfg, in_channels):
    """The neck for ``cfg``'s backbone, as held by the detector in ``lateral_convs``.

    Args:
        cfg: config (reads ``MODEL.BACKBONE.CONV_BODY``, ``MODEL.STM.HIDDEN_DIM`` and, for the ViT neck,
            ``ViT.COMPILE``).
        in_channels: the backbone's ``out_channels`` (4 ints).
    """
    if len(in_channels) != 4:
        raise ValueError(f"build_neck: expected 4 backbone levels, got in_channels={list(in_channels)}")
    if is_vit_backbone(cfg.MODEL.BACKBONE.CONV_BODY):
        return SimpleFeaturePyramid(list(in_channels), cfg.MODEL.STM.HIDDEN_DIM, compile_mode=cfg.ViT.COMPILE)
    return LateralConvs(list(in_channels), cfg.MODEL.STM.HIDDEN_DIM)
