"""The AVA on-disk text files: one parser per file kind, shared by data, checker, evaluator and demo.

Files (all UTF-8 text; a non-UTF-8 byte is reported as ``file:line``):

* frame lists (``frame_lists/train.csv``): a header line, then space-separated rows
  ``original_vido_id video_idx frame_idx path labels``; ``frame_idx`` counts from 0 per
  video and ``path`` is relative to the frame folder.
* box CSVs (``ava_train_v2.2.csv``...): ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``
  with boxes normalized to [0, 1]; an empty ``action_id`` means "no label".
  Predicted-box and detection CSVs have a detection score in the last column instead of the
  person id. (The evaluator's fast columnar reader, ``stmixer.evaluation.ava_csv``, applies the
  same per-field rules: :func:`parse_timestamp`, :func:`parse_action_id`.)
* label map (``.pbtxt``): ``item { name: "..." id: N }`` or ``label { name: "..." label_id: N ... }``
  blocks, in any line layout (a one-line label map is valid text format).
* excluded timestamps CSV: ``video_id,timestamp`` rows.

One rule per field, everywhere: a timestamp is a whole number of seconds (``0902``, ``902``
and ``902.0`` are the same keyframe; ``0902.5`` is an error naming ``file:line``: it is no
AVA keyframe, and truncating it, as the official STMixer reader does, would silently give it
to another frame).

This module imports neither torch nor anything of stmixer that does.
"""

import csv
import dataclasses
import math
import re
import sys
from typing import List, Optional, Sequence

import numpy as np

from .errors import UserEncodingError, UserError

# Frame index 0 of every video is the frame at this second (AVA segments start at 900 s).
AVA_START_SECOND = 900
# Frames per second of the extracted frames.
AVA_FPS = 30
# Keyframe seconds that AVA annotates (both ends included).
AVA_FIRST_KEYFRAME_SECOND = 902
AVA_LAST_KEYFRAME_SECOND = 1798

FRAME_LIST_HEADER = "original_vido_id video_idx frame_idx path labels"

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class DataFormatError(UserError, ValueError):
    """A dataset file whose content does not have the expected form (the message names file:line)."""


class AVAFormatError(DataFormatError):
    """A malformed AVA CSV file (boxes, detections, exclusions); the message names the file and line."""


class LabelMapError(DataFormatError):
    """A label map file that cannot be read; the message names the file and line."""


class LineEncodingError(UserEncodingError, DataFormatError):
    """A byte that is not UTF-8 in an AVA file (the message of ``UserEncodingError``: file, line, byte, offset).

    Also a DataFormatError, so that the dataset checker reports it like any malformed row.
    """

    def __init__(self, path, line, offset, byte):  # pylint: disable=super-init-not-called
        self.path, self.line = str(path), line
        UserError.__init__(
            self,
            f"{self.path}:{line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); save the file as UTF-8",
        )


def iter_lines(path):
    """Yield ``(line_number, text)`` of every line of a UTF-8 file (1-based; the text keeps its newline).

    Reads line by line (frame lists of AVA train are hundreds of MB). A UTF-8 byte-order
    mark at the start is dropped.

    Raises:
        LineEncodingError naming file:line for a byte that is not UTF-8; FileNotFoundError.
    """
    offset = 0
    with open(path, "rb") as f:
        for line_no, data in enumerate(f, 1):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LineEncodingError(path, line_no, offset + e.start, data[e.start]) from None
            if line_no == 1 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(data)
            yield line_no, text


def check_utf8(path):
    """Raise ``LineEncodingError`` (file:line) if ``path`` holds a byte that is not UTF-8."""
    for _ in iter_lines(path):
        pass


def parse_timestamp(field):
    """A timestamp field as an int (seconds): a decimal number with a whole value.

    ``0902``, ``902``, ``902.0`` and ``9.02e2`` are 902 (what the official STMixer reader's
    ``int(float(t))`` gives); ``902.5`` raises ``ValueError`` (the official reader would
    truncate it into another frame's keyframe), as do ``nan`` and non-numbers.
    """
    value = _whole_number(field)
    if value is None:
        raise ValueError(f"timestamp {field!r} is not an integer number of seconds")
    return value


