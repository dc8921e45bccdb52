"""Hungarian matching: hand-computed costs, optimality, edge cases."""

import itertools
import math

import pytest
import torch

from stmixer.modeling.matcher import HungarianMatcher


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def target(boxes, whwh=(100.0, 100.0, 100.0, 100.0)):
    return {"boxes": t(boxes).reshape(-1, 4), "whwh": t(whwh)}


def test_one_ground_truth_cost_by_hand():
    gt = [10.0, 10.0, 50.0, 50.0]
    boxes = t([[[10, 10, 50, 50], [60, 60, 90, 90], [12, 8, 48, 52]]])
    logits = t([[[0.0, 0.0], [2.0, 0.0], [-1.0, 1.0]]])
    match = HungarianMatcher(class_weight=2.0, l1_weight=2.0, giou_weight=2.0)(logits, boxes, [target([gt])])[0]
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))]
    l1 = [0.0, (50 + 50 + 40 + 40) / 100, (2 + 2 + 2 + 2) / 100]
    giou = [1.0, 0 - (6400 - 2500) / 6400, 1440 / 1744 - (1760 - 1744) / 1760]
    expected = [2 * l1[q] - 2 * p[q] - 2 * giou[q] for q in range(3)]
    torch.testing.assert_close(match.cost, t(expected)[:, None], rtol=0, atol=1e-14)
    assert match.src.tolist() == [0] and match.tgt.tolist() == [0]
    assert match.src.dtype == torch.int64


def test_assignment_is_optimal_and_sorted_by_query():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(1, 6, 2, generator=gen, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(1, 6, 2, generator=gen, dtype=torch.float64) * 30], -1)
    logits = torch.randn(1, 6, 2, generator=gen, dtype=torch.float64)
    gt = [[5, 5, 40, 40], [30, 20, 70, 90], [50, 50, 60, 60]]
    match = HungarianMatcher(2.0, 2.0, 2.0)(logits, boxes, [target(gt)])[0]
    best = min(
        sum(match.cost[q, j].item() for j, q in enumerate(perm)) for perm in itertools.permutations(range(6), 3)
    )
    assert math.isclose(match.cost[match.src, match.tgt].sum().item(), best, abs_tol=1e-12)
    assert match.src.tolist() == sorted(match.src.tolist())
    assert sorted(match.tgt.tolist()) == [0, 1, 2]


def test_clip_without_ground_truth_and_non_finite_predictions():
    boxes = t([[[0, 0, 10, 10], [5, 5, 20, 20]]])
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    match = HungarianMatcher()(logits, boxes, [target([])])[0]
    assert match.src.numel() == 0 and match.tgt.numel() == 0 and match.cost.shape == (2, 0)
    boxes[0, 1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="clip 0 of the batch"):
        HungarianMatcher()(logits, boxes, [target([[0, 0, 5, 5]])])


def test_all_zero_weights_rejected():
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)


def test_nonfinite_predictions_raise_a_nonfinite_loss_error_naming_clip_and_tensor():
    from stmixer.engine.trainer import NonFiniteLossError
    from stmixer.modeling.matcher import NonFiniteCostError

    boxes = t([[[10, 10, 50, 50], [60, 60, 90, 90]], [[10, 10, 50, 50], [60, 60, 90, 90]]])
    boxes[1, 0, 2] = float("nan")
    logits = torch.zeros(2, 2, 2, dtype=torch.float64)
    gts = [target([[10.0, 10.0, 50.0, 50.0]]), target([[10.0, 10.0, 50.0, 50.0]])]
    with pytest.raises(NonFiniteCostError, match=r"clip 1 of the batch: the predicted boxes hold 1 NaN/inf value"):
        HungarianMatcher()(logits, boxes, gts)
    assert issubclass(NonFiniteCostError, NonFiniteLossError)
    boxes[1, 0, 2] = 40.0
    logits[0, 1, 0] = float("inf")
    with pytest.raises(NonFiniteCostError, match=r"clip 0 of the batch: the objectness logits hold 1 NaN/inf"):
        HungarianMatcher()(logits, boxes, gts)


