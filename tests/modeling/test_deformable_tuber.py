"""Deformable TubeR's attention and transformer, held to the TubeR fork's Deformable DETR code.

Fixtures: tests/reference/tuber/deformable (made by tests/reference/make_query_detector_fixtures.py
--sections deformable from the fork at 50cd09b^, its CUDA op replaced by its own pure-PyTorch
reference function). Every weight and input is regenerated from tests/reference/tuber/recipe.py by the
``[name, shape, kind]`` lists of the fixture json; float64 results must agree within F64_TOL x max|value|.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmixer.modeling.layers import MSDeformAttn, ms_deform_attn_pytorch
from stmixer.modeling.tuber.deformable_transformer import DeformableTransformer

TUBER = Path(__file__).resolve().parents[1] / "reference" / "tuber"
FIXTURES = TUBER / "deformable"
F64_TOL = 1e-9
# float32 run vs the float64 answers, relative to max|value|: measured worst 6.0e-7 (hs, transformer_d3);
# ~30x margin for other CPUs / BLAS kernels.
F32_TOL = 2e-5


def _recipe():
    spec = importlib.util.spec_from_file_location("tuber_fixture_recipe", TUBER / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _recipe()


def _load(case):
    return json.loads((FIXTURES / f"{case}.json").read_text()), np.load(FIXTURES / f"{case}.npz")


def _arrays(entries, seed):
    """``{name: tensor}`` for ``[name, shape, kind]`` (inputs) or ``[name, shape, kind, recipe name]`` (weights)."""
    return {e[0]: torch.from_numpy(recipe.fake_value(seed, e[-1] if len(e) == 4 else e[0], tuple(e[1]), e[2]))
            for e in entries}


def _close(ours, expected, name, tol=F64_TOL, meta=None):
    """max|ours - expected| <= tol * max|expected|; arrays the fixture stores sampled (``meta["sampled"]``: every
    step-th element of the flattened array) are sampled the same way, and their full sum is checked too."""
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    step = (meta or {}).get("sampled", {}).get(name)
    if step:
        full = meta["stats"][name]
        assert list(ours.shape) == full["shape"], (name, ours.shape, full["shape"])
        assert abs(ours.sum() - full["sum"]) <= tol * max(1.0, np.sqrt(full["sum_sq"])), f"{name}: sum"
        ours = ours.reshape(-1)[::step]
    assert ours.shape == expected.shape, (name, ours.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-300)
    err = np.abs(ours - expected).max() / scale
    assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"
    return err


class MLP(nn.Module):
    """DETR's box head ``MLP(C, C, 4, 3)`` (ReLU between layers), the refinement hook of the fixtures."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _init_stats_match(module, init_stats):
    state = module.state_dict()
    assert list(state) == list(init_stats)
    for k, v in state.items():
        v = v.detach().double().numpy()
        exp = init_stats[k]
        assert list(v.shape) == exp["shape"], k
        assert abs(v.sum() - exp["sum"]) <= 1e-9 * max(1.0, abs(exp["sum"])), k
        assert abs((v * v).sum() - exp["sum_sq"]) <= 1e-9 * max(1.0, exp["sum_sq"]), k


# ------------------------------------------------------------------------------------------------ function
@pytest.mark.tuber
def test_function_matches_official_core():
    meta, exp = _load("msda_function")
    arr = _arrays(meta["inputs"], meta["seed"])
    n, lq, m = exp["out"].shape[0], exp["out"].shape[1], arr["value"].shape[2]
    nl = len(meta["spatial_shapes"])
    value = arr["value"].requires_grad_(True)
    locations = (0.5 + 0.6 * arr["locations_raw"]).requires_grad_(True)
    weights = arr["weight_logits"].softmax(-1).view(n, lq, m, nl, -1).detach().requires_grad_(True)
    shapes = torch.as_tensor(meta["spatial_shapes"], dtype=torch.long)
    out = ms_deform_attn_pytorch(value, shapes, locations, weights)
    (out * arr["grad_weight"]).sum().backward()
    _close(out, exp["out"], "out", meta=meta)
    _close(value.grad, exp["grad/value"], "grad/value", meta=meta)
    _close(locations.grad, exp["grad/locations"], "grad/locations", meta=meta)
    _close(weights.grad, exp["grad/weights"], "grad/weights", meta=meta)
    # the fixture exercises the border: some locations lie outside [0, 1] (zero padding)
    assert ((locations < 0) | (locations > 1)).any()
    # a list of pairs works as the [L, 2] tensor does
    assert torch.equal(ms_deform_attn_pytorch(value, meta["spatial_shapes"], locations, weights), out)


