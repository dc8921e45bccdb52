"""Registries of the model parts and the builders that read the config.

Each backbone, neck and detector module registers itself here under the names
the config uses; importing ``stmixer.modeling`` imports them all.
"""

from ..utils.registry import Registry

# MODEL.BACKBONE.CONV_BODY -> builder(cfg) returning the backbone module.
BACKBONE_REGISTRY = Registry("backbone", config_key="MODEL.BACKBONE.CONV_BODY")
# MODEL.META_ARCHITECTURE -> builder(cfg) returning the whole detector.
DETECTOR_REGISTRY = Registry("detector", config_key="MODEL.META_ARCHITECTURE")


def build_backbone(cfg):
    """The backbone named by ``MODEL.BACKBONE.CONV_BODY``."""
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.CONV_BODY)(cfg)


def build_detector(cfg):
    """The detector named by ``MODEL.META_ARCHITECTURE``, with freshly initialized weights."""
    return DETECTOR_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
