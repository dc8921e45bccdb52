"""AVA label maps (``.pbtxt``): which action ids are evaluated and their names.

Both forms in circulation are read, in any line layout::

    item { name: "bend/bow (at the waist)" id: 1 }                       # v2.1 (ActivityNet 2018)
    label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }   # v2.2

Other fields (``label_type``, ``display_name``) are accepted and ignored; ``#``
starts a comment. Anything else is an error naming the file and line.
"""

import dataclasses
import re

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


class LabelMapError(ValueError):
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


def parse_labelmap(text, path="<labelmap>"):
    """Parse the text of a label map (see the module docstring for the accepted forms).

    Args:
        text: the file's contents.
        path: the name used in error messages.

    Returns:
        LabelMap.

    Raises:
        LabelMapError: malformed text, a block without name or id, a duplicate or
            non-positive id, or no block at all.
    """
    tokens = list(_tokens(text, path))
    ids, names, id_lines = [], {}, {}
    i = 0

    def expect(kind, value=None):
        nonlocal i
        if i >= len(tokens):
            last = tokens[-1][2] if tokens else 1
            raise LabelMapError(f"{path}:{last}: unexpected end of file, expected {value or kind}")
        tok_kind, tok_value, tok_line = tokens[i]
        if tok_kind != kind or (value is not None and tok_value != value):
            raise LabelMapError(f"{path}:{tok_line}: expected {value or kind!s}, found {tok_value!r}")
        i += 1
        return tok_value, tok_line

    while i < len(tokens):
        block, block_line = expect("word")
        if block not in _BLOCK_NAMES:
            raise LabelMapError(f"{path}:{block_line}: expected 'item {{' or 'label {{', found {block!r}")
        expect("punct", "{")
        name = class_id = None
        while True:
            if i < len(tokens) and tokens[i][1] == "}":
                i += 1
                break
            field, field_line = expect("word")
            expect("punct", ":")
            if i >= len(tokens):
                expect("word")
            kind, value, value_line = tokens[i]
            i += 1
            if field == "name":
                if kind != "string":
                    raise LabelMapError(f"{path}:{value_line}: name must be a quoted string, found {value!r}")
                name = _unquote(value, path, value_line)
            elif field in _ID_FIELDS:
                if kind != "word" or not re.fullmatch(r"[+-]?\d+", value):
                    raise LabelMapError(f"{path}:{value_line}: {field} must be an integer, found {value!r}")
                class_id = int(value)
                id_line = value_line
            elif field in _IGNORED_FIELDS:
                if kind not in ("word", "string"):
                    raise LabelMapError(f"{path}:{value_line}: {field} needs a value, found {value!r}")
            else:
                raise LabelMapError(
                    f"{path}:{field_line}: unknown field {field!r} (expected name, id, label_id, label_type)"
                )
        if name is None or class_id is None:
            missing = "name" if name is None else "id (or label_id)"
            raise LabelMapError(f"{path}:{block_line}: {block} block without {missing}")
        if class_id < 1:
            raise LabelMapError(f"{path}:{id_line}: class ids must be >= 1, found {class_id}")
        if class_id in names:
            raise LabelMapError(f"{path}:{id_line}: duplicate id {class_id} (first at line {id_lines[class_id]})")
        ids.append(class_id)
        names[class_id] = name
        id_lines[class_id] = id_line
    if not ids:
        raise LabelMapError(f"{path}: no 'item {{ ... }}' or 'label {{ ... }}' block found")
    return LabelMap(ids=tuple(ids), names=names)


def read_labelmap(path):
    """Read a label map file (``.pbtxt``); see :func:`parse_labelmap`."""
    with open(path, encoding="utf-8") as f:
        return parse_labelmap(f.read(), str(path))
