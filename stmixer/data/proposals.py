"""Person proposals read from a file, for the two-stage detectors (mmaction2's ``FastRCNN``).

Two file formats, both with boxes normalized to [0, 1] (x1, y1, x2, y2):

* mmaction2's pickle (``.pkl``, e.g. ``ava_dense_proposals_val.FAIR.recall_93.9.pkl``): a dict
  ``{"<video_id>,<second:04d>": ndarray [N, 5] (x1, y1, x2, y2, score)}`` or ``[N, 4]`` (no scores).
  Read with stmixer's restricted unpickler: plain data and numeric numpy arrays only, nothing
  from the file is executed.
* CSV (``.csv``, no header): one proposal per line ``video_id,timestamp,x1,y1,x2,y2,score``
  (timestamp in whole seconds; the score column may be left off on every line of a file, which is
  the ``[N, 4]`` form).

Per keyframe, the proposals a sample gets follow mmaction2's ``AVADataset.get_data_info``:

* with scores: ``thr = min(DET_SCORE_THR, max(scores))``, keep the rows with ``score >= thr`` in
  file order (so a keyframe whose best proposal is below the threshold keeps its best ones, all
  ties included), then the first ``NUM_MAX`` of them (no sorting);
* without scores: the first ``NUM_MAX`` rows; their scores are 1 here (mmaction2 has none);
* a keyframe absent from the file: the whole frame ``[0, 0, 1, 1]`` with score 1 (mmaction2, train
  and test alike); ``PROPOSALS.TRAIN_FALLBACK "gt"`` gives training keyframes their ground-truth
  boxes instead. A key present with zero rows is treated as absent (mmaction2 crashes on it).

The kept boxes must lie in [0, 1] (mmaction2 asserts it for AVA; here for AVA-Kinetics too); a value
outside is an error naming the file and key. Keys are mmaction2's ``img_key``: ``f"{video_id},{timestamp:04d}"``; for an AVA-Kinetics
clip ``<youtube id>_<start>_<end>`` the proposals are looked up under ``<youtube id>,<timestamp:04d>``
as mmaction2's ``AVAKineticsDataset`` does (``proposal_key``).
"""

import dataclasses
import logging
import math
import os
import pickle

import numpy as np

from ..ava_files import DataFormatError, iter_lines, kinetics_clip_span, parse_timestamp, row_error

logger = logging.getLogger("stmixer.data.proposals")

#: Columns of a proposal CSV (the score is optional, for every line of a file at once).
PROPOSAL_CSV_COLUMNS = "video_id,timestamp,x1,y1,x2,y2,score"
#: The whole frame, normalized: mmaction2's proposal for a keyframe missing from the file.
WHOLE_FRAME = np.array([[0.0, 0.0, 1.0, 1.0]], dtype=np.float64)
#: ``PROPOSALS.TRAIN_FALLBACK`` values.
FALLBACKS = ("whole_frame", "gt")


class ProposalFormatError(DataFormatError):
    """A proposal file that cannot be read as mmaction2's pickle or the proposal CSV (names file and key or line)."""


def img_key(video_id, timestamp):
    """mmaction2's key of a keyframe: ``"<video_id>,<timestamp:04d>"``."""
    return f"{video_id},{int(timestamp):04d}"


def proposal_key(video_id, timestamp, kinetics=False):
    """The key a keyframe's proposals are stored under.

    AVA: ``img_key``. AVA-Kinetics (``kinetics``): mmaction2 keeps an ``img_key`` of 16 characters
    (an 11-character AVA id) and otherwise drops the last two ``_`` parts of the video id (a
    Kinetics clip ``<youtube id>_<start>_<end>`` -> ``<youtube id>``). Here a video id that is not
    of the clip form ``<id>_<start>_<end>`` is kept as it is (mmaction2 would mangle such a name,
    e.g. ``syn_train_0001`` -> ``syn``, and find nothing).
    """
    key = img_key(video_id, timestamp)
    if not kinetics or len(key) == 16 or kinetics_clip_span(video_id) is None:
        return key
    return img_key("_".join(video_id.split("_")[:-2]), timestamp)


