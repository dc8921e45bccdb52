"""EVAD (Chen et al., ICCV 2023): FPN, context-refinement decoder, action loss and the detector."""

from .context import ContextRefinement, ContextRefinementDecoder, extend_boxes
from .fpn import EVADFPN
from .loss import evad_action_losses
from .detector import EVAD, EVADHead  # noqa: E402  (registers the detector)

__all__ = ["EVAD", "EVADHead", "ContextRefinement", "ContextRefinementDecoder", "EVADFPN", "evad_action_losses",
           "extend_boxes"]
