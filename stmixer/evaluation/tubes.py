"""Frame-mAP and video-mAP for UCF101-24 / JHMDB-21, with the numbers of the ACT evaluation.

    python -m stmixer.evaluation.tubes --groundtruth GT.pkl --detections DET.csv --json OUT.json \\
        [--split test] [--fold 1]

The reference is the ACT evaluation as MOC-Detector ships it (``src/ACT.py``,
``src/ACT_utils/``, MCG-NJU/MOC-Detector @ 45c3fd0), run on per-frame
detections, i.e. on tubelets of length K = 1. Every rule below is the
reference's, reproduced to the last bit (float32 where it computes in float32):

* Detections are float32 ``x1, y1, x2, y2, score`` in pixels. In each frame and
  class they go through the reference's soft-NMS: in descending score order
  (``argsort(scores)[::-1]``), a box whose IoU with a kept box exceeds 0.6 has
  its score multiplied by ``1 - IoU`` (and is not a suppressor itself).
* Boxes are inclusive (areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``).
* frame-mAP@0.5: per class, all (soft-NMS re-scored) detections of the split's
  videos ranked by ``argsort(-score)``; a detection is a true positive when the
  not-yet-matched ground-truth box of its frame with the highest IoU has IoU >= 0.5.
* Linking (per video and class, frame by frame): keep the 10 best boxes of the
  frame after soft-NMS; sort the current tubes by mean box score; each in turn
  takes the highest-scored remaining box with IoU >= 0.5 to its last box; a tube
  that takes none ends (K = 1: no gap is bridged); the boxes left start new tubes.
  Tubes shorter than 15 frames or with mean score < 0.005 are dropped; the tube
  score is the mean box score. Per video and class, tubes go through NMS at
  spatio-temporal IoU 0.3.
* Spatio-temporal IoU: mean per-frame IoU over the temporal intersection times
  temporal IoU (intersection / union of the frame ranges).
* video-mAP@t: per class, tubes ranked by score; a tube is a true positive when
  the not-yet-matched ground-truth tube of its video with the highest IoU has
  IoU >= t. ``0.5:0.95`` is the mean over t = 0.5, 0.55, ..., 0.95.
* AP is the reference's trapezoid over float32 (precision, recall) points
  starting at (1, 0); the mAP is the mean over *all* classes of the label list
  (a class without ground truth counts 0; the reference stops with a division
  by zero when such a class has detections, here it counts 0 too).

Tied scores are ranked exactly as the reference ranks them (the same numpy
argsort on the same float32 arrays).
"""

import argparse
import dataclasses
import json
import math
import sys

import numpy as np
import pandas as pd

from ..errors import UserError, exit_on_user_error

FRAME_IOU = 0.5
SOFT_NMS_OVERLAP = 0.6
LINK_TOP_K = 10
LINK_IOU = 0.5
MIN_TUBE_LENGTH = 15
MIN_TUBE_SCORE = 0.005
TUBE_NMS_OVERLAP = 0.3
#: The reported video-mAP thresholds: name -> the IoU thresholds averaged (as the reference computes them).
VIDEO_THRESHOLDS = {
    "0.2": (0.2,),
    "0.5": (0.5,),
    "0.75": (0.75,),
    "0.5:0.95": tuple(0.5 + 0.05 * i for i in range(10)),
}
_F32 = np.float32
_PANDAS_OLD_FLOATS = tuple(int(p) for p in pd.__version__.split(".")[:2]) < (3, 1)


class TubeFormatError(UserError, ValueError):
    """A malformed ground-truth pickle or detection CSV; the message names the file and key or line."""


# ----------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class GroundTruth:
    """One split of a UCF101-24 / JHMDB-21 ground-truth pickle.

    Attributes:
        labels: class names; class ``i`` of ``gttubes`` is ``labels[i]``.
        videos: the split's videos, in the pickle's order.
        nframes: ``{video: number of frames}``.
        tubes: ``{video: {class: [array (n, 5): frame, x1, y1, x2, y2]}}`` for the split's videos
            (float32 arrays stay float32, anything else is float64, as the reference's arithmetic).
        source: the file name, for messages.
        known_videos: every video of the pickle (detections of other splits' videos are ignored,
            those of unknown videos are an error).
    """

    labels: list
    videos: list
    nframes: dict
    tubes: dict
    source: str = "<ground truth>"
    known_videos: frozenset = frozenset()


@dataclasses.dataclass
class Detections:
    """Per-frame detections: one row per box and class.

    Attributes:
        video: ``[N]`` video names; frame: int64 ``[N]`` 1-based frame numbers;
        boxes: ``[N, 4]`` x1, y1, x2, y2 in pixels; label: int64 ``[N]`` class index;
        score: ``[N]`` scores; line: int64 ``[N]`` line numbers in ``source`` (or None).
    """

    video: np.ndarray
    frame: np.ndarray
    boxes: np.ndarray
    label: np.ndarray
    score: np.ndarray
    line: np.ndarray = None
    source: str = "<detections>"

    @classmethod
    def from_arrays(cls, video, frame, boxes, label, score, source="<detections>"):
        """Detections from in-memory arrays (e.g. collected by test_net)."""
        video = np.asarray(video, dtype=object)
        n = len(video)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
        out = cls(video, np.asarray(frame).astype(np.int64).reshape(n), boxes,
                  np.asarray(label).astype(np.int64).reshape(n), np.asarray(score, dtype=np.float64).reshape(n),
                  None, source)
        bad = ~(np.isfinite(out.boxes).all(axis=1) & np.isfinite(out.score))
        if bad.any():
            raise TubeFormatError(f"{source}: row {int(np.argmax(bad))}: box or score is not a finite number")
        return out

    def where(self, i):
        """``file:line`` (or ``file: row i``) of row ``i`` for messages."""
        if self.line is not None:
            return f"{self.source}:{int(self.line[i])}"
        return f"{self.source}: row {int(i)}"