@pytest.mark.tuber
def test_function_convention_is_checked():
    """align_corners=True (a plausible slip) moves the answer far outside the tolerance."""
    meta, exp = _load("msda_function")
    arr = _arrays(meta["inputs"], meta["seed"])
    value, nl = arr["value"], len(meta["spatial_shapes"])
    n, lq, m = *exp["out"].shape[:2], value.shape[2]
    locations = 0.5 + 0.6 * arr["locations_raw"]
    weights = arr["weight_logits"].softmax(-1).view(n, lq, m, nl, -1)
    grid_sample = F.grid_sample

    def corners(*args, **kwargs):
        return grid_sample(*args, **{**kwargs, "align_corners": True})

    F.grid_sample = corners
    try:
        wrong = ms_deform_attn_pytorch(value, meta["spatial_shapes"], locations, weights)
    finally:
        F.grid_sample = grid_sample
    with pytest.raises(AssertionError):
        _close(wrong, exp["out"], "out", meta=meta)


def test_function_gradcheck():
    torch.manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, sum(h * w for h, w in shapes), 2, 3, dtype=torch.float64, requires_grad=True)
    # keep sampling points off the pixel-centre lines, where bilinear interpolation has kinks
    locations = (torch.rand(1, 2, 2, 2, 2, 2, dtype=torch.float64) * 0.9 + 0.05 + 0.013).requires_grad_(True)
    weights = torch.rand(1, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn_pytorch(v, shapes, loc, w),
                                    (value, locations, weights), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ module
@pytest.mark.tuber
def test_module_matches_official():
    meta, exp = _load("msda_module")
    module = MSDeformAttn(**meta["module_args"]).double().eval()
    assert [[k, list(v.shape)] for k, v in module.state_dict().items()] == [m[:2] for m in meta["manifest"]]
    module.load_state_dict({k: v for k, v in _arrays(meta["manifest"], meta["seed"]).items()})
    arr = _arrays(meta["inputs"], meta["seed"])
    shapes = torch.as_tensor(meta["spatial_shapes"], dtype=torch.long)
    start = torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1]))
    mask = torch.from_numpy(exp["padding_mask"])
    out2 = module(arr["query"], 0.5 + 0.5 * arr["ref_points_raw"], arr["input_flatten"], shapes, start, mask)
    out4 = module(arr["query"], 0.5 + 0.45 * arr["ref_boxes_raw"], arr["input_flatten"], shapes, start, None)
    ((out2 + out4) * arr["grad_weight"]).sum().backward()
    _close(out2, exp["out_points"], "out_points")
    _close(out4, exp["out_boxes"], "out_boxes")
    params = dict(module.named_parameters())
    for name in meta["grad_params"]:
        _close(params[name].grad, exp[f"grad/{name}"], f"grad/{name}")


@pytest.mark.tuber
def test_module_initialization_matches_official():
    meta, exp = _load("msda_module")
    torch.manual_seed(meta["seed"])
    module = MSDeformAttn(**meta["module_args"])
    _init_stats_match(module, meta["init_stats"])
    assert np.array_equal(module.sampling_offsets.bias.detach().double().numpy(), exp["init/sampling_offsets.bias"])


def test_module_rejects_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    module = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    shapes = torch.tensor([[2, 3]])
    with pytest.raises(ValueError, match="positions"):
        module(torch.zeros(1, 1, 8), torch.zeros(1, 1, 1, 2), torch.zeros(1, 5, 8), shapes)
    with pytest.raises(ValueError, match="end in 2"):
        module(torch.zeros(1, 1, 8), torch.zeros(1, 1, 1, 3), torch.zeros(1, 6, 8), shapes)


