"""TubeR (``MODEL.META_ARCHITECTURE "TubeR"``) held to the official code, plus its config / weight paths.

The ``tuber``-marked tests rebuild the fixture's model (tests/reference/tuber/tuber, made by
tests/reference/make_query_detector_fixtures.py --sections tuber from amazon-science/tubelet-transformer
``models/tuber_ava.py``): weights from the seed recipe under the official state-dict names, loaded through
``stmixer.checkpoint`` (the TubeR ``.pth`` layout), the same two clips (the second one padded), the same
ground truth. float64: every intermediate, output, loss and gradient within F64_TOL x max|value|; the
Hungarian matches identical. float32: within F32_TOL.
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.modeling import build_detector
from stmixer.modeling.tuber import parity

TUBER = Path(__file__).resolve().parents[1] / "reference" / "tuber"
FIXTURES = TUBER / "tuber"
CASE = "tuber_csn50"
F64_TOL = 1e-9
# float32 forward vs the float64 answers, relative to max|value| of each array: measured worst 9.5e-7
# (encoder memory; CSN output 6.7e-7, heads <= 6.6e-7); ~10x margin for other CPUs / BLAS kernels.
F32_TOL = 1e-5


recipe = parity.load_recipe(FIXTURES)


def tiny_cfg(meta=None):
    """Our config of the fixture's official config (TubeR_CSN50_AVA21 + the case's overrides)."""
    return parity.fixture_config(meta or {"overrides": {"ENC_LAYERS": 2, "DEC_LAYERS": 2, "QUERY_NUM": 4,
                                                        "TEMP_LEN": 16}})


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((FIXTURES / f"{CASE}.json").read_text())
    with np.load(FIXTURES / f"{CASE}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def build_loaded(meta, dtype, **overrides):
    return parity.build_loaded(meta, recipe, dtype, **overrides)


def inputs(meta, dtype):
    return parity.fixture_inputs(meta, recipe, dtype)


def run_train(model, meta, arrays, dtype, params):
    return parity.loss_pass(model, meta, recipe, arrays, dtype, params)


def rel(ours, expected):
    ours = ours.detach().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    return float(np.abs(ours - expected).max() / max(np.abs(expected).max(), 1e-300))


@pytest.fixture(scope="module")
def f64_run(fixture):
    """One float64 model of the fixture: the loss pass (BCE, then focal) and the eval-mode heads / detections."""
    meta, arrays = fixture
    model, report = build_loaded(meta, torch.float64)
    losses, trace, grads = run_train(model, meta, arrays, torch.float64, meta["grad_params"])
    model.criterion.class_loss = "focal"
    focal, _, focal_grads = run_train(model, meta, arrays, torch.float64, meta["grad_params"][:3])
    model.criterion.class_loss = "bce"
    video, whwh = inputs(meta, torch.float64)
    with torch.no_grad():
        heads = model.predictions(video, whwh)
    return model, report, losses, trace, grads, focal, focal_grads, heads, model.detections(heads)


@pytest.mark.tuber
def test_tuber_checkpoint_layout_loads_every_official_key(f64_run, fixture):
    meta, _ = fixture
    report = f64_run[1]
    assert report.ok, report.table()
    official = {name for name, _ in meta["official_state_dict"] if not name.startswith("backbone.body.out_fc.")}
    assert len(official) == len(report.loaded)


@pytest.mark.tuber
def test_tuber_intermediates_and_outputs_match_official_float64(f64_run, fixture):
    meta, arrays = fixture
    trace = f64_run[3]
    step = meta["slice"]
    assert rel(trace["backbone"][:, ::step], arrays["trace/backbone"]) <= F64_TOL
    assert rel(trace["pooled"][:, ::step], arrays["trace/pooled"]) <= F64_TOL
    assert rel(trace["pos"], arrays["trace/pos"]) <= F64_TOL
    assert rel(trace["memory"], arrays["trace/memory"]) <= F64_TOL
    assert rel(trace["hs"], arrays["trace/hs"]) <= F64_TOL
    assert rel(trace["context"][..., ::step], arrays["trace/context"]) <= F64_TOL


@pytest.mark.tuber
def test_tuber_per_layer_heads_match_official_float64(f64_run, fixture):
    meta, arrays = fixture
    out = f64_run[7]
    for k in range(meta["overrides"]["DEC_LAYERS"]):
        for key in ("logits_b", "boxes", "logits"):
            assert rel(out[key][k], arrays[f"out/{key}/layer{k}"]) <= F64_TOL, (key, k)


@pytest.mark.tuber
def test_tuber_matches_losses_and_gradients_match_official_float64(f64_run, fixture):
    meta, arrays = fixture
    _, _, losses, trace, grads, focal, focal_grads, _, _ = f64_run
    L = meta["overrides"]["DEC_LAYERS"]
    for k in range(L):
        ours = [[m.src.tolist(), m.tgt.tolist()] for m in trace[f"match/layer{k}"]]
        assert ours == meta["matches"][f"layer{k}"], k
    weights = meta["weight_dict"]
    for key, expected in meta["losses"].items():
        if key in ("class_error", "total"):
            continue
        ours = losses[key] / weights[key]
        assert str(ours.dtype).replace("torch.", "") == expected["dtype"], key  # float32 box terms (LOSS_FLOAT32)
        assert abs(float(ours.detach()) - expected["value"]) <= F64_TOL * abs(expected["value"]), key
    for p in meta["grad_params"]:
        assert rel(grads[p], arrays[f"grad/{p}"]) <= F64_TOL, p
    for key, expected in meta["focal_losses"].items():
        if key in ("class_error", "total"):
            continue
        assert abs(float(focal[key].detach() / weights[key]) - expected) <= F64_TOL * abs(expected), key
    for p in meta["grad_params"][:3]:
        assert rel(focal_grads[p], arrays[f"grad_focal/{p}"]) <= F64_TOL, p


@pytest.mark.tuber
def test_tuber_detections_match_official_postprocess(f64_run, fixture):
    _, arrays = fixture
    detections = f64_run[8]
    for i, det in enumerate(detections):
        assert rel(det["scores"], arrays["det/scores"][i]) <= F64_TOL
        assert rel(det["boxes"], np.clip(arrays["det/boxes_normalized"][i], 0, 1)) <= F64_TOL
        assert rel(det["person_scores"], arrays["det/switch"][i][:, 0]) <= F64_TOL


@pytest.mark.tuber
def test_tuber_float64_clean_loss_path_keeps_float64(f64_run, fixture):
    """LOSS_FLOAT32 False: every term float64, box terms equal to the official float32 ones within float32 rounding."""
    meta, arrays = fixture
    model, heads = f64_run[0], f64_run[7]
    _, whwh = inputs(meta, torch.float64)
    boxes, labels = parity.fixture_targets(meta, arrays, whwh)
    clean = copy.deepcopy(model.criterion)
    clean.float32_quirks = False
    with torch.no_grad():
        losses = clean(heads, [{"boxes": b, "actions": a, "whwh": w} for b, a, w in zip(boxes, labels, whwh)])
    assert all(v.dtype == torch.float64 for v in losses.values())
    weights = meta["weight_dict"]
    for key in ("loss_bbox", "loss_giou", "loss_bbox_0"):
        expected = meta["losses"][key]["value"]
        diff = abs(float(losses[key] / weights[key]) - expected)
        assert 0 < diff <= 1e-7 * abs(expected), key  # the official value is float32-rounded
    for key in ("loss_ce", "loss_ce_b_0"):
        assert abs(float(losses[key] / weights[key]) - meta["losses"][key]["value"]) <= F64_TOL * 10, key


def _fake_detr(model, prefix=""):
    """A DETR checkpoint with the real key layout (COCO detr-r50: 100 queries, 92 classes, 2-D input_proj)."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.tuber_head.transformer.state_dict().items():
        sd[f"{prefix}transformer.{k}"] = torch.randn(v.shape, generator=gen)
    for k, v in model.tuber_head.bbox_embed.state_dict().items():
        sd[f"{prefix}bbox_embed.{k}"] = torch.randn(v.shape, generator=gen)
    sd[f"{prefix}query_embed.weight"] = torch.randn(100, 256, generator=gen)
    sd[f"{prefix}class_embed.weight"] = torch.randn(92, 256, generator=gen)
    sd[f"{prefix}class_embed.bias"] = torch.randn(92, generator=gen)
    sd[f"{prefix}input_proj.weight"] = torch.randn(256, 2048, 1, 1, generator=gen)
    sd[f"{prefix}input_proj.bias"] = torch.randn(256, generator=gen)
    sd[f"{prefix}backbone.0.body.conv1.weight"] = torch.randn(64, 3, 7, 7, generator=gen)
    sd[f"{prefix}backbone.0.body.layer1.0.bn1.running_mean"] = torch.randn(64, generator=gen)
    return sd


