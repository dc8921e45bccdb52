"""Frame-mAP rules on small hand-computed cases, and fast path == loop reference on random cases."""

import zlib

import numpy as np
import pytest

from stmixer.evaluation import EvaluationError, evaluate_frame_map
from stmixer.evaluation.reference import reference_frame_map

from evaluation_cases import FULL, labelmap, make_table, random_case

BOTH = ("stmixer", "activitynet")
LEFT_HALF = (0.0, 0.0, 0.5, 1.0)  # IoU with FULL is exactly 0.5


def run(gt, det, ids=(1,), excluded=(), protocol="stmixer"):
    """Evaluate with both implementations; they must agree exactly. Returns the fast result."""
    lm = labelmap(*ids)
    fast = evaluate_frame_map(make_table(gt), make_table(det), lm, excluded, protocol)
    slow = reference_frame_map(make_table(gt), make_table(det), lm, excluded, protocol)
    assert (fast.mean_ap, fast.ap, fast.num_gt, fast.num_detections) == (
        slow.mean_ap,
        slow.ap,
        slow.num_gt,
        slow.num_detections,
    )
    return fast


@pytest.mark.parametrize("protocol", BOTH)
def test_iou_exactly_half_is_a_true_positive(protocol):
    gt = [("v", 902, FULL, 1, 0)]
    assert run(gt, [("v", 902, LEFT_HALF, 1, 0.9)], protocol=protocol).ap[1] == 1.0
    # just under 0.5: a false positive
    assert run(gt, [("v", 902, (0.0, 0.0, 0.4999999, 1.0), 1, 0.9)], protocol=protocol).ap[1] == 0.0


@pytest.mark.parametrize("protocol", BOTH)
def test_boxes_are_not_clipped(protocol):
    # Clipped to [0, 1] this box would be LEFT_HALF (IoU 0.5); as given its IoU is 0.5 / 1.5.
    result = run([("v", 902, FULL, 1, 0)], [("v", 902, (-0.5, 0.0, 0.5, 1.0), 1, 0.9)], protocol=protocol)
    assert result.ap[1] == 0.0


@pytest.mark.parametrize("protocol", BOTH)
def test_two_detections_on_one_ground_truth(protocol):
    g1, g2 = (0.0, 0.0, 0.4, 0.4), (0.6, 0.6, 1.0, 1.0)
    gt = [("v", 902, g1, 1, 0), ("v", 902, g2, 1, 1)]
    det = [("v", 902, g1, 1, 0.9), ("v", 902, (0.0, 0.0, 0.4, 0.38), 1, 0.8), ("v", 902, g2, 1, 0.7)]
    # ranked TP, FP (same ground truth again), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert run(gt, det, protocol=protocol).ap[1] == pytest.approx(0.5 * 1 + 0.5 * (2 / 3), abs=1e-15)


@pytest.mark.parametrize("protocol", BOTH)
def test_no_fallback_when_the_best_ground_truth_is_taken(protocol):
    g1, g2 = (0.0, 0.0, 0.5, 1.0), (0.1, 0.0, 0.6, 1.0)
    gt = [("v", 902, g1, 1, 0), ("v", 902, g2, 1, 1)]
    first = ("v", 902, g1, 1, 0.9)  # takes g1
    # IoU 0.8 with g1 (taken) and 0.6 with g2: the official code does not fall back to g2.
    second = ("v", 902, (0.02, 0.0, 0.52, 1.0), 1, 0.8)
    result = run(gt, [first, second], protocol=protocol)
    assert result.ap[1] == 0.5  # TP then FP: recall stops at 1/2


@pytest.mark.parametrize("protocol", BOTH)
def test_tied_scores_ranked_like_numpy_argsort_in_first_appearance_order(protocol):
    gt = [("v", 902, FULL, 1, 0)]
    hit = ("v", 902, FULL, 1, 0.5)
    miss = ("v", 903, FULL, 1, 0.5)  # keyframe without ground truth: a false positive
    # The class's scores are concatenated keyframe by keyframe in order of first appearance
    # and ranked by argsort(scores)[::-1]; with [TP, FP] or [FP, TP] the TP ranks first or second.
    for det, tp_position in (([hit, miss], 0), ([miss, hit], 1)):
        ranked_tp_first = int(np.argsort(np.array([0.5, 0.5]))[::-1][0]) == tp_position
        expected = 1.0 if ranked_tp_first else 0.5
        assert run(gt, det, protocol=protocol).ap[1] == expected


