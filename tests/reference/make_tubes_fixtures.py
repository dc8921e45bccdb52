"""Build the video-mAP / frame-mAP fixtures: small cases and the ACT evaluation's numbers on them.

    python tests/reference/make_tubes_fixtures.py --act /path/to/MOC-Detector --out tests/evaluation/fixtures/tubes

Each case is written as ``<name>.json``: the ground truth (the pickle's dict, tube arrays as lists), the
detections (columns of the rows ``video,frame,x1,y1,x2,y2,label,score``, ``x1y1x2y2`` flattened) and
the reference's numbers (fractions, per class too).
The reference runs through ``act_harness`` (see its docstring for the shims).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from act_harness import load_reference, run_reference  # noqa: E402


def _walk(rng, n, w=320, h=240):
    """A box trajectory of n frames (float32 pixels, one decimal)."""
    bw, bh = rng.uniform(30, 120), rng.uniform(50, 160)
    x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
    out = []
    for _ in range(n):
        x = float(np.clip(x + rng.normal(0, 2.5), 0, w - bw))
        y = float(np.clip(y + rng.normal(0, 2.0), 0, h - bh))
        out.append((x, y, x + bw, y + bh))
    return np.round(np.array(out), 1)


def random_case(seed, n_videos=4, n_labels=4, frames=(20, 50), max_tubes=3, p_det=0.85, p_dup=0.5,
                p_wrong=0.2, fp_per_frame=1.5, score_decimals=4, long_tubes=True):
    """Videos with 1..max_tubes ground-truth tubes (some start/end mid-video) and detector-like
    detections: jittered true boxes (missed frames), near-duplicates, wrong classes, false positives."""
    rng = np.random.default_rng(seed)
    labels = [f"class_{i}" for i in range(n_labels)]
    videos = [f"{labels[i % n_labels]}/v_{seed}_{i:02d}" for i in range(n_videos)]
    gt = {"labels": labels, "gttubes": {}, "nframes": {}, "resolution": {}, "train_videos": [[]],
          "test_videos": [videos]}
    rows = []
    for iv, v in enumerate(videos):
        n = int(rng.integers(*frames))
        gt["nframes"][v], gt["resolution"][v] = n, (240, 320)
        cls = iv % n_labels
        tubes = {}
        for k in range(int(rng.integers(1, max_tubes + 1))):
            c = cls if k == 0 or rng.random() < 0.8 else int(rng.integers(n_labels))
            if long_tubes and rng.random() < 0.5:
                s, e = 1, n
            else:
                s = int(rng.integers(1, max(2, n // 2)))
                e = int(rng.integers(min(n, s + 10), n + 1))
            boxes = _walk(rng, e - s + 1)
            arr = np.concatenate([np.arange(s, e + 1)[:, None], boxes], axis=1).astype(np.float32)
            tubes.setdefault(c, []).append(arr)
            base = rng.uniform(0.4, 0.95)
            for f, box in zip(range(s, e + 1), boxes):
                if rng.random() < p_det:
                    jit = np.round(box + rng.normal(0, 3, 4), 1)
                    rows.append((v, f, *jit, c, base + rng.normal(0, 0.05)))
                    if rng.random() < p_dup:
                        dup = np.round(jit + rng.normal(0, 4, 4), 1)
                        rows.append((v, f, *dup, c, base * rng.uniform(0.5, 1.0)))
                if rng.random() < p_wrong:
                    jit = np.round(box + rng.normal(0, 3, 4), 1)
                    rows.append((v, f, *jit, int(rng.integers(n_labels)), rng.uniform(0.05, 0.6)))
        gt["gttubes"][v] = tubes
        for f in range(1, n + 1):
            for _ in range(rng.poisson(fp_per_frame)):
                x, y = rng.uniform(0, 250), rng.uniform(0, 150)
                bw, bh = rng.uniform(20, 70), rng.uniform(30, 90)
                rows.append((v, f, round(x, 1), round(y, 1), round(x + bw, 1), round(y + bh, 1),
                             int(rng.integers(n_labels)), rng.uniform(0.0, 0.5)))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    rows = [(v, int(f), float(x1), float(y1), float(x2), float(y2), int(c),
             round(float(np.clip(s, 0, 1)), score_decimals)) for v, f, x1, y1, x2, y2, c, s in rows]
    return gt, rows


def perfect_case():
    """Detections equal to the ground truth, one per box: every AP is 1."""
    rng = np.random.default_rng(7)
    labels = ["a", "b"]
    gt = {"labels": labels, "gttubes": {}, "nframes": {}, "resolution": {}, "train_videos": [[]],
          "test_videos": [["a/1", "b/1", "b/2"]]}
    rows = []
    for v, c, (s, e), n in (("a/1", 0, (1, 30), 30), ("b/1", 1, (5, 40), 50), ("b/2", 1, (1, 20), 20)):
        boxes = _walk(rng, e - s + 1)
        arr = np.concatenate([np.arange(s, e + 1)[:, None], boxes], axis=1).astype(np.float32)
        gt["gttubes"][v], gt["nframes"][v], gt["resolution"][v] = {c: [arr]}, n, (240, 320)
        rows += [(v, int(f), *map(float, b), c, 0.9) for f, b in zip(range(s, e + 1), boxes)]
    return gt, rows


def hand_case():
    """Two actors of one class, a gap that splits a tube, duplicates with tied scores, a short tube
    (< 15 frames, dropped), a class without ground truth or detections, one with ground truth only."""
    labels = ["run", "jump", "empty", "missed"]
    box_a = np.array([10, 10, 60, 110], dtype=np.float64)
    box_b = np.array([150, 20, 210, 140], dtype=np.float64)
    frames = np.arange(1, 41)
    tube_a = np.concatenate([frames[:, None], np.tile(box_a, (40, 1))], axis=1).astype(np.float32)
    tube_b = np.concatenate([frames[5:35, None], np.tile(box_b, (30, 1))], axis=1).astype(np.float32)
    tube_m = np.concatenate([frames[:20, None], np.tile(box_b, (20, 1))], axis=1).astype(np.float32)
    gt = {"labels": labels, "gttubes": {"run/1": {0: [tube_a, tube_b]}, "jump/1": {1: [tube_a[:25]], 3: [tube_m]}},
          "nframes": {"run/1": 40, "jump/1": 30}, "resolution": {"run/1": (240, 320), "jump/1": (240, 320)},
          "train_videos": [[]], "test_videos": [["run/1", "jump/1"]]}
    rows = []
    for f in range(1, 41):
        if f not in (21, 22):  # a gap: actor a's tube is split in two
            rows.append(("run/1", f, *box_a, 0, 0.8))
            rows.append(("run/1", f, *(box_a + 1), 0, 0.8))  # a duplicate with the same score
        if 6 <= f <= 35:
            rows.append(("run/1", f, *(box_b + (f % 3)), 0, 0.7))
        if f <= 10:
            rows.append(("run/1", f, *(box_b + 50), 1, 0.95))  # short wrong-class tube
    for f in range(1, 31):
        rows.append(("jump/1", f, *(box_a + 2), 1, 0.6 if f % 2 else 0.65))
        rows.append(("jump/1", f, *(box_a + 40), 1, 0.6))  # a false-positive tube with a tied score
    return gt, [(v, int(f), *map(float, b), int(c), float(s)) for v, f, *b, c, s in rows]


CASES = {
    "perfect": perfect_case,
    "hand": hand_case,
    "random_small": lambda: random_case(1, p_det=0.97),
    "random_ties": lambda: random_case(2, n_videos=6, score_decimals=1, p_dup=0.8, p_det=0.97),
    "random_multi": lambda: random_case(3, n_videos=6, n_labels=5, max_tubes=4, p_det=0.93, long_tubes=False),
    "random_dense": lambda: random_case(4, n_videos=4, n_labels=3, frames=(30, 50), fp_per_frame=4, p_dup=0.9,
                                        p_det=0.99),
    "random_missed": lambda: random_case(5, n_videos=6, p_det=0.8, p_wrong=0.4),
}


def to_json(gt, rows, expected):
    def tubes(t):
        return {str(c): [a.tolist() for a in lst] for c, lst in t.items()}

    g = dict(gt)
    g["gttubes"] = {v: tubes(t) for v, t in gt["gttubes"].items()}
    g["resolution"] = {v: list(r) for v, r in gt["resolution"].items()}
    names = sorted({r[0] for r in rows})
    index = {v: i for i, v in enumerate(names)}
    det = {"videos": names, "video": [index[r[0]] for r in rows], "frame": [r[1] for r in rows],
           "x1y1x2y2": [x for r in rows for x in r[2:6]], "label": [r[6] for r in rows], "score": [r[7] for r in rows]}
    return {"groundtruth": g, "detections": det, "expected": expected}


def from_json(data):
    """(ground-truth dict with float32 tube arrays, detection rows, expected numbers) of a fixture."""
    g = dict(data["groundtruth"])
    g["gttubes"] = {v: {int(c): [np.array(a, dtype=np.float32) for a in lst] for c, lst in t.items()}
                    for v, t in g["gttubes"].items()}
    g["resolution"] = {v: tuple(r) for v, r in g["resolution"].items()}
    d = data["detections"]
    b = d["x1y1x2y2"]
    rows = [(d["videos"][v], f, *b[4 * i : 4 * i + 4], c, s)
            for i, (v, f, c, s) in enumerate(zip(d["video"], d["frame"], d["label"], d["score"]))]
    return g, rows, data["expected"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--act", required=True, help="MOC-Detector checkout (or its src folder)")
    parser.add_argument("--out", required=True, help="fixture folder")
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    ref = load_reference(args.act)
    os.makedirs(args.out, exist_ok=True)
    for name, make in CASES.items():
        if args.only and name not in args.only:
            continue
        gt, rows = make()
        with tempfile.TemporaryDirectory() as work:
            expected = run_reference(ref, gt, rows, work)
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(to_json(gt, rows, expected), f, separators=(",", ":"))
        print(f"{name}: {len(rows)} detections, frame-mAP {expected['frame_mAP']:.6f}, video-mAP "
              + ", ".join(f"{k} {v:.6f}" for k, v in expected["video_mAP"].items()))


if __name__ == "__main__":
    main()