# ------------------------------------------------------------------------------------------------ transformer
def _transformer(meta):
    args = dict(meta["transformer_args"])
    model = DeformableTransformer(return_intermediate_dec=meta["options"]["intermediate"], **args)
    if meta["options"]["refine"]:
        c = args["d_model"]
        model.decoder.bbox_embed = nn.ModuleList(MLP(c, c, 4, 3) for _ in range(model.decoder.num_layers))
    return model


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["transformer_d2", "transformer_d3", "transformer_plain"])
def test_transformer_matches_official(case):
    meta, exp = _load(case)
    model = _transformer(meta).double().eval()
    assert list(model.state_dict()) == meta["official_state_dict_keys"]
    model.load_state_dict(_arrays(meta["manifest"], meta["seed"]))
    arr = _arrays(meta["inputs"], meta["seed"])
    for key in ("src_l0", "query_embed", "pos_l3"):
        arr[key].requires_grad_(True)
    levels = len(meta["level_shapes"])
    masks = [torch.from_numpy(exp[f"mask_l{lvl}"]) for lvl in range(levels)]
    if not any(m.any() for m in masks):
        masks = None  # no padding: the default
    captured = {}
    model.encoder.register_forward_hook(lambda mod, args, out: captured.__setitem__("memory", out))
    hs, init_ref, inter_refs, enc_class, enc_coord = model([arr[f"src_l{i}"] for i in range(levels)], masks,
                                                           [arr[f"pos_l{i}"] for i in range(levels)],
                                                           arr["query_embed"])
    assert enc_class is None and enc_coord is None
    loss = (hs * arr["grad_weight_hs"]).sum() + (init_ref * arr["grad_weight_ref"]).sum()
    loss.backward()
    _close(captured["memory"], exp["memory"], "memory", meta=meta)
    _close(hs, exp["hs"], "hs", meta=meta)
    _close(init_ref, exp["init_reference"], "init_reference", meta=meta)
    _close(inter_refs, exp["inter_references"], "inter_references", meta=meta)
    for key in ("src_l0", "pos_l3", "query_embed"):
        _close(arr[key].grad, exp[f"grad/input/{key}"], f"grad/input/{key}", meta=meta)
    params = dict(model.named_parameters())
    for name in meta["grad_params"]:
        _close(params[name].grad, exp[f"grad/{name}"], f"grad/{name}", meta=meta)


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["transformer_d2", "transformer_d3"])
def test_transformer_float32_matches_official_float64(case):
    meta, exp = _load(case)
    model = _transformer(meta).eval()
    model.load_state_dict({k: v.float() for k, v in _arrays(meta["manifest"], meta["seed"]).items()})
    arr = {k: v.float() for k, v in _arrays(meta["inputs"], meta["seed"]).items()}
    levels = len(meta["level_shapes"])
    masks = [torch.from_numpy(exp[f"mask_l{lvl}"]) for lvl in range(levels)]
    with torch.no_grad():
        hs, init_ref, inter_refs, _, _ = model([arr[f"src_l{i}"] for i in range(levels)], masks,
                                               [arr[f"pos_l{i}"] for i in range(levels)], arr["query_embed"])
    assert hs.dtype == torch.float32
    _close(hs.double(), exp["hs"], "hs", F32_TOL, meta)
    _close(init_ref.double(), exp["init_reference"], "init_reference", F32_TOL, meta)
    _close(inter_refs.double(), exp["inter_references"], "inter_references", F32_TOL, meta)


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["transformer_d2", "transformer_plain"])
def test_transformer_initialization_matches_official(case):
    meta, _ = _load(case)
    torch.manual_seed(meta["seed"])
    model = DeformableTransformer(return_intermediate_dec=meta["options"]["intermediate"], **meta["transformer_args"])
    _init_stats_match(model, meta["init_stats"])


def test_transformer_float32_and_level_count():
    torch.manual_seed(0)
    model = DeformableTransformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=32,
                                  return_intermediate_dec=True, num_feature_levels=2, dec_n_points=2, enc_n_points=2)
    srcs = [torch.randn(1, 32, 4, 4), torch.randn(1, 32, 2, 2)]
    hs, ref, refs, _, _ = model(srcs, None, [torch.zeros_like(s) for s in srcs], torch.randn(3, 64))
    assert hs.shape == (2, 1, 3, 32) and hs.dtype == torch.float32 and refs.shape == (2, 1, 3, 2)
    assert torch.isfinite(hs).all()
    with pytest.raises(ValueError, match="2 levels"):
        model(srcs[:1], None, srcs[:1], torch.randn(3, 64))


