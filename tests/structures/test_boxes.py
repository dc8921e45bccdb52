"""Box conversions and overlaps, checked by hand."""

import math

import torch

from stmixer.structures.boxes import (
    box_iof,
    clip_and_normalize,
    find_degenerate_boxes,
    generalized_box_iou,
    xyxy_to_xyzr,
    xyzr_to_xyxy,
)


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_xyzr_by_hand_and_round_trip():
    box = t([10.0, 20.0, 50.0, 100.0])  # w 40, h 80
    xyzr = xyxy_to_xyzr(box)
    torch.testing.assert_close(xyzr, t([30.0, 60.0, 0.5 * math.log2(3200.0), 1.0]), rtol=0, atol=1e-14)
    torch.testing.assert_close(xyzr_to_xyxy(xyzr), box, rtol=0, atol=1e-12)


def test_iof_uses_the_first_box_area():
    a, b, big = t([0, 0, 2, 2]), t([1, 1, 3, 3]), t([0, 0, 4, 4])
    assert box_iof(a, b).item() == 0.25
    assert box_iof(a, big).item() == 1.0
    assert box_iof(big, a).item() == 0.25
    pairwise = box_iof(torch.stack([a, big])[:, None], torch.stack([a, b, big])[None])
    torch.testing.assert_close(pairwise, t([[1.0, 0.25, 1.0], [0.25, 0.25, 1.0]]))


def test_generalized_iou_by_hand():
    a, b = t([0, 0, 2, 2]), t([1, 1, 3, 3])
    assert generalized_box_iou(a, a).item() == 1.0
    assert math.isclose(generalized_box_iou(a, b).item(), 1 / 7 - 2 / 9, abs_tol=1e-15)
    assert math.isclose(generalized_box_iou(t([0, 0, 1, 1]), t([2, 0, 3, 1])).item(), -1 / 3, abs_tol=1e-15)
    # A zero-width ground-truth box (allowed: x1 == x2) still gives a finite value.
    assert torch.isfinite(generalized_box_iou(a, t([1, 0, 1, 2])))


def test_clip_and_normalize_uses_size_minus_one():
    boxes = t([[-5.0, 10.0, 200.0, 90.0]])
    out = clip_and_normalize(boxes, t([160.0, 80.0, 160.0, 80.0]))
    torch.testing.assert_close(out, t([[0.0, 10 / 80, 159 / 160, 79 / 80]]))


def test_find_degenerate_boxes():
    boxes = t([[0, 0, 1, 1], [5, 0, 4, 1], [0, 0, 0, 0], [0, float("nan"), 1, 1], [0, 3, 1, 2]])
    assert find_degenerate_boxes(boxes).tolist() == [1, 3, 4]
