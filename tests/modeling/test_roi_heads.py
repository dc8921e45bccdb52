"""The RoI heads of mmaction2's two-stage detectors (stmixer.modeling.roi_heads).

The ``mmaction2``-marked tests hold ``RoIExtractor3D`` + ``BBoxHeadAVA`` to the official
modules' float64 answers in tests/reference/mmaction2/roi_head (made by
tests/reference/make_mmaction2_fixtures.py): every output within 1e-9 x max|value| of its
tensor in float64; float32 runs within F32_TOL x max|value| (see the fixture README for why).
The other tests need no fixture.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.errors import UserError
from stmixer.modeling.roi_heads import BBoxHeadAVA, RoIExtractor3D, bbox_targets, class_detections

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "roi_head"
F64_TOL = 1e-9
F32_TOL = 1e-5


def _cases():
    path = FIXTURES / "cases.json"
    return json.loads(path.read_text())["cases"] if path.exists() else {}


def _build(meta, weights, dtype):
    extractor = RoIExtractor3D(featmap_stride=meta["featmap_stride"], **meta["extractor"])
    head = BBoxHeadAVA(**meta["head"])
    head.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    return extractor, head.to(dtype)


def _run(name, dtype):
    """Our outputs under the fixture's names, and the fixture's arrays."""
    meta = _cases()[name]
    with np.load(FIXTURES / f"{name}.npz") as data:
        ref = dict(data)
    weights = {k[len("weight/"):]: v for k, v in ref.items() if k.startswith("weight/")}
    extractor, head = _build(meta, weights, dtype)
    feats = [torch.from_numpy(ref[f"input/feat{i}"]).to(dtype).requires_grad_()
             for i in range(len(meta["pathways"]))]
    rois = torch.from_numpy(ref["input/rois"]).to(dtype)
    roi_feats, global_feat = extractor(feats if len(feats) > 1 else feats[0], rois)
    roi_feats.retain_grad()
    cls_score = head(roi_feats)
    pos_labels, num_neg, start = [], [], 0
    labels_in = torch.from_numpy(ref["input/labels"]).to(dtype)
    for n_pos, n_neg in meta["pos_neg"]:
        pos_labels.append(labels_in[start:start + n_pos])
        num_neg.append(n_neg)
        start += n_pos + n_neg
    labels, label_weights = bbox_targets(pos_labels, num_neg, meta["pos_weight"])
    losses = head.loss(cls_score, labels)
    losses["loss_action_cls"].backward()

    out = {"input/labels": labels, "out/label_weights": label_weights, "out/roi_feats": roi_feats,
           "out/global_feat": global_feat, "out/cls_score": cls_score, "grad/roi_feats": roi_feats.grad}
    for i, f in enumerate(feats):
        out[f"grad/feat{i}"] = f.grad
    out.update({f"grad/{k}": p.grad for k, p in head.named_parameters()})
    start = 0
    for b, (n_pos, n_neg) in enumerate(meta["pos_neg"]):
        n = n_pos + n_neg
        boxes, scores = head.predict(rois[start:start + n], cls_score[start:start + n].detach(),
                                     tuple(meta["img_shape"]), flip=meta["flip"],
                                     crop_quadruple=meta["crop_quadruple"])
        out[f"pred/boxes_b{b}"], out[f"pred/scores_b{b}"] = boxes, scores
        for tag, thr in meta["det_thresholds"].items():
            per_class = class_detections(boxes, scores, thr=thr)
            out[f"det/{tag}_b{b}"] = torch.cat([torch.cat([torch.full((len(d), 1), c + 1.0, dtype=d.dtype), d], 1)
                                                for c, d in enumerate(per_class)])
        start += n
    out = {k: v.detach().double().numpy() for k, v in out.items()}
    return out, ref, {k: float(v.detach()) for k, v in losses.items()}, meta


def _rel_err(ours, ref):
    scale = max(float(np.abs(ref).max()), 1e-300)
    return float(np.abs(ours - ref).max()) / scale


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", sorted(_cases()) or ["missing"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_mmaction2(name, dtype):
    assert (FIXTURES / "cases.json").exists(), f"{FIXTURES}/cases.json is missing"
    out, ref, losses, meta = _run(name, dtype)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    expected_outputs = [k for k in ref if not k.startswith(("weight/", "input/feat", "input/rois"))]
    assert sorted(expected_outputs) == sorted(out), "fixture outputs and ours differ in names"
    for key in expected_outputs:
        assert out[key].shape == ref[key].shape, key
        assert _rel_err(out[key], ref[key]) <= tol, f"{key}: rel err {_rel_err(out[key], ref[key]):.3g}"
    assert sorted(losses) == sorted(meta["losses"])
    for key, value in meta["losses"].items():
        if key == "loss_action_cls":
            assert abs(losses[key] - value) <= tol * abs(value), (key, losses[key], value)
        else:  # the metrics are float32 in mmaction2 (and here): counts of the same decisions
            assert losses[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


@pytest.mark.mmaction2
def test_fixture_covers_the_brief():
    """Linear head avg/max temporal pooling, nonlinear head, focal alpha/gamma, with_global, SlowFast."""
    cases = _cases().values()
    assert {c["extractor"].get("temporal_pool_mode", "avg") for c in cases} == {"avg", "max"}
    assert any(c["head"].get("mlp_head") for c in cases)
    assert any(c["head"].get("focal_alpha", 1) != 1 and c["head"].get("focal_gamma", 0) != 0 for c in cases)
    assert any(c["extractor"].get("with_global") for c in cases)
    assert any(len(c["pathways"]) == 2 for c in cases)
    assert any(c["head"].get("multilabel") is False for c in cases)
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 2 * 2**20, total


# ----------------------------------------------------------------------------- no fixture needed
def _rois(*rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def test_extractor_shapes_slowonly_and_slowfast():
    slow, fast = torch.randn(2, 6, 4, 8, 8), torch.randn(2, 2, 16, 8, 8)
    rois = _rois([0, 0, 0, 64, 64], [1, 16, 16, 100, 120], [1, -10, 5, 40, 140])
    feats, feat = RoIExtractor3D(16, 5)(slow, rois)
    assert feats.shape == (3, 6, 1, 5, 5) and feat.shape == (2, 6, 1, 8, 8)
    feats, feat = RoIExtractor3D(16, (3, 4), with_global=True)([slow, fast], rois)
    assert feats.shape == (3, 16, 1, 3, 4) and feat.shape == (2, 8, 1, 8, 8)
    feats, feat = RoIExtractor3D(16, 2, with_temporal_pool=False)([slow, fast], rois)
    assert feats.shape == (3, 8, 16, 2, 2) and feat.shape == (2, 8, 16, 8, 8)


def test_extractor_constant_map_and_global_context():
    """A constant map gives that constant in every bin; the global part is the frame's average."""
    x = torch.zeros(2, 3, 2, 8, 8, dtype=torch.float64)
    x[0] = 2.0
    x[1, :, :, :, :4] = 1.0  # left half of clip 1 is 1, right half 0
    x[1, :, 1] += 4.0  # second frame of clip 1: +4
    rois = _rois([0, 10, 10, 100, 100], [1, 0, 0, 64, 128], dtype=torch.float64)
    feats, _ = RoIExtractor3D(16, 2, with_global=True)(x, rois)
    assert torch.allclose(feats[0], torch.full_like(feats[0], 2.0))
    # clip 1: box over the left half (value 1), time-mean adds 2; global: [left 3, right 2]
    assert torch.allclose(feats[1, :3], torch.full_like(feats[1, :3], 3.0))
    assert torch.allclose(feats[1, 3:, 0, :, 0], torch.full((3, 2), 3.0, dtype=torch.float64))
    assert torch.allclose(feats[1, 3:, 0, :, 1], torch.full((3, 2), 2.0, dtype=torch.float64))
    feats_max, _ = RoIExtractor3D(16, 2, temporal_pool_mode="max")(x, rois)
    assert torch.allclose(feats_max[1], torch.full_like(feats_max[1], 5.0))


