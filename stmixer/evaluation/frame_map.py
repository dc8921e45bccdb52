"""AVA frame-mAP, vectorized, giving exactly the numbers of the official evaluators.

Two protocols (both PASCAL-style per-class AP at IoU 0.5, averaged over the
classes that have ground truth):

* ``stmixer`` -- the copy of ActivityNet's 2018 evaluator that the official
  STMixer (and PySlowFast) evaluate with. Per keyframe and class, detections are
  ordered by ``numpy.argsort(scores)[::-1]`` (at most 10000 kept).
* ``activitynet`` -- ActivityNet's 2019 evaluator (the last that takes the
  excluded-timestamps file). While reading, each keyframe keeps at most 50
  detections in a min-heap of ``(score, action, y1, x1, y2, x2)`` tuples (a
  later row replaces the smallest only with a strictly higher score); they are
  then ordered by descending score, ties in heap order. Ground truth goes
  through the same heap (no cap, keyed by its 8th column, the person id).

Common rules, in the order they apply:

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

import numpy as np

PROTOCOLS = ("stmixer", "activitynet")
IOU_THRESHOLD = 0.5
ACTIVITYNET_CAP = 50
STMIXER_PER_CLASS_CAP = 10000
STMIXER_MIN_SCORE = -10.0


class EvaluationError(ValueError):
    """Inputs that the metric cannot be computed on; the message says which file/row and why."""


@dataclasses.dataclass
class FrameMAP:
    """Result of a frame-mAP evaluation.

    Attributes:
        mean_ap: mAP over classes with ground truth.
        ap: ``{class id: AP or None}`` (None: no ground truth), label-map order.
        num_gt: ``{class id: ground-truth boxes}`` after exclusions.
        num_detections: ``{class id: detections evaluated}`` (after exclusions, the caps
            and invalid-box removal).
        protocol: "stmixer" or "activitynet".
        num_replayed: keyframes (activitynet) or keyframe-classes (stmixer) whose
            order was replayed exactly because of tied scores.
    """

    mean_ap: float
    ap: dict
    num_gt: dict
    num_detections: dict
    protocol: str
    num_replayed: int = 0


def _keyframe_ids(gt, det, excluded):
    """Compact keyframe ids shared by ground truth and detections.

    Returns:
        gt_kf: int64 ``[len(gt)]``; det_kf: int64 ``[len(det)]``; is_excluded: bool
        ``[num keyframes]``.
    """
    vocab = {}
    for table in (gt, det):
        for name in table.videos:
            vocab.setdefault(name, len(vocab))

    def keys(table, rows=None):
        lookup = np.array([vocab[name] for name in table.videos] or [0], dtype=np.int64)
        video = table.video if rows is None else table.video[rows]
        timestamp = table.timestamp if rows is None else table.timestamp[rows]
        return (lookup[video] << 32) | (timestamp.astype(np.int64) + 2**31)

    # Detection files hold each keyframe's rows together: work on runs of equal keyframes.
    change = np.ones(len(det), dtype=bool)
    change[1:] = (det.video[1:] != det.video[:-1]) | (det.timestamp[1:] != det.timestamp[:-1])
    run_keys = keys(det, np.flatnonzero(change))
    gt_keys = keys(gt)
    all_keys = np.unique(np.concatenate([gt_keys, run_keys]))
    excluded_keys = [(vocab[v] << 32) | (int(t) + 2**31) for v, t in excluded if v in vocab and abs(int(t)) < 2**31]
    is_excluded = np.isin(all_keys, np.array(excluded_keys, dtype=np.int64))
    gt_kf = np.searchsorted(all_keys, gt_keys)
    det_kf = np.searchsorted(all_keys, run_keys)[np.cumsum(change) - 1]
    return gt_kf, det_kf, is_excluded


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
    ``capacity > 0`` a full heap keeps the row only if its score is strictly higher
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
    """Start index and length of each run of equal values in a sorted int array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    return starts, np.diff(np.append(starts, len(sorted_keys)))


