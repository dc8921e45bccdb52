"""The ``mmaction2`` frame-mAP protocol against mmaction2's own ``ava_eval``.

The expected numbers were computed by running mmaction2's code on the case files in
tests/reference/mmaction2/eval/ (tests/reference/make_mmaction2_eval_fixtures.py; its
README says how). Every comparison is bit-exact (``float.hex``), not a tolerance.
"""

import contextlib
import json
import math
import os
import warnings
import zlib

import numpy as np
import pytest

from stmixer.config import get_cfg
from stmixer.config.validate import validate_config
from stmixer.evaluation import EvaluationError
from stmixer.evaluation.ava import main
from stmixer.evaluation.evaluator import evaluate_files
from stmixer.evaluation.frame_map import evaluate_frame_map
from stmixer.evaluation.reference import reference_frame_map

from evaluation_cases import make_table, random_case

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "reference", "mmaction2", "eval")

with open(os.path.join(FIXTURES, "expected.json")) as _f:
    EXPECTED = json.load(_f)["cases"]

pytestmark = pytest.mark.mmaction2


def _files(name):
    folder = os.path.join(FIXTURES, name)
    return [os.path.join(folder, f) for f in ("gt.csv", "det.csv", "labelmap.pbtxt", "excl.csv")]


def _hex(x):
    return "nan" if x is None or math.isnan(x) else float(x).hex()


def _evaluate(name, protocol="mmaction2"):
    gt, det, labelmap, excl = _files(name)
    with _quiet_inputs():
        return evaluate_files(gt, det, labelmap, excl, protocol)[0]