# ------------------------------------------------------------------------------------------------ detector
CONFIGS = Path(__file__).resolve().parents[2] / "config_files" / "tuber"
TINY = ["MODEL.TUBER.D_MODEL", 32, "MODEL.TUBER.NHEAD", 4, "MODEL.TUBER.ENC_LAYERS", 1, "MODEL.TUBER.DEC_LAYERS", 2,
        "MODEL.TUBER.DIM_FEEDFORWARD", 32, "MODEL.TUBER.NUM_QUERIES", 3, "MODEL.TUBER.CROSS_ATTN_DIM", 32,
        "MODEL.TUBER.DEFORMABLE.ENC_N_POINTS", 2, "MODEL.TUBER.DEFORMABLE.DEC_N_POINTS", 1, "DATA.NUM_FRAMES", 8]


def _tiny_detector(variant, extra=()):
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    cfg = load_config(str(CONFIGS / f"{variant}_TubeR_CSN50_AVA21.yaml"), TINY + list(extra), freeze=False)
    torch.manual_seed(0)
    return cfg, build_detector(cfg)


@pytest.mark.parametrize("variant", ["D2", "D3", "D4"])
def test_config_builds_and_runs_on_cpu(variant):
    """Each D-TubeR config merges onto get_cfg, builds the TubeR detector with the deformable transformer and its
    variant's head, and runs a tiny eval forward (STMDetector contract) and a train step."""
    cfg, model = _tiny_detector(variant)
    assert cfg.MODEL.TUBER.TRANSFORMER == "deformable" and cfg.MODEL.TUBER.DEFORMABLE.VARIANT == variant
    head = model.tuber_head
    assert head.variant == variant and head.deformable.decoder.bbox_embed is head.bbox_embed
    video = torch.randn(2, 3, 8, 64, 48)
    whwh = torch.tensor([[48.0, 64, 48, 64], [40, 64, 40, 64]])
    model.eval()
    with torch.no_grad():
        detections = model(video, None, whwh)
    assert len(detections) == 2
    assert detections[0]["scores"].shape == (3, 80) and detections[0]["boxes"].shape == (3, 4)
    assert ((detections[1]["boxes"] >= 0) & (detections[1]["boxes"] <= 1)).all()
    model.train()
    losses = model(video, None, whwh, [torch.tensor([[1.0, 2, 30, 40]]), torch.tensor([[5.0, 5, 20, 60]])],
                   [torch.eye(80)[:1], torch.eye(80)[2:3]])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    deformable = head.deformable
    assert deformable.level_embed.grad is not None and head.input_proj[3][0].weight.grad is not None
    assert deformable.encoder.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_variant_parameter_layout():
    """Module names are the fork's (a fork checkpoint's keys are ours below ``tuber_head.``)."""
    keys = {v: set(_tiny_detector(v)[1].tuber_head.state_dict()) for v in ("D2", "D3", "D4")}
    assert {"conv3d_0.0.0.weight", "conv3d_0.2.1.running_var", "conv3d_3.0.0.weight", "query_embed.weight",
            "class_embed.1.weight", "bbox_embed.1.layers.2.bias", "transformer.decoder.bbox_embed.0.layers.0.weight",
            "input_proj.3.0.weight", "input_proj.0.1.weight", "class_embed_b.weight"} <= keys["D2"]
    assert {"transformer1.decoder.norm.weight", "transformer2.level_embed", "query_embed2.weight",
            "bbox_embed2.layers.0.weight", "query_pool.weight", "pool_decoder.layers.0.multihead_attn.in_proj_weight",
            "pool_decoder.norm.weight"} <= keys["D3"]
    assert {"class_proj.weight", "encoder.layers.0.self_attn_t.in_proj_weight", "cross_attn.in_proj_weight",
            "class_fc.weight", "transformer.level_embed"} <= keys["D4"]
    assert not any(k.startswith("class_embed.") for k in keys["D4"])
    # D2's temporal kernels from a 32-frame clip: 9, 5, 4 (layer2: 16 -> 8 -> 4 -> 1 frames)
    from stmixer.modeling.tuber.deformable_tuber import d2_temporal_kernels
    assert d2_temporal_kernels(32, 4) == [9, 5, 4]


