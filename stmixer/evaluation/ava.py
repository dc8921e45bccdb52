"""Command line: AVA frame-mAP of a detection CSV.

    python -m stmixer.evaluation.ava --groundtruth GT.csv --detections DET.csv \\
        --labelmap LABELMAP.pbtxt --exclusions EXCL.csv --json OUT.json \\
        [--protocol stmixer|activitynet|mmaction2] [--plot AP.png] [--strict] [--parts ava_kinetics]

Writes ``{"mAP": float, "per_class": {"<class name>": float or null}, "protocol": "..."}``
(with ``--parts ava_kinetics`` also ``"parts": {"ava": {...}, "kinetics": {...}}``, each part
of AVA-Kinetics scored alone) to ``--json`` and prints a per-class table (class, AP, #GT, #detections) sorted by AP.
Suspicious inputs that the protocol scores anyway (boxes outside [0, 1] or inverted,
repeated rows, videos unknown to the ground truth, ground-truth classes missing from
the label map) are summarized as ``warning:`` lines; ``--strict`` makes them errors
(all but the last: the label map selects the evaluated classes by design).
Exit status: 0 on success, 2 on bad input (one ``error:`` line naming the file and line).
"""

import argparse
import json
import sys
import warnings

from ..errors import UserError, exit_on_user_error
from ..utils.io import atomic_open
from .frame_map import PROTOCOLS
from .report import format_table, metrics_dict, plot_ap


def build_parser():
    """The argument parser of the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.evaluation.ava",
        description="AVA frame-mAP@0.5IoU of a detection CSV, exactly as the official evaluators compute it.",
    )
    parser.add_argument("--groundtruth", required=True, help="ground-truth CSV (e.g. ava_val_v2.2.csv)")
    parser.add_argument("--detections", required=True, help="detection CSV: video_id,timestamp,x1,y1,x2,y2,action_id,score")
    parser.add_argument("--labelmap", required=True, help="label map .pbtxt (its classes are evaluated)")
    parser.add_argument("--exclusions", default=None, help="CSV of excluded video_id,timestamp keyframes")
    parser.add_argument("--json", required=True, help="where to write the metrics JSON")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="stmixer",
        help="stmixer: the evaluator of the official STMixer/PySlowFast (default); "
        "activitynet: the ActivityNet 2019 evaluator (at most 50 detections per keyframe); "
        "mmaction2: mmaction2's ava_eval (float32, keyframes without ground truth ignored, "
        "mean over the classes with detections)",
    )
    parser.add_argument("--plot", default=None, help="also save a per-class AP bar chart here (needs matplotlib)")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="compute with the slow plain-loop reference implementation (a cross-check of the fast path)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse suspicious inputs (boxes outside [0, 1] or inverted, repeated rows, videos unknown to the "
        "ground truth) instead of warning about them",
    )
    parser.add_argument(
        "--parts",
        choices=("ava_kinetics",),
        default=None,
        help="ava_kinetics: also score the AVA videos and the Kinetics clips (<id>_<start>_<end>) each alone",
    )
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (bad input: one ``error:`` line and SystemExit(2))."""
    args = build_parser().parse_args(argv)
    from .evaluator import evaluate_files

    with exit_on_user_error(status=2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, labelmap = evaluate_files(
                args.groundtruth, args.detections, args.labelmap, args.exclusions, args.protocol, args.reference,
                strict=args.strict,
            )
        except OSError as e:  # a folder, no permission, ...: the path the user gave, in one line
            if isinstance(e, FileNotFoundError):
                raise  # exit_on_user_error reports it
            raise UserError(f"{e.filename}: {e.strerror}" if e.filename else str(e)) from None
        parts = None
        if args.parts:
            from .evaluator import evaluate_file_parts

            parts = evaluate_file_parts(args.groundtruth, args.detections, args.labelmap, args.exclusions,
                                        args.protocol, args.parts)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    metrics = metrics_dict(result, labelmap)
    if parts:
        metrics["parts"] = parts
        for name, part in parts.items():
            print(f"{name}: frame-mAP {part['mAP']:.4f}")
    with atomic_open(args.json, "w") as f:
        json.dump(metrics, f, indent=2)
    print(format_table(result, labelmap))
    if args.plot:
        try:
            plot_ap(result, labelmap, args.plot)
        except ImportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