@contextlib.contextmanager
def _quiet_inputs():
    """Input warnings (boxes outside [0, 1], repeated rows) are expected on these cases."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_equal_to_mmaction2_ava_eval_bit_for_bit(name):
    expected = EXPECTED[name]
    result = _evaluate(name)
    assert result.protocol == "mmaction2"
    assert _hex(result.mean_ap) == expected["overall"]
    official = {int(k): ap for k, ap in expected["per_class"]}
    for class_id, ap in result.ap.items():
        # Official NaN (detections, no ground truth) and "not computed" are both None here.
        assert _hex(ap) == official.get(class_id, "nan"), class_id
    counted = {c for c, ap in official.items() if ap != "nan"}
    assert {c for c, ap in result.ap.items() if ap is not None} == counted


def test_the_cases_tell_the_protocols_apart():
    """The fixtures exercise the rules where mmaction2 differs: the other protocols give other numbers."""
    differ = 0
    for name, expected in EXPECTED.items():
        if expected["overall"] == "nan":
            continue
        other = _evaluate(name, "stmixer")
        differ += _hex(other.mean_ap) != expected["overall"]
    assert differ >= 10


def test_rules_on_the_hand_made_cases():
    result = _evaluate("classes_without_gt_or_detections")
    assert result.ap[3] is None  # ground truth, no detection: not counted (stmixer: 0)
    assert result.ap[4] is None  # detections, no ground truth
    assert result.num_detections[1] == 3  # the keyframe without ground truth is ignored
    assert _evaluate("classes_without_gt_or_detections", "stmixer").ap[3] == 0.0
    excluded = _evaluate("excluded_keyframes")
    assert excluded.num_gt == {1: 2, 2: 2}  # excluded ground truth still counts
    assert math.isnan(_evaluate("no_detection_on_gt_keyframes").mean_ap)
    assert _evaluate("more_than_50_per_keyframe").num_detections == {1: 60, 2: 60}


def test_inverted_detection_box_is_an_error_naming_the_line(write_files):
    paths = write_files(
        [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0)],
        [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0.9), ("v", 902, (0.6, 0.1, 0.5, 0.5), 1, 0.8)],
        ids=(1,),
    )
    with _quiet_inputs(), pytest.raises(EvaluationError, match=r"det\.csv:2: detection box has x1 > x2"):
        evaluate_files(paths["groundtruth"], paths["detections"], paths["labelmap"], paths["exclusions"], "mmaction2")
    # On a keyframe without ground truth the official code never looks at it: no error.
    paths = write_files(
        [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0)],
        [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0.9), ("v", 903, (0.6, 0.1, 0.5, 0.5), 1, 0.8)],
        ids=(1,),
    )
    with _quiet_inputs():
        result, _ = evaluate_files(
            paths["groundtruth"], paths["detections"], paths["labelmap"], paths["exclusions"], "mmaction2"
        )
    assert result.mean_ap == 1.0


def test_cli_and_config_accept_the_protocol(tmp_path):
    gt, det, labelmap, excl = _files("excluded_keyframes")
    out = tmp_path / "out.json"
    argv = ["--groundtruth", gt, "--detections", det, "--labelmap", labelmap, "--exclusions", excl, "--json", str(out),
            "--protocol", "mmaction2"]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())
    assert metrics["protocol"] == "mmaction2"
    assert float(metrics["mAP"]).hex() == EXPECTED["excluded_keyframes"]["overall"]
    cfg = get_cfg()
    cfg.TEST.EVAL_PROTOCOL = "mmaction2"
    validate_config(cfg)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loop_reference_equals_mmaction2_ava_eval(name):
    gt, det, labelmap, excl = _files(name)
    with _quiet_inputs():
        result = evaluate_files(gt, det, labelmap, excl, "mmaction2", reference=True)[0]
    assert _hex(result.mean_ap) == EXPECTED[name]["overall"]


@pytest.mark.parametrize(
    "options",
    [{}, {"quantize": 4}, {"quantize": 20, "grid": True}, {"shuffle": True, "quantize": 10},
     {"crowded": True, "grid": True, "quantize": 3}],
    ids=["continuous", "quantized", "grid", "shuffled", "crowded-grid"],
)
def test_fast_path_equals_loop_reference_on_random_cases(options):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(options.items())).encode()))
    compared = 0
    for _ in range(12):
        gt, det, lm, excluded = random_case(rng, **options)
        # Inverted detection boxes stop both (the official code raises on them).
        det = [r for r in det if r[2][0] <= r[2][2] and r[2][1] <= r[2][3]]
        if not gt:
            continue
        try:
            slow = reference_frame_map(make_table(gt), make_table(det), lm, excluded, "mmaction2")
        except EvaluationError:
            with pytest.raises(EvaluationError):
                evaluate_frame_map(make_table(gt), make_table(det), lm, excluded, "mmaction2")
            continue
        fast = evaluate_frame_map(make_table(gt), make_table(det), lm, excluded, "mmaction2")
        assert _hex(fast.mean_ap) == _hex(slow.mean_ap)
        assert fast.ap == slow.ap
        assert fast.num_detections == slow.num_detections and fast.num_gt == slow.num_gt
        compared += 1
    assert compared >= 6


def test_engine_evaluator_with_the_mmaction2_protocol(write_files, tmp_path):
    """TEST.EVAL_PROTOCOL mmaction2 reaches AVAEvaluator; its numbers equal the CLI's on the CSV it writes."""
    from stmixer.evaluation import AVAEvaluator

    rng = np.random.default_rng(0)
    gt = [("v1", 902, (0.1, 0.1, 0.5, 0.5), 1, 0), ("v1", 902, (0.5, 0.1, 0.9, 0.5), 2, 1),
          ("v1", 903, (0.2, 0.2, 0.6, 0.6), 3, 0), ("v2", 902, (0.0, 0.0, 0.5, 0.5), 1, 0)]
    paths = write_files(gt, [], ids=(1, 2, 3, 4))
    evaluator = AVAEvaluator(paths["groundtruth"], paths["labelmap"], paths["exclusions"], protocol="mmaction2",
                             output_folder=tmp_path / "out")
    for video, ts in [("v1", 902), ("v1", 903), ("v2", 902), ("v2", 905)]:
        boxes = np.clip(np.tile([0.1, 0.1, 0.5, 0.5], (3, 1)) + rng.normal(0, 0.05, (3, 4)), 0, 1).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
        evaluator.process([video], [ts], [boxes], [rng.random((3, 4)).astype(np.float32)])
    with _quiet_inputs():
        metrics = evaluator.evaluate()
    assert metrics["protocol"] == "mmaction2"
    with _quiet_inputs():
        cli, _ = evaluate_files(paths["groundtruth"], metrics["detections_csv"], paths["labelmap"],
                                paths["exclusions"], "mmaction2")
    assert _hex(cli.mean_ap) == _hex(metrics["mAP"])
    # Class 4 has detections but no ground truth: no AP (stmixer: also None); every class with
    # ground truth has detections on a ground-truth keyframe here, so all three count.
    assert metrics["per_class"][list(metrics["per_class"])[3]] is None
    assert sum(ap is not None for ap in metrics["per_class"].values()) == 3
