"""Reference numbers of mmaction2's own AVA evaluation (``ava_eval``) on cases built here.

    python tests/reference/make_mmaction2_eval_fixtures.py --mmaction2 PATH --out DIR

``PATH`` is a checkout of open-mmlab/mmaction2 (1.x); nothing of it is copied: its
``mmaction/evaluation/functional/ava_utils.py`` and ``ava_evaluation/`` are imported from
there, run on the case files, and only the numbers they return are written. ``DIR``
(``tests/reference/mmaction2/eval``) receives one folder per case (``gt.csv``,
``det.csv``, ``labelmap.pbtxt``, ``excl.csv``) and ``expected.json``: per case the
official overall mAP and every per-class AP the official code computes, in the order
it computes them, as ``float.hex`` strings (bit-exact) with a readable copy.

The official code is called as mmaction2's ``AVAMetric`` calls it
(``ava_eval(result_csv, "mAP", label_file, ann_file, exclude_file,
ignore_empty_frames=True)``). Shims (none changes a number):

* the package ``mmaction.evaluation.functional`` is loaded as a bare package, without
  its ``__init__`` (which imports unrelated modules and their dependencies); only
  ``ava_utils`` and ``ava_evaluation`` (numpy only) run;
* ``numpy.NAN`` is set to ``numpy.nan`` when missing (removed in numpy 2; the official
  ``compute_average_precision`` returns it for a class with detections but no ground truth);
* ``multiprocessing.Pool(32)`` is replaced by an in-process pool whose ``map`` is the
  built-in ``map`` (``Pool.map`` keeps the order, so the results are the same);
* the per-class APs are recorded by wrapping ``metrics.compute_average_precision`` and
  reading the class ids from the ``Index: k`` lines ``ava_eval`` prints (same order).
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import types

import numpy as np

LABELS = {1: "bend/bow", 2: "crawl", 3: "crouch", 4: "dance", 5: "fall down", 6: "get up", 80: "watch"}


# ---------------------------------------------------------------------------------- cases
def _fmt(x):
    return repr(float(x))


def _write_case(folder, gt, det, ids, excluded=(), labelmap_form="item"):
    """gt: rows (video, ts, x1, y1, x2, y2, action[, person]); det: (video, ts, x1, y1, x2, y2, action, score)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "gt.csv"), "w") as f:
        for r in gt:
            f.write(",".join([r[0], f"{r[1]:04d}"] + [_fmt(v) for v in r[2:6]] + [str(r[6])] + [str(v) for v in r[7:]]) + "\n")
    with open(os.path.join(folder, "det.csv"), "w") as f:
        for r in det:
            f.write(",".join([r[0], f"{r[1]:04d}"] + [_fmt(v) for v in r[2:6]] + [str(r[6]), _fmt(r[7])]) + "\n")
    with open(os.path.join(folder, "labelmap.pbtxt"), "w") as f:
        for i in ids:
            if labelmap_form == "item":
                f.write(f'item {{\n  name: "{LABELS[i]}"\n  id: {i}\n}}\n')
            else:
                f.write(f'label {{\n  name: "{LABELS[i]}"\n  label_id: {i}\n  label_type: PERSON_MOVEMENT\n}}\n')
    with open(os.path.join(folder, "excl.csv"), "w") as f:
        for v, t in excluded:
            f.write(f"{v},{t:04d}\n")


