"""AVA frame-mAP, vectorized, giving exactly the numbers of the official evaluators.

Three protocols (PASCAL-style per-class AP at IoU 0.5). The first two average over
the classes that have ground truth:

* ``stmixer`` -- the copy of ActivityNet's 2018 evaluator that the official
  STMixer (and PySlowFast) evaluate with. Per keyframe and class, detections are
  ordered by ``numpy.argsort(scores)[::-1]`` (at most 10000 kept).
* ``activitynet`` -- ActivityNet's 2019 evaluator (the last that takes the
  excluded-timestamps file). While reading, each keyframe keeps at most 50
  detections in a min-heap of ``(score, action, y1, x1, y2, x2)`` tuples (a
  later row replaces the smallest only with a strictly higher score); they are
  then ordered by descending score, ties in heap order. Ground truth goes
  through the same heap (no cap, keyed by its 8th column, the person id).

The third, ``mmaction2`` (mmaction2 1.x ``ava_eval`` as its ``AVAMetric`` calls it,
``ignore_empty_frames=True``), averages over the classes that have detections and
differs in more places; see :func:`_evaluate_mmaction2` for its rules.

Common rules of ``stmixer`` and ``activitynet``, in the order they apply:

1. Only label-map classes count (other rows are dropped first); keyframes are
   ``(video_id, int(timestamp))``; excluded keyframes drop ground truth and detections.
2. Detection boxes with ``x2 <= x1`` or ``y2 <= y1`` are dropped (``activitynet``:
   after the 50-cap). Boxes are otherwise used as given: no clipping, no +1.
3. In each keyframe and class, detections in the order above take the ground
   truth with the highest IoU (first one on ties; IoU = inter / ((area_det +
   area_gt) - inter) in float64) if IoU >= 0.5 and it is not taken yet; all
   other detections are false positives (also those on keyframes without
   ground truth). There is no fall-back to the second-best ground truth.
4. Per class, the detections of all keyframes (keyframes in the order they
   first appear among the detections) are concatenated and ranked with
   ``numpy.argsort(scores)[::-1]``; AP is the all-point interpolated area.
5. mAP = ``numpy.nanmean`` over an AP array indexed by class id (NaN for classes
   without ground truth); a class with ground truth but no detection has AP 0.

Tied scores are the only source of ambiguity, and the official orderings are
reproduced exactly: where a tie can change a result (a keyframe-class with
ground truth whose detections tie, or a tie at the 50-cap) the official
operation itself (``numpy.argsort`` on the same array, the same heap) is
replayed for that keyframe; elsewhere tied detections are interchangeable.
"""

import dataclasses
import heapq
import warnings

import numpy as np

from ..errors import UserError
from .ava_csv import line_of_data_row
from .input_checks import row_location

PROTOCOLS = ("stmixer", "activitynet", "mmaction2")
IOU_THRESHOLD = 0.5
ACTIVITYNET_CAP = 50
STMIXER_PER_CLASS_CAP = 10000
STMIXER_MIN_SCORE = -10.0


class EvaluationError(UserError, ValueError):
    """Inputs that the metric cannot be computed on; the message says which file/row and why."""


@dataclasses.dataclass
class FrameMAP:
    """Result of a frame-mAP evaluation.

    Attributes:
        mean_ap: mAP over classes with ground truth (``mmaction2``: and a detection on a
            ground-truth keyframe; NaN when there is no such class, as there).
        ap: ``{class id: AP or None}`` (None: the class does not count -- no ground truth;
            ``mmaction2``: also no detection on a ground-truth keyframe), label-map order.
        num_gt: ``{class id: ground-truth boxes}`` after exclusions (``mmaction2``: before).
        num_detections: ``{class id: detections evaluated}`` (after exclusions, the caps
            and invalid-box removal).
        protocol: "stmixer", "activitynet" or "mmaction2".
        num_replayed: keyframes (activitynet) or keyframe-classes (stmixer) whose
            order was replayed exactly because of tied scores.
    """

    mean_ap: float
    ap: dict
    num_gt: dict
    num_detections: dict
    protocol: str
    num_replayed: int = 0


def _index_dtype(n):
    return np.int32 if n < 2**31 - 1 else np.int64


