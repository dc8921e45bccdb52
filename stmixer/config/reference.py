"""The config reference: every key with its default and the comment written above it in ``defaults.py``."""

import re
from pathlib import Path

_ASSIGNMENT = re.compile(r"^_C\.([A-Za-z0-9_.]+)\s*=\s*(.*)$")


def key_comments():
    """Map every key assigned in ``defaults.py`` (dotted, e.g. ``MODEL.STM.NUM_QUERIES``) to its comment.

    The comment is the run of ``#`` lines directly above the assignment; section
    nodes (``_C.X = CN()``) are skipped. A key without a comment maps to "".
    """
    source = (Path(__file__).with_name("defaults.py")).read_text().splitlines()
    comments = {}
    pending = []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text and not set(text) <= {"-"}:
                pending.append(text)
            continue
        match = _ASSIGNMENT.match(stripped)
        if match and not match.group(2).startswith("CN("):
            comments[match.group(1)] = " ".join(pending)
        pending = []
    return comments


def reference_markdown(cfg):
    """A markdown table (key, default, meaning) of every key of ``cfg``."""
    comments = key_comments()
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key in cfg.all_keys():
        value = cfg
        for part in key.split("."):
            value = value[part]
        default = repr(value).replace("|", "\\|")
        rows.append(f"| `{key}` | `{default}` | {comments.get(key, '')} |")
    return "\n".join(rows)