def test_slowfast_pathways_resized_nearest_and_concatenated_in_order():
    slow = torch.arange(2, dtype=torch.float64).view(1, 1, 2, 1, 1).expand(1, 1, 2, 4, 4).contiguous()
    fast = torch.full((1, 1, 8, 4, 4), 7.0, dtype=torch.float64)
    rois = _rois([0, 0, 0, 4, 4], dtype=torch.float64)
    feats, feat = RoIExtractor3D(1, 1, with_temporal_pool=False)([slow, fast], rois)
    assert feat.shape == (1, 2, 8, 4, 4)
    assert feats[0, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # slow repeated to T=8, first
    assert feats[0, 1, :, 0, 0].tolist() == [7.0] * 8


def test_head_forward_loss_and_gradients_flow():
    torch.manual_seed(0)
    extractor = RoIExtractor3D(16, 4, with_global=True, temporal_pool_mode="max")
    head = BBoxHeadAVA(in_channels=16, num_classes=6, mlp_head=True, focal_alpha=2.0, focal_gamma=1.5,
                       dropout_ratio=0.3, topk=(2, 3))
    x = torch.randn(2, 8, 4, 8, 8, requires_grad=True)
    rois = _rois([0, 0, 0, 64, 64], [1, 16, 16, 100, 120])
    scores = head(extractor(x, rois)[0])
    assert scores.shape == (2, 6)
    labels = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0.]])
    losses = head.loss(scores, labels)
    assert set(losses) == {"loss_action_cls", "recall@thr=0.5", "prec@thr=0.5", "recall@top2", "prec@top2",
                           "recall@top3", "prec@top3"}
    losses["loss_action_cls"].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert list(head.state_dict()) == ["fc_cls.0.weight", "fc_cls.0.bias", "fc_cls.2.weight", "fc_cls.2.bias"]


