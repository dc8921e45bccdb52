"""Helpers for the evaluation tests: tiny tables, CSV text, label maps and random cases."""

import numpy as np

from stmixer.evaluation import AVATable, LabelMap

FULL = (0.0, 0.0, 1.0, 1.0)


def make_table(rows, source="<test>"):
    """AVATable from rows ``(video, timestamp, (x1, y1, x2, y2), action, score)`` (one box per row)."""
    videos = list(dict.fromkeys(r[0] for r in rows))
    n = len(rows)
    return AVATable(
        videos=videos,
        box_video=np.array([videos.index(r[0]) for r in rows], dtype=np.int32).reshape(n),
        box_timestamp=np.array([r[1] for r in rows], dtype=np.int32).reshape(n),
        boxes=np.array([r[2] for r in rows], dtype=np.float64).reshape(n, 4),
        box_index=np.arange(n, dtype=np.int32),
        action=np.array([r[3] for r in rows], dtype=np.int32).reshape(n),
        score=np.array([r[4] for r in rows], dtype=np.float64).reshape(n),
        source=source,
    )


def labelmap(*ids):
    """LabelMap of the given ids, named "a<id>"."""
    return LabelMap(ids=tuple(ids), names={i: f"a{i}" for i in ids})


def csv_text(rows):
    """AVA CSV text of rows ``(video, timestamp, box, action[, score])``."""
    lines = []
    for video, timestamp, box, *rest in rows:
        fields = [video, str(timestamp)] + [repr(float(c)) for c in box] + [str(v) for v in rest]
        lines.append(",".join(fields))
    return "\n".join(lines) + "\n"


def random_case(rng, num_keyframes=12, num_classes=5, quantize=None, grid=False, shuffle=False, crowded=False):
    """Random ground truth / detections exercising ties, duplicates, exact-IoU boxes and the caps.

    Returns:
        (gt rows, det rows, LabelMap, excluded keyframes) as accepted by :func:`make_table`.
    """
    ids = sorted(rng.choice(np.arange(1, num_classes + 3), num_classes, replace=False).tolist())
    frames = sorted({(f"v{rng.integers(3)}", 900 + int(rng.integers(20))) for _ in range(num_keyframes)})

    def box():
        if grid:
            x = np.sort(rng.integers(0, 9, 2) / 8)
            y = np.sort(rng.integers(0, 9, 2) / 8)
        else:
            x, y = np.sort(rng.random(2)), np.sort(rng.random(2))
        return (x[0], y[0], x[1], y[1])

    def score():
        s = float(rng.random())
        return round(s * quantize) / quantize if quantize else s

    gt, gt_boxes = [], {}
    for frame in frames:
        if rng.random() < 0.2:
            continue
        gt_boxes[frame] = [box() for _ in range(int(rng.integers(1, 4)))]
        for person, b in enumerate(gt_boxes[frame]):
            for action in rng.choice(np.arange(1, num_classes + 4), int(rng.integers(1, 3)), replace=False).tolist():
                gt += [(*frame, b, action, float(rng.integers(3)))] * (2 if rng.random() < 0.05 else 1)
    det = []
    for frame in frames:
        boxes = [tuple(c + (0 if grid else rng.normal(0, 0.03)) for c in b) for b in gt_boxes.get(frame, [])]
        boxes += [box() for _ in range(int(rng.integers(0, 8 if crowded else 3)))]
        for b in boxes:
            if rng.random() < 0.03:
                b = (b[2], b[1], b[0], b[3])  # x2 < x1: dropped by the evaluators
            for action in range(1, num_classes + 4):
                det.append((*frame, b, action, score()))
    if shuffle:
        det = [det[i] for i in rng.permutation(len(det))]
    excluded = {frames[int(rng.integers(len(frames)))]} if rng.random() < 0.5 else set()
    return gt, det, labelmap(*ids), excluded