def parse_action_id(field, allow_empty=False):
    """An action-id field as an int: a decimal number with a whole value (``12``, ``12.0``).

    Empty gives -1 when ``allow_empty``; anything else raises ``ValueError``.
    """
    if allow_empty and field.strip() == "":
        return -1
    value = _whole_number(field)
    if value is None:
        raise ValueError(f"action_id {field!r} is not an integer" + (" (empty means no label)" if allow_empty else ""))
    return value


def _whole_number(field):
    """The int value of a decimal number with a whole value (``902``, ``0902``, ``902.0``, ``9.02e2``), else None.

    The rule the evaluator's fast reader applies too (pandas parses such fields as numbers).
    """
    text = field.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    return int(value) if value.is_integer() else None



def row_error(path, line_no, expected, row_text):
    """A DataFormatError for one row: ``<path>:<line>: <expected>; row: '<row>'``."""
    return DataFormatError(f"{path}:{line_no}: {expected}; row: {row_text.rstrip()!r}")


def ava_frame_name(video, frame_index):
    """Relative path of a frame in the AVA naming: ``<video>/<video>_%06d.jpg``, numbered from 1.

    Args:
        video: video id.
        frame_index: 0-based frame index (index 0 is file ``..._000001.jpg``).
    """
    return f"{video}/{video}_{frame_index + 1:06d}.jpg"


def second_to_frame_index(second):
    """0-based frame index of an AVA timestamp (seconds): ``(second - 900) * 30``."""
    return (second - AVA_START_SECOND) * AVA_FPS


# A Kinetics clip of AVA-Kinetics, named as mmaction2's tools/data/ava_kinetics cut it:
# ``<youtube id>_<start second:06d>_<end second:06d>`` (an AVA video id is 11 characters).
_KINETICS_CLIP = re.compile(r"^(.+)_([0-9]+)_([0-9]+)$")


def kinetics_clip_span(video):
    """(start, end) seconds of the original YouTube video that the Kinetics clip ``video`` covers,
    or None when ``video`` is not a Kinetics clip name (an AVA video: 11 characters, as mmaction2 tells them apart).
    """
    if len(video) == 11:
        return None
    match = _KINETICS_CLIP.match(video)
    if match is None:
        return None
    return int(match.group(2)), int(match.group(3))


@dataclasses.dataclass(frozen=True)
class KeyframeSpan:
    """Where a video's timeline starts and which keyframe seconds it may have (both ends included)."""

    start: int  # second of frame index 0
    first: int
    last: int
    fps: int = AVA_FPS

    def frame_index(self, second):
        """0-based frame index of keyframe ``second``."""
        return (second - self.start) * self.fps


AVA_SPAN = KeyframeSpan(AVA_START_SECOND, AVA_FIRST_KEYFRAME_SECOND, AVA_LAST_KEYFRAME_SECOND)


def ava_span(video):  # pylint: disable=unused-argument
    """Every AVA video: frame 0 = second 900, keyframes 902..1798."""
    return AVA_SPAN


def ava_kinetics_span(video):
    """AVA-Kinetics: an AVA video as ``ava_span``; a Kinetics clip ``<id>_<start>_<end>`` (30 fps
    frames extracted from the cut clip, so frame index 0 = second ``start``) may have keyframes
    at seconds ``start..end`` of the original video (the annotated one lies inside)."""
    span = kinetics_clip_span(video)
    if span is None:
        return AVA_SPAN
    return KeyframeSpan(span[0], span[0], span[1])


@dataclasses.dataclass
class VideoFrames:
    """The frames of one video as listed by the frame lists.

    ``paths`` is None when every frame follows the AVA naming (``ava_frame_name``), which
    keeps 27,030-frame videos from costing a Python string per frame; otherwise it holds
    one path (relative to the frame folder) per frame.
    """

    name: str
    num_frames: int = 0
    paths: Optional[List[str]] = None

    def path(self, index):
        """Relative path of the frame with 0-based ``index``."""
        if self.paths is None:
            return ava_frame_name(self.name, index)
        return self.paths[index]


