"""Convolution + eval-mode BatchNorm (+ residual) (+ ReLU) as one pass: ``MODEL.BACKBONE.FUSED_INFERENCE``.

An eval-mode BatchNorm is a per-channel affine map, ``bn(y) = y * s + (beta - mean * s)`` with
``s = gamma / sqrt(var + eps)``, so ``bn(conv(x))`` equals one convolution with the weight
``W * s`` (scaled per output channel) and the bias ``beta - mean * s``. On CUDA, cuDNN then runs
convolution, bias, the residual addition and the ReLU as one kernel
(``torch.cudnn_convolution_relu`` / ``torch.cudnn_convolution_add_relu``) where eager PyTorch makes
three or four passes over the activations (convolution, BatchNorm, addition, ReLU): the SlowFast-R50
inference step at 8 clips goes from 67.3 to 50.5 ms on an H100 (benchmarks/README.md).

The folded weights are computed from the current parameters and running statistics in every call
(a few small kernels per convolution; CUDA graphs capture them with the rest). Nothing is cached, so
training after evaluation, loading a checkpoint or swapping in EMA weights needs no invalidation,
and the state dict is never touched.

The fused path runs only where it cannot change what autograd sees: BatchNorm in eval mode, and no
gradient wanted (``torch.no_grad()``, or nothing involved requires one). Training, and training with
frozen BatchNorm (``MODEL.BACKBONE.FROZEN_BN``), run the modules as they are. Results equal the unfused
path up to float rounding (the products are associated differently); parity runs turn it off.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import spatial_conv

logger = logging.getLogger(__name__)

_CUDNN_FAILED = set()  # devices where cuDNN refused a fused convolution (the folded convolution runs instead)


def fused_path(mode, x, convs, bns):
    """Whether the fused eval path runs for ``x`` through ``convs`` (Conv3d) and ``bns`` (BatchNorm).

    ``mode``: "auto" (CUDA tensors only), True (any device: on the CPU the folded convolution and
    in-place ReLU), False (never)."""
    if mode is False or (mode == "auto" and not x.is_cuda):
        return False
    for bn in bns:
        if not isinstance(bn, _BatchNorm) or bn.training or bn.running_mean is None or bn.running_var is None:
            return False
    for conv in convs:
        if not isinstance(conv, nn.Conv3d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return False
    if torch.is_grad_enabled():
        tensors = [x] + [c.weight for c in convs] + [b.weight for b in bns if b.weight is not None]
        if any(t.requires_grad for t in tensors):
            return False
    return True


def fold_conv_bn(conv, bn):
    """``(weight, bias)`` of the convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``weight`` ``[C_out, C_in / groups, kt, kh, kw]`` keeps ``conv.weight``'s dtype and memory format;
    ``bias`` ``[C_out]``. Differentiable (plain tensor arithmetic)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(scale)
    if conv.bias is not None:
        shift = torch.addcmul(shift, conv.bias, scale)
    bias = torch.addcmul(shift, bn.running_mean, scale, value=-1)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype)
    return weight, bias.to(conv.weight.dtype)


def _compute_dtype(x):
    """The dtype a Conv3d would compute in: the autocast dtype inside CUDA autocast, else ``x``'s."""
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def pad_channels(x, weight, multiple):
    """``x`` ``[B, C, ...]`` and ``weight`` ``[O, C, ...]`` with C zero-padded to a multiple of ``multiple``
    (channels_last_3d): the same convolution, which cuDNN may run with a faster kernel."""
    c = x.shape[1]
    padded = -(-c // multiple) * multiple
    if padded == c:
        return x, weight
    fmt = torch.channels_last_3d
    xp = x.new_zeros((x.shape[0], padded) + tuple(x.shape[2:])).contiguous(memory_format=fmt)
    xp[:, :c] = x
    wp = weight.new_zeros((weight.shape[0], padded) + tuple(weight.shape[2:])).contiguous(memory_format=fmt)
    wp[:, :c] = weight
    return xp, wp


# The stems' 3-channel float32 NDHWC convolution with a temporal kernel (SlowFast's Fast stem, 5x7x7) takes
# 4.4 ms instead of 6.5 (8 clips, H100, cuDNN 9.19) with the input channels padded to 4; the 1x7x7 stems
# are faster unpadded (0.9 against 2.4 ms).
STEM_CHANNEL_MULTIPLE = 4


def conv_bn_act(x, conv, bn, relu=True, residual=None, stem=False):
    """``relu(bn(conv(x)) + residual)`` with ``bn`` folded into ``conv``; ``relu`` and ``residual`` optional.

    Call it where ``fused_path`` holds. ``x`` ``[B, C_in, T, H, W]`` -> ``[B, C_out, T', H', W']``.
    On CUDA with cuDNN, a ReLU-ending call is one cuDNN kernel; elsewhere (and where cuDNN refuses
    the fused graph: one warning per device) the folded convolution, then in-place addition and ReLU.
    ``stem``: a float32 channels_last 3-channel input with a temporal kernel has its channels padded
    (``STEM_CHANNEL_MULTIPLE``) for cuDNN. Where ``spatial_conv.folds(conv.as_2d, ...)`` holds
    (``MODEL.BACKBONE.SPATIAL_CONV_2D``), the same calls run 2-D on the frames folded into the batch.
    """
    weight, bias = fold_conv_bn(conv, bn)
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    batch = x.shape[0]
    as_2d = spatial_conv.folds(getattr(conv, "as_2d", False), x, weight, stride, padding)
    if as_2d:  # MODEL.BACKBONE.SPATIAL_CONV_2D: the frames folded into the batch (spatial_conv.py)
        x, weight = spatial_conv.fold(x), weight[:, :, 0]
        stride, padding, dilation = stride[1:], padding[1:], dilation[1:]
        residual = spatial_conv.fold(residual) if residual is not None else None

    def finish(y):
        return spatial_conv.unfold(y, batch) if as_2d else y

    if relu and x.is_cuda and torch.backends.cudnn.enabled and x.device not in _CUDNN_FAILED:
        dtype = _compute_dtype(x)
        if (stem and not as_2d and dtype == torch.float32 and x.shape[1] % STEM_CHANNEL_MULTIPLE
                and weight.shape[2] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d)):
            x, weight = pad_channels(x, weight, STEM_CHANNEL_MULTIPLE)
        args = (bias.to(dtype), stride, padding, dilation, conv.groups)
        try:
            if residual is None:
                return finish(torch.cudnn_convolution_relu(x.to(dtype), weight.to(dtype), *args))
            return finish(torch.cudnn_convolution_add_relu(x.to(dtype), weight.to(dtype), residual.to(dtype), 1.0,
                                                           *args))
        except RuntimeError as e:  # no cuDNN engine for this graph: the folded convolution below
            _CUDNN_FAILED.add(x.device)
            logger.warning("MODEL.BACKBONE.FUSED_INFERENCE: cuDNN's fused convolution failed on %s (%s); "
                           "the folded convolution and separate addition / ReLU run instead",
                           x.device, str(e).splitlines()[0] if str(e) else type(e).__name__)
    y = (F.conv2d if as_2d else F.conv3d)(x, weight, bias, stride, padding, dilation, conv.groups)
    if residual is not None:
        y = y + residual
    return finish(y.relu_() if relu else y)