def _keyframe_ids(gt, det, excluded):
    """Compact keyframe ids shared by ground truth and detections, per box.

    Returns:
        gt_box_kf: int32 ``[B_gt]``; det_box_kf: int32 ``[B_det]``; is_excluded: bool ``[K]``.
    """
    vocab = {}
    for table in (gt, det):
        for name in table.videos:
            vocab.setdefault(name, len(vocab))

    def keys(table):
        lookup = np.array([vocab[name] for name in table.videos] or [0], dtype=np.int64)
        return (lookup[table.box_video] << 32) | (table.box_timestamp.astype(np.int64) + 2**31)

    gt_keys, det_keys = keys(gt), keys(det)
    all_keys = np.unique(np.concatenate([gt_keys, det_keys]))
    excluded_keys = [(vocab[v] << 32) | (int(t) + 2**31) for v, t in excluded if v in vocab and abs(int(t)) < 2**31]
    is_excluded = np.isin(all_keys, np.array(excluded_keys, dtype=np.int64))
    kf_dtype = _index_dtype(len(all_keys))
    return (
        np.searchsorted(all_keys, gt_keys).astype(kf_dtype),
        np.searchsorted(all_keys, det_keys).astype(kf_dtype),
        is_excluded,
    )


def _allowed_mask(action, labelmap):
    table = np.zeros(labelmap.max_id + 1, dtype=bool)
    table[list(labelmap.ids)] = True
    inside = (action >= 0) & (action <= labelmap.max_id)
    return inside & table[np.where(inside, action, 0)]


