"""ACRN, the actor-centric relation shared head (stmixer.modeling.roi_heads.acrn).

The ``mmaction2``-marked tests hold ``ACRNHead`` (alone, and between ``RoIExtractor3D`` and
``BBoxHeadAVA`` as mmaction2's ACRN config wires them) to the official modules' float64 answers in
tests/reference/mmaction2/acrn (made by tests/reference/make_mmaction2_acrn_fixtures.py): every
output within 1e-9 x max|value| of its tensor in float64; float32 runs within F32_TOL x max|value|
(the fixture README says why). The other tests need no fixture.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.config.config import ConfigError
from stmixer.config.validate import validate_config
from stmixer.errors import UserError
from stmixer.modeling.roi_heads import ACRNHead, BBoxHeadAVA, RoIExtractor3D, bbox_targets
from stmixer.modeling.roi_heads.shared_heads import SHARED_HEAD_REGISTRY

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "acrn"
F64_TOL = 1e-9
F32_TOL = 1e-5


def _index():
    path = FIXTURES / "cases.json"
    return json.loads(path.read_text()) if path.exists() else {"cases": {}}


def _names(kind):
    return sorted(n for n, c in _index()["cases"].items() if c["kind"] == kind) or ["missing"]


def _load(name):
    with np.load(FIXTURES / f"{name}.npz") as data:
        return dict(data)


def _rel_err(ours, ref):
    scale = max(float(np.abs(ref).max()), 1e-300)
    return float(np.abs(ours - ref).max()) / scale


def _weights(ref, prefix="weight/"):
    return {k[len(prefix):]: torch.from_numpy(v) for k, v in ref.items() if k.startswith(prefix)}


def _acrn(args, weights, dtype):
    head = ACRNHead(**args).double()
    head.load_state_dict(weights, strict=True)  # mmaction2's parameter names, unchanged
    return head.to(dtype)


def _compare(out, ref, keys, tol):
    assert sorted(keys) == sorted(out), "fixture outputs and ours differ in names"
    for key in keys:
        assert out[key].shape == ref[key].shape, key
        err = _rel_err(out[key], ref[key])
        assert err <= tol, f"{key}: rel err {err:.3g}"


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", _names("head"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_acrn_head_matches_mmaction2(name, dtype):
    """Training forward (batch statistics), gradients of inputs and parameters, running stats, eval forward."""
    assert (FIXTURES / "cases.json").exists(), f"{FIXTURES}/cases.json is missing"
    meta = _index()["cases"][name]
    ref = _load(name)
    head = _acrn(meta["acrn"], _weights(ref), dtype)
    x = torch.from_numpy(ref["input/roi_feats"]).to(dtype).requires_grad_()
    feat = torch.from_numpy(ref["input/feat"]).to(dtype).requires_grad_()
    rois = torch.from_numpy(ref["input/rois"]).to(dtype)
    head.train()
    y = head(x, feat, rois, ["v,0902", "v,0903"])
    (y * torch.from_numpy(ref["input/probe"]).to(dtype)).sum().backward()
    head.eval()
    with torch.no_grad():
        y_eval = head(x, feat, rois)
    out = {"out/train": y, "out/eval": y_eval, "grad/roi_feats": x.grad, "grad/feat": feat.grad}
    out.update({f"state/{k}": v for k, v in head.state_dict().items() if "running" in k or "batches" in k})
    out.update({f"grad/{k}": p.grad for k, p in head.named_parameters()})
    out = {k: v.detach().double().numpy() for k, v in out.items()}
    keys = [k for k in ref if not k.startswith(("weight/", "input/"))]
    _compare(out, ref, keys, F64_TOL if dtype == torch.float64 else F32_TOL)


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", _names("chain"))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_extractor_acrn_bbox_head_match_mmaction2(name, dtype):
    """RoIExtractor3D -> ACRNHead -> BBoxHeadAVA as mmaction2's AVARoIHead runs them: loss, scores, grads."""
    assert (FIXTURES / "cases.json").exists(), f"{FIXTURES}/cases.json is missing"
    meta = _index()["cases"][name]
    ref = _load(name)
    weights = _weights(ref)
    extractor = RoIExtractor3D(featmap_stride=meta["featmap_stride"], **meta["extractor"])
    acrn = _acrn(meta["acrn"], {k[len("shared_head."):]: v for k, v in weights.items()
                                if k.startswith("shared_head.")}, dtype)
    head = BBoxHeadAVA(**meta["head"]).double()
    head.load_state_dict({k[len("bbox_head."):]: v for k, v in weights.items() if k.startswith("bbox_head.")},
                         strict=True)
    head = head.to(dtype)
    feats = [torch.from_numpy(ref[f"input/feat{i}"]).to(dtype).requires_grad_() for i in range(len(meta["pathways"]))]
    rois = torch.from_numpy(ref["input/rois"]).to(dtype)

    acrn.train()
    head.train()
    roi_feats, feat = extractor(feats, rois)
    roi_feats.retain_grad()
    acrn_feats = acrn(roi_feats, feat, rois, ["v,0902", "v,0903"])
    acrn_feats.retain_grad()
    cls_score = head(acrn_feats)
    labels_in = torch.from_numpy(ref["input/labels"]).to(dtype)
    pos_labels, num_neg, start = [], [], 0
    for n_pos, n_neg in meta["pos_neg"]:
        pos_labels.append(labels_in[start:start + n_pos])
        num_neg.append(n_neg)
        start += n_pos + n_neg
    labels, label_weights = bbox_targets(pos_labels, num_neg, meta["pos_weight"])
    losses = head.loss(cls_score, labels)
    losses["loss_action_cls"].backward()
    acrn.eval()
    head.eval()
    with torch.no_grad():
        roi_eval, feat_eval = extractor(feats, rois)
        cls_eval = head(acrn(roi_eval, feat_eval, rois))

    out = {"input/labels": labels, "out/label_weights": label_weights, "out/roi_feats": roi_feats,
           "out/global_feat": feat, "out/acrn_feats": acrn_feats, "out/cls_score": cls_score,
           "out/cls_score_eval": cls_eval, "grad/roi_feats": roi_feats.grad, "grad/acrn_feats": acrn_feats.grad}
    out.update({f"grad/feat{i}": f.grad for i, f in enumerate(feats)})
    out.update({f"grad/shared_head.{k}": p.grad for k, p in acrn.named_parameters()})
    out.update({f"grad/bbox_head.{k}": p.grad for k, p in head.named_parameters()})
    out = {k: v.detach().double().numpy() for k, v in out.items()}
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    _compare(out, ref, [k for k in ref if not k.startswith(("weight/", "input/feat", "input/rois"))], tol)
    losses = {k: float(v.detach()) for k, v in losses.items()}
    assert sorted(losses) == sorted(meta["losses"])
    for key, value in meta["losses"].items():
        if key == "loss_action_cls":
            assert abs(losses[key] - value) <= tol * abs(value), (key, losses[key], value)
        else:  # float32 metrics in mmaction2 (and here): counts of the same decisions
            assert losses[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


@pytest.mark.mmaction2
def test_fixture_covers_the_brief():
    """A clip with one RoI, several convs / stride 2 / no norm, the SlowFast chain; under 2 MiB."""
    cases = _index()["cases"]
    heads = [c for c in cases.values() if c["kind"] == "head"]
    assert any(1 in c["counts"] for c in heads)
    assert any(c["acrn"].get("stride", 1) == 2 and c["acrn"].get("num_convs", 1) > 2 for c in heads)
    assert any(c["acrn"].get("norm") == "none" for c in heads)
    chain = [c for c in cases.values() if c["kind"] == "chain"]
    assert any(len(c["pathways"]) == 2 and c["extractor"]["with_temporal_pool"]
               and not c["extractor"]["with_global"] for c in chain)
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 2 * 2**20, total


# ----------------------------------------------------------------------------- no fixture needed
def _inputs(k_per_clip=(3, 1), c_roi=4, c_map=4, t=1, hw=(5, 6), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rois = torch.cat([torch.tensor([[float(b), 0, 0, 32, 32]] * n, dtype=dtype) for b, n in enumerate(k_per_clip)])
    x = torch.randn(len(rois), c_roi, t, 3, 3, generator=gen, dtype=dtype)
    feat = torch.randn(len(k_per_clip), c_map, t, *hw, generator=gen, dtype=dtype)
    return x, feat, rois


def test_parameter_names_are_mmaction2s():
    head = ACRNHead(8, 4, num_convs=2)
    bn = ["bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    expected = [f"{m}.{k}" for m in ("conv1", "conv2", "convs.0") for k in ["conv.weight"] + bn]
    assert list(head.state_dict()) == expected
    assert list(ACRNHead(8, 4, norm="none", act="none").state_dict()) == ["conv1.conv.weight", "conv2.conv.weight"]


def test_init_is_kaiming_fan_out_and_unit_batchnorm():
    torch.manual_seed(0)
    head = ACRNHead(64, 128)
    w = head.conv2.conv.weight  # fan_out = 128 * 3 * 3
    assert abs(w.std().item() / (2.0 / (128 * 9)) ** 0.5 - 1) < 0.05
    w = head.conv1.conv.weight  # fan_out = 128
    assert abs(w.std().item() / (2.0 / 128) ** 0.5 - 1) < 0.05
    assert all(m.bn.weight.eq(1).all() and m.bn.bias.eq(0).all() for m in (head.conv1, head.conv2))


def test_output_shapes_stride_and_one_roi_clip():
    x, feat, rois = _inputs(hw=(7, 6))
    assert ACRNHead(8, 5)(x, feat, rois).shape == (4, 5, 1, 7, 6)
    assert ACRNHead(8, 5, stride=2, num_convs=3)(x, feat, rois).shape == (4, 5, 1, 4, 3)


def test_each_roi_sees_its_own_clip():
    """Each RoI is paired with the map of the clip its batch index names."""
    x, feat, rois = _inputs(k_per_clip=(2, 1))
    head = ACRNHead(8, 3).eval()
    y = head(x, feat, rois)
    swapped = rois.clone()
    swapped[:, 0] = 1 - swapped[:, 0]
    assert torch.allclose(head(x, feat.flip(0), swapped), y)
    assert not torch.allclose(head(x, feat, swapped), y)


def test_time_is_tiled_frame_by_frame_when_not_pooled():
    """T' > 1 (no temporal pooling; mmaction2 fails there): frame t relates the actor to map frame t."""
    x, feat, rois = _inputs(t=3)
    head = ACRNHead(8, 4, num_convs=2).eval()
    y = head(x, feat, rois)
    assert y.shape == (4, 4, 3, 5, 6)
    actor = x.amax(2, keepdim=True)  # the actor vector pools time too
    for t in range(3):
        assert torch.allclose(y[:, :, t:t + 1], head(actor, feat[:, :, t:t + 1], rois))


def test_no_roi_gives_an_empty_batch():
    x, feat, rois = _inputs()
    y = ACRNHead(8, 5, stride=2)(x[:0], feat, rois[:0])
    assert y.shape == (0, 5, 1, 3, 3)


def test_frozen_norm_keeps_running_stats_training():
    head = ACRNHead(8, 4, norm_requires_grad=False)
    assert not any(p.requires_grad for n, p in head.named_parameters() if ".bn." in n)
    x, feat, rois = _inputs()
    head(x.float(), feat.float(), rois.float()).sum().backward()
    assert head.conv1.bn.num_batches_tracked.item() == 1 and head.conv1.conv.weight.grad is not None


def test_bad_arguments_and_inputs():
    with pytest.raises(UserError, match="norm"):
        ACRNHead(8, 4, norm="GN")
    with pytest.raises(UserError, match="num_convs"):
        ACRNHead(8, 4, num_convs=0)
    x, feat, rois = _inputs(c_roi=4, c_map=6)
    with pytest.raises(UserError, match="in_channels = 8"):
        ACRNHead(8, 4)(x, feat, rois)
    x, feat, rois = _inputs()
    with pytest.raises(UserError, match="T = 1"):
        ACRNHead(8, 4)(x, feat.expand(-1, -1, 2, -1, -1), rois)


def test_builder_reads_the_config():
    cfg = get_cfg()
    build = SHARED_HEAD_REGISTRY.get("ACRN")
    head = build(cfg, 2304)  # mmaction2's SlowFast-R50 ACRN config: 4608 in, 2304 out
    assert (head.in_channels, head.out_channels, head.stride, head.num_convs) == (4608, 2304, 1, 1)
    assert isinstance(head.conv1.bn, torch.nn.BatchNorm3d) and isinstance(head.conv1.activate, torch.nn.ReLU)
    cfg.MODEL.ROI_HEAD.ACRN.OUT_CHANNELS = 16
    cfg.MODEL.ROI_HEAD.ACRN.STRIDE = 2
    cfg.MODEL.ROI_HEAD.ACRN.NUM_CONVS = 2
    cfg.MODEL.ROI_HEAD.ACRN.NORM = "none"
    cfg.MODEL.ROI_HEAD.WITH_GLOBAL = True  # RoI features are RoI + global halves: the map has half of them
    head = build(cfg, 24)
    assert (head.in_channels, head.out_channels, head.stride, head.num_convs) == (36, 16, 2, 2)
    x, feat, rois = _inputs(c_roi=24, c_map=12)
    assert head(x, feat, rois).shape == (4, 16, 1, 3, 3)


def test_config_keys_are_validated():
    cfg = get_cfg()
    validate_config(cfg)
    cfg.MODEL.ROI_HEAD.ACRN.NORM = "BN"
    cfg.MODEL.ROI_HEAD.ACRN.NUM_CONVS = 0
    with pytest.raises(ConfigError, match="MODEL.ROI_HEAD.ACRN.NORM") as err:
        validate_config(cfg)
    assert "MODEL.ROI_HEAD.ACRN.NUM_CONVS" in str(err.value)