@pytest.mark.parametrize("prefix", ["", "module."])
def test_detr_weight_loads_transformer_queries_and_box_mlp(tmp_path, prefix):
    """MODEL.TUBER.DETR_WEIGHT: COCO DETR layout (and TubeR's module.-prefixed detr.pth) -> tuber_head, first Q
    queries, the rest dropped; TubeR's own loader loads nothing from the un-prefixed file (documented)."""
    cfg = tiny_cfg()
    model = build_detector(cfg)
    sd = _fake_detr(model, prefix)
    path = tmp_path / "detr.pth"
    torch.save({"model": sd}, path)
    before = model.tuber_head.input_proj.weight.clone()
    cfg.MODEL.TUBER.DETR_WEIGHT = str(path)
    loaded = build_detector(cfg)
    assert torch.equal(loaded.tuber_head.query_embed.weight, sd[f"{prefix}query_embed.weight"][:4])
    key = "transformer.decoder.layers.1.multihead_attn.in_proj_weight"
    assert torch.equal(loaded.tuber_head.state_dict()[key], sd[prefix + key])
    assert torch.equal(loaded.tuber_head.bbox_embed.layers[2].bias, sd[f"{prefix}bbox_embed.layers.2.bias"])
    assert before.shape == loaded.tuber_head.input_proj.weight.shape  # not from the file (2-D conv there)
    from stmixer.modeling.tuber.detr_weights import load_detr_weights

    report = load_detr_weights(loaded, path, log=None)
    assert report.ok and len(report.loaded) == len([k for k in sd if k.split(".")[len(prefix.split(".")) - 1]
                                                    in ("transformer", "bbox_embed", "query_embed")])
    assert sum(len(v) for v in report.dropped.values()) == 6 + 1  # 6 DETR-only tensors + the cut queries