def read_frame_lists(paths):
    """Read frame-list files into one VideoFrames per video, in order of first appearance.

    Rows of one video may span several files but must list its frames in order: the
    ``frame_idx`` of each row equals the number of that video's rows before it.

    Args:
        paths: frame-list file paths.

    Returns:
        list of VideoFrames.

    Raises:
        DataFormatError naming file:line for a row that is not 5 fields, a non-integer or
        out-of-order frame index; FileNotFoundError for a missing file.
    """
    videos = {}
    for path in paths:
        for line_no, line in iter_lines(path):
            if line_no == 1:
                fields = line.split()
                if len(fields) != 5 or fields[2].lstrip("-").isdigit():
                    raise row_error(path, 1, f"expected the header line '{FRAME_LIST_HEADER}' "
                                    "(the first line is skipped as a header)", line)
                continue
            row = line.split()
            if not row:
                continue
            if len(row) != 5:
                raise row_error(path, line_no, "expected 5 space-separated fields "
                                "(original_vido_id video_idx frame_idx path labels)", line)
            name, _, frame_idx, rel_path, _ = row
            try:
                frame_idx = int(frame_idx)
            except ValueError:
                raise row_error(path, line_no, f"frame_idx {frame_idx!r} is not an integer", line) from None
            video = videos.get(name)
            if video is None:
                video = videos[name] = VideoFrames(name)
            if frame_idx != video.num_frames:
                raise row_error(path, line_no, f"frames of video {name} must be listed in order: "
                                f"expected frame_idx {video.num_frames}, got {frame_idx}", line)
            if video.paths is None and rel_path != ava_frame_name(name, frame_idx):
                video.paths = [ava_frame_name(name, i) for i in range(frame_idx)]
            if video.paths is not None:
                video.paths.append(rel_path)
            video.num_frames += 1
    return list(videos.values())


@dataclasses.dataclass
class BoxRows:
    """Rows of box CSVs as parallel arrays (one entry per row, i.e. per box and action).

    Attributes:
        videos: video id per row.
        seconds: int64 [N] timestamps.
        boxes: float32 [N, 4] normalized x1, y1, x2, y2.
        box_keys: the four coordinate fields as written, joined by "," (rows of one person
            at one keyframe share it; the official code merges labels by this text).
        actions: int64 [N] action ids; -1 where the field is empty.
        scores: float32 [N] detection scores (predicted-box files), NaN for ground truth.
        path: the file read.
        line_numbers: int64 [N] 1-based line of every row in ``path``.
    """

    videos: List[str]
    seconds: np.ndarray
    boxes: np.ndarray
    box_keys: List[str]
    actions: np.ndarray
    scores: np.ndarray
    path: str
    line_numbers: np.ndarray

    def __len__(self):
        return len(self.videos)

    def source(self, i):
        """``file:line`` of row ``i``, for error messages."""
        return f"{self.path}:{self.line_numbers[i]}"


def box_csv_columns(has_score):
    """Column names of a box CSV (ground truth, or predicted boxes with a score)."""
    return "video_id,timestamp,x1,y1,x2,y2,action_id," + ("score" if has_score else "person_id")


def parse_box_row(text, has_score=False):
    """Parse one box-CSV line.

    Returns:
        (video_id, second, [x1, y1, x2, y2], box_key, action_id or -1, score or NaN).

    Raises:
        ValueError saying what was expected: fewer than 7 fields (8 with ``has_score``), a
        non-integer timestamp or action id, non-numeric or non-finite coordinates, an
        inverted box (x2 < x1 or y2 < y1), a non-numeric score. Boxes outside [0, 1] pass
        (they are clipped to the frame; the data checker reports them).
    """
    row = text.strip().split(",")
    needed = 8 if has_score else 7
    if len(row) < needed:
        raise ValueError(f"expected {needed} comma-separated fields ({box_csv_columns(has_score)})")
    second = parse_timestamp(row[1])
    try:
        box = [float(v) for v in row[2:6]]
    except ValueError:
        raise ValueError("box coordinates x1,y1,x2,y2 must be numbers") from None
    if not all(math.isfinite(v) for v in box):
        raise ValueError("box coordinates must be finite")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError("inverted box: expected x1 <= x2 and y1 <= y2")
    action = parse_action_id(row[6], allow_empty=True)
    score = float("nan")
    if has_score:
        try:
            score = float(row[7])
        except ValueError:
            raise ValueError(f"score {row[7]!r} is not a number") from None
    return row[0], second, box, ",".join(row[2:6]), action, score