def _rank_in_segment(sorted_keys):
    """0-based position of each element within its run of equal keys (keys sorted)."""
    starts, lengths = _segments(sorted_keys)
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


class _GroundTruth:
    """Ground truth sorted by (keyframe, class, official order), with group lookup."""

    def __init__(self, table, kf_of_row, keep, protocol, num_classes):
        rows = np.flatnonzero(keep)
        boxes = table.row_boxes(rows)
        bad = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])
        if bad.any():
            self._raise_bad_box(table, rows[np.argmax(bad)], boxes[np.argmax(bad)])
        action = table.action[rows].astype(np.int64)
        kf = kf_of_row[rows]
        if protocol == "activitynet":
            position = self._heap_positions(kf, table.score[rows], action, boxes)
        else:
            position = np.arange(len(rows))
        group = kf * num_classes + action
        order = np.lexsort((position, group))
        self.group_keys, self.group_starts = np.unique(group[order], return_index=True)
        self.group_sizes = np.diff(np.append(self.group_starts, len(order)))
        self.boxes = boxes[order]
        self.num_gt = np.bincount(action, minlength=num_classes)

    @staticmethod
    def _raise_bad_box(table, row, box):
        from .ava_csv import line_of_data_row

        if table.data_row is not None and table.source and not table.source.startswith("<"):
            where = f"{table.source}:{line_of_data_row(table.source, int(table.data_row[row]))}"
        else:
            where = f"{table.source}: ground-truth row {row}"
        raise EvaluationError(
            f"{where}: ground-truth box has x1 > x2 or y1 > y2 "
            f"(x1={box[0]!r}, y1={box[1]!r}, x2={box[2]!r}, y2={box[3]!r}); expected x1 <= x2 and y1 <= y2"
        )

    @staticmethod
    def _heap_positions(kf, score, action, boxes):
        """Global position of each row when keyframes are read through the official heap."""
        by_kf = np.argsort(kf, kind="stable")
        starts, lengths = _segments(kf[by_kf])
        position = np.empty(len(kf), dtype=np.int64)
        for start, length in zip(starts.tolist(), lengths.tolist()):
            rows = by_kf[start : start + length]
            position[rows[heap_order(score[rows], action[rows], boxes[rows], 0)]] = np.arange(start, start + length)
        return position

    def lookup(self, group):
        """(start, size) into ``self.boxes`` of each group key (size 0 when absent)."""
        idx = np.searchsorted(self.group_keys, group)
        idx = np.minimum(idx, max(len(self.group_keys) - 1, 0))
        if len(self.group_keys) == 0:
            return np.zeros(len(group), np.int64), np.zeros(len(group), np.int64)
        found = self.group_keys[idx] == group
        return np.where(found, self.group_starts[idx], 0), np.where(found, self.group_sizes[idx], 0)


