"""Parsers of the AVA on-disk text files, with errors that name ``file:line`` and the row.

Files (all plain text):

* frame lists (``frame_lists/train.csv``): a header line, then space-separated rows
  ``original_vido_id video_idx frame_idx path labels``; ``frame_idx`` counts from 0 per
  video and ``path`` is relative to the frame folder.
* box CSVs (``ava_train_v2.2.csv``...): ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id``
  with boxes normalized to [0, 1]; an empty ``action_id`` means "no label".
  Predicted-box CSVs have a detection score in the last column instead of the person id.
* label map (``.pbtxt``): ``item { name: "..." id: N }`` or ``label { name: "..." label_id: N ... }`` blocks.
* excluded timestamps CSV: ``video_id,timestamp`` rows.
"""

import dataclasses
import math
import re
import sys
from typing import List, Optional, Sequence

import numpy as np

from ..errors import UserError

# Frame index 0 of every video is the frame at this second (AVA segments start at 900 s).
AVA_START_SECOND = 900
# Frames per second of the extracted frames.
AVA_FPS = 30
# Keyframe seconds that AVA annotates (both ends included).
AVA_FIRST_KEYFRAME_SECOND = 902
AVA_LAST_KEYFRAME_SECOND = 1798

FRAME_LIST_HEADER = "original_vido_id video_idx frame_idx path labels"


class DataFormatError(UserError, ValueError):
    """A dataset file whose content does not have the expected form (the message names file:line)."""


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
        with open(path, "r") as f:
            header = f.readline()
            fields = header.split()
            if header and (len(fields) != 5 or fields[2].lstrip("-").isdigit()):
                raise row_error(path, 1, f"expected the header line '{FRAME_LIST_HEADER}' "
                                "(the first line is skipped as a header)", header)
            for line_no, line in enumerate(f, 2):
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
    try:
        second = int(row[1])
    except ValueError:
        raise ValueError(f"timestamp {row[1]!r} is not an integer number of seconds") from None
    try:
        box = [float(v) for v in row[2:6]]
    except ValueError:
        raise ValueError("box coordinates x1,y1,x2,y2 must be numbers") from None
    if not all(math.isfinite(v) for v in box):
        raise ValueError("box coordinates must be finite")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError("inverted box: expected x1 <= x2 and y1 <= y2")
    action = row[6].strip()
    try:
        action = -1 if action == "" else int(action)
    except ValueError:
        raise ValueError(f"action_id {row[6]!r} is not an integer (empty means no label)") from None
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
    with open(path, "r") as f:
        for line_no, line in enumerate(f, 1):
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


_LABEL_NAME = re.compile(r'^\s*name\s*:\s*"(.*)"\s*$')
_LABEL_ID = re.compile(r"^\s*(?:label_)?id\s*:\s*(\S+)\s*$")


def read_label_map(path):
    """Read a label-map ``.pbtxt`` into ``{action_id: name}`` (ids in file order).

    Accepts the AVA forms ``item { name: "x" id: 1 }`` and
    ``label { name: "x" label_id: 1 label_type: ... }``.

    Raises:
        DataFormatError naming file:line for a non-integer or repeated id, or an id
        without a name in its block.
    """
    labels = {}
    name = None
    with open(path, "r") as f:
        for line_no, line in enumerate(f, 1):
            stripped = line.strip()
            if stripped.endswith("{"):
                name = None
                continue
            match = _LABEL_NAME.match(line)
            if match:
                name = match.group(1)
                continue
            match = _LABEL_ID.match(line)
            if match:
                try:
                    label_id = int(match.group(1))
                except ValueError:
                    raise row_error(path, line_no, "label id must be an integer", line) from None
                if name is None:
                    raise row_error(path, line_no, "label id without a name: line 'name: \"...\"' expected "
                                    "before it in the same block", line)
                if label_id in labels:
                    raise row_error(path, line_no, f"label id {label_id} appears twice", line)
                labels[label_id] = name
    if not labels:
        raise DataFormatError(f"{path}: no labels found (expected blocks like item {{ name: \"stand\" id: 12 }})")
    return labels


def read_exclusions(path):
    """Read an excluded-timestamps CSV into a set of ``(video_id, second)``.

    Raises:
        DataFormatError naming file:line for a row without two fields or with a
        non-integer timestamp.
    """
    excluded = set()
    with open(path, "r") as f:
        for line_no, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            row = text.split(",")
            if len(row) < 2:
                raise row_error(path, line_no, "expected video_id,timestamp", line)
            try:
                excluded.add((row[0], int(row[1])))
            except ValueError:
                raise row_error(path, line_no, f"timestamp {row[1]!r} is not an integer", line) from None
    return excluded


def write_label_map(f, names: Sequence[str]):
    """Write ``names`` (ids 1, 2, ...) to the text stream ``f`` in the ``item { name id }`` form."""
    for label_id, name in enumerate(names, 1):
        f.write(f'item {{\n  name: "{name}"\n  id: {label_id}\n}}\n')
