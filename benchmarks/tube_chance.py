"""Per-class frame-AP and video-AP of a tube-dataset run against chance.

    python benchmarks/tube_chance.py --groundtruth GT.pkl --detections OUTPUT_DIR/inference/ucf24/detections.csv \\
        [--split test] [--fold 1] [--shuffles 5] [--seed 0]

Chance = the same detections (boxes, scores, rows per frame) with their class labels
permuted at random across all rows (class frequencies kept), mean over ``--shuffles``
permutations: what the localization alone earns without knowing the class. On the
synthetic UCF/JHMDB data every class (still, sway, bob, circle) is defined by motion
alone, so the gap to chance is what the model learned from time.
"""

import argparse
import dataclasses

import numpy as np

from stmixer.evaluation.tubes import evaluate, read_detections, read_groundtruth


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--groundtruth", required=True)
    parser.add_argument("--detections", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--shuffles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gt = read_groundtruth(args.groundtruth, args.split, args.fold)
    det = read_detections(args.detections, gt.labels)
    result = evaluate(gt, det)
    rng = np.random.default_rng(args.seed)
    chance = [evaluate(gt, dataclasses.replace(det, label=rng.permutation(det.label))) for _ in range(args.shuffles)]
    print(f"{'class':10s} {'frameAP':>8s} {'chance':>8s} {'vAP@0.5':>8s} {'chance':>8s}")
    for c, name in enumerate(gt.labels):
        print(f"{name:10s} {result.frame_ap[c]:8.4f} {np.mean([r.frame_ap[c] for r in chance]):8.4f} "
              f"{result.video_ap[c]['0.5']:8.4f} {np.mean([r.video_ap[c]['0.5'] for r in chance]):8.4f}")
    print(f"{'mean':10s} {result.frame_map:8.4f} {np.mean([r.frame_map for r in chance]):8.4f} "
          f"{result.video_map['0.5']:8.4f} {np.mean([r.video_map['0.5'] for r in chance]):8.4f}")
    print("video-mAP: " + ", ".join(f"@{k} {v:.4f}" for k, v in result.video_map.items()))


if __name__ == "__main__":
    main()
