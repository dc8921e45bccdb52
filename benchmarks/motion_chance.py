"""Do the motion-only classes beat chance? AP of a trained run's detections against the same
detections with each box's motion-class scores permuted at random.

    python benchmarks/motion_chance.py --run data/output/tiny-slowonly --data data/synthetic [--permutations 5]

The synthetic dataset's motion classes (sway, bob, circle) look the same in any single frame,
so only a model that reads motion can rank them. Permuting the three motion scores of every
detected box keeps the boxes, the person scores and the appearance classes, and destroys the
motion information: what the classes reach then is chance. Printed: per motion class, the
trained AP and the mean AP over the permutations.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

MOTION_CLASSES = {7: "sway", 8: "bob", 9: "circle"}  # action ids of stmixer.data.synthetic


def evaluate(detections, annotations, out_json):
    """Per-class AP of a detection CSV (the evaluation command line, stmixer protocol)."""
    subprocess.run(
        [sys.executable, "-m", "stmixer.evaluation.ava", "--groundtruth", str(annotations / "ava_val_v2.2.csv"),
         "--detections", str(detections), "--labelmap",
         str(annotations / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
         "--exclusions", str(annotations / "ava_val_excluded_timestamps_v2.2.csv"), "--json", str(out_json)],
        check=True, capture_output=True,
    )
    return json.loads(Path(out_json).read_text())["per_class"]


def permute_motion_scores(table, rng):
    """A copy of the detections table whose motion-class scores are permuted within each box."""
    out = table.copy()
    rows = out[out[6].isin(list(MOTION_CLASSES))]
    ids = rows[6].to_numpy().reshape(-1, len(MOTION_CLASSES))
    if not (ids == sorted(MOTION_CLASSES)).all():
        raise SystemExit("error: the detections CSV does not hold each box's motion classes on consecutive rows")
    scores = rows[7].to_numpy().reshape(-1, len(MOTION_CLASSES))
    order = np.argsort(rng.random(scores.shape), axis=1)
    out.loc[rows.index, 7] = np.take_along_axis(scores, order, axis=1).reshape(-1)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="OUTPUT_DIR of a finished run (inference/<dataset>/detections.csv)")
    parser.add_argument("--data", required=True, help="the synthetic dataset it was evaluated on")
    parser.add_argument("--permutations", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    found = sorted(Path(args.run).glob("inference/*/detections.csv"))
    if not found:
        raise SystemExit(f"error: {args.run} holds no inference/<dataset>/detections.csv")
    annotations = Path(args.data) / "annotations_v2.2"
    table = pd.read_csv(found[0], header=None, dtype={0: str, 1: str})
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trained = evaluate(found[0], annotations, Path(tmp) / "trained.json")
        chance = []
        for _ in range(args.permutations):
            permute_motion_scores(table, rng).to_csv(Path(tmp) / "permuted.csv", header=False, index=False,
                                                     float_format="%.5f")
            chance.append(evaluate(Path(tmp) / "permuted.csv", annotations, Path(tmp) / "permuted.json"))
    for name in MOTION_CLASSES.values():
        print(f"{name:8s} trained AP {trained[name]:.3f}   at chance {np.mean([c[name] for c in chance]):.3f} "
              f"(mean of {args.permutations} permutations)")


if __name__ == "__main__":
    main()