def test_batch_time_mix_reproduces_the_fork_regrouping():
    from stmixer.modeling.tuber.deformable_tuber import clips_of, frames_of

    x = torch.arange(2 * 3).view(2, 1, 3, 1, 1).float()  # clip b, frame t -> value 3b + t
    frames = frames_of(x)  # time-major rows t*B + b
    assert frames.flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert clips_of(frames, 2, False).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    # the fork's reshape(B, T): "clip" 0 reads frames 0 of clips 0 and 1, then frame 1 of clip 0
    assert clips_of(frames, 2, True).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    # one clip per batch: no difference
    assert torch.equal(clips_of(frames_of(x[:1]), 1, True), clips_of(frames_of(x[:1]), 1, False))


def test_bad_variant_is_a_config_error():
    from stmixer.config import load_config
    from stmixer.config.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL.TUBER.DEFORMABLE.VARIANT"):
        load_config(str(CONFIGS / "D2_TubeR_CSN50_AVA21.yaml"), ["MODEL.TUBER.DEFORMABLE.VARIANT", "D5"])


def test_slot_interface_forward():
    """The "deformable" transformer also meets docs/tuber.md's interface (lists of [B, D, 1, H, W] levels,
    [Q, 2D] queries) and agrees with the Deformable DETR call it wraps."""
    from stmixer.modeling.tuber.deformable_tuber import DeformableTubeRTransformer

    torch.manual_seed(0)
    model = DeformableTubeRTransformer(d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2,
                                       dim_feedforward=32, return_intermediate_dec=True, num_feature_levels=2,
                                       dec_n_points=2, enc_n_points=2).eval()
    assert model.multi_scale and model.num_decoder_layers == 2 and model.query_dim == 64
    srcs = [torch.randn(2, 32, 1, 4, 3), torch.randn(2, 32, 1, 2, 2)]
    masks = [torch.zeros(2, 1, 4, 3, dtype=torch.bool), torch.zeros(2, 1, 2, 2, dtype=torch.bool)]
    pos = [torch.randn_like(s) for s in srcs]
    query = torch.randn(5, 64)
    hs, memory, extras = model(srcs, masks, query, pos)
    assert hs.shape == (2, 2, 5, 32) and [m.shape for m in memory] == [s.shape for s in srcs]
    ref = DeformableTransformer.forward(model, [s[:, :, 0] for s in srcs], None, [p[:, :, 0] for p in pos], query)
    assert torch.equal(hs, ref[0])
    assert torch.equal(extras["reference_points"][0], ref[1]) and torch.equal(extras["reference_points"][1], ref[2][0])
    with pytest.raises(ValueError, match="query_dim"):
        model(srcs, masks, query[:, :32], pos)


# ------------------------------------------------------------------------------------------------ whole heads
def _our_head(meta):
    from stmixer.tools.deformable_parity import build_head

    return build_head(meta)


