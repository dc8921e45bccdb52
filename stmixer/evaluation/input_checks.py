"""Inputs the official protocol scores without complaint but that are almost surely mistakes.

The numbers stay the official ones; these checks only say what looks wrong, once per kind,
with a count and the first example as ``file:line``:

* detection or ground-truth boxes outside [0, 1] (the protocol uses them as given);
* detection boxes with ``x2 <= x1`` or ``y2 <= y1`` (the protocol drops them);
* detection rows repeating an earlier row (same video, timestamp, box and action): each
  repeat is one more false positive (every row twice halves a perfect mAP);
* detections of videos the ground truth does not have (all false positives);
* ground-truth rows of classes the label map does not list (not evaluated; never an
  error, as the label map selects the evaluated classes by design: AVA's CSVs have 80
  classes, its evaluation label map 60).

Everything is vectorized over the tables: a few passes over ``N`` rows, and a sort only
when rows are not in the order the official writer produces.
"""

import dataclasses

import numpy as np

from .ava_csv import line_of_data_row


@dataclasses.dataclass
class InputProblem:
    """One kind of suspicious input.

    Attributes:
        kind: short name ("box outside [0, 1]", "duplicate row", ...).
        count: rows concerned.
        message: one line: the count, what it means and the first example as ``file:line``.
        strict: whether strict evaluation refuses it (False for ground-truth classes
            outside the label map: the label map selects the evaluated classes by design,
            e.g. 60 of the 80 in AVA's CSVs).
    """

    kind: str
    count: int
    message: str
    strict: bool = True


def row_location(table, row):
    """``file:line`` of ``row`` of an AVATable.

    Tables read from a file give the file's line; tables built in memory are taken to be
    one row per line in order (what the evaluator writes).
    """
    data_row = table.data_row_of(row)
    if data_row is None:
        return f"{table.source}:{row + 1}"
    return f"{table.source}:{line_of_data_row(table.source, data_row)}"


def _first(mask):
    return int(np.argmax(mask))


def _boxes_outside(table, what):
    box_bad = ((table.boxes < 0) | (table.boxes > 1)).any(axis=1)
    if not box_bad.any():
        return None
    rows = box_bad[table.box_index]
    return InputProblem(
        "box outside [0, 1]", int(rows.sum()),
        f"{int(rows.sum())} {what} rows have a box outside [0, 1] (first: {row_location(table, _first(rows))}); "
        "boxes are normalized x1,y1,x2,y2: they are scored as given",
    )


def _inverted_boxes(det):
    box_bad = (det.boxes[:, 2] <= det.boxes[:, 0]) | (det.boxes[:, 3] <= det.boxes[:, 1])
    if not box_bad.any():
        return None
    rows = box_bad[det.box_index]
    return InputProblem(
        "inverted box", int(rows.sum()),
        f"{int(rows.sum())} detection rows have an inverted or empty box, x2 <= x1 or y2 <= y1 "
        f"(first: {row_location(det, _first(rows))}); the stmixer and activitynet protocols drop them, "
        f"mmaction2's refuses an inverted box and scores an empty one as a false positive",
    )


def duplicate_rows(table):
    """bool ``[N]``: rows equal to an earlier row in video, timestamp, box and action.

    Linear when every box appears once with its rows together in increasing action
    order (the official writer's order); otherwise one sort of the rows.
    """
    n = len(table)
    if n < 2:
        return np.zeros(n, dtype=bool)
    keys = np.empty((len(table.boxes), 6), dtype=np.float64)
    keys[:, 0], keys[:, 1], keys[:, 2:] = table.box_video, table.box_timestamp, table.boxes
    order = np.lexsort(keys.T[::-1])
    new_box = np.ones(len(keys), dtype=bool)
    new_box[1:] = (keys[order[1:]] != keys[order[:-1]]).any(axis=1)
    box, action = table.box_index, table.action
    if new_box.all() and ((box[1:] != box[:-1]) | (action[1:] > action[:-1])).all():
        return np.zeros(n, dtype=bool)
    canonical = np.empty(len(keys), dtype=np.int64)
    canonical[order] = np.cumsum(new_box) - 1  # equal boxes share an id
    low = int(action.min())
    key = canonical[box] * (int(action.max()) - low + 1) + (action.astype(np.int64) - low)
    _, first = np.unique(key, return_index=True)
    repeated = np.ones(n, dtype=bool)
    repeated[first] = False
    return repeated


def _duplicates(det):
    rows = duplicate_rows(det)
    if not rows.any():
        return None
    return InputProblem(
        "duplicate row", int(rows.sum()),
        f"{int(rows.sum())} detection rows repeat an earlier row (same video, timestamp, box and action; "
        f"first: {row_location(det, _first(rows))}); each repeat is scored as one more false positive",
    )


def _unknown_videos(gt, det):
    unknown = ~np.isin(np.array(det.videos, dtype=object), np.array(gt.videos, dtype=object))
    if not unknown.any():
        return None
    rows = unknown[det.box_video[det.box_index]]
    if not rows.any():
        return None
    videos = np.unique(det.box_video[det.box_index][rows]).size
    first = _first(rows)
    return InputProblem(
        "video not in the ground truth", int(rows.sum()),
        f"{int(rows.sum())} detection rows ({videos} of {len(det.videos)} videos) are of a video the ground truth "
        f"{gt.source} does not have (first: {row_location(det, first)}, video {det.row_keyframe(first)[0]!r}); "
        "they are all false positives",
    )


def _classes_not_in_labelmap(gt, labelmap, labelmap_source):
    outside = ~np.isin(gt.action, np.array(labelmap.ids, dtype=np.int64))
    if not outside.any():
        return None
    ids = np.unique(gt.action[outside]).tolist()
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return InputProblem(
        "class not in the label map", int(outside.sum()),
        f"{int(outside.sum())} ground-truth rows of {len(ids)} classes absent from the label map {labelmap_source} "
        f"(ids {shown}; first: {row_location(gt, _first(outside))}) are not evaluated",
        strict=False,
    )


def find_input_problems(gt, det, labelmap, gt_all=None, labelmap_source="label map"):
    """The suspicious-input summary of an evaluation (see the module docstring).

    Args:
        gt: AVATable of the evaluated ground truth (label-map classes).
        det: AVATable of the detections.
        labelmap: LabelMap.
        gt_all: AVATable of every ground-truth row (before the label-map filter), or None
            to skip the label-map check.
        labelmap_source: the label map's file name, for the message.

    Returns:
        list of InputProblem, at most one per kind.
    """
    found = [
        _boxes_outside(det, "detection"),
        _inverted_boxes(det),
        _duplicates(det),
        _unknown_videos(gt, det),
        _boxes_outside(gt, "ground-truth"),
        None if gt_all is None else _classes_not_in_labelmap(gt_all, labelmap, labelmap_source),
    ]
    return [p for p in found if p is not None]
