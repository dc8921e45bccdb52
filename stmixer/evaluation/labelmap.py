"""AVA label maps (``.pbtxt``): which action ids are evaluated and their names.

Both forms in circulation are read, in any line layout::

    item { name: "bend/bow (at the waist)" id: 1 }                       # v2.1 (ActivityNet 2018)
    label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }   # v2.2

Other fields (``label_type``, ``display_name``) are accepted and ignored; ``#``
starts a comment. Anything else is an error naming the file and line.
"""

import dataclasses
import re

from ..errors import UserError

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*" | '(?:[^'\\\n]|\\.)*')
    | (?P<punct>[{}:])
    | (?P<word>[A-Za-z0-9_.+\-]+)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}
_BLOCK_NAMES = ("item", "label")
_ID_FIELDS = ("id", "label_id")
_IGNORED_FIELDS = ("label_type", "display_name")


class LabelMapError(UserError, ValueError):
    """A label map file that cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """The evaluated AVA action classes.

    Attributes:
        ids: action ids in file order (positive integers, unique).
        names: ``{id: name}``.
    """

    ids: tuple
    names: dict

    @property
    def max_id(self):
        """The largest id; the official evaluator averages over an AP array of this length."""
        return max(self.ids)


def _tokens(text, path):
    line = 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise LabelMapError(f"{path}:{line}: unexpected character {text[pos]!r}")
        kind = match.lastgroup
        value = match.group()
        pos = match.end()
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            yield kind, value, line


def _unquote(token, path, line):
    body = token[1:-1]
    out = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise LabelMapError(f"{path}:{line}: unsupported escape \\{escaped} in {token}")
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


class _Cursor:
    """Walks the token list; every failure names the file and line."""

    def __init__(self, tokens, path):
        self.tokens, self.path, self.i = tokens, path, 0

    def done(self):
        return self.i >= len(self.tokens)

    def peek(self):
        return None if self.done() else self.tokens[self.i][1]

    def take(self, kind=None, value=None):
        """Next token as (kind, value, line); checks its kind / value when given."""
        if self.done():
            line = self.tokens[-1][2] if self.tokens else 1
            raise LabelMapError(f"{self.path}:{line}: unexpected end of file, expected {value or kind or 'a value'}")
        token = self.tokens[self.i]
        if (kind is not None and token[0] != kind) or (value is not None and token[1] != value):
            raise LabelMapError(f"{self.path}:{token[2]}: expected {value or kind}, found {token[1]!r}")
        self.i += 1
        return token


def parse_labelmap(text, path="<labelmap>"):
    """Parse the text of a label map (see the module docstring for the accepted forms).

    Args:
        text: the file's contents.
        path: the name used in error messages.

    Returns:
        LabelMap.

    Raises:
        LabelMapError: malformed text, a block without name or id, a duplicate id or
            name, a non-positive id, or no block at all.
    """
    cursor = _Cursor(list(_tokens(text, path)), path)
    names, id_lines, name_lines = {}, {}, {}
    while not cursor.done():
        _, block, block_line = cursor.take("word")
        if block not in _BLOCK_NAMES:
            raise LabelMapError(f"{path}:{block_line}: expected 'item {{' or 'label {{', found {block!r}")
        cursor.take("punct", "{")
        name = class_id = None
        while cursor.peek() != "}":
            _, field, field_line = cursor.take("word")
            cursor.take("punct", ":")
            kind, value, line = cursor.take()
            if field == "name":
                if kind != "string":
                    raise LabelMapError(f"{path}:{line}: name must be a quoted string, found {value!r}")
                name = _unquote(value, path, line)
            elif field in _ID_FIELDS:
                if kind != "word" or not re.fullmatch(r"[+-]?\d+", value):
                    raise LabelMapError(f"{path}:{line}: {field} must be an integer, found {value!r}")
                class_id, id_line = int(value), line
            elif field in _IGNORED_FIELDS:
                if kind not in ("word", "string"):
                    raise LabelMapError(f"{path}:{line}: {field} needs a value, found {value!r}")
            else:
                raise LabelMapError(
                    f"{path}:{field_line}: unknown field {field!r} (expected name, id, label_id, label_type)"
                )
        cursor.take("punct", "}")
        if name is None or class_id is None:
            missing = "name" if name is None else "id (or label_id)"
            raise LabelMapError(f"{path}:{block_line}: {block} block without {missing}")
        if class_id < 1:
            raise LabelMapError(f"{path}:{id_line}: class ids must be >= 1, found {class_id}")
        if class_id in names:
            raise LabelMapError(f"{path}:{id_line}: duplicate id {class_id} (first at line {id_lines[class_id]})")
        if name in name_lines:
            raise LabelMapError(f"{path}:{block_line}: duplicate name {name!r} (first at line {name_lines[name]})")
        names[class_id], id_lines[class_id], name_lines[name] = name, id_line, block_line
    if not names:
        raise LabelMapError(f"{path}: no 'item {{ ... }}' or 'label {{ ... }}' block found")
    return LabelMap(ids=tuple(names), names=names)


def read_labelmap(path):
    """Read a label map file (``.pbtxt``); see :func:`parse_labelmap`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise LabelMapError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    return parse_labelmap(text, str(path))