# modules the fork builds but never calls (not built here)
UNUSED = {"D2": ("class_proj.", "encoder.", "cross_attn."), "D3": ("encoder.", "cross_attn."), "D4": ()}


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["head_d2", "head_d3", "head_d4"])
def test_head_matches_official(case):
    """The whole Deformable TubeR after the backbone (stage outputs in, per-layer predictions out) against the fork's
    ``DETR`` of deformable_tuber{2,3,4}.py fed the same stage outputs, two clips per batch (the fork's regrouping)."""
    meta, exp = _load(case)
    head = _our_head(meta).double().eval()
    official = meta["official_state_dict_keys"]
    ours = [k for k in head.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(ours) == sorted(k for k in official if not k.endswith("num_batches_tracked") and
                                  not k.startswith(UNUSED[meta["variant"]] or ("\0",)))
    weights = _arrays(meta["manifest"], meta["seed"])
    missing, unexpected = head.load_state_dict({k: v for k, v in weights.items() if k in set(ours)}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    arr = _arrays(meta["inputs"], meta["seed"])
    levels = [arr[f"layer{i + 1}"].requires_grad_(i in (1, 3)) for i in range(4)]
    out = head(levels, torch.zeros(meta["batch"], *meta["clip_size"], dtype=torch.bool))
    pairs = {"pred_logits": out["logits"], "pred_boxes": out["boxes"], "pred_logits_b": out["logits_b"]}
    loss = sum((v * arr[f"grad_weight_{k}"]).sum() for k, v in pairs.items())
    loss.backward()
    for key, value in pairs.items():
        _close(value, exp[f"out/{key}"], f"out/{key}", meta=meta)
    _close(levels[1].grad, exp["grad/input/layer2"], "grad/input/layer2", meta=meta)
    _close(levels[3].grad, exp["grad/input/layer4"], "grad/input/layer4", meta=meta)
    params = head.state_dict(keep_vars=True)
    for name in meta["grad_params"]:
        _close(params[name].grad, exp[f"grad/{name}"], f"grad/{name}", meta=meta)


@pytest.mark.tuber
def test_head_without_batch_time_mix_differs():
    """With two clips per batch the fork's regrouping matters: per-clip pooling moves D2's outputs off the fixture."""
    meta, exp = _load("head_d2")
    head = _our_head(meta).double().eval()
    head.batch_time_mix = False
    weights = _arrays(meta["manifest"], meta["seed"])
    head.load_state_dict({k: v for k, v in weights.items() if k in head.state_dict()}, strict=False)
    arr = _arrays(meta["inputs"], meta["seed"])
    with torch.no_grad():
        out = head([arr[f"layer{i + 1}"] for i in range(4)], torch.zeros(2, *meta["clip_size"], dtype=torch.bool))
    with pytest.raises(AssertionError):
        _close(out["logits"], exp["out/pred_logits"], "out/pred_logits", meta=meta)


@pytest.mark.tuber
def test_reference_parity_tool_writes_every_fixture_array(tmp_path):
    """``python -m stmixer.tools.reference_parity --fixture DIR`` on a folder of Deformable TubeR cases (one of each
    kind, copied with the kit's recipe.py beside; the whole folder is tests/reference/tuber/deformable) writes every
    array of every case under ``f64/<case>/<name>`` with the stored shapes, matching within F64_TOL."""
    import shutil

    from stmixer.tools import reference_parity

    folder = tmp_path / "deformable"
    folder.mkdir()
    shutil.copy(TUBER / "recipe.py", tmp_path / "recipe.py")
    for case in ("msda_function", "msda_module", "transformer_d2", "head_d3", "detector_d2"):
        for suffix in (".json", ".npz"):
            shutil.copy(FIXTURES / f"{case}{suffix}", folder)
    out = tmp_path / "out.npz"
    assert reference_parity.main(["--fixture", str(folder), "--out", str(out), "--precision", "f64"]) == 0
    written = np.load(out)
    expected_names = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as exp:
            for name in exp.files:
                if name.startswith("target/"):  # the detector case's ground truth: an input
                    continue
                key = f"f64/{path.stem}/{name}"
                expected_names.append(key)
                answer = np.clip(exp[name], 0, 1) if name == "det/boxes_normalized" else exp[name]  # ours clamp
                if answer.dtype == bool:
                    assert np.array_equal(written[key], answer), key
                else:
                    _close(written[key], answer, key)
    ours_only = ("/loss/", "/match/")  # the detector's losses and matches (the fork's are in its json)
    assert sorted(k for k in written.files if not any(o in k for o in ours_only)) == sorted(expected_names)


@pytest.mark.parametrize("variant", ["D2", "D3", "D4"])
def test_fork_checkpoint_loads(variant, tmp_path):
    """A fork checkpoint (DDP ``module.`` keys, CSN below ``backbone.0.body.``, the head's modules at the top, plus the
    backbone wrapper's unused temporal pooling and the modules the variant never calls) loads strictly through
    ``load_weights`` (format ``tuber``): every used tensor lands, the unused ones are dropped."""
    from stmixer.checkpoint import load_weights

    _, source = _tiny_detector(variant)
    fork = {}
    for key, value in source.state_dict().items():
        value = value + 1 if value.is_floating_point() else value
        if key.startswith("backbone."):  # the fork's Joiner(Backbone(body = CSN), positions)
            fork["backbone.0.body." + key[len("backbone."):]] = value
        elif key.startswith("tuber_head."):
            fork[key[len("tuber_head."):]] = value
    fork["backbone.0.query_pool.weight"] = torch.zeros(1, 2048)
    fork["backbone.0.pool_decoder.layers.0.linear1.weight"] = torch.zeros(2048, 2048)
    unused = {"D2": ("class_proj.weight", "encoder.layers.0.linear1.weight", "cross_attn.in_proj_weight"),
              "D3": ("encoder.layers.0.linear1.weight", "cross_attn.in_proj_weight"), "D4": ()}[variant]
    for key in unused:
        fork[key] = torch.zeros(3, 3)
    path = tmp_path / "fork.pth"
    torch.save({"model": {"module." + k: v for k, v in fork.items()}, "epoch": 3}, path)
    _, model = _tiny_detector(variant)
    report = load_weights(model, str(path), log=None)
    assert report.ok
    head = model.tuber_head
    expected = source.tuber_head.state_dict()
    for key in ("query_embed.weight", "input_proj.3.0.weight", "class_embed_b.bias", "bbox_embed.0.layers.2.bias"):
        assert torch.equal(head.state_dict()[key], expected[key] + 1), key
    assert torch.equal(head.deformable.level_embed, source.tuber_head.deformable.level_embed + 1)
    if variant != "D2":
        assert torch.equal(head.query_pool.weight, source.tuber_head.query_pool.weight + 1)


def test_tiny_synthetic_config_builds_and_steps():
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    cfg = load_config(str(CONFIGS.parent / "synthetic" / "tiny-d2-tuber.yaml"), ["DATA.NUM_FRAMES", 8], freeze=False)
    torch.manual_seed(0)
    model = build_detector(cfg).train()
    video = torch.randn(1, 3, 8, 64, 96)
    whwh = torch.tensor([[96.0, 64, 96, 64]])
    losses = model(video, None, whwh, [torch.tensor([[10.0, 5, 50, 60]])], [torch.eye(9)[4:5]])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_errors_name_the_key():
    from stmixer.config.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL.TUBER.D_MODEL.*GroupNorm"):
        _tiny_detector("D2", ["MODEL.TUBER.D_MODEL", 48, "MODEL.TUBER.NHEAD", 4, "MODEL.TUBER.CROSS_ATTN_DIM", 48])
    with pytest.raises(ConfigError, match="MODEL.TUBER.CROSS_ATTN_DIM"):
        _tiny_detector("D4", ["MODEL.TUBER.CROSS_ATTN_DIM", 256])


def test_learning_rate_groups_follow_the_fork():
    """The fork puts only names containing "backbone" (the CSN) in its LR_BACKBONE group: D3/D4's per-level pooling
    sits in the head and trains at the full rate."""
    cfg, model = _tiny_detector("D3", ["MODEL.TUBER.BACKBONE_LR_FACTOR", 0.25])
    assert model.param_optim_overrides("backbone.conv1.weight")[0] == 0.25
    assert model.param_optim_overrides("tuber_head.query_pool.weight")[0] == 1.0
    assert model.param_optim_overrides("tuber_head.pool_decoder.layers.0.linear1.weight")[0] == 1.0
    assert model.param_optim_overrides("tuber_head.transformer2.level_embed")[0] == 1.0


def test_switch_gate_follows_the_fork_by_default():
    """The fork's PostProcessAVA overwrites the switch-gated scores with sigmoid(logits): the default; SWITCH_GATE True
    gates as TubeR."""
    _, model = _tiny_detector("D2")
    model.eval()
    video, whwh = torch.randn(1, 3, 8, 64, 48), torch.tensor([[48.0, 64, 48, 64]])
    with torch.no_grad():
        out = model.predictions(video, whwh)
        plain = model.detections(out)[0]["scores"]
        model.tuber_head.switch_gate = True
        gated = model.detections(out)[0]["scores"]
    assert torch.equal(plain, out["logits"][-1][0].sigmoid())
    p = out["logits_b"][-1][0].softmax(-1)[:, 1]
    assert torch.equal(gated, out["logits"][-1][0].sigmoid() * ((p > 0.8).float() * p)[:, None])


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["head_d2", "head_d3"])
def test_head_float32_matches_official_float64(case):
    """float32 heads vs the fork's float64 answers: measured worst 1.2e-6 of max|value| over the three outputs of
    head_d2 / d3 / d4 (gradients 5.8e-6); F32_TOL leaves a >15x margin."""
    from stmixer.tools.deformable_parity import as_stored, run_case

    meta, exp = _load(case)
    result = run_case(meta, recipe, torch.float32)
    for key in ("out/pred_logits", "out/pred_boxes", "out/pred_logits_b"):
        assert result[key].dtype == torch.float32
        _close(as_stored(meta, key, result[key], torch.float64), exp[key], key, F32_TOL)


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["detector_d2", "detector_d3", "detector_d4"])
def test_whole_detector_matches_the_fork(case):
    """config D2/D3/D4 (CSN-50, deformable transformer 1+2 layers, 5 queries) with the fork's weights loaded as a fork
    checkpoint (``backbone.0.body.*``, unused modules dropped), two 32-frame 32x48 clips: every layer's predictions,
    the unweighted losses (float32 L1 / GIoU as the fork), the Hungarian matches, gradients, the (ungated)
    detections and a training-mode forward (batch statistics, the fork's time/batch regrouping, running statistics)
    against the fork's ``deformable_tuber{2,3,4}.build_model`` with its criterion and PostProcessAVA."""
    from stmixer.config import load_config
    from stmixer.tools.deformable_parity import detector_config, run_case

    meta, exp = _load(case)
    result = run_case(meta, recipe, torch.float64)
    for key in exp.files:
        if key.startswith("target/"):
            continue
        answer = np.clip(exp[key], 0, 1) if key == "det/boxes_normalized" else exp[key]
        _close(result[key], answer, key, meta=meta)
    for key, value in meta["losses"].items():
        ours = result[f"loss/{key}"]
        float32_quirk = key.startswith(("loss_bbox", "loss_giou"))  # the fork's float32 num_boxes, reproduced
        assert ours.dtype == (torch.float32 if float32_quirk else torch.float64), key
        # float32 results: 2 ulp (their rounding depends on the summation order; measured: equal or 1 ulp)
        tol = 2 * torch.finfo(torch.float32).eps if float32_quirk else F64_TOL
        assert abs(float(ours) - value) <= tol * abs(value), key
    for layer, matches in meta["matches"].items():
        for i, (src, tgt) in enumerate(matches):
            assert result[f"match/{layer}_src_b{i}"].tolist() == src, (layer, i)
            assert result[f"match/{layer}_tgt_b{i}"].tolist() == tgt, (layer, i)
    # the tool's config is config_files/tuber/<variant>_TubeR_CSN50_AVA21.yaml with the case's overrides
    over = meta["overrides"]
    yaml_cfg = load_config(str(CONFIGS / f"{meta['variant']}_TubeR_CSN50_AVA21.yaml"),
                           ["MODEL.TUBER.ENC_LAYERS", over["ENC_LAYERS"], "MODEL.TUBER.DEC_LAYERS", over["DEC_LAYERS"],
                            "MODEL.TUBER.NUM_QUERIES", over["QUERY_NUM"], "MODEL.BACKBONE.CHANNELS_LAST", False,
                            "MODEL.BACKBONE.FUSED_INFERENCE", False, "MODEL.BACKBONE.FUSED_TRAINING_BN", False,
                            "MODEL.BACKBONE.SPATIAL_CONV_2D", False])
    assert yaml_cfg.MODEL.dump() == detector_config(meta).MODEL.dump()


@pytest.mark.parametrize("variant", ["D2", "D3", "D4"])
def test_full_size_config_builds_and_detects(variant):
    """config_files/tuber/D{2,3,4}_TubeR_CSN50_AVA21.yaml as shipped (width 256, 6+6 layers, 15 queries, 32
    frames) merges onto get_cfg, builds and detects on a small CPU clip."""
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    cfg = load_config(str(CONFIGS / f"{variant}_TubeR_CSN50_AVA21.yaml"))
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    assert model.tuber_head.variant == variant and model.tuber_head.deformable.decoder.num_layers == 6
    with torch.no_grad():
        det = model(torch.randn(1, 3, 32, 32, 32), None, torch.tensor([[32.0, 32.0, 32.0, 32.0]]))
    assert det[0]["scores"].shape == (15, 80) and torch.isfinite(det[0]["scores"]).all()
    assert ((det[0]["boxes"] >= 0) & (det[0]["boxes"] <= 1)).all()