@pytest.mark.parametrize("protocol", BOTH)
def test_excluded_keyframes_drop_ground_truth_and_detections(protocol):
    gt = [("v", 902, FULL, 1, 0), ("v", 903, FULL, 1, 0)]
    det = [("v", 902, FULL, 1, 0.9), ("v", 903, FULL, 1, 0.4), ("v", 903, LEFT_HALF, 1, 0.95)]
    full = run(gt, det, protocol=protocol)
    assert full.num_gt[1] == 2 and full.num_detections[1] == 3
    excluded = run(gt, det, excluded={("v", 903)}, protocol=protocol)
    assert excluded.num_gt[1] == 1 and excluded.num_detections[1] == 1
    assert excluded.ap[1] == 1.0


@pytest.mark.parametrize("protocol", BOTH)
def test_detections_on_keyframes_without_ground_truth_are_false_positives(protocol):
    gt = [("v", 902, FULL, 1, 0)]
    det = [("w", 1000, FULL, 1, 0.9), ("v", 902, FULL, 1, 0.8)]
    assert run(gt, det, protocol=protocol).ap[1] == 0.5  # FP then TP


@pytest.mark.parametrize("protocol", BOTH)
def test_classes_without_ground_truth_and_without_detections(protocol):
    gt = [("v", 902, FULL, 1, 0), ("v", 902, FULL, 2, 0)]
    det = [("v", 902, FULL, 1, 0.9), ("v", 902, FULL, 3, 0.9)]
    result = run(gt, det, ids=(1, 2, 3), protocol=protocol)
    assert result.ap == {1: 1.0, 2: 0.0, 3: None}  # 2: ground truth, no detection; 3: no ground truth
    assert result.mean_ap == 0.5  # mean over the classes with ground truth only


@pytest.mark.parametrize("protocol", BOTH)
def test_only_label_map_classes_count(protocol):
    gt = [("v", 902, FULL, 1, 0), ("v", 902, FULL, 7, 0)]
    det = [("v", 902, FULL, 1, 0.9), ("v", 902, FULL, 7, 0.1)]
    result = run(gt, det, ids=(1, 2), protocol=protocol)
    assert 7 not in result.ap and result.mean_ap == 1.0


@pytest.mark.parametrize("protocol", BOTH)
def test_duplicate_ground_truth_rows_count_twice_but_match_once(protocol):
    gt = [("v", 902, FULL, 1, 0), ("v", 902, FULL, 1, 0)]
    assert run(gt, [("v", 902, FULL, 1, 0.9)], protocol=protocol).ap[1] == 0.5
    # A second identical detection also picks the first of the equal-IoU rows, already taken:
    # duplicates only lower the recall.
    result = run(gt, [("v", 902, FULL, 1, 0.9), ("v", 902, FULL, 1, 0.8)], protocol=protocol)
    assert result.num_gt[1] == 2 and result.ap[1] == 0.5


@pytest.mark.parametrize("protocol", BOTH)
def test_degenerate_detection_boxes_are_dropped(protocol):
    gt = [("v", 902, FULL, 1, 0)]
    det = [("v", 902, (0.5, 0.0, 0.5, 1.0), 1, 0.99), ("v", 902, FULL, 1, 0.5)]  # x2 == x1: dropped, not an FP
    result = run(gt, det, protocol=protocol)
    assert result.ap[1] == 1.0 and result.num_detections[1] == 1


