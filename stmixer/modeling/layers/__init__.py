"""Building blocks shared by several model families (below the builders: plain arguments, no cfg)."""

from .detr import ACTIVATIONS, activation_fn, clones, detr_layer_modules
from .ms_deform_attn import MSDeformAttn, ms_deform_attn_pytorch

__all__ = ["ACTIVATIONS", "activation_fn", "clones", "detr_layer_modules", "MSDeformAttn", "ms_deform_attn_pytorch"]