def _unpickle(path):
    from ..checkpoint.safe_unpickle import load_plain_pickle  # restricted: plain data and numpy arrays only

    try:
        with open(path, "rb") as f:
            return load_plain_pickle(f)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception as e:  # any unpickling failure is a bad file
        raise TubeFormatError(f"{path}: not a readable ground-truth pickle ({type(e).__name__}: {e})") from None


def _split_videos(data, path, split, fold):
    key = f"{split}_videos"
    if key not in data:
        raise TubeFormatError(f"{path}: key '{key}' missing (expected lists of video names per split)")
    lists = data[key]
    if isinstance(lists, (list, tuple)) and lists and all(isinstance(v, str) for v in lists):
        lists = [lists]  # one split given as a flat list
    if not isinstance(lists, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in lists):
        raise TubeFormatError(f"{path}: '{key}' must be a list of lists of video names")
    if not 1 <= fold <= len(lists) or not lists[fold - 1]:
        if 1 <= fold <= len(lists):
            raise TubeFormatError(f"{path}: '{key}'[{fold - 1}] has no videos")
        raise TubeFormatError(f"{path}: '{key}' has {len(lists)} split(s), no split {fold}")
    videos = list(lists[fold - 1])
    for v in videos:
        if not isinstance(v, str):
            raise TubeFormatError(f"{path}: '{key}'[{fold - 1}] holds {v!r}, expected video names")
    if len(set(videos)) != len(videos):
        raise TubeFormatError(f"{path}: '{key}'[{fold - 1}] names a video twice")
    return videos


def groundtruth_from_dict(data, source="<ground truth>", split="test", fold=1):
    """Validate a ground-truth dict (the pickle's content) and keep one split of it."""
    if not isinstance(data, dict):
        raise TubeFormatError(f"{source}: expected a dict with labels, gttubes, nframes, {split}_videos")
    for key in ("labels", "gttubes", "nframes"):
        if key not in data:
            raise TubeFormatError(f"{source}: key '{key}' missing")
    labels = data["labels"]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
        raise TubeFormatError(f"{source}: 'labels' must be a non-empty list of class names")
    videos = _split_videos(data, source, split, fold)
    nframes_all, gttubes = data["nframes"], data["gttubes"]
    if not isinstance(nframes_all, dict) or not isinstance(gttubes, dict):
        raise TubeFormatError(f"{source}: 'nframes' and 'gttubes' must be dicts keyed by video")
    nframes, tubes = {}, {}
    for v in videos:
        n = nframes_all.get(v)
        if n is None:
            raise TubeFormatError(f"{source}: 'nframes' has no entry for video '{v}'")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise TubeFormatError(f"{source}: 'nframes'['{v}'] = {n!r}, expected a positive integer")
        nframes[v] = int(n)
        if v not in gttubes:
            raise TubeFormatError(f"{source}: 'gttubes' has no entry for video '{v}'")
        by_label = gttubes[v]
        if not isinstance(by_label, dict):
            raise TubeFormatError(f"{source}: 'gttubes'['{v}'] must be a dict {{class index: [tubes]}}")
        tubes[v] = {}
        for label, tlist in by_label.items():
            where = f"{source}: 'gttubes'['{v}'][{label!r}]"
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)) \
                    or not 0 <= label < len(labels):
                raise TubeFormatError(f"{where}: class must be an index into 'labels' (0..{len(labels) - 1})")
            if not isinstance(tlist, (list, tuple)):
                raise TubeFormatError(f"{where}: expected a list of tube arrays")
            checked = []
            for i, tube in enumerate(tlist):
                checked.append(_check_tube(tube, f"{where}[{i}]", nframes[v]))
            tubes[v][int(label)] = checked
    return GroundTruth(list(labels), videos, nframes, tubes, source, frozenset(nframes_all))