def test_all_point_interpolated_ap_not_11_point():
    gt = [("v", 902, (0.0, 0.0, 0.4, 0.4), 1, 0), ("v", 902, (0.6, 0.6, 1.0, 1.0), 1, 1)]
    det = [("v", 902, (0.0, 0.0, 0.4, 0.4), 1, 0.9), ("v", 903, FULL, 1, 0.8), ("v", 902, (0.6, 0.6, 1.0, 1.0), 1, 0.7)]
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1: all-point 5/6; 11-point would give (6 + 5 * 2/3) / 11
    assert run(gt, det).ap[1] == pytest.approx(5 / 6, abs=1e-15)


def test_activitynet_keeps_50_detections_per_keyframe():
    gt = [("v", 902, FULL, 1, 0)]
    others = [("v", 902, (0.0, 0.0, 0.1, 0.1), 2, 0.5 + i / 1000) for i in range(50)]
    det = others + [("v", 902, FULL, 1, 0.4)]  # the only true positive has the lowest score
    assert run(gt, det, ids=(1, 2), protocol="stmixer").ap[1] == 1.0
    capped = run(gt, det, ids=(1, 2), protocol="activitynet")
    assert capped.ap[1] == 0.0 and capped.num_detections == {1: 0, 2: 50}


def test_activitynet_cap_ties_keep_the_earlier_rows():
    # 51 rows with the same score: the heap is full after 50 and the 51st is not strictly higher.
    gt = [("v", 902, FULL, 1, 0)]
    det = [("v", 902, (0.0, 0.0, 0.1, 0.1), 2, 0.5)] * 50 + [("v", 902, FULL, 1, 0.5)]
    assert run(gt, det, ids=(1, 2), protocol="activitynet").ap[1] == 0.0
    # A later, higher row evicts the smallest (score, action_id, y1, x1, y2, x2) tuple: action 1 first.
    det = [("v", 902, FULL, 1, 0.5)] + [("v", 902, (0.0, 0.0, 0.1, 0.1), 2, 0.5)] * 49 + [("v", 902, FULL, 3, 0.9)]
    result = run(gt, det, ids=(1, 2, 3), protocol="activitynet")
    assert result.num_detections == {1: 0, 2: 49, 3: 1} and result.ap[1] == 0.0


@pytest.mark.parametrize("protocol", BOTH)
def test_no_ground_truth_left_is_an_error(protocol):
    with pytest.raises(EvaluationError, match="no ground-truth box"):
        run([("v", 902, FULL, 1, 0)], [], excluded={("v", 902)}, protocol=protocol)


def test_ground_truth_box_with_x1_greater_than_x2_is_reported():
    gt = make_table([("v", 902, (0.6, 0.0, 0.4, 1.0), 1, 0)], source="<gt>")
    with pytest.raises(EvaluationError, match=r"x1 > x2 or y1 > y2 \(x1=0.6"):
        evaluate_frame_map(gt, make_table([]), labelmap(1))


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'voc'"):
        evaluate_frame_map(make_table([("v", 902, FULL, 1, 0)]), make_table([]), labelmap(1), protocol="voc")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"quantize": 4},
        {"quantize": 20, "grid": True},
        {"shuffle": True, "quantize": 10},
        {"crowded": True, "quantize": 8},
        {"crowded": True, "grid": True, "quantize": 3},
    ],
    ids=["continuous", "quantized", "grid", "shuffled", "crowded", "crowded-grid"],
)
def test_fast_path_equals_loop_reference_on_random_cases(options):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(options.items())).encode()))
    replayed = 0
    for _ in range(12):
        gt, det, lm, excluded = random_case(rng, **options)
        if not gt:
            continue
        for protocol in BOTH:
            try:
                slow = reference_frame_map(make_table(gt), make_table(det), lm, excluded, protocol)
            except EvaluationError:
                with pytest.raises(EvaluationError):
                    evaluate_frame_map(make_table(gt), make_table(det), lm, excluded, protocol)
                continue
            fast = evaluate_frame_map(make_table(gt), make_table(det), lm, excluded, protocol)
            assert fast.mean_ap == slow.mean_ap and fast.ap == slow.ap
            assert fast.num_detections == slow.num_detections and fast.num_gt == slow.num_gt
            replayed += fast.num_replayed
    if options.get("quantize"):
        assert replayed > 0  # the tie-replay paths were exercised