def test_detr_weight_rejects_a_tuber_checkpoint(tmp_path):
    from stmixer.checkpoint import CheckpointFormatError
    from stmixer.modeling.tuber.detr_weights import load_detr_weights

    model = build_detector(tiny_cfg())
    path = tmp_path / "tuber.pth"
    torch.save({"model": {"backbone.body.conv1.weight": torch.zeros(64, 3, 3, 7, 7)}}, path)
    with pytest.raises(CheckpointFormatError, match="MODEL.TUBER.DETR_WEIGHT"):
        load_detr_weights(model, path, log=None)


@pytest.mark.tuber
def test_reference_parity_accepts_the_tuber_fixtures_float32_within_tolerance(tmp_path, fixture):
    """python -m stmixer.tools.reference_parity --fixture tests/reference/tuber/tuber --precision f32 writes the
    fixture's names; its float32 forward is within F32_TOL of the float64 answers."""
    from stmixer.tools import reference_parity

    meta, arrays = fixture
    out = tmp_path / "out.npz"
    assert reference_parity.main(["--fixture", str(FIXTURES), "--out", str(out), "--precision", "f32"]) == 0
    with np.load(out) as ours:
        names = ["trace/backbone", "trace/pooled", "trace/memory", "trace/hs", "trace/context"]
        names += [f"out/{key}/layer{k}" for key in ("logits_b", "boxes", "logits")
                  for k in range(meta["overrides"]["DEC_LAYERS"])]
        worst = max(rel(ours[f"f32/{name}"], arrays[name]) for name in names)
        assert worst <= F32_TOL, worst
        # float32 gradients: 1.3e-5 measured
        assert rel(ours["f32/grad/query_embed.weight"], arrays["grad/query_embed.weight"]) <= 20 * F32_TOL
        assert "f32/match/layer1_src_b1" in ours.files and "f32/loss/loss_ce" in ours.files
        assert "f32/train/out/logits" in ours.files and "f32/det/scores" in ours.files

# the TubeR rows (the folder also holds the fork's Sparse R-CNN and D-TubeR, tested with their code)
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "config_files" / "tuber").glob("TubeR_*.yaml"))


