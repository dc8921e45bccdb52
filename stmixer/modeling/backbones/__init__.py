"""Video backbones; importing this package registers them in ``BACKBONE_REGISTRY``.

Every backbone maps a list of pathway videos ``[B, 3, T, H, W]`` to 4 levels
``[B, C_l, T', H/s_l, W/s_l]`` (s_l = 4, 8, 16, 32) and exposes ``out_channels``.
"""

from .csn import IrCSN
from .resnet3d import SlowOnly, VideoResNet, freeze_batchnorm_statistics
from .slowfast import SlowFast
from .vit import VisionTransformer3D
from .evad_vit import EVADFeatures, EVADVisionTransformer

__all__ = ["EVADFeatures", "EVADVisionTransformer", "IrCSN", "SlowFast", "SlowOnly", "VideoResNet",
           "VisionTransformer3D", "freeze_batchnorm_statistics"]
