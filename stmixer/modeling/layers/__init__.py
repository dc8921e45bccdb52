"""Building blocks shared by several model families (below the builders: plain arguments, no cfg)."""

from .ms_deform_attn import MSDeformAttn, ms_deform_attn_pytorch

__all__ = ["MSDeformAttn", "ms_deform_attn_pytorch"]
