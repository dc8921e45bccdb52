"""The EVAD detector (``stmixer/modeling/evad/``) against the whole official EVAD model.

The fixtures in tests/reference/evad/detector (``make_evad_fixtures.py --sections detector``, see the README)
hold the official model's float64 answers on a tiny ViT (6 blocks, pruning at blocks 1, 3, 4) / Sparse R-CNN
person detector (8 proposals, 2 stages, width 16) / context-refinement decoder (3 blocks, width 12) for keep
1.0, keep 0.7, and keep 0.6 with enhanced weight 4, in eval mode (kept indices, FPN outputs, per-stage person
logits and boxes, per-block action logits, detections) and train mode (weighted losses, matched indices,
gradients of a few parameters). The official weights load through our checkpoint reader and loader.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.checkpoint import load_weights
from stmixer.config import ConfigError, validate_config
from stmixer.modeling.backbones.evad_vit import EVADVisionTransformer
from stmixer.modeling.evad import ContextRefinement, EVADFPN

pytestmark = pytest.mark.evad

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "evad" / "detector"
META = json.loads((FIXTURES / "cases.json").read_text())
CASES = sorted(META["cases"])
REL = 1e-9
WHWH = [[96.0, 64.0, 96.0, 64.0]] * 2


def _inputs():
    data = np.load(FIXTURES / "inputs.npz")
    weights = {k[2:]: torch.from_numpy(v) for k, v in data.items() if k.startswith("w/")}
    clip = torch.from_numpy(data["clip_k"]).to(torch.float64) / 4
    boxes = [torch.from_numpy(data[f"gt_boxes_{i}"]) for i in range(2)]
    labels = [torch.from_numpy(data[f"gt_labels_{i}"]) for i in range(2)]
    return weights, clip, boxes, labels


WEIGHTS, CLIP, GT_BOXES, GT_LABELS = _inputs()


def _ref(case):
    return dict(np.load(FIXTURES / f"{case}.npz"))


def _close(ours, ref, name, rel=REL):
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-30)
    err = np.abs(ours - ref).max() / scale
    assert err <= rel, f"{name}: relative error {err:.3g} > {rel}"


def _backbone(case):
    info = META["cases"][case]
    v = META["vit"]
    model = EVADVisionTransformer(info["keep_rates"], info["enhanced_weight"], META["fpn_indices"],
                                  embed_dim=v["embed_dim"], depth=v["depth"], num_heads=v["num_heads"],
                                  mlp_ratio=v["mlp_ratio"], patch_size=v["patch_size"],
                                  tubelet_size=v["tubelet_size"], pretrain_img_size=v["pretrain_img_size"],
                                  pretrain_num_frames=META["clip"][2]).double()
    model.load_state_dict({k: w for k, w in WEIGHTS.items() if k.split(".")[0] in ("patch_embed", "blocks", "norm")})
    return model.eval()


def _context(restore_shuffle=True):
    crd, sp, v = META["crd"], META["sparse_rcnn"], META["vit"]
    side = v["pretrain_img_size"] // v["patch_size"]
    model = ContextRefinement(v["embed_dim"], embed_dim=crd["EMBED_DIM"], depth=crd["DEPTH"],
                              num_heads=crd["NUM_HEADS"], mlp_ratio=crd["MLP_RATIO"], num_actions=META["num_classes"],
                              act_dim=sp["ACT_FC_DIM"], num_act_layers=sp["NUM_ACT"], num_queries=sp["NUM_PROPOSALS"],
                              roi_extension=tuple(crd["ROI_EXTENSION"]), roi_resolution=META["pooler"]["resolution"],
                              roi_sampling_ratio=META["pooler"]["sampling_ratio"], patch_size=v["patch_size"],
                              pos_grid=(META["clip"][2] // v["tubelet_size"], side, side),
                              restore_shuffle=restore_shuffle).double()
    prefix = "det_head."
    model.load_state_dict({k[len(prefix):]: w for k, w in WEIGHTS.items()
                           if k.startswith(prefix) and not k.startswith(prefix + "s0_headseries.")})
    return model.eval()


# ----------------------------------------------------------------------------- parts (no person detector)
@pytest.mark.parametrize("case", CASES)
def test_context_refinement_matches_official_float64(case):
    """Our backbone's tokens + the official last-stage person boxes -> every decoder block's action logits."""
    ref = _ref(case)
    with torch.no_grad():
        feats = _backbone(case)([CLIP])
        assert np.array_equal(feats.kept_index.numpy(), ref["kept/final"])
        last = META["sparse_rcnn"]["NUM_HEADS"] - 1
        out = _context()(feats.tokens, feats.kept_index, feats.grid, torch.from_numpy(ref[f"stage{last}/boxes"]),
                         torch.tensor(WHWH, dtype=torch.float64))
    assert len(out) == META["crd"]["DEPTH"]
    for j, logits in enumerate(out):
        _close(logits, ref[f"block{j}/actions"], f"block{j}/actions")


@pytest.mark.parametrize("case", ["keep10", "keep07"])
def test_restore_order_switch(case):
    """``restore_shuffle=False`` puts each kept token at its own position: other logits when tokens were dropped,
    the same without pruning (so the official order is what the fixtures hold)."""
    ref = _ref(case)
    with torch.no_grad():
        feats = _backbone(case)([CLIP])
        args = (feats.tokens, feats.kept_index, feats.grid, torch.from_numpy(ref["stage1/boxes"]),
                torch.tensor(WHWH, dtype=torch.float64))
        official, own = _context(True)(*args)[-1], _context(False)(*args)[-1]
    assert torch.equal(official, own) == (case == "keep10")


def test_fpn_matches_official_float64():
    ref = _ref("keep07")
    fpn = EVADFPN([META["vit"]["embed_dim"]] * 4, META["sparse_rcnn"]["HIDDEN_DIM"]).double()
    fpn.load_state_dict({k: w for k, w in WEIGHTS.items() if k.startswith("fpn_")})
    with torch.no_grad():
        out = fpn(_backbone("keep07")([CLIP]).features)
    for level, p in enumerate(out):
        _close(p, ref[f"fpn/p{level + 2}"], f"fpn/p{level + 2}")


def test_fpn_refuses_an_odd_token_grid():
    fpn = EVADFPN([4] * 4, 8)
    maps = [torch.zeros(1, 4, 12, 20), torch.zeros(1, 4, 6, 10), torch.zeros(1, 4, 3, 5), torch.zeros(1, 4, 1, 2)]
    with pytest.raises(ValueError, match="must be even"):
        fpn(maps)


# ----------------------------------------------------------------------------- the whole detector
from stmixer.modeling.build import build_detector  # noqa: E402
from stmixer.modeling.evad import parity  # noqa: E402

META_FIXTURE, INPUTS = parity.load_fixture(FIXTURES)
# official answers that are not model outputs (the clip bookkeeping of its evaluator)
NOT_PRODUCED = {"eval/metadata"}


@pytest.fixture(scope="module")
def ours():
    return {case: parity.run_case(META_FIXTURE, INPUTS, case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_detector_matches_official_float64(case, ours):
    """Kept indices, FPN, per-stage person logits / boxes, per-block action logits, detections (eval); weighted
    losses, matched indices of every stage, gradients (train, USE_CHECKPOINT True): every answer."""
    ref, got = _ref(case), ours[case]
    assert set(ref) - set(got) == NOT_PRODUCED
    for name, value in ref.items():
        if name in NOT_PRODUCED:
            continue
        if value.dtype.kind in "iub":
            assert np.array_equal(got[name], value), name
        else:
            _close(got[name], value, name)
    assert list(k for k in got if k.startswith("loss/")) == ["loss/" + k for k in META["cases"][case]["loss_keys"]]


def test_checkpointing_on_and_off_agree_exactly(ours):
    """The official backward needs USE_CHECKPOINT True (keep < 1); ours gives the same values and gradients
    both ways."""
    plain = parity.run_case(META_FIXTURE, INPUTS, "keep06_ew4", use_checkpoint=False)
    for name, value in ours["keep06_ew4"].items():
        assert np.array_equal(plain[name], value), name
    assert "RuntimeError" in META["cases"]["keep06_ew4"]["official_backward_without_checkpoint"]


def _tiny(case="keep07", **evad):
    cfg = parity.fixture_cfg(META_FIXTURE, case)
    cfg.EVAD.merge_from_list([x for kv in evad.items() for x in kv])
    model = build_detector(cfg).double()
    state = {k[2:]: torch.from_numpy(v) for k, v in INPUTS.items() if k.startswith("w/")}
    from stmixer.checkpoint.formats import checkpoint_from_object

    assert load_weights(model, checkpoint_from_object({"model_state": state}, "fixture"), log=None).ok
    return model, cfg


def test_eval_contract_and_person_threshold_fallback():
    model, _ = _tiny()
    clip, whwh, _, _ = parity.fixture_batch(META_FIXTURE, INPUTS)
    with torch.no_grad():
        dets = model.eval()(clip, None, whwh)
        model.person_threshold = 1.01  # nobody passes: every query is reported (official)
        every = model(clip, None, whwh)
    assert len(dets) == 2 and set(dets[0]) == {"scores", "boxes", "query_indices", "person_scores"}
    assert all((d["person_scores"] >= 0.5).all() for d in dets)
    assert [len(d["boxes"]) for d in every] == [8, 8]
    assert all(((d["boxes"] >= 0) & (d["boxes"] <= 1)).all() for d in every)
    model.num_eval_act_classes = 2
    with torch.no_grad():
        top2 = model(clip, None, whwh)
    assert all(((d["scores"] > 0).sum(-1) == 2).all() for d in top2)


def test_gt_boxes_prob_reads_the_matched_ground_truth():
    """GT_BOXES_PROB 1: the action RoIs of matched queries are the ground-truth boxes (other action losses);
    0 (official, whose option has no effect): the predicted boxes."""
    clip, whwh, boxes, labels = parity.fixture_batch(META_FIXTURE, INPUTS)
    losses = {}
    for prob in (0.0, 1.0):
        model, _ = _tiny(GT_BOXES_PROB=prob)
        with torch.no_grad():
            losses[prob] = model.train()(clip, None, whwh, boxes, labels)
    assert float(losses[0.0]["loss_bce"]) == pytest.approx(float(_ref("keep07")["loss/loss_bce"]), rel=1e-12)
    assert float(losses[1.0]["loss_bce"]) != pytest.approx(float(losses[0.0]["loss_bce"]), rel=1e-6)
    assert float(losses[1.0]["loss_ce"]) == float(losses[0.0]["loss_ce"])


def test_config_checks():
    _, cfg = _tiny()
    validate_config(cfg)
    cfg.EVAD.ROI_EXTENSION = [0.4, 0.2, 0.1]
    cfg.EVAD.PERSON.ACTIVATION = "tanh"
    cfg.EVAD.DECODER_DIM = 13
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    for key in ("EVAD.ROI_EXTENSION", "EVAD.PERSON.ACTIVATION", "EVAD.DECODER_DIM"):
        assert key in str(err.value)
    _, cfg = _tiny()
    cfg.MODEL.BACKBONE.CONV_BODY = "MAE-ViT-B"
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.CONV_BODY.*expected an EVAD backbone"):
        validate_config(cfg)


def test_reference_parity_tool_accepts_the_evad_fixture(tmp_path):
    from stmixer.tools import reference_parity

    out = tmp_path / "out.npz"
    assert reference_parity.main(["--fixture", str(FIXTURES), "--out", str(out), "--precision", "f64"]) == 0
    with np.load(out) as got:
        ref = _ref("keep07")
        _close(got["f64/keep07/block2/actions"], ref["block2/actions"], "block2/actions")
        assert np.array_equal(got["f64/keep07/match/stage1/query_1"], ref["match/stage1/query_1"])
        assert {k for k in got.files if k.startswith("f64/keep10/")} == \
            {"f64/keep10/" + k for k in _ref("keep10")} - {"f64/keep10/" + k for k in NOT_PRODUCED}


def test_float32_against_official_float64():
    """float32 (the training precision): identical kept indices and matches; values within 1e-4 of max|value|
    (measured: outputs <= 2.6e-6, gradients <= 7.7e-6 over the three cases; float32 rounding accumulated over
    the ViT, the two person stages, the decoder and their backward passes)."""
    ref = _ref("keep06_ew4")
    got = parity.run_case(META_FIXTURE, INPUTS, "keep06_ew4", dtype=torch.float32)
    for name, value in ref.items():
        if name in NOT_PRODUCED:
            continue
        if value.dtype.kind in "iub":
            assert np.array_equal(got[name], value), name
        else:
            _close(got[name].astype(np.float64), value, name, rel=1e-4)