def test_focal_loss_formula_and_plain_bce():
    head = BBoxHeadAVA(in_channels=4, num_classes=3, focal_alpha=3.0, focal_gamma=2.0, topk=None)
    logits = torch.tensor([[0.3, -1.0, 2.0], [5.0, 0.5, -0.5], [1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)  # last RoI: background only
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2, 1:], labels[:2, 1:], reduction="none")
    expected = (3.0 * (1 - torch.exp(-bce)) ** 2 * bce).mean()
    assert torch.allclose(head.loss(logits, labels)["loss_action_cls"], expected)
    plain = BBoxHeadAVA(in_channels=4, num_classes=3, topk=None, background_class=False)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(plain.loss(logits, labels)["loss_action_cls"], expected)


def test_no_positive_roi_gives_zero_loss_not_nan():
    head = BBoxHeadAVA(in_channels=4, num_classes=4, topk=None)
    scores = head(torch.randn(3, 4, 1, 2, 2))
    loss = head.loss(scores, torch.zeros(3, 4))["loss_action_cls"]
    assert loss.item() == 0.0
    loss.backward()


def test_bbox_targets_order_weights_and_quirk():
    labels, weights = bbox_targets([torch.ones(2, 3), torch.ones(1, 3)], [1, 0], pos_weight=2.0)
    assert labels.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [1, 1, 1]]
    # clip 1 has no negatives: mmaction2's weight[-0:] = 1 resets its positives to 1
    assert weights.tolist() == [2.0, 2.0, 1.0, 1.0]
    assert bbox_targets([torch.ones(1, 3)], [2], pos_weight=-1)[1].tolist() == [1.0, 1.0, 1.0]


