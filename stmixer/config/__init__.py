"""The configuration tree: ``get_cfg()`` returns a fresh copy of the documented defaults."""

from .config import CfgNode, ConfigError
from .defaults import _C


def get_cfg():
    """Return a fresh, mutable copy of the default config tree (see ``defaults.py``)."""
    return _C.clone()


def load_config(config_file="", opts=(), freeze=True):
    """Defaults + ``config_file`` (if given) + ``[KEY, VALUE, ...]`` overrides; frozen unless ``freeze=False``.

    Raises ConfigError naming the file and line (or the command line) and the key at fault.
    """
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or ()))
    if freeze:
        cfg.freeze()
    return cfg


__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config"]