def test_set_criterion_names_the_decoder_stage_of_a_nonfinite_cost():
    from stmixer.modeling.losses import SetCriterion
    from stmixer.modeling.matcher import NonFiniteCostError
    from stmixer.modeling.stmixer.decoder import DecoderOutputs

    boxes = t([[[10, 10, 50, 50], [60, 60, 90, 90]]])
    bad = boxes.clone()
    bad[0, 1, 0] = float("nan")
    logits, actions = torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, 3, dtype=torch.float64)
    outputs = DecoderOutputs([logits, logits], [actions, actions], [bad, boxes])
    gts = [dict(target([[10.0, 10.0, 50.0, 50.0]]), actions=torch.ones(1, 3, dtype=torch.float64))]
    weights = {"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0, "loss_bce": 1.0}
    criterion = SetCriterion(HungarianMatcher(), 1, weights, 0.1).double()
    with pytest.raises(NonFiniteCostError, match=r"^decoder stage 0 of 2: clip 0 of the batch: the predicted boxes"):
        criterion(outputs, gts)


def test_the_batch_check_skips_clips_without_ground_truth_and_names_the_first_bad_clip():
    """The finiteness of all clips' costs is checked at once on the padded host costs: a clip without ground
    truth has no costs to check (its NaN predictions pass, as when each clip was checked alone), and the error
    names the first clip whose own columns are not finite, not a padding column."""
    from stmixer.modeling.matcher import NonFiniteCostError

    boxes = t([[[10, 10, 50, 50], [60, 60, 90, 90]]] * 3)
    logits = torch.zeros(3, 2, 2, dtype=torch.float64)
    boxes[0, 0, 0] = float("nan")
    gts = [target([]), target([[10.0, 10.0, 50.0, 50.0]]), target([[10.0, 10.0, 50.0, 50.0], [0, 0, 5, 5]])]
    matches = HungarianMatcher()(logits, boxes, gts)
    assert [m.src.numel() for m in matches] == [0, 1, 2]
    boxes[2, 1, 3] = float("inf")
    with pytest.raises(NonFiniteCostError, match=r"clip 2 of the batch: the predicted boxes hold 1 NaN/inf value"):
        HungarianMatcher()(logits, boxes, gts)


@pytest.mark.parametrize("batched", [True, False])
def test_set_criterion_match_rows_are_clip_query_and_flat_target(batched):
    """``SetCriterion.match``: per stage, int64 rows (clip, query, index into the batch's concatenated targets)
    of every clip's matches in clip order, built for all stages at once."""
    from stmixer.modeling.losses import SetCriterion
    from stmixer.modeling.stmixer.decoder import DecoderOutputs

    gen = torch.Generator().manual_seed(3)
    B, Q, S = 3, 5, 3
    xy = torch.rand(S, B, Q, 2, generator=gen, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(S, B, Q, 2, generator=gen, dtype=torch.float64) * 30], -1)
    logits = torch.randn(S, B, Q, 2, generator=gen, dtype=torch.float64)
    gts = [target([[5, 5, 40, 40], [30, 20, 70, 90]]), target([]), target([[50, 50, 60, 60]])]
    outputs = DecoderOutputs(list(logits), list(logits), list(boxes))
    weights = {"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0, "loss_bce": 1.0}
    criterion = SetCriterion(HungarianMatcher(), 1, weights, 0.1, batched_matching=batched).double()
    stages = [2, 0, 1]
    indices = criterion.match(outputs, gts, stages)
    offsets = [0, 2, 2]
    for k in stages:
        want = [[i, q, j + offsets[i]] for i, m in enumerate(HungarianMatcher()(logits[k], boxes[k], gts))
                for q, j in zip(m.src.tolist(), m.tgt.tolist())]
        assert indices[k].dtype == torch.int64 and indices[k].t().tolist() == want, k
