"""The configuration tree: ``get_cfg()`` returns a fresh copy of the documented defaults."""

from .config import CfgNode, ConfigError
from .defaults import _C
from .validate import validate_config


def get_cfg():
    """Return a fresh, mutable copy of the default config tree (see ``defaults.py``)."""
    return _C.clone()


def load_config(config_file="", opts=(), freeze=True):
    """Defaults + ``config_file`` (if given) + ``[KEY, VALUE, ...]`` overrides; frozen unless ``freeze=False``.

    Raises ConfigError naming the file and line (or the command line) and the key at fault;
    after merging, ``validate_config`` reports every impossible value at once.
    """
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or ()))
    validate_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config", "validate_config"]
