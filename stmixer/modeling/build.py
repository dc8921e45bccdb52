"""Registries of the model parts and the builders that read the config.

Each backbone, neck and detector module registers itself here under the names
the config uses; importing ``stmixer.modeling`` imports them all.
"""

from ..config import ConfigError
from ..utils.registry import Registry

# MODEL.BACKBONE.CONV_BODY -> builder(cfg) returning the backbone module.
BACKBONE_REGISTRY = Registry("backbone", config_key="MODEL.BACKBONE.CONV_BODY")
# MODEL.META_ARCHITECTURE -> builder(cfg) returning the whole model: detectors ("STMDetector", "FastRCNN")
# and recognizers ("Recognizer3D", stmixer.modeling.recognizer) alike.
DETECTOR_REGISTRY = Registry("detector", config_key="MODEL.META_ARCHITECTURE")


def lookup(registry, name):
    """``registry.get(name)``; an unknown name is a ConfigError naming the config key and the registered names."""
    if name not in registry:
        raise ConfigError(
            f"{registry.config_key} = {name!r} is not a known {registry.kind}; "
            f"expected one of: {', '.join(registry.names())}"
        )
    return registry.get(name)


def build_backbone(cfg):
    """The backbone named by ``MODEL.BACKBONE.CONV_BODY``."""
    return lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.CONV_BODY)(cfg)


def build_detector(cfg):
    """The model (detector or recognizer) named by ``MODEL.META_ARCHITECTURE``, with freshly initialized weights."""
    detector = lookup(DETECTOR_REGISTRY, cfg.MODEL.META_ARCHITECTURE)
    lookup(BACKBONE_REGISTRY, cfg.MODEL.BACKBONE.CONV_BODY)  # fail on a bad name before building anything
    return detector(cfg)
