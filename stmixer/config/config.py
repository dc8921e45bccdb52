"""A yacs ``CfgNode`` whose merges fail loudly and helpfully.

yacs already refuses unknown keys, but with a bare ``KeyError`` that names
neither the file nor what was probably meant. This subclass names the source
(file and line, or the command line), the key, and the closest valid keys, and
it accepts an integer where the default is a float (``WARMUP_FACTOR: 1``).
"""

import ast
import difflib

import yaml
from yacs.config import CfgNode as _YacsCfgNode

from ..errors import UserError, decode_text


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not fit the config tree."""

    exit_status = 2


def _decode_value(value):
    """Turn a YAML/command-line string into a Python literal when it is one.

    ``"1e-4"`` -> 0.0001, ``"(5, 8)"`` -> (5, 8), ``"abc"`` -> "abc".
    Non-strings are returned unchanged (lists/tuples decoded element-wise).
    """
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode_value(v) for v in value)
    return value


# Keys whose default is the string "auto" and that also take the booleans True and False.
BOOL_OR_AUTO_KEYS = frozenset({"MODEL.STM.STACKED_LOSSES", "MODEL.BACKBONE.FUSED_INFERENCE",
                               "MODEL.BACKBONE.FUSED_TRAINING_BN", "MODEL.BACKBONE.SPATIAL_CONV_2D",
                               "ViT.COMPILE"})


def _coerce(value, default, full_key, source, raw=None):
    """Return ``value`` converted to the type of ``default`` or raise ConfigError.

    ``raw`` is the value as written in a YAML file, to name it when YAML read a word as a boolean.
    """
    if type(value) is type(default) or value is None or default is None:
        return value
    if full_key in BOOL_OR_AUTO_KEYS and isinstance(value, bool):
        return value
    if isinstance(default, str) and isinstance(value, bool):
        written = raw if raw is not None else str(value)
        leaf = full_key.rsplit(".", 1)[-1]
        raise ConfigError(
            f"{source}: config key {full_key} expects a string, but YAML reads the unquoted {written} as the "
            f"boolean {value}; quote it: {leaf}: \"{written}\""
        )
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, list) and isinstance(value, tuple):
        return list(value)
    if isinstance(default, float) and type(value) is int:
        return float(value)
    raise ConfigError(
        f"{source}: config key {full_key} expects a value of type "
        f"{type(default).__name__} (default {default!r}), got {type(value).__name__} {value!r}"
    )


def _yaml_key_lines(text):
    """Map the dotted path of every mapping key in a YAML text to its 1-based line.

    Also returns the scalar values as written (``{"SOLVER.AMP": "off"}``) for error messages.
    """
    lines, written = {}, {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                full = f"{prefix}{key_node.value}"
                lines[full] = key_node.start_mark.line + 1
                if isinstance(value_node, yaml.ScalarNode):
                    written[full] = value_node.value
                walk(value_node, full + ".")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines, written


class CfgNode(_YacsCfgNode):
    """yacs CfgNode with strict merges whose errors name the source, the key and close matches."""

    def all_keys(self, prefix=""):
        """Dotted names of every leaf key below this node, e.g. ``MODEL.STM.NUM_QUERIES``."""
        keys = []
        for name, value in self.items():
            if isinstance(value, _YacsCfgNode):
                keys.extend(value.all_keys(f"{prefix}{name}."))
            else:
                keys.append(f"{prefix}{name}")
        return keys

    def _suggest(self, full_key):
        """The valid keys closest to a misspelt or misplaced ``full_key``."""
        valid = self.all_keys()
        leaf = full_key.rsplit(".", 1)[-1]
        same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == leaf]
        close = difflib.get_close_matches(full_key, valid, n=3, cutoff=0.6)
        leaf_close = [
            k for k in valid
            if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], n=1, cutoff=0.75)
            and k.rsplit(".", 1)[0] == full_key.rpartition(".")[0]
        ]
        seen = []
        for key in same_leaf + close + leaf_close:
            if key not in seen:
                seen.append(key)
        return seen[:5]

    def _unknown_key(self, full_key, source):
        hint = self._suggest(full_key)
        hint_text = f" Did you mean: {', '.join(hint)}?" if hint else ""
        return ConfigError(f"{source}: unknown config key {full_key}.{hint_text}")

    def _merge_dict(self, loaded, source, prefix, key_lines, root, written=None):
        written = written or {}
        origins = root.__dict__.setdefault("_key_origins", {})
        for name, value in loaded.items():
            full_key = f"{prefix}{name}"
            where = f"{source}:{key_lines[full_key]}" if full_key in key_lines else source
            if name not in self:
                raise root._unknown_key(full_key, where)
            current = self[name]
            if isinstance(current, _YacsCfgNode):
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: config key {full_key} is a section; expected a mapping, got {value!r}")
                current._merge_dict(value, source, f"{full_key}.", key_lines, root, written)
                continue
            if isinstance(value, dict):
                raise ConfigError(f"{where}: config key {full_key} is a value, not a section")
            self[name] = _coerce(_decode_value(value), current, full_key, where, written.get(full_key))
            origins[full_key] = where

    def merge_from_file(self, cfg_filename):
        """Merge a YAML file; unknown keys or wrong types raise ConfigError naming file, line and key."""
        try:
            with open(cfg_filename, "rb") as f:
                text = decode_text(f.read(), cfg_filename)
        except OSError as e:
            raise ConfigError(f"cannot read config file {cfg_filename}: {e.strerror}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{cfg_filename}: not valid YAML: {e}") from e
        if loaded is None:
            return
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_filename}: expected a mapping of config keys at the top level")
        self._merge_tree(loaded, str(cfg_filename), *_yaml_key_lines(text))

    def merge_from_other_cfg(self, cfg_other):
        """Merge another CfgNode (or dict) with the same strict checks."""
        self._merge_tree(dict(cfg_other), "merged config", {})

    def merge_from_list(self, cfg_list):
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` command-line overrides."""
        cfg_list = list(cfg_list or [])
        if len(cfg_list) % 2:
            raise ConfigError(
                f"command line: overrides must be KEY VALUE pairs; {cfg_list[-1]!r} has no value"
            )
        nested = {}
        for full_key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            node = nested
            parts = str(full_key).split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"command line: {full_key} is given twice, as a value and a section")
            node[parts[-1]] = value
        self._merge_tree(nested, "command line", {})

    def _merge_tree(self, loaded, source, key_lines, written=None):
        if self.is_frozen():
            raise ConfigError(f"{source}: cannot merge into a frozen config (call cfg.defrost() first)")
        # Merge into a copy first so that a failing merge leaves this config untouched.
        staged = self.clone()
        staged._merge_dict(loaded, source, "", key_lines, staged, written)
        self.update(staged)
        # Where each key was last set (file:line or "command line"), for validate_config's messages.
        self.__dict__["_key_origins"] = staged.__dict__.get("_key_origins", {})
