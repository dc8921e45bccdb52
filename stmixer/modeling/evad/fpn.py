"""EVAD's feature pyramid: detectron2's FPN over the keyframe maps of four ViT blocks.

The backbone (``backbones/evad_vit.py``) hands four 2-D keyframe maps ``res2 .. res5`` of strides 4, 8, 16,
32 (the keyframe tokens of the blocks ``EVAD.FPN_INDICES``, resized by nearest interpolation x4, x2, x1,
x0.5). The FPN is detectron2's top-down pyramid with sum fusion and no normalization, as the official
``E2EDetector._construct_fpn`` / ``fpn_forward``: per level a lateral Conv2d 1x1 and an output Conv2d 3x3,
both with bias and Caffe2 Xavier initialization; the top-down path adds the nearest x2 upsampling of the
coarser merged map to the lateral map. The official extra ``p6`` level (max-pool of ``p5``) is not used by
its head and not computed here.

This is not the mathematics of the ViT simple feature pyramid of ``necks.py`` (transposed convolutions on
one map, channel LayerNorm, 3-D convolutions without bias), hence a module of its own. Parameter names are
the official ``fpn_lateral{2..5}`` / ``fpn_output{2..5}`` (held by the detector as ``evad_fpn``).
"""

import torch.nn.functional as F
from torch import nn

from ..weight_init import c2_xavier_fill

# The pyramid stages: level names res2 .. res5 / p2 .. p5 (strides 2 ** stage).
STAGES = (2, 3, 4, 5)


class EVADFPN(nn.Module):
    """Top-down FPN: 4 maps ``[B, C_l, H_l, W_l]`` (strides 4, 8, 16, 32; each H_l, W_l twice the next one's)
    -> 4 maps ``[B, out_channels, H_l, W_l]`` (official ``p2 .. p5``).

    Args:
        in_channels: the 4 input widths (the ViT width D four times).
        out_channels: the pyramid width (official: 256, the person detector's hidden width).
    """

    def __init__(self, in_channels, out_channels=256):
        super().__init__()
        if len(in_channels) != len(STAGES):
            raise ValueError(f"EVADFPN expects {len(STAGES)} input widths, got {list(in_channels)}")
        for stage, c in zip(STAGES, in_channels):
            lateral = nn.Conv2d(c, out_channels, kernel_size=1)
            output = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
        self.out_channels = out_channels

    def forward(self, features):
        """4 maps ``res2 .. res5`` -> 4 maps ``p2 .. p5`` (see the class docstring)."""
        if len(features) != len(STAGES):
            raise ValueError(f"EVADFPN expects {len(STAGES)} maps (res2 .. res5), got {len(features)}")
        merged = getattr(self, f"fpn_lateral{STAGES[-1]}")(features[-1])
        results = [getattr(self, f"fpn_output{STAGES[-1]}")(merged)]
        for stage, level in zip(STAGES[-2::-1], features[-2::-1]):
            if level.shape[-2:] != tuple(2 * s for s in merged.shape[-2:]):
                raise ValueError(
                    f"EVADFPN: map res{stage} is {tuple(level.shape[-2:])}, expected twice the coarser "
                    f"{tuple(merged.shape[-2:])}: the token grid H/patch, W/patch must be even (pad the input "
                    f"to a multiple of 2 * ViT.PATCH_SIZE)")
            merged = getattr(self, f"fpn_lateral{stage}")(level) + F.interpolate(merged, scale_factor=2.0,
                                                                                 mode="nearest")
            results.insert(0, getattr(self, f"fpn_output{stage}")(merged))
        return results
