"""The configuration tree: ``get_cfg()`` returns a fresh copy of the documented defaults."""

from .config import CfgNode, ConfigError
from .defaults import _C


def get_cfg():
    """Return a fresh, mutable copy of the default config tree (see ``defaults.py``)."""
    return _C.clone()


__all__ = ["CfgNode", "ConfigError", "get_cfg"]