def hand_cases():
    """Small cases, each aimed at one rule. Returns {name: kwargs of _write_case}."""
    a, b = (0.1, 0.1, 0.5, 0.9), (0.5, 0.1, 0.9, 0.9)
    cases = {}
    # class 3: ground truth, no detection (does not count); class 4: detections, no ground
    # truth (NaN, does not count); detections on a keyframe without ground truth (ignored).
    cases["classes_without_gt_or_detections"] = dict(
        gt=[("vidA", 902, *a, 1, 0), ("vidA", 902, *b, 2, 1), ("vidA", 903, *a, 3, 0), ("vidA", 903, *a, 1, 0)],
        det=[("vidA", 902, *a, 1, 0.9), ("vidA", 902, *b, 1, 0.8), ("vidA", 902, *b, 2, 0.7),
             ("vidA", 902, *a, 4, 0.6), ("vidA", 903, *a, 1, 0.3), ("vidA", 904, *a, 1, 0.95),
             ("vidA", 904, *a, 2, 0.99), ("vidB", 902, *a, 1, 0.5)],
        ids=[1, 2, 3, 4],
    )
    # Ground truth on an excluded keyframe still counts in #GT; its detections are ignored.
    cases["excluded_keyframes"] = dict(
        gt=[("vidA", 902, *a, 1, 0), ("vidA", 903, *a, 1, 0), ("vidA", 903, *b, 2, 1), ("vidA", 904, *b, 2, 0)],
        det=[("vidA", 902, *a, 1, 0.9), ("vidA", 903, *a, 1, 0.8), ("vidA", 903, *b, 2, 0.7), ("vidA", 904, *a, 2, 0.2)],
        ids=[1, 2],
        excluded=[("vidA", 903)],
    )
    # No detection on a ground-truth keyframe: no class counts, mAP NaN.
    cases["no_detection_on_gt_keyframes"] = dict(
        gt=[("vidA", 902, *a, 1, 0)],
        det=[("vidA", 905, *a, 1, 0.9)],
        ids=[1, 2],
    )
    # 120 detections on one keyframe (no 50-cap), scores tied in groups of 10.
    rng = np.random.default_rng(7)
    gt, det = [], []
    for p in range(6):
        x = 0.15 * p
        gt.append(("vidC", 1000, x, 0.1, x + 0.12, 0.8, 1 + p % 2, p))
    for i in range(120):
        x = 0.15 * (i % 6) + rng.integers(-2, 3) / 64
        det.append(("vidC", 1000, x, 0.1, x + 0.12, 0.8, 1 + (i // 6) % 2, (i // 10) / 16))
    cases["more_than_50_per_keyframe"] = dict(gt=gt, det=det, ids=[1, 2])
    # Scores distinct in float64 but equal in float32; a box whose IoU crosses 0.5 in float32.
    eps = 2.0**-30
    cases["float32_ties_and_iou"] = dict(
        gt=[("vidD", 902, 0.0, 0.0, 0.5, 1.0, 1, 0), ("vidD", 903, 0.0, 0.0, 0.5, 1.0, 1, 0),
            ("vidD", 903, 0.5, 0.0, 1.0, 1.0, 1, 1), ("vidD", 904, 0.0, 0.0, 0.25, 1.0, 1, 0)],
        det=[("vidD", 902, 0.0, 0.0, 0.75 + 1e-9, 1.0, 1, 0.5 + eps), ("vidD", 903, 0.5, 0.0, 1.0, 1.0, 1, 0.5),
             ("vidD", 903, 0.25, 0.0, 0.75, 1.0, 1, 0.5 - eps), ("vidD", 902, 0.0, 0.0, 0.25, 1.0, 1, 0.5),
             # IoU 0.25 / (0.5 + 1e-9) < 0.5 in float64, exactly 0.5 in float32: a true positive there
             ("vidD", 904, 0.0, 0.0, 0.5 + 1e-9, 1.0, 1, 0.3)],
        ids=[1],
    )
    # Zero-area boxes are kept (false positives); ground-truth person ids order the matching.
    cases["zero_area_and_person_order"] = dict(
        gt=[("vidE", 902, 0.2, 0.2, 0.2, 0.6, 1, 0), ("vidE", 902, 0.0, 0.0, 0.5, 1.0, 1, 3),
            ("vidE", 902, 0.25, 0.0, 0.75, 1.0, 1, 7)],
        det=[("vidE", 902, 0.2, 0.2, 0.2, 0.6, 1, 0.9), ("vidE", 902, 0.125, 0.0, 0.625, 1.0, 1, 0.8),
             ("vidE", 902, 0.125, 0.0, 0.625, 1.0, 1, 0.7), ("vidE", 902, 0.3, 0.3, 0.3, 0.3, 1, 0.6)],
        ids=[1],
    )
    # v2.2 label map form, non-contiguous ids; rows of other ids on both sides are dropped.
    cases["labelmap_v22_sparse_ids"] = dict(
        gt=[("vidF", 902, *a, 80, 0), ("vidF", 902, *b, 5, 1), ("vidF", 903, *a, 6, 0), ("vidF", 904, *b, 1, 0)],
        det=[("vidF", 902, *a, 80, 0.9), ("vidF", 902, *b, 5, 0.4), ("vidF", 902, *b, 80, 0.5),
             ("vidF", 903, *a, 6, 0.9), ("vidF", 904, *b, 1, 0.9), ("vidF", 904, *b, 5, 0.9)],
        ids=[5, 80, 1],
        labelmap_form="label",
    )
    # The mAP sums the APs in the order the official code meets the classes (a Python set's
    # order per keyframe: 80, 1, 5 here), which decides its last bit: APs 1, 1, 1/3.
    cases["class_order_of_the_mean"] = dict(
        gt=[("vidG", 902, *a, 1, 0), ("vidG", 902, *a, 5, 0), ("vidG", 902, *a, 80, 0)],
        det=[("vidG", 902, *b, 80, 0.9), ("vidG", 902, *b, 80, 0.8), ("vidG", 902, *a, 80, 0.7),
             ("vidG", 902, *a, 1, 0.6), ("vidG", 902, *a, 5, 0.5)],
        ids=[1, 5, 80],
    )
    return cases


def random_case(seed):
    """A random case on a 1/8 grid (IoU often exactly 0.5), with quantized or float32-tied scores."""
    rng = np.random.default_rng(seed)
    ids = [1, 2, 3, 4, 5]
    videos = [f"v{seed:02d}_{k}" for k in range(int(rng.integers(1, 4)))]
    keyframes = [(v, int(t)) for v in videos for t in rng.choice(np.arange(902, 920), int(rng.integers(2, 7)), replace=False)]
    gt, det, excluded = [], [], []
    grid = lambda: rng.integers(0, 9, size=2) / 8  # noqa: E731
    quantized = bool(rng.integers(0, 2))
    for kf_index, (v, t) in enumerate(keyframes):
        has_gt = rng.random() < 0.8
        if rng.random() < 0.15:
            excluded.append((v, t))
        people = []
        for p in range(int(rng.integers(1, 5)) if has_gt else 0):
            x, y = np.sort(grid()), np.sort(grid())
            box = (x[0], y[0], x[1] + (x[0] == x[1]) / 8, y[1] + (y[0] == y[1]) / 8)
            classes = [int(c) for c in rng.choice(np.arange(1, 7), int(rng.integers(1, 3)), replace=False)]
            people.append((box, classes))
            for c in classes:
                gt.append((v, t, *box, int(c)) + ((int(rng.integers(0, 3)),) if seed % 3 else ()))
        n_det = int(rng.integers(55, 80)) if rng.random() < 0.2 else int(rng.integers(0, 12))
        for _ in range(n_det):
            action = int(rng.integers(1, 7))
            if people and rng.random() < 0.7:
                box, classes = people[int(rng.integers(len(people)))]
                action = classes[0] if rng.random() < 0.6 else action
                box = np.array(box)
                box = box + rng.integers(-1, 2, size=4) / 16 * (rng.random() < 0.5)
                box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
            else:
                x, y = np.sort(grid()), np.sort(grid())
                box = (x[0], y[0], x[1], y[1])  # may have zero area
            if quantized:
                score = int(rng.integers(0, 8)) / 8
            else:
                score = float(rng.integers(0, 4)) / 4 + float(rng.integers(0, 3)) * 2.0**-28
            det.append((v, t, *box, action, score))
    order = rng.permutation(len(det))
    det = [det[i] for i in order]
    return dict(gt=gt, det=det, ids=ids, excluded=excluded)


RANDOM_SEEDS = [s for s in range(1, 18) if s != 11]  # 11: every ground-truth keyframe excluded


def all_cases():
    cases = hand_cases()
    for seed in RANDOM_SEEDS:
        cases[f"random_{seed:02d}"] = random_case(seed)
    return cases


# ------------------------------------------------------------------------- official code
class _InProcessPool:
    def __init__(self, *args, **kwargs):
        pass

    def map(self, fn, items):
        return list(map(fn, items))


def load_official(mmaction2):
    """Import mmaction2's ``ava_utils`` (and ``ava_evaluation``) from a checkout, with the shims."""
    functional = os.path.join(mmaction2, "mmaction", "evaluation", "functional")
    if not os.path.isfile(os.path.join(functional, "ava_utils.py")):
        raise SystemExit(f"{mmaction2}: no mmaction/evaluation/functional/ava_utils.py (not an mmaction2 1.x checkout?)")
    if not hasattr(np, "NAN"):
        np.NAN = np.nan
    package = types.ModuleType("mm_ava_functional")
    package.__path__ = [functional]
    sys.modules["mm_ava_functional"] = package
    ava_utils = importlib.import_module("mm_ava_functional.ava_utils")
    ava_utils.multiprocessing = types.SimpleNamespace(Pool=_InProcessPool)
    return ava_utils


def run_official(ava_utils, folder):
    """Official overall mAP and [(class id, AP)] in the official order for one case folder."""
    recorded = []
    original = ava_utils.metrics.compute_average_precision

    def record(precision, recall):
        ap = original(precision, recall)
        recorded.append(float(ap))
        return ap

    ava_utils.metrics.compute_average_precision = record
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = ava_utils.ava_eval(
                os.path.join(folder, "det.csv"), "mAP", os.path.join(folder, "labelmap.pbtxt"),
                os.path.join(folder, "gt.csv"), os.path.join(folder, "excl.csv"), verbose=False,
                ignore_empty_frames=True,
            )
    finally:
        ava_utils.metrics.compute_average_precision = original
    classes = [int(k) for k in re.findall(r"^Index: (\d+),", out.getvalue(), flags=re.M)]
    assert len(classes) == len(recorded), (classes, recorded)
    return float(result["overall"]), list(zip(classes, recorded))


def _hex(x):
    return "nan" if x != x else float(x).hex()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmaction2", required=True, help="checkout of open-mmlab/mmaction2 1.x")
    parser.add_argument("--out", required=True, help="output folder (tests/reference/mmaction2/eval)")
    parser.add_argument("--commit", default=None, help="mmaction2 commit to record (default: git rev-parse HEAD in PATH)")
    args = parser.parse_args(argv)
    ava_utils = load_official(args.mmaction2)
    commit = args.commit
    try:
        commit = commit or subprocess.run(["git", "-C", args.mmaction2, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git work tree)"
    expected = {"mmaction2_commit": commit, "numpy": np.__version__, "cases": {}}
    for name, case in all_cases().items():
        folder = os.path.join(args.out, name)
        _write_case(folder, **case)
        overall, per_class = run_official(ava_utils, folder)
        expected["cases"][name] = {
            "overall": _hex(overall),
            "overall_readable": overall,
            "per_class": [[k, _hex(ap)] for k, ap in per_class],
            "per_class_readable": [[k, ap] for k, ap in per_class],
        }
        print(f"{name}: mAP {overall!r} over {len(per_class)} classes")
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