def _check_array(value, path, key):
    """The proposals of one key as a float64 ``[N, 4 | 5]`` array, or a ProposalFormatError."""
    try:
        array = np.asarray(value)
    except Exception:  # pylint: disable=broad-except
        array = None
    if array is None or array.dtype.kind not in "biuf" or array.ndim != 2 or array.shape[1] not in (4, 5):
        what = f"a {type(value).__name__}" if array is None else f"dtype {array.dtype}, shape {array.shape}"
        raise ProposalFormatError(
            f"{path}: key {key!r}: expected a numeric array [N, 5] (x1, y1, x2, y2, score) or [N, 4], got {what}"
        )
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ProposalFormatError(f"{path}: key {key!r}: proposals must be finite numbers")
    return array


def _raise(error):
    raise error


def read_proposal_pickle(path, on_error=_raise):
    """mmaction2's proposal pickle as ``{key: float64 [N, 4 | 5]}`` (restricted unpickler; see the module docstring).

    ``on_error``: called with the ProposalFormatError of each bad key, which is then left out
    (default: raise it; the dataset checker collects them instead).

    Raises:
        ProposalFormatError naming the file (and the key) for a file that is not such a dict.
    """
    from ..checkpoint.safe_unpickle import load_plain_pickle  # restricted: plain data and numpy arrays only

    try:
        with open(path, "rb") as f:
            data = load_plain_pickle(f)
    except (FileNotFoundError, IsADirectoryError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as e:
        raise ProposalFormatError(f"{path}: not a readable proposal pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ProposalFormatError(
            f"{path}: expected a dict {{'<video_id>,<second:04d>': array [N, 5]}}, got a {type(data).__name__}"
        )
    out = {}
    for key, value in data.items():
        try:
            if not isinstance(key, str) or key.count(",") != 1:
                raise ProposalFormatError(
                    f"{path}: key {key!r}: expected '<video_id>,<second:04d>' (e.g. 'abc,0902')"
                )
            out[key] = _check_array(value, path, key)
        except ProposalFormatError as e:
            on_error(e)
    return out


def parse_proposal_row(fields, width):
    """``(video_id, second, [x1, y1, x2, y2(, score)])`` of one CSV row split at commas; ``width``: the
    field count of the file's first well-formed row. Raises ValueError saying what was expected."""
    if len(fields) not in (6, 7):
        raise ValueError(f"expected 7 comma-separated fields ({PROPOSAL_CSV_COLUMNS})")
    if len(fields) != width:
        raise ValueError(f"{len(fields)} fields, but the first row has {width}: give a score on every line or on "
                         f"none ({PROPOSAL_CSV_COLUMNS})")
    second = parse_timestamp(fields[1])
    try:
        values = [float(v) for v in fields[2:]]
    except ValueError:
        raise ValueError("x1,y1,x2,y2 and the score must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError("x1,y1,x2,y2 and the score must be finite")
    if values[2] < values[0] or values[3] < values[1]:
        raise ValueError("inverted box: expected x1 <= x2 and y1 <= y2")
    return fields[0], second, values


def read_proposal_csv(path, on_error=_raise):
    """A proposal CSV (``PROPOSAL_CSV_COLUMNS``, no header) as ``{key: float64 [N, 4 | 5]}``, rows in file order.

    ``on_error``: called with the ProposalFormatError of each bad row, which is then left out
    (default: raise it).

    Raises:
        ProposalFormatError naming file:line and the row for a malformed row, or a file that mixes
        rows with and without a score.
    """
    rows, width = {}, None
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if width is None and len(fields) in (6, 7):
            width = len(fields)
        try:
            video, second, values = parse_proposal_row(fields, width or len(fields))
        except ValueError as e:
            on_error(_row_error(path, line_no, str(e), line))
            continue
        rows.setdefault(img_key(video, second), []).append(values)
    return {key: np.asarray(values, dtype=np.float64) for key, values in rows.items()}


def _row_error(path, line_no, expected, text):
    error = row_error(path, line_no, expected, text)
    return ProposalFormatError(str(error))


def read_proposals(path, on_error=_raise):
    """Proposals of a ``.pkl`` (mmaction2's pickle) or ``.csv`` file as ``{key: float64 [N, 4 | 5]}`` (normalized).

    ``on_error``: see ``read_proposal_csv`` (bad rows / keys raise by default).

    Raises:
        ProposalFormatError for another extension or a malformed file (naming it); FileNotFoundError.
    """
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".pkl":
        return read_proposal_pickle(path, on_error)
    if ext == ".csv":
        return read_proposal_csv(path, on_error)
    raise ProposalFormatError(f"{path}: expected a proposal file ending in .pkl (mmaction2's pickle) or .csv")


def select_proposals(proposals, score_thr, num_max):
    """mmaction2's choice of a keyframe's proposals (``AVADataset.get_data_info``).

    Args:
        proposals: float64 ``[N, 5]`` (x1, y1, x2, y2, score) or ``[N, 4]``, N >= 1, normalized.
        score_thr: ``PROPOSALS.DET_SCORE_THR``; rows with ``score >= min(score_thr, max score)`` are kept.
        num_max: ``PROPOSALS.NUM_MAX``; the first ``num_max`` kept rows, in file order.

    Returns:
        (boxes float64 ``[n, 4]``, scores float64 ``[n]``; ones for ``[N, 4]`` input).
    """
    if proposals.shape[1] == 5:
        thr = min(score_thr, proposals[:, 4].max())
        proposals = proposals[proposals[:, 4] >= thr][:num_max]
        return proposals[:, :4], proposals[:, 4]
    proposals = proposals[:num_max]
    return proposals, np.ones(len(proposals), dtype=np.float64)


@dataclasses.dataclass
class KeyframeProposals:
    """The selected proposals of every keyframe of a split, in flat arrays (aligned with a KeyframeTable).

    Keyframe k has ``boxes[offsets[k]:offsets[k + 1]]`` (float64 normalized x1, y1, x2, y2) with
    ``scores`` alike; ``missing[k]`` is True when the file has no proposals for it (the fallback applies).
    """

    offsets: np.ndarray  # int64 [K + 1]
    boxes: np.ndarray  # float64 [M, 4]
    scores: np.ndarray  # float64 [M]
    missing: np.ndarray  # bool [K]
    fallback: str = "whole_frame"  # what a missing keyframe gets: "whole_frame" or "gt" (its ground-truth boxes)
    source: str = ""
    unused_keys: int = 0  # keys of the file that match no keyframe of the split

    def of(self, k, gt_boxes):
        """(boxes float64 ``[n, 4]`` normalized, scores float32 ``[n]``) of keyframe ``k``.

        ``gt_boxes``: the keyframe's normalized ground-truth boxes ``[g, 4]``, used by the "gt" fallback.
        """
        if self.missing[k]:
            boxes = np.asarray(gt_boxes, dtype=np.float64) if self.fallback == "gt" else WHOLE_FRAME
            return boxes.reshape(-1, 4), np.ones(len(boxes), dtype=np.float32)
        first, last = self.offsets[k], self.offsets[k + 1]
        return self.boxes[first:last], self.scores[first:last].astype(np.float32)

    @classmethod
    def build(cls, proposals, keys, score_thr, num_max, fallback="whole_frame", source=""):
        """Select (``select_proposals``) the proposals of each keyframe.

        Args:
            proposals: ``{key: float64 [N, 4 | 5]}`` (``read_proposals``).
            keys: the proposal key of each keyframe, in dataset order (``proposal_key``).
            score_thr, num_max: ``PROPOSALS.DET_SCORE_THR``, ``PROPOSALS.NUM_MAX``.
            fallback: "whole_frame" (mmaction2) or "gt".
            source: the file, for messages.

        Raises:
            ProposalFormatError naming the file and key when a kept box lies outside [0, 1].
        """
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown proposal fallback {fallback!r}; expected one of {FALLBACKS}")
        offsets, boxes, scores, missing = [0], [], [], []
        for key in keys:
            raw = proposals.get(key)
            if raw is None or len(raw) == 0:
                missing.append(True)
                offsets.append(offsets[-1])
                continue
            kept, kept_scores = select_proposals(raw, score_thr, num_max)
            if kept.min() < 0.0 or kept.max() > 1.0:
                raise ProposalFormatError(
                    f"{source}: key {key!r}: proposal coordinates must be normalized to [0, 1], got values in "
                    f"[{kept.min():g}, {kept.max():g}]"
                )
            missing.append(False)
            boxes.append(kept)
            scores.append(kept_scores)
            offsets.append(offsets[-1] + len(kept))
        return cls(
            offsets=np.asarray(offsets, dtype=np.int64),
            boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), dtype=np.float64),
            scores=np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64),
            missing=np.asarray(missing, dtype=bool),
            fallback=fallback,
            source=str(source),
            unused_keys=len(set(proposals) - set(keys)),
        )