def test_predict_flip_crop_and_no_mutation():
    head = BBoxHeadAVA(in_channels=4, num_classes=3, topk=None)
    rois = _rois([0, 10, 20, 50, 60], dtype=torch.float64)
    before = rois.clone()
    boxes, scores = head.predict(rois, torch.zeros(1, 3, dtype=torch.float64), (100, 200), flip=True,
                                 crop_quadruple=[0.1, 0.2, 0.5, 0.5])
    assert torch.equal(rois, before)
    expected = torch.tensor([[(199 - 50) / 200 * 0.5 + 0.1, 20 / 100 * 0.5 + 0.2,
                              (199 - 10) / 200 * 0.5 + 0.1, 60 / 100 * 0.5 + 0.2]], dtype=torch.float64)
    assert torch.allclose(boxes, expected)
    assert torch.allclose(scores, torch.full((1, 3), 0.5, dtype=torch.float64))


def test_class_detections_thresholds():
    boxes = torch.arange(12, dtype=torch.float64).view(3, 4)
    scores = torch.tensor([[0.9, 0.6, 0.1, 0.3], [0.1, 0.2, 0.7, 0.6], [0.5, 0.01, 0.001, 0.002]],
                          dtype=torch.float64)
    multi = class_detections(boxes, scores, thr=0.5)
    assert len(multi) == 3 and [len(d) for d in multi] == [1, 1, 1]
    assert multi[0].tolist() == [[0, 1, 2, 3, 0.6]] and multi[2].tolist() == [[4, 5, 6, 7, 0.6]]
    assert [len(d) for d in class_detections(boxes, scores)] == [3, 2, 2]  # 0.002 is not > 0.002
    single = class_detections(boxes, scores, thr=-1)  # arg-max of columns 1.. per box
    assert [d[:, 0].tolist() for d in single] == [[0.0, 8.0], [4.0], []]
    per_class = class_detections(boxes, scores, thr=[0.0, 0.1, 0.9, 0.5])
    assert [len(d) for d in per_class] == [2, 0, 1]
    with pytest.raises(UserError):
        class_detections(boxes, scores, thr=[0.5, 0.5])


@pytest.mark.parametrize("make", [
    lambda: RoIExtractor3D(temporal_pool_mode="median"),
    lambda: RoIExtractor3D(featmap_stride=0),
    lambda: RoIExtractor3D(output_size=0),
    lambda: BBoxHeadAVA(temporal_pool_type="sum"),
    lambda: BBoxHeadAVA(num_classes=5, topk=(5,)),
    lambda: BBoxHeadAVA(dropout_ratio=1.5),
], ids=["pool_mode", "stride", "output_size", "head_pool", "topk", "dropout"])
def test_bad_arguments_are_user_errors(make):
    with pytest.raises(UserError):
        make()


def test_bad_inputs_are_user_errors():
    extractor = RoIExtractor3D(16, 2)
    x = torch.randn(2, 3, 2, 8, 8)
    with pytest.raises(UserError, match="rois"):
        extractor(x, torch.zeros(3, 4))
    with pytest.raises(UserError, match="batch indices"):
        extractor(x, _rois([2, 0, 0, 10, 10]))
    with pytest.raises(UserError, match="dtype"):
        extractor(x, _rois([0, 0, 0, 10, 10], dtype=torch.float64))
    with pytest.raises(UserError, match=r"\[B, C, T, H, W\]"):
        extractor(torch.randn(2, 3, 8, 8), _rois([0, 0, 0, 10, 10]))
    with pytest.raises(UserError, match="batch size"):
        extractor([x, torch.randn(1, 3, 2, 8, 8)], _rois([0, 0, 0, 10, 10]))
    head = BBoxHeadAVA(in_channels=4, num_classes=3, topk=None)
    with pytest.raises(UserError, match="in_channels|\\[K, 4"):
        head(torch.randn(2, 5, 1, 2, 2))
    with pytest.raises(UserError, match="shape"):
        head.loss(torch.randn(2, 3), torch.zeros(2, 4))