def _first_appearance_rank(keys):
    """Rank of each row's keyframe in order of first appearance (rows in file order)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    change = np.concatenate(([True], keys[1:] != keys[:-1]))
    run_keys = keys[change]
    uniq, first_run, inverse = np.unique(run_keys, return_index=True, return_inverse=True)
    rank_of_uniq = np.empty(len(uniq), dtype=np.int64)
    rank_of_uniq[np.argsort(first_run)] = np.arange(len(uniq))
    return rank_of_uniq[inverse][np.cumsum(change) - 1]


def _valid_boxes(boxes):
    return (boxes[:, 1] < boxes[:, 3]) & (boxes[:, 0] < boxes[:, 2])


def _order_stmixer(det, rows, kf, image, gt, num_classes):
    """Rows in (image, class, official in-class order), capped; returns (rows, number replayed)."""
    score = det.score[rows]
    action = det.action[rows].astype(np.int64)
    keep = _valid_boxes(det.row_boxes(rows)) & (score > STMIXER_MIN_SCORE)
    rows, score, action, kf, image = rows[keep], score[keep], action[keep], kf[keep], image[keep]
    group = image * num_classes + action
    order = np.lexsort((-score, group))
    sorted_group = group[order]
    sorted_score = score[order]
    tie = np.flatnonzero((sorted_group[1:] == sorted_group[:-1]) & (sorted_score[1:] == sorted_score[:-1]))
    replayed = 0
    if len(tie):
        starts, lengths = _segments(sorted_group)
        tied_segments = np.unique(np.searchsorted(starts, tie, side="right") - 1)
        first = order[starts[tied_segments]]
        _, has_gt = gt.lookup(kf[first] * num_classes + action[first])
        for seg in tied_segments[has_gt > 0].tolist():
            span = slice(starts[seg], starts[seg] + lengths[seg])
            members = np.sort(order[span])  # file order, as the official per-class arrays
            order[span] = members[np.argsort(score[members])[::-1]]
            replayed += 1
    order = order[_rank_in_segment(sorted_group) < STMIXER_PER_CLASS_CAP]
    return rows[order], replayed


def _order_activitynet(det, rows, kf, image, gt, num_classes):
    """Rows in (image, official in-keyframe order) after the 50-cap and invalid-box removal."""
    score = det.score[rows]
    action = det.action[rows].astype(np.int64)
    order = np.lexsort((-score, image))
    sorted_image = image[order]
    sorted_score = score[order]
    rank = _rank_in_segment(sorted_image)
    starts, lengths = _segments(sorted_image)
    # A tie across the cap makes the kept set depend on the heap's history.
    over = lengths > ACTIVITYNET_CAP
    boundary = starts[over] + ACTIVITYNET_CAP
    exact = np.zeros(len(starts), dtype=bool)
    exact[np.flatnonzero(over)[sorted_score[boundary - 1] == sorted_score[boundary]]] = True
    # Tied scores of one class where that class has ground truth: order is the heap's.
    kept = order[rank < ACTIVITYNET_CAP]
    by_class = kept[np.lexsort((score[kept], action[kept], image[kept]))]
    same = (
        (image[by_class][1:] == image[by_class][:-1])
        & (action[by_class][1:] == action[by_class][:-1])
        & (score[by_class][1:] == score[by_class][:-1])
    )
    tied = by_class[1:][same]
    if len(tied):
        _, has_gt = gt.lookup(kf[tied] * num_classes + action[tied])
        exact[np.searchsorted(sorted_image[starts], image[tied[has_gt > 0]])] = True
    sequence = [order[rank < ACTIVITYNET_CAP]]
    keep_fast = np.repeat(~exact, lengths)[rank < ACTIVITYNET_CAP] if len(lengths) else np.zeros(0, bool)
    sequence = [sequence[0][keep_fast]]
    sequence_image = [image[sequence[0]]]
    boxes = det.row_boxes(rows)
    for seg in np.flatnonzero(exact).tolist():
        members = np.sort(order[starts[seg] : starts[seg] + lengths[seg]])  # file order
        chosen = members[heap_order(score[members], action[members], boxes[members], ACTIVITYNET_CAP)]
        sequence.append(chosen)
        sequence_image.append(image[chosen])
    sequence = np.concatenate(sequence)
    sequence = sequence[np.argsort(np.concatenate(sequence_image), kind="stable")]
    sequence = sequence[_valid_boxes(boxes[sequence])]
    return rows[sequence], int(exact.sum())


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


def _true_positives(det, sequence, kf, gt, num_classes):
    """bool ``[len(sequence)]``: greedy official matching, detections in sequence order."""
    action = det.action[sequence].astype(np.int64)
    start, size = gt.lookup(kf * num_classes + action)
    tp = np.zeros(len(sequence), dtype=bool)
    cand = np.flatnonzero(size > 0)
    if len(cand) == 0:
        return tp
    pair_det = np.repeat(cand, size[cand])
    seg_start = np.concatenate(([0], np.cumsum(size[cand])[:-1]))
    offset = np.arange(len(pair_det)) - np.repeat(seg_start, size[cand])
    pair_gt = np.repeat(start[cand], size[cand]) + offset
    iou = _iou(det.row_boxes(sequence[pair_det]), gt.boxes[pair_gt])
    key = np.where(np.isnan(iou), np.inf, iou)  # numpy's argmax picks the first NaN
    seg_max = np.maximum.reduceat(key, seg_start)
    is_max = np.flatnonzero(key == np.repeat(seg_max, size[cand]))
    seg_of = np.repeat(np.arange(len(cand)), size[cand])
    _, first = np.unique(seg_of[is_max], return_index=True)
    best = is_max[first]
    qualifies = iou[best] >= IOU_THRESHOLD
    claimed_gt = pair_gt[best][qualifies]
    _, first_claim = np.unique(claimed_gt, return_index=True)
    tp[cand[np.flatnonzero(qualifies)[first_claim]]] = True
    return tp


def evaluate_frame_map(gt, det, labelmap, excluded=(), protocol="stmixer"):
    """Frame-mAP of detections against ground truth (see the module docstring for the rules).

    Args:
        gt: AVATable of ground truth (the 8th column, if any, is the person id).
        det: AVATable of detections in file order (boxes normalized x1, y1, x2, y2).
        labelmap: LabelMap of the evaluated classes.
        excluded: iterable of ``(video_id, int timestamp)`` keyframes to ignore.
        protocol: "stmixer" (default; official STMixer / PySlowFast numbers) or
            "activitynet" (ActivityNet 2019 evaluator, 50 detections per keyframe).

    Returns:
        FrameMAP.

    Raises:
        EvaluationError: no ground truth left to evaluate, or a ground-truth box with
            x1 > x2 or y1 > y2 (the official code crashes on it).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    num_classes = labelmap.max_id + 1
    gt_kf, det_kf, is_excluded = _keyframe_ids(gt, det, excluded)

    gt_keep = _allowed_mask(gt.action, labelmap) & ~is_excluded[gt_kf]
    ground_truth = _GroundTruth(gt, gt_kf, gt_keep, protocol, num_classes)
    if ground_truth.num_gt.sum() == 0:
        raise EvaluationError(
            f"{gt.source}: no ground-truth box of a label-map class is left after exclusions; nothing to evaluate"
        )

    det_rows = np.flatnonzero(_allowed_mask(det.action, labelmap))
    image = _first_appearance_rank(det_kf[det_rows])
    keep = ~is_excluded[det_kf[det_rows]]
    det_rows, image = det_rows[keep], image[keep]
    order_fn = _order_activitynet if protocol == "activitynet" else _order_stmixer
    sequence, replayed = order_fn(det, det_rows, det_kf[det_rows], image, ground_truth, num_classes)
    del det_rows, image
    sequence = sequence[np.argsort(det.action[sequence], kind="stable")]
    tp = _true_positives(det, sequence, det_kf[sequence], ground_truth, num_classes)

    action = det.action[sequence]
    class_starts = np.searchsorted(action, np.arange(num_classes + 1))
    ap_by_index = np.full(labelmap.max_id, np.nan)
    num_detections = {}
    for class_id in range(1, num_classes):
        span = slice(class_starts[class_id], class_starts[class_id + 1])
        num_detections[class_id] = span.stop - span.start
        if ground_truth.num_gt[class_id] > 0:
            scores = det.score[sequence[span]]
            ap_by_index[class_id - 1] = _average_precision(scores, tp[span], ground_truth.num_gt[class_id])
    mean_ap = float(np.nanmean(ap_by_index))
    ap = {
        c: (None if ground_truth.num_gt[c] == 0 else float(ap_by_index[c - 1])) for c in labelmap.ids
    }
    return FrameMAP(
        mean_ap=mean_ap,
        ap=ap,
        num_gt={c: int(ground_truth.num_gt[c]) for c in labelmap.ids},
        num_detections={c: num_detections[c] for c in labelmap.ids},
        protocol=protocol,
        num_replayed=replayed,
    )