def log_proposal_summary(proposals, split):
    """Log how many keyframes of a split have proposals, and the keys of the file that match none."""
    total = len(proposals.missing)
    missing = int(proposals.missing.sum())
    logger.info(
        "%s proposals from %s: %d boxes for %d of %d keyframes (%d get the %s fallback)",
        split, proposals.source, len(proposals.boxes), total - missing, total, missing,
        "ground-truth" if proposals.fallback == "gt" else "whole-frame",
    )
    if proposals.unused_keys:
        logger.info("%d keys of %s match no keyframe of the %s split", proposals.unused_keys, proposals.source, split)


class VideoProposals:
    """The proposals of one video's keyframes by whole second, for a video outside a dataset (``demo.py``).

    The same selection as a dataset split (``KeyframeProposals.build``: ``select_proposals``, the [0, 1]
    check, the whole-frame fallback for a keyframe without proposals), looked up under
    ``proposal_key(video_id, second)``. Calling it with a second returns (boxes float64 ``[n, 4]``
    normalized x1, y1, x2, y2, scores float32 ``[n]``); the seconds asked are remembered for ``summary``.

    Args:
        proposals: ``{key: float64 [N, 4 | 5]}`` (``read_proposals``).
        video_id: the video's id in the keys.
        score_thr, num_max: ``PROPOSALS.DET_SCORE_THR``, ``PROPOSALS.NUM_MAX``.
        source: the file, for messages.
    """

    def __init__(self, proposals, video_id, score_thr, num_max, source=""):
        self.proposals = proposals
        self.video_id = str(video_id)
        self.score_thr = float(score_thr)
        self.num_max = int(num_max)
        self.source = str(source)
        self.seconds = []

    def _build(self, seconds):
        keys = [proposal_key(self.video_id, s) for s in seconds]
        return KeyframeProposals.build(self.proposals, keys, self.score_thr, self.num_max, source=self.source)

    def __call__(self, second):
        self.seconds.append(int(second))
        return self._build([second]).of(0, WHOLE_FRAME)

    def summary(self):
        """Log what ``log_proposal_summary`` logs for a split, for the seconds asked so far; warn when
        none of them has proposals (the video id is then likely not the file's)."""
        if not self.seconds:
            return
        built = self._build(self.seconds)
        log_proposal_summary(built, f"video {self.video_id!r}")
        if built.missing.all():
            example = next(iter(self.proposals), None)
            logger.warning(
                "%s has no proposals for video id %r (keys '%s'): every keyframe gets the whole frame%s",
                self.source, self.video_id, img_key(self.video_id, self.seconds[0]),
                f"; its keys look like {example!r} (give --proposals-video-id)" if example else " (the file is empty)",
            )
