"""Plain-loop reference of the frame-mAP rules (slow; for cross-checking the vectorized path).

It follows the rules of :mod:`stmixer.evaluation.frame_map` step by step with
dictionaries and per-keyframe, per-class loops, the way the official evaluators
are structured, so that the vectorized implementation can be compared with an
independent one on random and adversarial inputs (tests, ``--reference`` in the CLI).
"""

import collections
import warnings

import numpy as np

from .frame_map import (
    ACTIVITYNET_CAP,
    IOU_THRESHOLD,
    PROTOCOLS,
    STMIXER_MIN_SCORE,
    STMIXER_PER_CLASS_CAP,
    EvaluationError,
    FrameMAP,
    heap_order,
)


def _rows_by_keyframe(table, allowed):
    """``{(video, ts): [row, ...]}`` in order of first appearance, label-map rows only."""
    grouped = collections.OrderedDict()
    for row in range(len(table)):
        if int(table.action[row]) in allowed:
            key = table.row_keyframe(row)
            grouped.setdefault(key, []).append(row)
    return grouped


def _pairwise_iou(det_boxes, gt_boxes):
    """``[n, m]`` IoU matrix of x1, y1, x2, y2 boxes (same formula as the official)."""
    out = np.empty((len(det_boxes), len(gt_boxes)))
    for i, d in enumerate(det_boxes):
        for j, g in enumerate(gt_boxes):
            h = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
            w = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
            inter = h * w
            union = ((d[3] - d[1]) * (d[2] - d[0]) + (g[3] - g[1]) * (g[2] - g[0])) - inter
            out[i, j] = inter / union if union != 0 else float("nan")
    return out


def _pairwise_iou_float32(det_boxes, gt_boxes):
    """``[n, m]`` IoU as mmaction2 computes it: float32 coordinates, differences and areas; float64 intersection."""
    det_boxes, gt_boxes = np.asarray(det_boxes, np.float32), np.asarray(gt_boxes, np.float32)
    out = np.empty((len(det_boxes), len(gt_boxes)))
    for i, d in enumerate(det_boxes):
        for j, g in enumerate(gt_boxes):
            h = max(0.0, float(min(d[3], g[3]) - max(d[1], g[1])))
            w = max(0.0, float(min(d[2], g[2]) - max(d[0], g[0])))
            inter = h * w
            union = float((d[3] - d[1]) * (d[2] - d[0]) + (g[3] - g[1]) * (g[2] - g[0])) - inter
            out[i, j] = inter / union if union != 0 else float("nan")
    return out


def _reference_mmaction2(gt, det, labelmap, excluded):
    """The ``mmaction2`` rules (see ``frame_map._evaluate_mmaction2``), keyframe by keyframe."""
    allowed = set(labelmap.ids)
    gt_rows = _rows_by_keyframe(gt, allowed)
    num_gt = collections.Counter(int(gt.action[r]) for rows in gt_rows.values() for r in rows)
    if not any(key not in excluded for key in gt_rows):
        raise EvaluationError(f"{gt.source}: no ground-truth box left to evaluate")
    for rows in gt_rows.values():
        for row, box in zip(rows, gt.row_boxes(np.array(rows))):
            if box[0] > box[2] or box[1] > box[3]:
                raise EvaluationError(f"{gt.source}: ground-truth row {row}: box has x1 > x2 or y1 > y2")
    det_rows = _rows_by_keyframe(det, allowed)
    scores_per_class, tp_per_class = {}, {}
    for key, rows in gt_rows.items():
        if key in excluded:
            continue
        key_gt = sorted(rows, key=lambda r: -gt.score[r])
        key_det = sorted(det_rows.get(key, []), key=lambda r: -det.score[r])
        for class_id in list(set(int(det.action[r]) for r in key_det)):
            mine = np.array([r for r in key_det if det.action[r] == class_id])
            gts = [r for r in key_gt if gt.action[r] == class_id]
            boxes = det.row_boxes(mine).astype(np.float32)
            if ((boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3])).any():
                raise EvaluationError(f"{det.source}: detection box has x1 > x2 or y1 > y2")
            tp = [False] * len(mine)
            if gts:
                iou = _pairwise_iou_float32(boxes, gt.row_boxes(np.array(gts)))
                taken = [False] * len(gts)
                for i in range(len(mine)):
                    j = int(np.argmax(iou[i]))
                    if iou[i, j] >= IOU_THRESHOLD and not taken[j]:
                        tp[i] = taken[j] = True
            scores_per_class.setdefault(class_id, []).extend(det.score[mine].tolist())
            tp_per_class.setdefault(class_id, []).extend(tp)
    ap = {}
    for class_id, scores in scores_per_class.items():  # in the order the classes were met
        if num_gt[class_id]:
            ap[class_id] = _average_precision(scores, tp_per_class[class_id], num_gt[class_id], np.float32)
        else:
            ap[class_id] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_ap = float(np.nanmean(np.array(list(ap.values()), dtype=np.float64)))
    return FrameMAP(
        mean_ap=mean_ap,
        ap={c: (ap[c] if c in ap and not np.isnan(ap[c]) else None) for c in labelmap.ids},
        num_gt={c: num_gt[c] for c in labelmap.ids},
        num_detections={c: len(scores_per_class.get(c, ())) for c in labelmap.ids},
        protocol="mmaction2",
    )


