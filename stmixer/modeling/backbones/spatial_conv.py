"""Spatial ``1 x k x k`` 3-D convolutions run as 2-D convolutions: ``MODEL.BACKBONE.SPATIAL_CONV_2D``.

A 3-D convolution whose kernel spans one frame (``kt = 1``, temporal stride 1, no temporal padding)
treats every frame alike, so it equals a 2-D convolution over the frames folded into the batch:
``[B, C, T, H, W]`` -> ``[B * T, C, H, W]``. On channels_last_3d (NDHWC) tensors the fold and the
unfold are views (no copy). cuDNN 9's 3-D heuristics pick a generic, non-tensor-core kernel
(``implicit_convolveNd_sgemm``) for such convolutions with few channels, and a slow backward kernel
for some shapes; its 2-D kernels are the tuned ones. Measured per convolution (H100, cuDNN 9.19,
GPU kernel time, ``cudnn.benchmark`` on or off alike): the SlowFast-R50 Fast pathway's 1x3x3
convolutions of 8 channels at 8 clips go from 0.69 to 0.18 ms each in inference (fused BN + ReLU),
the backbone's convolutions in total from 17.1 to 12.1 ms; in training (forward + backward) at 2 clips,
SlowFast-R101's 64-channel 1x3x3 convolutions of the Fast res5 stage from 1.12 to 0.04 ms, its
convolutions in total from 37.2 to 32.7 ms (SlowFast-R50 at 8 clips: 104.2 to 97.5 ms).
Convolutions with a temporal kernel stay 3-D (as 2-D over ``(T, H * W)`` their backward is up to
17x slower), and so do those with more than ``MAX_CHANNELS`` input channels per group (no gain).

``"auto"`` folds CUDA channels_last_3d inputs of at most ``MAX_CHANNELS`` channels per group;
``True`` folds every eligible convolution on any device and layout (a copy where the fold is not a
view); ``False`` never. Same values up to float rounding (other kernels sum in another order);
parity runs use False.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Input channels per group up to which "auto" folds: the measured gains are at 8-64 channels; at 128 and
# more the 3-D and 2-D kernels take the same time.
MAX_CHANNELS = 64


def folds(mode, x, weight, stride, padding) -> bool:
    """Whether the convolution of ``x`` ``[B, C, T, H, W]`` with ``weight`` ``[O, C / g, kt, kh, kw]`` runs
    as 2-D under ``mode`` ("auto", True or False): ``kt == 1``, temporal stride 1, no temporal padding."""
    if mode is False or x.dim() != 5 or isinstance(padding, str):
        return False
    if weight.shape[2] != 1 or stride[0] != 1 or padding[0] != 0:
        return False
    if mode == "auto":
        return (x.is_cuda and weight.shape[1] <= MAX_CHANNELS
                and x.is_contiguous(memory_format=torch.channels_last_3d))
    return True


def fold(x):
    """``[B, C, T, H, W]`` -> ``[B * T, C, H, W]`` (a view for channels_last_3d ``x``)."""
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def unfold(y, batch):
    """``[B * T, C, H, W]`` -> ``[B, C, T, H, W]`` (a view; channels_last ``y`` gives channels_last_3d)."""
    return y.reshape(batch, -1, *y.shape[1:]).transpose(1, 2)


def conv3d_as_2d(x, weight, bias, stride, padding, dilation, groups):
    """``F.conv3d(x, weight, bias, stride, padding, dilation, groups)`` for a ``folds`` convolution,
    computed by ``F.conv2d`` on the folded frames. Differentiable."""
    y = F.conv2d(fold(x), weight[:, :, 0], bias, tuple(stride[1:]), tuple(padding[1:]), tuple(dilation[1:]), groups)
    if x.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous(memory_format=torch.channels_last):
        # cuDNN answers some convolutions of very few channels (4 on an H100) in NCHW: keep NDHWC for what follows
        # (the BatchNorm kernels take channels_last_3d only)
        y = y.contiguous(memory_format=torch.channels_last)
    return unfold(y, x.shape[0])


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters, state dict and initialization) that runs as ``conv3d_as_2d`` where
    ``folds(self.as_2d, ...)`` holds; ``as_2d`` is ``MODEL.BACKBONE.SPATIAL_CONV_2D``, set on every such
    module by ``VideoResNet.set_spatial_conv_2d``."""

    as_2d = False

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode == "zeros" and folds(self.as_2d, input, weight, self.stride, self.padding):
            return conv3d_as_2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)