def _check_tube(tube, where, nframes):
    try:
        arr = np.asarray(tube)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise TubeFormatError(f"{where}: not a numeric array") from None
    if arr.ndim != 2 or arr.shape[1] != 5 or arr.shape[0] == 0:
        raise TubeFormatError(f"{where}: expected an array of shape (n >= 1, 5) (frame, x1, y1, x2, y2), "
                              f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise TubeFormatError(f"{where}: holds a value that is not a finite number")
    frames = arr[:, 0]
    # (frames past nframes are accepted, as by the reference: they can only be missed)
    if not (frames == np.round(frames)).all() or frames[0] < 1:
        raise TubeFormatError(f"{where}: frame numbers must be integers >= 1")
    if arr.shape[0] > 1 and not (np.diff(frames) == 1).all():
        raise TubeFormatError(f"{where}: frame numbers must be consecutive and increasing (the reference's "
                              "spatio-temporal IoU needs that)")
    return arr


def read_groundtruth(path, split="test", fold=1):
    """Read and validate a UCF101-24 / JHMDB-21 ground-truth pickle; keep split ``split`` number ``fold``."""
    return groundtruth_from_dict(_unpickle(path), str(path), split, fold)


_DET_COLUMNS = ("video", "frame", "x1", "y1", "x2", "y2", "label", "score")


def read_detections(path, labels=None):
    """Read ``video,frame,x1,y1,x2,y2,label,score`` rows (an optional header line is skipped).

    ``label`` is a class index (0-based, as in ``gttubes``) or, when ``labels`` is given, a class name.
    Errors name the file and line. Well-formed files are parsed by pandas' C parser; a file it cannot
    parse cleanly is re-read row by row, which names the line at fault.
    """
    from ..errors import read_text

    text = read_text(path)
    fast = _read_detections_fast(text, path, labels)
    return fast if fast is not None else _read_detections_rows(text, path, labels)


def _line_numbers(text):
    """1-based numbers of the non-blank lines of ``text``."""
    return np.array([i for i, line in enumerate(text.split("\n"), 1) if line.strip()], dtype=np.int64)


def _read_detections_fast(text, path, labels):
    """The columns via pandas, or None when the text needs the row-by-row reader (for its messages)."""
    import io

    lines = _line_numbers(text)
    header = lines.size > 0 and lines[0] == 1 and text.lstrip("\ufeff").split(",", 1)[0].strip().lower() == "video"
    if header:
        lines = lines[1:]
    if lines.size == 0:
        return _read_detections_rows(text, path, labels)
    kwargs = {}
    if _PANDAS_OLD_FLOATS:  # pandas >= 3.1 parses floats correctly rounded by default (like float())
        kwargs["float_precision"] = "round_trip"
    try:
        df = pd.read_csv(io.StringIO(text), header=None, names=_DET_COLUMNS, skiprows=1 if header else 0,
                         dtype={"video": str, "label": str}, engine="c", skip_blank_lines=True,
                         keep_default_na=False, na_values=[""], **kwargs)
    except (ValueError, pd.errors.ParserError):
        return None
    if len(df) != lines.size or df["frame"].dtype.kind != "i" or df["video"].isna().any() \
            or df["label"].isna().any():
        return None
    nums = df[["x1", "y1", "x2", "y2", "score"]]
    if not all(k == "f" or k == "i" for k in nums.dtypes.map(lambda d: d.kind)):
        return None
    nums = nums.to_numpy(dtype=np.float64)
    if not np.isfinite(nums).all():
        return None
    names = {name: i for i, name in enumerate(labels)} if labels is not None else {}
    codes, uniques = pd.factorize(df["label"].str.strip())
    mapped = np.empty(len(uniques), dtype=np.int64)
    for k, lab in enumerate(uniques):
        if lab in names:
            mapped[k] = names[lab]
        else:
            try:
                mapped[k] = int(lab)
            except ValueError:
                i = int(np.argmax(codes == k))
                raise TubeFormatError(f"{path}:{lines[i]}: label '{lab}' is neither a class index nor a class "
                                      "name") from None
    return Detections(df["video"].to_numpy(dtype=object), df["frame"].to_numpy(dtype=np.int64), nums[:, :4],
                      mapped[codes], nums[:, 4], lines, str(path))


def _read_detections_rows(text, path, labels):
    import csv

    n_cols = len(_DET_COLUMNS)
    names = {name: i for i, name in enumerate(labels)} if labels is not None else {}
    video, frame, boxes, label, score, line = [], [], [], [], [], []
    reader = csv.reader(text.splitlines())
    for row in reader:
        lineno = reader.line_num
        if not row or not any(f.strip() for f in row):
            continue
        if not video and lineno == 1 and row[0].strip().lower() == "video":
            continue  # header
        where = f"{path}:{lineno}"
        if len(row) != n_cols:
            raise TubeFormatError(f"{where}: expected {n_cols} fields ({','.join(_DET_COLUMNS)}), got {len(row)}")
        try:
            fr = int(row[1])
        except ValueError:
            raise TubeFormatError(f"{where}: frame '{row[1]}' is not an integer") from None
        try:
            nums = [float(x) for x in row[2:6]] + [float(row[7])]
        except ValueError:
            raise TubeFormatError(f"{where}: x1,y1,x2,y2 and score must be numbers") from None
        if not all(math.isfinite(x) for x in nums):
            raise TubeFormatError(f"{where}: box or score is not a finite number")
        lab = row[6].strip()
        if lab in names:
            lab = names[lab]
        else:
            try:
                lab = int(lab)
            except ValueError:
                raise TubeFormatError(f"{where}: label '{row[6]}' is neither a class index nor a class name") from None
        video.append(row[0])
        frame.append(fr)
        boxes.append(nums[:4])
        label.append(lab)
        score.append(nums[4])
        line.append(lineno)
    n = len(video)
    return Detections(np.array(video, dtype=object), np.array(frame, dtype=np.int64),
                      np.array(boxes, dtype=np.float64).reshape(n, 4), np.array(label, dtype=np.int64),
                      np.array(score, dtype=np.float64), np.array(line, dtype=np.int64), str(path))


# ------------------------------------------------------------------------------------------- arithmetic


def _iou_overlap2d(b1, b2):
    """The reference's ``iou2d`` row by row (``overlap2d`` / ``area2d``; numpy's dtype promotion as there)."""
    xmin = np.maximum(b1[..., 0], b2[..., 0])
    ymin = np.maximum(b1[..., 1], b2[..., 1])
    xmax = np.minimum(b1[..., 2] + 1, b2[..., 2] + 1)
    ymax = np.minimum(b1[..., 3] + 1, b2[..., 3] + 1)
    ov = np.maximum(0, xmax - xmin) * np.maximum(0, ymax - ymin)
    a1 = (b1[..., 2] - b1[..., 0] + 1) * (b1[..., 3] - b1[..., 1] + 1)
    a2 = (b2[..., 2] - b2[..., 0] + 1) * (b2[..., 3] - b2[..., 1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ov / (a1 + a2 - ov)


def _iou_nms(head, others):
    """The IoU of the reference's (soft) NMS (``nms2d`` / ``nms_tubelets`` with K = 1), float32."""
    xx1 = np.maximum(head[..., 0], others[..., 0])
    yy1 = np.maximum(head[..., 1], others[..., 1])
    xx2 = np.minimum(head[..., 2], others[..., 2])
    yy2 = np.minimum(head[..., 3], others[..., 3])
    inter = np.maximum(0, xx2 - xx1 + 1) * np.maximum(0, yy2 - yy1 + 1)
    ah = (head[..., 2] - head[..., 0] + 1) * (head[..., 3] - head[..., 1] + 1)
    ao = (others[..., 2] - others[..., 0] + 1) * (others[..., 3] - others[..., 1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (ao + ah - inter)


def _pr_ap(tp_ranked, num_gt):
    """AP of detections given as true/false positives in rank order: the reference's float32
    (precision, recall) points from (1, 0) and its trapezoid (``pr_to_ap``)."""
    n = tp_ranked.size
    pr = np.empty((n + 1, 2), dtype=np.float32)
    pr[0] = (1.0, 0.0)
    if n:
        tp = np.cumsum(tp_ranked, dtype=np.int64)
        pr[1:, 0] = tp / np.arange(1, n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            pr[1:, 1] = tp / num_gt if num_gt else 0.0
    prdif = pr[1:, 1] - pr[:-1, 1]
    prsum = pr[1:, 0] + pr[:-1, 0]
    return float(np.sum(prdif * prsum * 0.5))


def _group_starts(keys):
    """Start index of each run of equal values in sorted ``keys`` (and the end)."""
    if keys.size == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.concatenate(([0], change, [keys.size])).astype(np.int64)


def _run_starts(*columns):
    """Start index of each run of equal rows of the (sorted) int columns, and the end."""
    n = columns[0].size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.zeros(n - 1, dtype=bool)
    for col in columns:
        change |= col[1:] != col[:-1]
    return np.concatenate(([0], np.flatnonzero(change) + 1, [n])).astype(np.int64)


def _descending_order(score, starts):
    """Per group ``[starts[g], starts[g+1])``: the group's rows in ``np.argsort(score_g)[::-1]`` order
    (as global indices). Groups without tied scores are sorted at once; tied groups replay argsort."""
    n_groups = starts.size - 1
    gid = np.repeat(np.arange(n_groups), np.diff(starts))
    by_score = np.argsort(-score, kind="stable")
    order = by_score[np.argsort(gid[by_score], kind="stable")]
    s = score[order]
    tie = (s[1:] == s[:-1]) & (gid[1:] == gid[:-1])
    for g in np.unique(gid[1:][tie]):
        a, b = starts[g], starts[g + 1]
        order[a:b] = a + np.argsort(score[a:b])[::-1]
    return order


def _soft_nms(boxes, score, starts):
    """The reference's per-frame, per-class soft-NMS (overlap 0.6); returns (new float32 scores, the
    ``argsort(scores)[::-1]`` order of each group)."""
    order = _descending_order(score, starts)
    weight = np.ones(score.size, dtype=np.float32)
    sizes = np.diff(starts)
    thr = _F32(SOFT_NMS_OVERLAP)
    for n in np.unique(sizes):
        if n < 2:
            continue
        groups = np.flatnonzero(sizes == n)
        rows = order[starts[groups][:, None] + np.arange(n)]  # (G, n) in descending score order
        b = boxes[rows]
        alive = np.ones(rows.shape, dtype=bool)
        w = np.ones(rows.shape, dtype=np.float32)
        for p in range(n - 1):
            iou = _iou_nms(b[:, p : p + 1], b[:, p + 1 :])
            sup = alive[:, p : p + 1] & alive[:, p + 1 :] & (iou > thr)
            w[:, p + 1 :][sup] = 1 - iou[sup]
            alive[:, p + 1 :] &= ~sup
        weight[rows] = w
    return score * weight, order


def _tube_pair_iou(a, ia, b, ib):
    """The reference's ``iou3dt(tube_a, tube_b)`` for pairs ``(a.tube[ia], b.tube[ib])``.

    ``a`` / ``b`` are ``_TubeSet``; returns (IoU as float64 values, "no temporal overlap" flags (the
    reference returns a Python 0.0 there), the dtype the IoU was computed in).
    """
    sa, ea = a.start[ia], a.start[ia] + a.length[ia] - 1
    sb, eb = b.start[ib], b.start[ib] + b.length[ib] - 1
    tmin, tmax = np.maximum(sa, sb), np.minimum(ea, eb)
    overlap = tmax >= tmin
    out = np.zeros(ia.size, dtype=np.float64)
    dtype = np.result_type(a.boxes.dtype, b.boxes.dtype)
    idx = np.flatnonzero(overlap)
    if idx.size == 0:
        return out, ~overlap, dtype
    L = (tmax - tmin + 1)[idx]
    # per-frame IoUs over the temporal intersections, pairs ordered by intersection length so that
    # equal lengths are contiguous: their means are then np.mean(axis=1) over (pairs, length) blocks
    by_len = idx[np.argsort(L, kind="stable")]
    Ls = (tmax - tmin + 1)[by_len]
    rep = np.repeat(np.arange(by_len.size), Ls)
    within = np.arange(rep.size) - np.repeat(np.cumsum(Ls) - Ls, Ls)
    ra = a.offset[ia[by_len]][rep] + (tmin[by_len] - sa[by_len])[rep] + within
    rb = b.offset[ib[by_len]][rep] + (tmin[by_len] - sb[by_len])[rep] + within
    per_frame = _iou_overlap2d(a.boxes[ra], b.boxes[rb])
    spatial = np.empty(by_len.size, dtype=per_frame.dtype)
    bounds = _group_starts(Ls)
    pos = 0
    for g in range(bounds.size - 1):
        count, length = bounds[g + 1] - bounds[g], Ls[bounds[g]]
        spatial[bounds[g] : bounds[g + 1]] = np.mean(per_frame[pos : pos + count * length].reshape(count, length),
                                                     axis=1)
        pos += count * length
    # temporal IoU: the reference divides numpy scalars taken from either tube (Python's max/min
    # return the first argument on ties); it is float32 arithmetic only when all four are float32
    inter, union = (tmax - tmin + 1)[by_len], (np.maximum(ea, eb) - np.minimum(sa, sb) + 1)[by_len]
    ratio = inter / union
    # (with float32 and float64 tubes, the intersection or the union always involves a float64 end)
    if dtype == np.float32:
        ratio = inter.astype(np.float32) / union.astype(np.float32)
    out[by_len] = (spatial * ratio.astype(dtype)).astype(np.float64)
    return out, ~overlap, dtype


@dataclasses.dataclass
class _TubeSet:
    """Tubes with consecutive frames: tube ``i`` is ``boxes[offset[i] : offset[i] + length[i]]`` over
    frames ``start[i] ..``."""

    start: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    boxes: np.ndarray


# ------------------------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class TubeResult:
    """Result of :func:`evaluate`: fractions in [0, 1].

    Attributes:
        frame_map: frame-mAP@0.5; video_map: ``{"0.2": .., "0.5": .., "0.75": .., "0.5:0.95": ..}``.
        frame_ap / video_ap: per class (label order), video_ap as ``{threshold name: AP}``.
        num_gt_tubes / num_tubes: per class, ground-truth tubes and detected tubes (after tube NMS).
        labels: class names.
    """

    frame_map: float
    video_map: dict
    frame_ap: list
    video_ap: list
    num_gt_tubes: list
    num_tubes: list
    labels: list
    tubes: dict = None

    def to_dict(self):
        """The JSON layout of the command line."""
        per_class = {}
        for c, name in enumerate(self.labels):
            per_class[name] = {"frame_AP": self.frame_ap[c], "video_AP": self.video_ap[c],
                               "gt_tubes": self.num_gt_tubes[c], "detected_tubes": self.num_tubes[c]}
        return {"frame_mAP": self.frame_map, "video_mAP": dict(self.video_map), "per_class": per_class}


def _prepare(gt, det):
    """Rows of the split's videos, sorted by (video, frame, class, row); float32 boxes and scores."""
    vindex = {v: i for i, v in enumerate(gt.videos)}
    n = det.video.size
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    codes, names = pd.factorize(det.video)
    known = np.array([vindex.get(v, -1) for v in names], dtype=np.int64)
    vid = known[codes]
    if gt.known_videos:
        unknown = np.flatnonzero([v not in gt.known_videos for v in names])
        if unknown.size:
            i = int(np.argmax(np.isin(codes, unknown)))
            raise TubeFormatError(f"{det.where(i)}: video '{det.video[i]}' is not in the ground truth {gt.source}")
    nframes = np.array([gt.nframes[v] for v in gt.videos] + [0], dtype=np.int64)
    bad_label = (det.label < 0) | (det.label >= len(gt.labels))
    if bad_label.any():
        i = int(np.argmax(bad_label))
        raise TubeFormatError(f"{det.where(i)}: class index {int(det.label[i])} is not in 0..{len(gt.labels) - 1}")
    keep = vid >= 0
    bad_frame = keep & ((det.frame < 1) | (det.frame > nframes[vid]))
    if bad_frame.any():
        i = int(np.argmax(bad_frame))
        raise TubeFormatError(f"{det.where(i)}: frame {int(det.frame[i])} is outside 1..{nframes[vid[i]]} "
                              f"(video '{det.video[i]}' has {nframes[vid[i]]} frames)")
    rows = np.flatnonzero(keep)
    n_frames = int(nframes.max()) + 1
    key = (vid[rows] * n_frames + det.frame[rows]) * len(gt.labels) + det.label[rows]
    order = rows[np.argsort(key, kind="stable")]
    return (vid[order], det.frame[order], det.label[order], det.boxes[order].astype(np.float32),
            det.score[order].astype(np.float32))


def _frame_ap(gt, vid, frame, label, boxes, score, num_classes):
    """frame-AP@0.5 per class (the reference's ``frameAP``)."""
    aps = []
    last_gt_frame = [int(t[-1, 0]) for v in gt.videos for ts in gt.tubes[v].values() for t in ts]
    fmax = max([*gt.nframes.values(), *last_gt_frame]) + 1
    for c in range(num_classes):
        m = label == c
        s = score[m]
        key = vid[m] * fmax + frame[m]
        gkeys, gboxes = [], []
        for iv, v in enumerate(gt.videos):
            for tube in gt.tubes[v].get(c, ()):
                gkeys.append(iv * fmax + tube[:, 0].astype(np.int64))
                gboxes.append(tube[:, 1:5].astype(np.float64))
        num_gt = sum(k.size for k in gkeys)
        rank = np.argsort(-s)
        tp = np.zeros(s.size, dtype=bool)
        if num_gt and s.size:
            gkeys = np.concatenate(gkeys)
            gboxes = np.concatenate(gboxes)
            gorder = np.argsort(gkeys, kind="stable")  # per frame: tubes in list order
            gkeys, gboxes = gkeys[gorder], gboxes[gorder]
            ukeys, gstart, gcount = np.unique(gkeys, return_index=True, return_counts=True)
            rkey = key[rank]
            pos = np.searchsorted(ukeys, rkey)
            pos_c = np.minimum(pos, ukeys.size - 1)
            has = ukeys[pos_c] == rkey
            cand = np.flatnonzero(has)  # ranked positions of detections on frames with ground truth
            if cand.size:
                g = pos_c[cand]
                width = int(gcount.max())
                slot = gstart[g][:, None] + np.arange(width)
                valid = np.arange(width) < gcount[g][:, None]
                slot = np.where(valid, slot, 0)
                ious = _iou_overlap2d(gboxes[slot], boxes[m][rank[cand]][:, None, :])
                ious = np.where(valid, ious, -np.inf)
                # the k-th detection (in rank order) of each frame, k = 0, 1, ...: greedy over the
                # not-yet-matched boxes of its frame, frames processed side by side
                by_key = np.argsort(g, kind="stable")
                gs = g[by_key]
                first = _group_starts(gs)
                kth = np.arange(gs.size) - np.repeat(first[:-1], np.diff(first))
                taken = np.zeros((ukeys.size, width), dtype=bool)
                for k in range(int(kth.max()) + 1):
                    sel = by_key[kth == k]
                    iou = np.where(taken[g[sel]], -1.0, ious[sel])
                    amax = np.argmax(iou, axis=1)
                    hit = iou[np.arange(sel.size), amax] >= FRAME_IOU
                    taken[g[sel][hit], amax[hit]] = True
                    tp[cand[sel[hit]]] = True
        aps.append(_pr_ap(tp, num_gt))
    return aps


def _link(vid, frame, label, boxes, score, starts, nframes_of):
    """The reference's ``BuildTubes`` with K = 1 on soft-NMS'ed detections.

    ``starts`` delimit the (video, frame, class) groups of the rows (sorted by video, class, frame,
    rank). Returns the kept tubes in the reference's order: list of (video, class, rows, score).
    """
    n_groups = starts.size - 1
    gvid, gframe, glabel = vid[starts[:-1]], frame[starts[:-1]], label[starts[:-1]]
    # validity bitmasks: bit j of mask[r] is set when box j of the next frame (same video and class)
    # has IoU >= 0.5 with box r (the reference's iou2d(ltubelets, last box), float32)
    mask = np.zeros(score.size, dtype=np.int64)
    nxt = np.flatnonzero((gvid[1:] == gvid[:-1]) & (glabel[1:] == glabel[:-1]) & (gframe[1:] == gframe[:-1] + 1))
    if nxt.size:
        na, nb = np.diff(starts)[nxt], np.diff(starts)[nxt + 1]
        pair_group = np.repeat(np.arange(nxt.size), na * nb)
        within = np.arange(pair_group.size) - np.repeat(np.cumsum(na * nb) - na * nb, na * nb)
        ra = starts[nxt][pair_group] + within // nb[pair_group]
        jb = within % nb[pair_group]
        rb = starts[nxt + 1][pair_group] + jb
        valid = _iou_overlap2d(boxes[rb], boxes[ra]) >= LINK_IOU
        np.add.at(mask, ra[valid], np.left_shift(1, jb[valid]))
    mask = mask.tolist()
    sc = score.astype(np.float64).tolist()
    starts_l, gvid_l, gframe_l, glabel_l = starts.tolist(), gvid.tolist(), gframe.tolist(), glabel.tolist()

    tube_rows, tube_sum = [], []  # per tube: its rows; float64 sum of its float32 scores
    finished = []  # (video, class, tube id) in the reference's FINISHED_TUBES order

    def sort_tubes(cur):
        if len(cur) < 2:
            return cur
        if len(cur) == 2:
            t0, t1 = cur
            m0, m1 = tube_sum[t0] / len(tube_rows[t0]), tube_sum[t1] / len(tube_rows[t1])
            if m0 - m1 > 1e-5 * abs(m0) + 1e-30:
                return cur
            if m1 - m0 > 1e-5 * abs(m1) + 1e-30:
                return [t1, t0]
        means = [tube_sum[t] / len(tube_rows[t]) for t in cur]
        order = sorted(range(len(cur)), key=lambda i: -means[i])
        ok = all(means[order[i]] - means[order[i + 1]] > 1e-5 * abs(means[order[i]]) + 1e-30
                 for i in range(len(order) - 1))
        if not ok:  # close or tied means: the reference's float32 means and argsort, exactly
            exact = np.array([np.mean(score[tube_rows[t]]) for t in cur], dtype=np.float32)
            order = np.argsort(-exact).tolist()
        return [cur[i] for i in order]

    g = 0
    while g < n_groups:
        v, c = gvid_l[g], glabel_l[g]
        cur, prev = [], None
        while g < n_groups and gvid_l[g] == v and glabel_l[g] == c:
            f, a, b = gframe_l[g], starts_l[g], starts_l[g + 1]
            if cur and f != prev + 1:  # a frame without boxes: every tube ends there
                finished.extend((v, c, t) for t in reversed(sort_tubes(cur)))
                cur = []
            rem = (1 << (b - a)) - 1
            if cur:
                new_cur, ended = [], []
                for t in sort_tubes(cur):
                    m = mask[tube_rows[t][-1]] & rem
                    if m:
                        low = m & -m
                        rem ^= low
                        r = a + low.bit_length() - 1
                        tube_rows[t].append(r)
                        tube_sum[t] += sc[r]
                        new_cur.append(t)
                    else:
                        ended.append(t)
                finished.extend((v, c, t) for t in reversed(ended))
                cur = new_cur
            for j in range(b - a):
                if rem >> j & 1:
                    cur.append(len(tube_rows))
                    tube_rows.append([a + j])
                    tube_sum.append(sc[a + j])
            prev = f
            g += 1
        if cur:
            if prev < nframes_of[v]:
                finished.extend((v, c, t) for t in reversed(sort_tubes(cur)))
            else:
                finished.extend((v, c, t) for t in cur)
    # keep tubes of >= 15 frames, then score them (float32 mean, as the reference) and keep >= 0.005
    long_ = [x for x in finished if len(tube_rows[x[2]]) >= MIN_TUBE_LENGTH]
    lengths = np.array([len(tube_rows[t]) for _, _, t in long_], dtype=np.int64)
    scores = np.zeros(len(long_), dtype=np.float32)
    for length in np.unique(lengths):
        which = np.flatnonzero(lengths == length)
        rows = np.array([tube_rows[long_[i][2]] for i in which], dtype=np.int64)
        scores[which] = np.mean(score[rows], axis=1)
    keep = scores >= _F32(MIN_TUBE_SCORE)
    return [(long_[i][0], long_[i][1], tube_rows[long_[i][2]], scores[i]) for i in np.flatnonzero(keep)]


def evaluate(gt, det, return_tubes=False):
    """frame-mAP@0.5 and video-mAP of per-frame detections, exactly as the ACT evaluation (MOC-Detector).

    Args:
        gt: :class:`GroundTruth` (one split), e.g. from :func:`read_groundtruth`.
        det: :class:`Detections` (from :func:`read_detections` or :meth:`Detections.from_arrays`);
            rows of videos of other splits are ignored.
        return_tubes: also return the linked tubes (``result.tubes``: ``{(video, class): [(array
            (n, 5) frame, x1, y1, x2, y2), score)]}``, after tube NMS).
    """
    num_classes = len(gt.labels)
    vid, frame, label, boxes, score = _prepare(gt, det)
    # soft-NMS per (video, frame, class)
    starts = _run_starts(vid, frame, label)
    new_score, order = _soft_nms(boxes, score, starts)
    frame_ap = _frame_ap(gt, vid, frame, label, boxes, new_score, num_classes)

    # linking input: per (video, class, frame) the 10 best boxes by new score, in the reference's order
    lorder = _descending_order(new_score, starts)
    rank = np.empty(vid.size, dtype=np.int64)
    rank[lorder] = np.arange(vid.size) - np.repeat(starts[:-1], np.diff(starts))
    top = np.flatnonzero(rank < LINK_TOP_K)
    fmax = int(frame.max(initial=0)) + 1
    key = ((vid[top] * num_classes + label[top]) * fmax + frame[top]) * LINK_TOP_K + rank[top]
    top = top[np.argsort(key, kind="stable")]
    lv, lf, ll, lb, ls = vid[top], frame[top], label[top], boxes[top], new_score[top]
    lstarts = _run_starts(lv, ll, lf)
    # runs of consecutive frames with boxes (same video and class) shorter than 15 frames cannot
    # give a tube of 15 frames (every tube ends at a frame without boxes): they are skipped
    gv, gl, gf = lv[lstarts[:-1]], ll[lstarts[:-1]], lf[lstarts[:-1]]
    run_start = np.ones(gv.size, dtype=bool)
    run_start[1:] = (gv[1:] != gv[:-1]) | (gl[1:] != gl[:-1]) | (gf[1:] != gf[:-1] + 1)
    run_id = np.cumsum(run_start) - 1
    run_len = np.bincount(run_id)
    long_group = run_len[run_id] >= MIN_TUBE_LENGTH
    if not long_group.all():
        sizes = np.diff(lstarts)[long_group]
        rows = np.repeat(lstarts[:-1][long_group], sizes) + (np.arange(sizes.sum())
                                                             - np.repeat(np.cumsum(sizes) - sizes, sizes))
        lv, lf, ll, lb, ls = lv[rows], lf[rows], ll[rows], lb[rows], ls[rows]
        lstarts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    nframes_of = [gt.nframes[v] for v in gt.videos]
    linked = _link(lv, lf, ll, lb, ls, lstarts, nframes_of)

    # tubes as a _TubeSet (rows are consecutive frames)
    t_vid = np.array([x[0] for x in linked], dtype=np.int64)
    t_lab = np.array([x[1] for x in linked], dtype=np.int64)
    t_len = np.array([len(x[2]) for x in linked], dtype=np.int64)
    t_rows = np.concatenate([np.asarray(x[2], dtype=np.int64) for x in linked]) if linked else np.zeros(0, np.int64)
    t_score = np.array([x[3] for x in linked], dtype=np.float32)
    t_off = np.concatenate(([0], np.cumsum(t_len)[:-1])).astype(np.int64) if linked else np.zeros(0, np.int64)
    dets = _TubeSet(lf[t_rows[t_off]].astype(np.int64) if linked else np.zeros(0, np.int64), t_len, t_off,
                    lb[t_rows])

    # tube NMS (0.3) per (video, class), in the reference's order
    kept = []  # per (video, class) in video order, class order: kept tube indices in selection order
    gstarts = _group_starts(t_vid * num_classes + t_lab) if linked else np.zeros(1, np.int64)
    pa, pb = [], []
    for g in range(gstarts.size - 1):
        a, b = gstarts[g], gstarts[g + 1]
        ii, jj = np.meshgrid(np.arange(a, b), np.arange(a, b), indexing="ij")
        pa.append(ii.ravel())
        pb.append(jj.ravel())
    if pa:
        pa, pb = np.concatenate(pa), np.concatenate(pb)
        piou, pzero, pdtype = _tube_pair_iou(dets, pa, dets, pb)
    thr32, thr64 = _F32(TUBE_NMS_OVERLAP), TUBE_NMS_OVERLAP
    pos = 0
    for g in range(gstarts.size - 1):
        a, b = gstarts[g], gstarts[g + 1]
        n = b - a
        M = piou[pos : pos + n * n].reshape(n, n)
        Z = pzero[pos : pos + n * n].reshape(n, n)
        pos += n * n
        I = np.argsort(t_score[a:b])
        sel = []
        while I.size > 0:
            i = I[-1]
            sel.append(a + i)
            rest = I[:-1]
            vals = M[rest, i]
            if Z[rest, i].any() or rest.size == 0:
                ok = vals <= thr64
            else:
                ok = vals.astype(np.float32) <= thr32
            I = rest[ok]
        kept.append(sel)
    kept = np.array([i for sel in kept for i in sel], dtype=np.int64)

    # video-AP per class and threshold
    gts = []
    for iv, v in enumerate(gt.videos):
        for c, tlist in sorted(gt.tubes[v].items()):
            for tube in tlist:
                gts.append((iv, c, tube))
    g_vid = np.array([x[0] for x in gts], dtype=np.int64)
    g_lab = np.array([x[1] for x in gts], dtype=np.int64)
    g_len = np.array([x[2].shape[0] for x in gts], dtype=np.int64)
    gdtype = np.float32 if gts and all(x[2].dtype == np.float32 for x in gts) else np.float64
    gset = _TubeSet(np.array([int(x[2][0, 0]) for x in gts], dtype=np.int64), g_len,
                    np.concatenate(([0], np.cumsum(g_len)[:-1])).astype(np.int64),
                    np.concatenate([x[2][:, 1:5] for x in gts]).astype(gdtype) if gts else np.zeros((0, 4), gdtype))
    names = list(VIDEO_THRESHOLDS)
    all_th = sorted({t for ths in VIDEO_THRESHOLDS.values() for t in ths})
    ap_at = {t: [] for t in all_th}
    num_gt_tubes, num_tubes = [], []
    k_lab = t_lab[kept]
    for c in range(num_classes):
        d = kept[k_lab == c]
        dv = t_vid[d]
        gidx = np.flatnonzero(g_lab == c)  # in (video, list) order
        num_gt_tubes.append(int(gidx.size))
        num_tubes.append(int(d.size))
        rank = np.argsort(-t_score[d])
        if gidx.size == 0 or d.size == 0:
            for t in all_th:
                ap_at[t].append(_pr_ap(np.zeros(d.size, dtype=bool), gidx.size))
            continue
        gv = g_vid[gidx]
        uv, gstart, gcount = np.unique(gv, return_index=True, return_counts=True)
        rv = dv[rank]
        p = np.minimum(np.searchsorted(uv, rv), uv.size - 1)
        cand = np.flatnonzero(uv[p] == rv)
        width = int(gcount.max())
        tp_by_th = {t: np.zeros(d.size, dtype=bool) for t in all_th}
        if cand.size:
            gg = p[cand]
            slot = gstart[gg][:, None] + np.arange(width)
            valid = np.arange(width) < gcount[gg][:, None]
            slot = np.where(valid, slot, 0)
            ia = gidx[slot].ravel()
            ib = np.repeat(d[rank[cand]], width)
            iou, zero, dtype = _tube_pair_iou(gset, ia, dets, ib)
            iou = np.where(valid.ravel(), iou, -np.inf).reshape(-1, width)
            zero = zero.reshape(-1, width)
            by_v = np.argsort(gg, kind="stable")
            first = _group_starts(gg[by_v])
            kth = np.arange(gg.size) - np.repeat(first[:-1], np.diff(first))
            for t in all_th:
                taken = np.zeros((uv.size, width), dtype=bool)
                thr = _F32(t) if dtype == np.float32 else t
                for k in range(int(kth.max()) + 1):
                    sel = by_v[kth == k]
                    vals = np.where(taken[gg[sel]], -1.0, iou[sel])
                    amax = np.argmax(vals, axis=1)
                    rows = np.arange(sel.size)
                    best = vals[rows, amax]
                    bz = zero[sel, amax]
                    hit = ~bz & (best.astype(dtype) >= thr) & (best >= 0)
                    taken[gg[sel][hit], amax[hit]] = True
                    tp_by_th[t][cand[sel[hit]]] = True
        for t in all_th:
            ap_at[t].append(_pr_ap(tp_by_th[t], gidx.size))
    video_ap = []
    for c in range(num_classes):
        video_ap.append({name: float(np.mean([ap_at[t][c] for t in VIDEO_THRESHOLDS[name]])) for name in names})
    video_map = {name: float(np.mean([video_ap[c][name] for c in range(num_classes)])) for name in names}
    tubes = None
    if return_tubes:
        tubes = {}
        for i in kept:
            rows = np.arange(dets.offset[i], dets.offset[i] + dets.length[i])
            arr = np.concatenate([(dets.start[i] + np.arange(dets.length[i]))[:, None].astype(np.float32),
                                  dets.boxes[rows]], axis=1)
            tubes.setdefault((gt.videos[t_vid[i]], gt.labels[t_lab[i]]), []).append((arr, float(t_score[i])))
    return TubeResult(float(np.mean(frame_ap)), video_map, frame_ap, video_ap, num_gt_tubes, num_tubes,
                      list(gt.labels), tubes)


def evaluate_files(groundtruth, detections, split="test", fold=1):
    """:func:`evaluate` on a ground-truth pickle and a detection CSV."""
    gt = read_groundtruth(groundtruth, split, fold)
    det = read_detections(detections, gt.labels)
    return evaluate(gt, det)


# ------------------------------------------------------------------------------------------- command line


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.evaluation.tubes",
        description="frame-mAP@0.5 and video-mAP (0.2, 0.5, 0.75, 0.5:0.95) of per-frame detections on "
        "UCF101-24 / JHMDB-21, with the numbers of the ACT evaluation (as in MOC-Detector).",
    )
    parser.add_argument("--groundtruth", required=True, help="ground-truth pickle (e.g. UCF101v2-GT.pkl, JHMDB-GT.pkl)")
    parser.add_argument("--detections", required=True,
                        help="CSV rows video,frame,x1,y1,x2,y2,label,score (1-based frames, pixel boxes, "
                        "label: 0-based class index or class name)")
    parser.add_argument("--json", required=True, help="where to write the metrics JSON")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="which video list (default test)")
    parser.add_argument("--fold", type=int, default=1, help="split number for datasets with several (JHMDB: 1-3)")
    return parser


def format_report(result):
    """Per-class table and the summary lines."""
    lines = [f"{'class':24s} {'frameAP':>8s} " + " ".join(f"{'vAP@' + n:>12s}" for n in VIDEO_THRESHOLDS)]
    for c, name in enumerate(result.labels):
        lines.append(f"{name[:24]:24s} {result.frame_ap[c]:8.4f} "
                     + " ".join(f"{result.video_ap[c][n]:12.4f}" for n in VIDEO_THRESHOLDS))
    lines.append(f"frame-mAP@0.5: {result.frame_map:.6f}")
    lines.append("video-mAP: " + ", ".join(f"@{n} {v:.6f}" for n, v in result.video_map.items()))
    return "\n".join(lines)


def main(argv=None):
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..utils.io import atomic_open

    with exit_on_user_error():
        result = evaluate_files(args.groundtruth, args.detections, args.split, args.fold)
        with atomic_open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