def test_tuber_configs_cover_the_seed_table_and_the_official_configs():
    names = {p.stem for p in CONFIGS}
    assert names == {"TubeR_CSN50_AVA21", "TubeR_CSN50_AVA21_focal", "TubeR_CSN50_AVA21_detr_coco",
                     "TubeR_CSN50_AVA21_no_detr_30ep", "TubeR_CSN152_AVA21", "TubeR_CSN152_AVA22"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_tuber_config_builds_and_runs_a_tiny_forward(path):
    """Every config merges onto get_cfg (load_config validates it), builds, and detects on a tiny CPU clip."""
    from stmixer.config import load_config

    cfg = load_config(str(path), ["MODEL.TUBER.DETR_WEIGHT", ""])
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    assert model.tuber_head.temporal_pool == cfg.MODEL.TUBER.TEMPORAL_POOL
    assert model.criterion.class_loss == cfg.MODEL.TUBER.CLASS_LOSS
    video = torch.randn(1, 3, cfg.DATA.NUM_FRAMES, 32, 32)  # 32 frames: "avg" pools the 4 of layer4
    whwh = torch.tensor([[32.0, 32.0, 32.0, 32.0]])
    with torch.no_grad():
        det = model(video, None, whwh)
    Q = cfg.MODEL.TUBER.NUM_QUERIES
    assert det[0]["scores"].shape == (Q, 80) and det[0]["boxes"].shape == (Q, 4)
    assert torch.isfinite(det[0]["scores"]).all() and (det[0]["boxes"] >= 0).all() and (det[0]["boxes"] <= 1).all()


def test_tuber_backbone_lr_factor_reaches_the_optimizer():
    """MODEL.TUBER.BACKBONE_LR_FACTOR: TubeR's LR_BACKBONE for the CSN and the "decode" pooling, BASE_LR elsewhere."""
    from stmixer.solver.optimizer import build_optimizer

    cfg = tiny_cfg()
    cfg.SOLVER.BASE_LR = 1e-4
    model = build_detector(cfg)
    optimizer = build_optimizer(cfg, model)
    lr_of = {}
    for group in optimizer.param_groups:
        for name in group["names"]:
            lr_of[name] = group["lr"]
    assert lr_of["backbone.conv1.weight"] == pytest.approx(1e-5)
    assert lr_of["tuber_head.pool_decoder.norm.weight"] == pytest.approx(1e-5)
    assert lr_of["tuber_head.transformer.decoder.norm.weight"] == pytest.approx(1e-4)
    assert lr_of["tuber_head.query_embed.weight"] == pytest.approx(1e-4)


def test_tuber_rejects_a_backbone_without_the_csn_map():
    from stmixer.config import ConfigError

    cfg = tiny_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "PySlowonly"
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.CONV_BODY"):
        build_detector(cfg)


def test_tuber_config_checks_name_the_widths_its_hard_codes_need():
    from stmixer.config import ConfigError, validate_config

    cfg = tiny_cfg()
    cfg.MODEL.TUBER.D_MODEL = 128
    cfg.MODEL.TUBER.DIM_FEEDFORWARD = 1024
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert "MODEL.TUBER.CROSS_ATTN_DIM" in str(info.value) and "MODEL.TUBER.DIM_FEEDFORWARD" in str(info.value)
    cfg.MODEL.TUBER.CROSS_ATTN_DIM = 128
    cfg.MODEL.TUBER.PROJ_IN_CHANNELS = 2048
    validate_config(cfg)  # a 128-wide TubeR with a 1024-wide FFN is buildable
    model = build_detector(cfg).eval()
    with torch.no_grad():
        det = model(torch.randn(1, 3, 16, 32, 32), None, torch.tensor([[32.0, 32.0, 32.0, 32.0]]))
    assert det[0]["scores"].shape == (4, 80)


def test_tuber_losses_under_bf16_autocast_are_float32_and_finite():
    cfg = tiny_cfg()
    model = build_detector(cfg).train()
    video = torch.randn(1, 3, 16, 32, 32)
    whwh = torch.tensor([[32.0, 32.0, 32.0, 32.0]])
    labels = torch.zeros(1, 80)
    labels[0, 3] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(video, None, whwh, [torch.tensor([[2.0, 3.0, 20.0, 30.0]])], [labels])
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.tuber
def test_tuber_training_mode_matches_official_float64(fixture):
    """BatchNorm on batch statistics (dropout 0 on both sides): outputs, losses, gradients and updated statistics."""
    meta, arrays = fixture
    model, _ = build_loaded(meta, torch.float64)
    heads, losses, grads = parity.train_pass(model, meta, recipe, arrays, torch.float64, meta["grad_params"][:5])
    for key in ("logits_b", "boxes", "logits"):
        assert rel(heads[key][-1], arrays[f"train/out/{key}"]) <= F64_TOL, key
    weights = meta["weight_dict"]
    for key, expected in meta["train_losses"].items():
        if key != "class_error":
            assert abs(float(losses[key].detach() / weights[key]) - expected) <= F64_TOL * abs(expected), key
    for p in meta["grad_params"][:5]:
        assert rel(grads[p], arrays[f"train/grad/{p}"]) <= F64_TOL, p
    state = model.state_dict()
    for name in meta["train_buffers"]:
        assert rel(state[parity.our_param(name)], arrays[f"train/{name}"]) <= F64_TOL, name
