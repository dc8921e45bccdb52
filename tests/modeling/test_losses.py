"""The set criterion: hand-computed losses, dict names and order, supervision switch, reductions."""

import math

import numpy as np
import pytest
import torch

import stmixer.modeling.losses as losses_module
from stmixer.modeling.losses import SetCriterion, reduce_losses
from stmixer.modeling.matcher import HungarianMatcher
from stmixer.modeling.stmixer.decoder import DecoderOutputs

WEIGHTS = {"loss_ce": 2.0, "loss_bbox": 2.0, "loss_giou": 2.0, "loss_bce": 24.0}


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def criterion(intermediate=True):
    return SetCriterion(HungarianMatcher(2.0, 2.0, 2.0), 1, WEIGHTS, 0.1, intermediate).double()


def one_clip_stage():
    """Q = 2 queries, A = 3 actions; query 0 overlaps the one ground truth, query 1 is far away."""
    cls = t([[[1.0, 0.0], [0.0, 2.0]]])
    boxes = t([[[12.0, 8.0, 48.0, 52.0], [60.0, 60.0, 90.0, 90.0]]])
    actions = t([[[0.5, -1.0, 2.0], [3.0, 3.0, 3.0]]])
    return cls, boxes, actions


TARGETS = [{"boxes": t([[10.0, 10.0, 50.0, 50.0]]), "actions": t([[1.0, 0.0, 1.0]]), "whwh": t([100.0] * 4)}]


def test_single_stage_losses_by_hand():
    cls, boxes, actions = one_clip_stage()
    out = criterion()(DecoderOutputs([cls], [actions], [boxes]), TARGETS)
    assert list(out) == ["loss_bce", "loss_ce", "loss_giou", "loss_bbox"]
    background = float(np.float32(0.1))  # the float32 buffer value, as in official checkpoints
    ce_person = math.log(1 + math.exp(-1.0))  # query 0, target person
    ce_background = math.log(1 + math.exp(-2.0))  # query 1, target no-object
    loss_ce = (ce_person + background * ce_background) / (1 + background)
    giou = 1440 / 1744 - (1760 - 1744) / 1760
    bce = np.mean([math.log(1 + math.exp(x)) - x * y for x, y in zip([0.5, -1.0, 2.0], [1.0, 0.0, 1.0])])
    expected = {"loss_bce": 24 * bce, "loss_ce": 2 * loss_ce, "loss_giou": 2 * (1 - giou), "loss_bbox": 2 * 0.08}
    for name, value in expected.items():
        assert math.isclose(out[name].item(), value, rel_tol=1e-13), name


def two_stages():
    cls, boxes, actions = one_clip_stage()
    return DecoderOutputs([cls.flip(1), cls], [actions.flip(1), actions], [boxes.flip(1), boxes])


def test_earlier_stage_names_and_the_supervision_switch():
    supervised = criterion(True)(two_stages(), TARGETS)
    assert list(supervised) == [
        "loss_bce", "loss_ce", "loss_giou", "loss_bbox", "loss_ce_0", "loss_giou_0", "loss_bbox_0", "loss_bce_0",
    ]
    trace = {}
    final_only = criterion(False)(two_stages(), TARGETS, trace)
    assert list(final_only) == ["loss_bce", "loss_ce", "loss_giou", "loss_bbox"]
    for name, value in final_only.items():
        assert value.item() == supervised[name].item()
    assert list(trace) == ["match/stage1"]
    # Stage 0 saw the queries in the other order, so its match is query 1.
    assert supervised["loss_giou_0"].item() == supervised["loss_giou"].item()


def test_batch_without_ground_truth_gives_finite_connected_losses():
    cls, boxes, actions = one_clip_stage()
    actions.requires_grad_()
    empty = [{"boxes": t([]).reshape(0, 4), "actions": t([]).reshape(0, 3), "whwh": t([100.0] * 4)}]
    out = criterion()(DecoderOutputs([cls], [actions], [boxes]), empty)
    assert out["loss_bce"].item() == 0.0 and out["loss_giou"].item() == 0.0 and out["loss_bbox"].item() == 0.0
    assert math.isfinite(out["loss_ce"].item())
    reduce_losses(out).backward()
    assert actions.grad is not None


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """Another process with 3 boxes: the per-process normalizer becomes (1 + 3) / 2 = 2."""
    cls, boxes, actions = one_clip_stage()
    alone = criterion()(DecoderOutputs([cls], [actions], [boxes]), TARGETS)
    monkeypatch.setattr(losses_module.comm, "is_distributed", lambda: True)
    monkeypatch.setattr(losses_module.comm, "all_reduce_mean_async",
                        lambda count: losses_module.comm.PendingMean((count + 3.0) / 2, None))
    shared = criterion()(DecoderOutputs([cls], [actions], [boxes]), TARGETS)
    for name in ("loss_giou", "loss_bbox"):
        assert math.isclose(shared[name].item(), alone[name].item() / 2, rel_tol=1e-14)
    for name in ("loss_ce", "loss_bce"):  # not normalized by the box count
        assert shared[name].item() == alone[name].item()


def test_reduce_losses():
    losses = {"a": t(1.0), "b": t(2.0), "c": t(6.0)}
    assert reduce_losses(losses, "mean").item() == 3.0
    assert reduce_losses(losses, "sum").item() == 9.0
    with pytest.raises(ValueError, match="LOSS_REDUCTION = 'max'"):
        reduce_losses(losses, "max")


def test_empty_weight_is_a_float32_buffer():
    crit = SetCriterion(HungarianMatcher(), 1, WEIGHTS, 0.1)
    assert list(crit.state_dict()) == ["empty_weight"]
    assert crit.empty_weight.dtype == torch.float32
    assert crit.empty_weight.tolist() == [1.0, float(np.float32(0.1))]