def _iou(det_boxes, gt_boxes):
    """Pairwise IoU of matched rows, float64, with the official formula and operation order.

    Args:
        det_boxes, gt_boxes: float64 ``[P, 4]`` normalized x1, y1, x2, y2.
    Returns:
        float64 ``[P]``; NaN where both boxes have zero area.
    """
    zero = np.zeros(len(det_boxes))
    heights = np.maximum(zero, np.minimum(det_boxes[:, 3], gt_boxes[:, 3]) - np.maximum(det_boxes[:, 1], gt_boxes[:, 1]))
    widths = np.maximum(zero, np.minimum(det_boxes[:, 2], gt_boxes[:, 2]) - np.maximum(det_boxes[:, 0], gt_boxes[:, 0]))
    inter = heights * widths
    area_det = (det_boxes[:, 3] - det_boxes[:, 1]) * (det_boxes[:, 2] - det_boxes[:, 0])
    area_gt = (gt_boxes[:, 3] - gt_boxes[:, 1]) * (gt_boxes[:, 2] - gt_boxes[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / ((area_det + area_gt) - inter)


def heap_order(scores, actions, boxes, capacity):
    """The official 2019 reader's per-keyframe selection and order (a min-heap of tuples).

    Rows are pushed in the given order as ``(score, action, y1, x1, y2, x2)``; with
    ``capacity > 0`` a full heap keeps a row only if its score is strictly higher
    than the smallest tuple's score, which it replaces. The survivors are sorted by
    descending score, ties in heap-array order.

    Args:
        scores: float ``[n]``; actions: int ``[n]``; boxes: float ``[n, 4]`` x1, y1, x2, y2.
        capacity: the cap (0: none).

    Returns:
        int64 indices into the given rows, in the official order. Rows with identical
        tuples are interchangeable; each index appears at most once.
    """
    items = list(
        zip(
            scores.tolist(), actions.tolist(), boxes[:, 1].tolist(), boxes[:, 0].tolist(),
            boxes[:, 3].tolist(), boxes[:, 2].tolist(),
        )
    )
    heap = []
    for item in items:
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)
    rows_of = {}
    for i in range(len(items) - 1, -1, -1):
        rows_of.setdefault(items[i], []).append(i)
    return np.array([rows_of[item].pop() for item in sorted(heap, key=lambda t: -t[0])], dtype=np.int64)


def _segments(sorted_keys):
    """Start index and length of each run of equal values in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    return starts, np.diff(np.append(starts, len(sorted_keys)))


def _rank_in_segment(starts, lengths, n):
    """0-based position of each element within its run (runs given by starts / lengths)."""
    dtype = _index_dtype(n)
    return np.arange(n, dtype=dtype) - np.repeat(starts.astype(dtype), lengths)


def _ranges(starts, lengths):
    """Concatenation of ``arange(s, s + l)`` for each (s, l), as int64."""
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts.astype(np.int64), lengths) + offsets


class _GroundTruth:
    """Ground truth grouped by (keyframe, class), each group in the official order."""

    def __init__(self, table, kf, keep, protocol, num_classes):
        rows = np.flatnonzero(keep)
        boxes = table.row_boxes(rows)
        bad = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
        if bad.any():
            self._raise_bad_box(table, rows[np.argmax(bad)], boxes[np.argmax(bad)])
        action = table.action[rows].astype(np.int64)
        kf = kf[rows].astype(np.int64)
        if protocol == "activitynet":
            position = self._heap_positions(kf, table.score[rows], action, boxes)
        elif protocol == "mmaction2":  # per keyframe a stable sort by descending 8th column
            position = np.empty(len(rows), dtype=np.int64)
            position[np.lexsort((np.arange(len(rows)), -table.score[rows]))] = np.arange(len(rows))
        else:
            position = np.arange(len(rows))
        group = kf * num_classes + action
        order = np.lexsort((position, group))
        keys, self.group_starts = np.unique(group[order], return_index=True)
        self.group_keys = keys
        self.group_kf, self.group_action = keys // num_classes, keys % num_classes
        self.group_sizes = np.diff(np.append(self.group_starts, len(order)))
        self.boxes = boxes[order]
        self.num_classes = num_classes
        self.num_gt = np.bincount(action, minlength=num_classes)

    @staticmethod
    def _raise_bad_box(table, row, box):
        if table.data_row is not None and not table.source.startswith("<"):
            where = f"{table.source}:{line_of_data_row(table.source, int(table.data_row[row]))}"
        else:
            where = f"{table.source}: ground-truth row {row}"
        raise EvaluationError(
            f"{where}: ground-truth box has x1 > x2 or y1 > y2 "
            "(x1={!r}, y1={!r}, x2={!r}, y2={!r}); expected x1 <= x2 and y1 <= y2".format(*box.tolist())
        )

    @staticmethod
    def _heap_positions(kf, score, action, boxes):
        """Position of each row in its keyframe when read through the official heap (no cap).

        The heap sorts each keyframe by descending 8th column, ties in heap order; only
        ties within one class can change a result, so only keyframes with such ties are
        replayed, the others are sorted directly.
        """
        order = np.lexsort((-score, kf))
        position = np.empty(len(kf), dtype=np.int64)
        position[order] = np.arange(len(kf))
        by_class = np.lexsort((score, action, kf))
        same = (kf[by_class][1:] == kf[by_class][:-1]) & (action[by_class][1:] == action[by_class][:-1])
        same &= score[by_class][1:] == score[by_class][:-1]
        for frame in np.unique(kf[by_class][1:][same]).tolist():
            rows = np.flatnonzero(kf == frame)
            position[rows[heap_order(score[rows], action[rows], boxes[rows], 0)]] = position[rows].min() + np.arange(len(rows))
        return position

    def has(self, kf, action):
        """bool per (keyframe, class) pair: does that group have ground truth?"""
        group = kf.astype(np.int64) * self.num_classes + action
        idx = np.minimum(np.searchsorted(self.group_keys, group), max(len(self.group_keys) - 1, 0))
        return (self.group_keys[idx] == group) if len(self.group_keys) else np.zeros(len(group), bool)


def _box_image_rank(det, allowed, box_kf, is_excluded):
    """Per box: rank of its keyframe in order of first appearance among label-map rows (-1: not evaluated).

    Keyframes are ranked by their first label-map row (boxes are in row order); boxes
    without label-map rows and boxes of excluded keyframes get -1.
    """
    has_rows = np.zeros(len(box_kf), dtype=bool)
    has_rows[det.box_index[allowed]] = True
    boxes = np.flatnonzero(has_rows)
    kf = box_kf[boxes]
    _, first = np.unique(kf, return_index=True)
    rank_of_kf = np.full(len(is_excluded), -1, dtype=np.int64)
    rank_of_kf[kf[np.sort(first)]] = np.arange(len(first))
    rank_of_kf[is_excluded] = -1
    rank = np.full(len(box_kf), -1, dtype=_index_dtype(len(first) + 1))
    rank[boxes] = rank_of_kf[kf]
    return rank, rank_of_kf


def _valid_boxes(boxes):
    """bool ``[B]``: the official evaluators drop detections with x2 <= x1 or y2 <= y1."""
    return (boxes[:, 1] < boxes[:, 3]) & (boxes[:, 0] < boxes[:, 2])


def _order_stmixer(det, rows, box_image, box_kf, gt, num_classes):
    """Rows ordered by (image, class, official in-class order), capped; returns (rows, number replayed)."""
    score = det.score[rows]
    keep = _valid_boxes(det.boxes)[det.box_index[rows]] & (score > STMIXER_MIN_SCORE)
    rows, score = rows[keep], score[keep]
    del keep
    image = box_image[det.box_index[rows]]
    wide = int(image.max(initial=0) + 1) * num_classes >= 2**31
    group = image.astype(np.int64 if wide else np.int32) * num_classes + det.action[rows]
    del image
    order = np.lexsort((-score, group)).astype(_index_dtype(len(rows)))
    sorted_group = group[order]
    del group
    starts, lengths = _segments(sorted_group)
    sorted_score = score[order]
    tie = np.flatnonzero((sorted_group[1:] == sorted_group[:-1]) & (sorted_score[1:] == sorted_score[:-1]))
    del sorted_group, sorted_score
    replayed = 0
    if len(tie):
        tied_segments = np.unique(np.searchsorted(starts, tie, side="right") - 1)
        first = rows[order[starts[tied_segments]]]
        with_gt = gt.has(box_kf[det.box_index[first]], det.action[first])
        for seg in tied_segments[with_gt].tolist():
            span = slice(starts[seg], starts[seg] + lengths[seg])
            members = np.sort(order[span])  # file order, as the official per-class arrays
            order[span] = members[np.argsort(score[members])[::-1]]
            replayed += 1
    if lengths.max(initial=0) > STMIXER_PER_CLASS_CAP:
        order = order[_rank_in_segment(starts, lengths, len(order)) < STMIXER_PER_CLASS_CAP]
    return rows[order], replayed


def _order_activitynet(det, rows, box_image, box_kf, gt, num_classes):
    """Rows ordered by (image, official in-keyframe order) after the 50-cap and invalid-box removal."""
    score = det.score[rows]
    image = box_image[det.box_index[rows]]
    num_images = int(image.max(initial=0)) + 1
    order = np.lexsort((-score, image)).astype(_index_dtype(len(rows)))
    starts, lengths = _segments(image[order])
    segment_image = image[order[starts]]
    keep_count = np.minimum(lengths, ACTIVITYNET_CAP)
    kept = order[_rank_in_segment(starts, lengths, len(order)) < ACTIVITYNET_CAP]
    # A tie across the cap makes the kept set depend on the heap's history: replay those keyframes.
    exact = np.zeros(len(starts), dtype=bool)
    over = np.flatnonzero(lengths > ACTIVITYNET_CAP)
    boundary = starts[over] + ACTIVITYNET_CAP
    exact[over[score[order[boundary - 1]] == score[order[boundary]]]] = True
    del order
    # So do tied scores of one class that has ground truth in the keyframe (heap order decides).
    kept_group = image[kept].astype(np.int64) * num_classes + det.action[rows[kept]]
    by_group = np.lexsort((score[kept], kept_group))
    k, kept_group = kept[by_group], kept_group[by_group]
    same = (kept_group[1:] == kept_group[:-1]) & (score[k[1:]] == score[k[:-1]])
    tied = k[1:][same]
    del kept_group, by_group, k, same
    if len(tied):
        tied_rows = rows[tied]
        with_gt = gt.has(box_kf[det.box_index[tied_rows]], det.action[tied_rows])
        exact[np.searchsorted(segment_image, image[tied[with_gt]])] = True
    pieces = [kept[~np.repeat(exact, keep_count)]]
    if exact.any():
        replay = np.zeros(num_images, dtype=bool)
        replay[segment_image[exact]] = True
        members = np.flatnonzero(replay[image])  # file order
        members = members[np.argsort(image[members], kind="stable")]
        boxes = det.row_boxes(rows[members])
        actions = det.action[rows[members]]
        m_starts, m_lengths = _segments(image[members])
        for start, length in zip(m_starts.tolist(), m_lengths.tolist()):
            span = slice(start, start + length)
            chosen = heap_order(score[members[span]], actions[span], boxes[span], ACTIVITYNET_CAP)
            pieces.append(members[span][chosen])
    sequence = np.concatenate(pieces)
    sequence = rows[sequence[np.argsort(image[sequence], kind="stable")]]
    sequence = sequence[_valid_boxes(det.boxes)[det.box_index[sequence]]]
    return sequence, int(exact.sum())


def _average_precision(scores, tp, num_gt):
    """The official all-point AP: ranks with ``argsort(scores)[::-1]``, same operations."""
    sorted_indices = np.argsort(scores)[::-1]
    labels = tp.astype(int)[sorted_indices]
    cum_tp = np.cumsum(labels)
    cum_fp = np.cumsum(1 - labels)
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    if not precision.size:
        return 0.0
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    indices = np.where(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[indices] - recall[indices - 1]) * precision[indices]))


def _true_positives(det, sequence, seq_image, class_starts, rank_of_kf, gt, box_dtype=np.float64):
    """bool ``[len(sequence)]``: the official greedy matching.

    ``box_dtype``: the coordinates are cast to it before the IoU (``mmaction2``: float32,
    which makes the differences and areas float32 and the intersection float64, as there).

    ``sequence`` holds detection rows sorted by (class, image, official order), so the
    detections of one (keyframe, class) group are a contiguous span found by binary search.
    """
    tp = np.zeros(len(sequence), dtype=bool)
    image = rank_of_kf[gt.group_kf]
    lo = np.zeros(len(image), dtype=np.int64)
    hi = np.zeros(len(image), dtype=np.int64)
    for c in np.unique(gt.group_action).tolist():
        groups = np.flatnonzero(gt.group_action == c)
        span = seq_image[class_starts[c] : class_starts[c + 1]]
        lo[groups] = class_starts[c] + np.searchsorted(span, image[groups], side="left")
        hi[groups] = class_starts[c] + np.searchsorted(span, image[groups], side="right")
    lo[image < 0] = hi[image < 0] = 0
    n_det = hi - lo
    cand_group = np.repeat(np.arange(len(n_det)), n_det)
    cand = _ranges(lo, n_det)  # positions in sequence, grouped, each group in order
    if len(cand) == 0:
        return tp
    n_gt = gt.group_sizes[cand_group]
    pair_gt = _ranges(gt.group_starts[cand_group], n_gt)
    pair_box = det.box_index[sequence[np.repeat(cand, n_gt)]]
    iou = _iou(det.boxes[pair_box].astype(box_dtype, copy=False), gt.boxes[pair_gt].astype(box_dtype, copy=False))
    seg_start = np.cumsum(n_gt) - n_gt
    key = np.where(np.isnan(iou), np.inf, iou)  # numpy's argmax picks the first NaN
    is_max = np.flatnonzero(key == np.repeat(np.maximum.reduceat(key, seg_start), n_gt))
    _, first = np.unique(np.repeat(np.arange(len(cand)), n_gt)[is_max], return_index=True)
    best = is_max[first]
    qualifies = np.flatnonzero(iou[best] >= IOU_THRESHOLD)
    _, first_claim = np.unique(pair_gt[best[qualifies]], return_index=True)
    tp[cand[qualifies[first_claim]]] = True
    return tp


def _first_seen_order(image, action):
    """Class ids in the order mmaction2's ``ava_eval`` first meets them (that order sums the mAP).

    It walks the keyframes in ground-truth order and, in each, iterates
    ``list(set(labels))`` of the keyframe's label list; only the keyframes where a class
    appears first can add one, so only those are replayed with the same Python set.

    Args:
        image: int ``[n]`` keyframe rank (non-decreasing); action: int ``[n]`` class id,
            each keyframe's rows in the official in-keyframe order.
    """
    first_row = np.unique(action, return_index=True)[1]
    order = []
    for frame in np.unique(image[first_row]).tolist():
        lo, hi = np.searchsorted(image, [frame, frame + 1])
        order.extend(c for c in list(set(action[lo:hi].tolist())) if c not in order)
    return order


def _evaluate_mmaction2(gt, det, labelmap, gt_kf, det_box_kf, is_excluded, ground_truth, num_classes):
    """Frame-mAP exactly as mmaction2 1.x ``ava_eval`` (``AVAMetric``: ``ignore_empty_frames=True``).

    Rules (where they differ from the other two protocols):

    1. Keyframes are those with ground truth of a label-map class, not excluded, in the
       order they first appear in the ground-truth file. Detections on any other keyframe
       are ignored (not false positives).
    2. Per keyframe the label-map rows are ordered by descending score (float64, as
       parsed), ties in file order (a stable sort); ground truth likewise by its 8th
       column (1.0 when absent). No cap on the number of detections.
    3. Boxes and scores are cast to float32 per keyframe and class: coordinate
       differences and areas are float32, the intersection float64 (numpy's promotion in
       the official ``np_box_ops.iou``). No box is dropped: zero-area boxes are false
       positives; an inverted box (x1 > x2 or y1 > y2 in float32) makes the official
       code raise, and here an EvaluationError naming the row.
    4. Matching as in the other protocols (best-IoU ground truth, IoU >= 0.5, not taken).
    5. Per class, the keyframes' float32 scores are concatenated in keyframe order and
       ranked with ``numpy.argsort(scores)[::-1]``; the number of ground-truth boxes is
       counted over the whole ground-truth file, excluded keyframes included.
    6. Only classes with at least one detection on a keyframe of rule 1 get an AP (NaN,
       i.e. None here, if the class has no ground truth); mAP is ``numpy.nanmean`` of
       those APs in the order the official code meets the classes (it decides the last
       bit). A class with ground truth but no such detection does not count (the other
       protocols count it as 0). No counted class at all: mAP NaN, as there.
    """
    keep = _allowed_mask(gt.action, labelmap)
    num_gt = np.bincount(gt.action[keep].astype(np.int64), minlength=num_classes)
    kept_kf = gt_kf[keep & ~is_excluded[gt_kf]]
    _, first = np.unique(kept_kf, return_index=True)
    rank_of_kf = np.full(len(is_excluded), -1, dtype=np.int64)
    rank_of_kf[kept_kf[np.sort(first)]] = np.arange(len(first))
    del keep, kept_kf, first

    box_image = rank_of_kf[det_box_kf]
    rows = np.flatnonzero(_allowed_mask(det.action, labelmap) & (box_image[det.box_index] >= 0))
    image = box_image[det.box_index[rows]]
    frame_order = np.lexsort((-det.score[rows], image))  # stable: ties in file order
    rows, image = rows[frame_order], image[frame_order]
    action = det.action[rows].astype(np.int64)
    boxes32 = det.boxes[det.box_index[rows]].astype(np.float32)
    inverted = (boxes32[:, 0] > boxes32[:, 2]) | (boxes32[:, 1] > boxes32[:, 3])
    if inverted.any():
        row = int(rows[inverted].min())
        raise EvaluationError(
            f"{row_location(det, row)}: detection box has x1 > x2 or y1 > y2 "
            "(x1={!r}, y1={!r}, x2={!r}, y2={!r}); the mmaction2 protocol cannot score it "
            "(mmaction2's evaluator raises on it)".format(*det.row_boxes(np.array([row]))[0].tolist())
        )
    del boxes32, inverted
    class_order = _first_seen_order(image, action)
    by_class = np.argsort(action, kind="stable")
    sequence, action = rows[by_class], action[by_class]
    seq_image = image[by_class]
    del by_class, rows, image
    class_starts = np.searchsorted(action, np.arange(num_classes + 1))
    tp = _true_positives(det, sequence, seq_image, class_starts, rank_of_kf, ground_truth, box_dtype=np.float32)

    ap = {}
    for class_id in class_order:
        span = slice(class_starts[class_id], class_starts[class_id + 1])
        if num_gt[class_id] == 0:
            ap[class_id] = np.nan
        else:
            scores = det.score[sequence[span]].astype(np.float32)
            ap[class_id] = _average_precision(scores, tp[span], int(num_gt[class_id]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no class counted: NaN, as the official
        mean_ap = float(np.nanmean(np.array([ap[c] for c in class_order], dtype=np.float64)))
    return FrameMAP(
        mean_ap=mean_ap,
        ap={c: (None if c not in ap or np.isnan(ap[c]) else float(ap[c])) for c in labelmap.ids},
        num_gt={c: int(num_gt[c]) for c in labelmap.ids},
        num_detections={c: int(class_starts[c + 1] - class_starts[c]) for c in labelmap.ids},
        protocol="mmaction2",
    )


def evaluate_frame_map(gt, det, labelmap, excluded=(), protocol="stmixer"):
    """Frame-mAP of detections against ground truth (see the module docstring for the rules).

    Args:
        gt: AVATable of ground truth (the 8th column, if any, is the person id).
        det: AVATable of detections in file order (boxes normalized x1, y1, x2, y2).
        labelmap: LabelMap of the evaluated classes.
        excluded: iterable of ``(video_id, int timestamp)`` keyframes to ignore.
        protocol: "stmixer" (default; official STMixer / PySlowFast numbers),
            "activitynet" (ActivityNet 2019 evaluator, 50 detections per keyframe) or
            "mmaction2" (mmaction2's ``ava_eval``; see :func:`_evaluate_mmaction2`).

    Returns:
        FrameMAP.

    Raises:
        EvaluationError: no ground truth left to evaluate, or a ground-truth box with
            x1 > x2 or y1 > y2 (the official code crashes on it).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    for table in (gt, det):
        if len(table) > 1 and (np.diff(table.box_index) < 0).any():
            raise ValueError(f"{table.source}: box_index must be non-decreasing (rows of a box together)")
    num_classes = labelmap.max_id + 1
    gt_box_kf, det_box_kf, is_excluded = _keyframe_ids(gt, det, excluded)

    gt_kf = gt_box_kf[gt.box_index]
    ground_truth = _GroundTruth(gt, gt_kf, _allowed_mask(gt.action, labelmap) & ~is_excluded[gt_kf], protocol, num_classes)
    if ground_truth.num_gt.sum() == 0:
        raise EvaluationError(
            f"{gt.source}: no ground-truth box of a label-map class is left after exclusions; nothing to evaluate"
        )
    if protocol == "mmaction2":
        return _evaluate_mmaction2(gt, det, labelmap, gt_kf, det_box_kf, is_excluded, ground_truth, num_classes)

    allowed = _allowed_mask(det.action, labelmap)
    box_image, rank_of_kf = _box_image_rank(det, allowed, det_box_kf, is_excluded)
    rows = np.flatnonzero(allowed & (box_image[det.box_index] >= 0)).astype(_index_dtype(len(det)))
    del allowed
    order_fn = _order_activitynet if protocol == "activitynet" else _order_stmixer
    sequence, replayed = order_fn(det, rows, box_image, det_box_kf, ground_truth, num_classes)
    del rows
    action = det.action[sequence].astype(np.int16 if num_classes < 2**15 else np.int32)
    by_class = np.argsort(action, kind="stable")
    sequence, action = sequence[by_class], action[by_class]
    del by_class
    class_starts = np.searchsorted(action, np.arange(num_classes + 1))
    del action
    seq_image = box_image[det.box_index[sequence]]
    tp = _true_positives(det, sequence, seq_image, class_starts, rank_of_kf, ground_truth)
    del seq_image

    ap_by_index = np.full(labelmap.max_id, np.nan)
    num_detections = {}
    for class_id in range(1, num_classes):
        span = slice(class_starts[class_id], class_starts[class_id + 1])
        num_detections[class_id] = int(span.stop - span.start)
        if ground_truth.num_gt[class_id] > 0:
            scores = det.score[sequence[span]]
            ap_by_index[class_id - 1] = _average_precision(scores, tp[span], ground_truth.num_gt[class_id])
    mean_ap = float(np.nanmean(ap_by_index))
    ap = {c: (None if ground_truth.num_gt[c] == 0 else float(ap_by_index[c - 1])) for c in labelmap.ids}
    return FrameMAP(
        mean_ap=mean_ap,
        ap=ap,
        num_gt={c: int(ground_truth.num_gt[c]) for c in labelmap.ids},
        num_detections={c: num_detections[c] for c in labelmap.ids},
        protocol=protocol,
        num_replayed=replayed,
    )
