"""SeqFormer on AVA (the TubeR fork's SeqFormer action detector, issue #17; docs/seqformer.md)."""

from .criterion import SeqFormerCriterion
from .detector import SeqFormer, build_seqformer
from .head import SeqFormerHead
from .transformer import SeqFormerDecoder, SeqFormerDecoderLayer, SeqFormerMSDeformAttn, SeqFormerTransformer

__all__ = ["SeqFormer", "SeqFormerCriterion", "SeqFormerDecoder", "SeqFormerDecoderLayer", "SeqFormerHead",
           "SeqFormerMSDeformAttn", "SeqFormerTransformer", "build_seqformer"]
