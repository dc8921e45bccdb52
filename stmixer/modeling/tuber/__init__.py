"""TubeR (issue #17): tubelet transformer on the ir-CSN backbone; docs/tuber.md."""

from .criterion import TubeRCriterion  # noqa: F401
from .deformable_tuber import DeformableTubeRHead  # noqa: F401  (registers the "deformable" transformer)
from .detector import TubeR  # noqa: F401  (registers the detector)
from .head import TubeRHead  # noqa: F401
from .position_encoding import PositionEmbeddingSine3D  # noqa: F401
from .transformer import TUBER_TRANSFORMER_REGISTRY, DETRTransformer  # noqa: F401

__all__ = ["TubeR", "TubeRHead", "TubeRCriterion", "PositionEmbeddingSine3D", "DETRTransformer",
           "TUBER_TRANSFORMER_REGISTRY"]