def _average_precision(scores, tp, num_gt, dtype=np.float64):
    order = np.argsort(np.asarray(scores, dtype=dtype))[::-1]
    tp_sorted = [int(tp[i]) for i in order]
    precision, recall, hits = [], [], 0
    for k, t in enumerate(tp_sorted, start=1):
        hits += t
        precision.append(hits / k)
        recall.append(hits / num_gt)
    if not precision:
        return 0.0
    recall = [0.0] + recall + [1.0]
    precision = [0.0] + precision + [0.0]
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    terms = [(recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)) if recall[i] != recall[i - 1]]
    return float(np.sum(np.array(terms, dtype=np.float64)))


def reference_frame_map(gt, det, labelmap, excluded=(), protocol="stmixer"):
    """Same contract as :func:`stmixer.evaluation.frame_map.evaluate_frame_map`, computed with loops."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    excluded = {(v, int(t)) for v, t in excluded}
    if protocol == "mmaction2":
        return _reference_mmaction2(gt, det, labelmap, excluded)
    allowed = set(labelmap.ids)
    cap = ACTIVITYNET_CAP if protocol == "activitynet" else 0

    gt_rows = _rows_by_keyframe(gt, allowed)
    gt_by_key = {}
    num_gt = collections.Counter()
    for key, rows in gt_rows.items():
        if key in excluded:
            continue
        rows = np.array(rows)
        boxes = gt.row_boxes(rows)
        for row, box in zip(rows, boxes):
            if box[0] > box[2] or box[1] > box[3]:
                raise EvaluationError(f"{gt.source}: ground-truth row {row}: box has x1 > x2 or y1 > y2")
        if protocol == "activitynet":
            rows = rows[heap_order(gt.score[rows], gt.action[rows], boxes, 0)]
        gt_by_key[key] = rows
        for row in rows:
            num_gt[int(gt.action[row])] += 1
    if not num_gt:
        raise EvaluationError(f"{gt.source}: no ground-truth box left to evaluate")

    scores_per_class = collections.defaultdict(list)
    tp_per_class = collections.defaultdict(list)
    for key, rows in _rows_by_keyframe(det, allowed).items():
        if key in excluded:
            continue
        rows = np.array(rows)
        if cap:
            rows = rows[heap_order(det.score[rows], det.action[rows], det.row_boxes(rows), cap)]
        boxes = det.row_boxes(rows)
        rows = rows[(boxes[:, 1] < boxes[:, 3]) & (boxes[:, 0] < boxes[:, 2])]
        key_gt = gt_by_key.get(key, np.zeros(0, dtype=np.int64))
        for class_id in labelmap.ids:
            mine = rows[det.action[rows] == class_id]
            if protocol == "stmixer":
                mine = mine[det.score[mine] > STMIXER_MIN_SCORE]
                mine = mine[np.argsort(det.score[mine])[::-1]][:STMIXER_PER_CLASS_CAP]
            if len(mine) == 0:
                continue
            gts = key_gt[gt.action[key_gt] == class_id]
            tp = [False] * len(mine)
            if len(gts):
                iou = _pairwise_iou(det.row_boxes(mine), gt.row_boxes(gts))
                taken = [False] * len(gts)
                for i in range(len(mine)):
                    j = int(np.argmax(iou[i]))
                    if iou[i, j] >= IOU_THRESHOLD and not taken[j]:
                        tp[i] = taken[j] = True
            scores_per_class[class_id].extend(det.score[mine].tolist())
            tp_per_class[class_id].extend(tp)

    ap_by_index = np.full(labelmap.max_id, np.nan)
    for class_id in range(1, labelmap.max_id + 1):
        if num_gt[class_id]:
            ap_by_index[class_id - 1] = _average_precision(
                scores_per_class[class_id], tp_per_class[class_id], num_gt[class_id]
            )
    return FrameMAP(
        mean_ap=float(np.nanmean(ap_by_index)),
        ap={c: (float(ap_by_index[c - 1]) if num_gt[c] else None) for c in labelmap.ids},
        num_gt={c: num_gt[c] for c in labelmap.ids},
        num_detections={c: len(scores_per_class[c]) for c in labelmap.ids},
        protocol=protocol,
    )
