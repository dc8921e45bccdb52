"""3-D sine position encoding of TubeR (``PositionEmbeddingSine_3D``).

For a feature map ``[B, C, T, H, W]`` with padding mask ``[B, T, H, W]`` the encoding has
``num_pos_feats`` channels split 2:3:3 into time, y and x (256 -> 64, 96, 96). Each axis
position is the cumulative count of valid (unpadded) cells along that axis, normalized by the
axis' last value (``+ 1e-6``) and scaled by ``2 * pi``; channel ``i`` of an axis with ``n``
channels divides it by ``temperature ** (2 * (i // 2) / n)`` and takes the sine of even and
the cosine of odd channels (interleaved as ``stack(sin, cos).flatten``).

TubeR computes all of it in float32 (``cumsum(dtype=float32)``, ``arange(dtype=float32)``)
whatever the feature dtype; ``float32_compute=True`` (``MODEL.TUBER.POSITION_FLOAT32``,
default, as official) reproduces that, and the detector casts the result to the features'
dtype when it adds it; ``False`` computes in the features' dtype (float64-clean).
"""

import math

import torch
from torch import nn


class PositionEmbeddingSine3D(nn.Module):
    """Args:
        num_pos_feats: total channels (TubeR passes ``D_MODEL``; must split 2:3:3 into even counts).
        temperature: wavelength base (10000).
        normalize: divide the cumulative positions by the axis length and scale by ``scale`` (TubeR: True).
        scale: the scale (``2 * pi``).
        float32_compute: compute in float32 as TubeR (see module docstring).
    """

    def __init__(self, num_pos_feats=256, temperature=10000, normalize=True, scale=None, float32_compute=True):
        super().__init__()
        if num_pos_feats % 8:
            raise ValueError(f"PositionEmbeddingSine3D: num_pos_feats = {num_pos_feats}, expected a multiple of 8")
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine3D: a scale needs normalize=True")
        self.num_pos_feats = num_pos_feats
        self.num_t = num_pos_feats // 8 * 2
        self.num_s = num_pos_feats // 8 * 3
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.float32_compute = float32_compute

    def forward(self, mask, dtype=torch.float32):
        """``mask``: ``[B, T, H, W]`` bool (True = padding). Returns ``[B, num_pos_feats, T, H, W]`` in float32
        (``float32_compute``) or ``dtype``."""
        dtype = torch.float32 if self.float32_compute else dtype
        not_mask = ~mask
        t_embed = not_mask.cumsum(1, dtype=dtype)
        y_embed = not_mask.cumsum(2, dtype=dtype)
        x_embed = not_mask.cumsum(3, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            t_embed = t_embed / (t_embed[:, -1:, :, :] + eps) * self.scale
            y_embed = y_embed / (y_embed[:, :, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, :, -1:] + eps) * self.scale
        # TubeR's channel counts are Python floats (num_pos_feats / 8 * 2): same values, float division
        n_t, n_s = float(self.num_t), float(self.num_s)
        dim_t = torch.arange(self.num_t, dtype=dtype, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / n_t)
        dim_s = torch.arange(self.num_s, dtype=dtype, device=mask.device)
        dim_s = self.temperature ** (2 * (dim_s // 2) / n_s)
        pos_t = _interleave(t_embed[..., None] / dim_t)
        pos_y = _interleave(y_embed[..., None] / dim_s)
        pos_x = _interleave(x_embed[..., None] / dim_s)
        return torch.cat((pos_t, pos_y, pos_x), dim=4).permute(0, 4, 1, 2, 3)


def _interleave(pos):
    """sin of the even, cos of the odd channels, interleaved: ``[..., n]`` -> ``[..., n]``."""
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=5).flatten(4)