def read_box_csv(path, has_score=False, min_score=None):
    """Read one box CSV (no header; see ``parse_box_row``).

    Args:
        path: the CSV file.
        has_score: the 8th column is a detection score (predicted-box files).
        min_score: with ``has_score``, rows whose score is below it are left out.

    Returns:
        BoxRows.

    Raises:
        DataFormatError naming file:line and the row for a row ``parse_box_row`` rejects.
    """
    videos, seconds, boxes, keys, actions, scores, line_numbers = [], [], [], [], [], [], []
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            video, second, box, key, action, score = parse_box_row(line, has_score)
        except ValueError as e:
            raise row_error(path, line_no, str(e), line) from None
        if has_score and min_score is not None and score < min_score:
            continue
        videos.append(sys.intern(video))
        seconds.append(second)
        boxes.append(box)
        keys.append(key)
        actions.append(action)
        scores.append(score)
        line_numbers.append(line_no)
    return BoxRows(
        videos=videos,
        seconds=np.asarray(seconds, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        box_keys=keys,
        actions=np.asarray(actions, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32),
        path=str(path),
        line_numbers=np.asarray(line_numbers, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# Label maps. Both forms in circulation are read, in any line layout::
#
#     item { name: "bend/bow (at the waist)" id: 1 }                       # v2.1 (ActivityNet 2018)
#     label { name: "bend/bow (at the waist)" label_id: 1 label_type: PERSON_MOVEMENT }   # v2.2
#
# Other fields (label_type, display_name) are accepted and ignored; '#' starts a comment.
# Anything else is an error naming the file and line.
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
    """Read a label map file (``.pbtxt``) into a LabelMap; see :func:`parse_labelmap`."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LineEncodingError(path, data[: e.start].count(b"\n") + 1, e.start, data[e.start]) from None
    return parse_labelmap(text[1:] if text.startswith("\ufeff") else text, str(path))


def read_label_map(path):
    """Read a label map file into ``{action_id: name}`` (ids in file order); see :func:`parse_labelmap`."""
    return dict(read_labelmap(path).names)


def read_exclusions(path):
    """Read an excluded-timestamps CSV (``video_id,timestamp`` rows) into a set of ``(video_id, second)``.

    Args:
        path: the CSV file, or None (no exclusions).

    Raises:
        AVAFormatError naming file:line and the row for a row that is not two fields or whose
        timestamp is not an integer (see :func:`parse_timestamp`).
    """
    excluded = set()
    if path is None:
        return excluded
    path = str(path)
    lines = iter_lines(path)
    reader = csv.reader(text for _, text in lines)
    for row in reader:
        if not row or not any(field.strip() for field in row):
            continue
        text = ",".join(row)
        if len(row) != 2:
            raise AVAFormatError(f"{path}:{reader.line_num}: expected 2 fields (video_id,timestamp), "
                                 f"found {len(row)}; row: {text!r}")
        try:
            excluded.add((row[0], parse_timestamp(row[1])))
        except ValueError as e:
            raise AVAFormatError(f"{path}:{reader.line_num}: {e}; row: {text!r}") from None
    return excluded

def write_label_map(f, names: Sequence[str]):
    """Write ``names`` (ids 1, 2, ...) to the text stream ``f`` in the ``item { name id }`` form."""
    for label_id, name in enumerate(names, 1):
        f.write(f'item {{\n  name: "{name}"\n  id: {label_id}\n}}\n')
