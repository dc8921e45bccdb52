"""EVAD's token-pruning ViT (``stmixer/modeling/backbones/evad_vit.py``) against the official EVAD code.

The fixtures in tests/reference/evad (made by tests/reference/make_evad_fixtures.py from MCG-NJU/EVAD,
see its README) hold the official backbone's float64 answers for a tiny ViT with pruning at blocks 1, 3
and 4: keep 1.0, keep 0.7, keep 0.6 with enhanced weight 4. Ours must give the identical kept-token
indices after every pruning block, the same dropped mask, and the four FPN inputs, the final tokens and
the gradients within 1e-9 x max|value| in float64, with activation checkpointing on and off (the
official backward only runs with it on).
"""

import importlib.util
import sys
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.checkpoint import CheckpointMismatchError, load_weights
from stmixer.checkpoint.formats import read_checkpoint
from stmixer.config import ConfigError, get_cfg, validate_config
from stmixer.modeling.backbones.evad_vit import EVADVisionTransformer, keyframe_centric_scores
from stmixer.modeling.build import build_backbone

pytestmark = pytest.mark.evad

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
FIXTURES = REFERENCE / "evad"
META = json.loads((FIXTURES / "cases.json").read_text())
CASES = sorted(META["cases"])
REL = 1e-9


def _script():
    if str(REFERENCE) not in sys.path:  # the driver imports its sibling helper official_code.py
        sys.path.insert(0, str(REFERENCE))
    spec = importlib.util.spec_from_file_location("make_evad_fixtures", REFERENCE / "make_evad_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gradient_loss = _script().gradient_loss


def _inputs():
    data = np.load(FIXTURES / "inputs.npz")
    state = {k[2:]: torch.from_numpy(data[k]) for k in data.files if k.startswith("w/")}
    return torch.from_numpy(data["clip"]), state


def _model(case, dtype=torch.float64, use_checkpoint=False):
    info, m = META["cases"][case], META["model"]
    clip, state = _inputs()
    model = EVADVisionTransformer(
        keep_rates=info["keep_rates"], enhanced_weight=info["enhanced_weight"], fpn_indices=META["fpn_indices"],
        pretrain_num_frames=META["clip"][2], use_checkpoint=use_checkpoint, drop_path_rate=0.0, **m)
    model.to(dtype).load_state_dict(state, strict=True)  # cast first: the float64 weights stay exact
    return model, clip.to(dtype)


def _record_indices(model):
    """Wrap ``_block_forward`` to record the non-keyframe index after every block."""
    seen = []
    inner = model._block_forward

    def wrapped(*args):
        x, index = inner(*args)
        seen.append(index)
        return x, index

    model._block_forward = wrapped
    return seen


def _close(ours, ref, rel, what):
    ref = torch.as_tensor(ref)
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel:g} x {scale:.3g}"
    return err / scale


def _check_outputs(out, ref, rel):
    for level in range(4):
        _close(out.features[level], ref[f"features_{level}"], rel, f"features_{level}")
    _close(out.tokens, ref["tokens"], rel, "tokens")
    assert torch.equal(out.kept_index, torch.from_numpy(ref["kept_index"]))
    assert torch.equal(out.dropped_mask, torch.from_numpy(ref["dropped_mask"]))


@pytest.mark.parametrize("case", CASES)
def test_eval_matches_official_float64(case):
    ref = np.load(FIXTURES / f"{case}.npz")
    model, clip = _model(case)
    seen = _record_indices(model.eval())
    with torch.no_grad():
        out = model([clip])
    _check_outputs(out, ref, REL)
    for i, rate in enumerate(META["cases"][case]["keep_rates"]):
        if rate < 1:
            assert torch.equal(seen[i], torch.from_numpy(ref[f"index_after_{i}"])), f"indices after block {i}"
    assert out.tokens.shape[1] == META["cases"][case]["kept_tokens"]


@pytest.mark.parametrize("use_checkpoint", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_train_gradients_match_official_float64(case, use_checkpoint):
    ref = np.load(FIXTURES / f"{case}.npz")
    model, clip = _model(case, use_checkpoint=use_checkpoint)
    out = model.train()([clip])
    _check_outputs(out, ref, REL)
    gradient_loss(out.features, out.tokens).backward()
    params = dict(model.named_parameters())
    for name in META["grad_params"]:
        _close(params[name].grad, ref[f"grad/{name}"], REL, f"grad of {name}")


def test_checkpointing_on_and_off_agree_exactly():
    grads, outs = [], []
    for use_checkpoint in (True, False):
        model, clip = _model("keep06_ew4", use_checkpoint=use_checkpoint)
        out = model.train()([clip])
        gradient_loss(out.features, out.tokens).backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    assert torch.equal(outs[0].kept_index, outs[1].kept_index)
    for name, grad in grads[0].items():
        assert torch.equal(grad, grads[1][name]), name


def _boundary_gap(model, clip):
    """Smallest relative gap between the last kept and the first dropped score over the pruning blocks."""
    gaps = []
    inner = model._block_forward

    def wrapped(block, x, index, keep_rate, s, recompute):
        n = x.shape[1]
        if keep_rate < 1 and math.ceil(keep_rate * n) < n:
            _, weights = block.attention_part(x, return_weights=True)
            scores = keyframe_centric_scores(weights, s, model.enhanced_weight).sort(dim=1, descending=True).values
            k = math.ceil(keep_rate * n) - s
            gaps.append(((scores[:, k - 1] - scores[:, k]) / scores[:, k - 1]).min().item())
        return inner(block, x, index, keep_rate, s, recompute)

    model._block_forward = wrapped
    with torch.no_grad():
        model([clip])
    return min(gaps)


@pytest.mark.parametrize("case", ["keep07", "keep06_ew4"])
def test_float32_against_official_float64(case):
    """float32: the same kept tokens (the top-k boundary gaps of the fixture are far above float32 rounding,
    asserted: >= 1.4e-3 measured), values within 1e-5 x max|value| (measured <= 4.7e-7; float32 eps 1.2e-7)."""
    ref = np.load(FIXTURES / f"{case}.npz")
    model64, clip64 = _model(case)
    assert _boundary_gap(model64.eval(), clip64) > 1e-4
    model, clip = _model(case, dtype=torch.float32)
    with torch.no_grad():
        out = model.eval()([clip])
    _check_outputs(out, ref, 1e-5)


# ----------------------------------------------------------------------------- official checkpoints
def _official_evad_file(path, backbone_state, prefix=""):
    """A fake official EVAD checkpoint with the real layout: PySlowFast's ``save_checkpoint`` dict whose
    ``model_state`` is ``EVAD.state_dict()``: ViT keys at the top, the FPN, the proposals, ``det_head.*``
    (Sparse R-CNN stages, context-refinement decoder) and the criterion's buffer."""
    state = {prefix + k: v for k, v in backbone_state.items()}
    for level in range(2, 6):
        state[f"{prefix}fpn_lateral{level}.weight"] = torch.randn(8, 24, 1, 1)
        state[f"{prefix}fpn_lateral{level}.bias"] = torch.randn(8)
        state[f"{prefix}fpn_output{level}.weight"] = torch.randn(8, 8, 3, 3)
        state[f"{prefix}fpn_output{level}.bias"] = torch.randn(8)
    state[prefix + "init_proposal_features.weight"] = torch.randn(5, 8)
    state[prefix + "init_proposal_boxes.weight"] = torch.rand(5, 4)
    state[prefix + "det_head.s0_headseries.0.self_attn.in_proj_weight"] = torch.randn(24, 8)
    state[prefix + "det_head.s0_headseries.0.inst_interact.dynamic_layer.weight"] = torch.randn(16, 8)
    state[prefix + "det_head.encoder_to_decoder.weight"] = torch.randn(12, 24)
    state[prefix + "det_head.mask_token"] = torch.randn(1, 1, 12)
    state[prefix + "det_head.decoder.blocks.0.attn.qkv.weight"] = torch.randn(36, 12)
    state[prefix + "criterion.empty_weight"] = torch.ones(2)
    torch.save({"epoch": 11, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []},
                "cfg": "MODEL:\n  MODEL_NAME: EVAD\n", "amp": None}, path)
    return path


def _tiny_evad(depth=2, **kw):
    return EVADVisionTransformer(keep_rates=[1.0] * (depth - 1) + [0.7], fpn_indices=list(range(depth))[-4:],
                                 embed_dim=24, depth=depth, num_heads=3, patch_size=4, pretrain_img_size=16, **kw)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_evad_checkpoint_loads_backbone_exactly(tmp_path, prefix):
    source = _tiny_evad(depth=4)
    path = _official_evad_file(tmp_path / "checkpoint_epoch_00012.pyth", source.state_dict(), prefix)
    contents = read_checkpoint(path)
    assert contents.format == "evad"
    assert contents.extras["epoch"] == 11 and "optimizer_state" in contents.extras
    holder = torch.nn.Module()
    holder.backbone = _tiny_evad(depth=4)
    report = load_weights(holder, contents, log=None)
    assert report.ok and sorted(report.loaded) == sorted("backbone." + k for k in source.state_dict())
    assert not report.missing and not report.unexpected and not report.not_stored
    assert len(report.skipped["evad_fpn.* (the model holds no evad_fpn)"]) == 16
    assert "evad_head.det_head.mask_token" in report.skipped["evad_head.* (the model holds no evad_head)"]
    assert report.dropped == {"loss buffers (rebuilt from the config)": ["criterion.empty_weight"]}
    for key, value in source.state_dict().items():
        assert torch.equal(holder.backbone.state_dict()[key], value), key
    table = report.table()
    assert "official EVAD checkpoint" in table and "skipped" in table


def test_official_evad_checkpoint_of_another_depth_is_refused(tmp_path):
    path = _official_evad_file(tmp_path / "deeper.pyth", _tiny_evad(depth=5).state_dict())
    holder = torch.nn.Module()
    holder.backbone = _tiny_evad(depth=4)
    with pytest.raises(CheckpointMismatchError, match="unexpected .*backbone.blocks.4"):
        load_weights(holder, path, log=None)


# ----------------------------------------------------------------------------- config, builder, edge cases
def _tiny_cfg():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "EVAD-ViT-B"
    cfg.MODEL.META_ARCHITECTURE = "EVAD"  # STMixer's detector cannot read EVADFeatures
    cfg.DATA.NUM_FRAMES = 8
    cfg.ViT.merge_from_list(["EMBED_DIM", 24, "DEPTH", 4, "NUM_HEADS", 3, "PATCH_SIZE", 4, "PRETRAIN_IMG_SIZE", 16,
                             "DROP_PATH_RATE", 0.0])
    cfg.EVAD.merge_from_list(["KEEP_RATES", [1.0, 0.7, 1.0, 0.7], "ENHANCED_WEIGHT", 4.0, "FPN_INDICES", [0, 1, 2, 3]])
    cfg.MODEL.STM.TEMPORAL_POINTS = 4
    return cfg


def test_builds_from_config_and_prunes():
    cfg = _tiny_cfg()
    validate_config(cfg)
    model = build_backbone(cfg).eval()
    assert isinstance(model, EVADVisionTransformer) and model.enhanced_weight == 4.0
    assert model.out_channels == [24] * 4
    with torch.no_grad():
        out = model([torch.randn(2, 3, 8, 16, 20)])
    assert out.grid == (4, 4, 5) and out.keyframe == 2
    # 80 tokens -> ceil(0.7 * 80) = 56 -> ceil(0.7 * 56) = 40: 20 keyframe + 20 kept of 60
    assert out.tokens.shape == (2, 40, 24) and out.kept_index.shape == (2, 20)
    assert [tuple(f.shape[-2:]) for f in out.features] == [(16, 20), (8, 10), (4, 5), (2, 2)]
    assert (~out.dropped_mask).sum(1).tolist() == [20, 20]
    assert torch.equal(torch.sort(out.kept_index, 1).values, torch.nonzero(~out.dropped_mask)[:, 1].reshape(2, 20))


def test_keyframe_tokens_always_kept_and_first():
    """With pruning only in the last block (after its attention, before its per-token MLP), the first S tokens
    are the plain ViT's keyframe slice (temporal token t // 2) and every token is a plain ViT token."""
    from stmixer.modeling.backbones.vit import VisionTransformer3D

    model = _tiny_evad(depth=4).double().eval()
    plain = VisionTransformer3D(embed_dim=24, depth=4, num_heads=3, patch_size=4, pretrain_img_size=16).double()
    plain.load_state_dict(model.state_dict())
    clip = torch.randn(1, 3, 8, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        out = model([clip])
        reference = plain.eval()([clip])[0]  # [1, D, 4, 4, 4]
    keyframe = reference[0, :, 2].flatten(1).T  # [16, D]
    torch.testing.assert_close(out.tokens[0, :16], keyframe, rtol=0, atol=1e-12)
    others = torch.cat([reference[0, :, :2], reference[0, :, 3:]], dim=1).flatten(1).T  # [48, D] non-keyframe order
    torch.testing.assert_close(out.tokens[0, 16:], others[out.kept_index[0]], rtol=0, atol=1e-12)
    assert out.tokens.shape[1] == math.ceil(0.7 * 64)


@pytest.mark.parametrize("key, value, message", [
    ("EVAD.KEEP_RATES", [1.0, 0.7, 1.0], "EVAD.KEEP_RATES = .*expected 4 rates, one per ViT block"),
    ("EVAD.KEEP_RATES", [1.0, 0.0, 1.0, 1.0], "EVAD.KEEP_RATES = .*expected every rate in \\(0, 1\\]"),
    ("EVAD.FPN_INDICES", [0, 1, 3, 2], "EVAD.FPN_INDICES = .*expected 4 increasing block indices"),
    ("EVAD.FPN_INDICES", [0, 1, 2, 4], "EVAD.FPN_INDICES = .*expected 4 increasing block indices"),
    ("EVAD.ENHANCED_WEIGHT", 0.0, "EVAD.ENHANCED_WEIGHT = 0.0: expected a number > 0"),
    ("DATA.NUM_FRAMES", 6, "DATA.NUM_FRAMES = 6: expected an even number of temporal tokens"),
    ("MODEL.META_ARCHITECTURE", "STMDetector", "MODEL.BACKBONE.CONV_BODY = 'EVAD-ViT-B': expected a backbone"),
])
def test_config_problems_are_named(key, value, message):
    cfg = _tiny_cfg()
    *nodes, name = key.split(".")
    node = cfg
    for part in nodes:
        node = node[part]
    node[name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_layer_that_would_keep_every_token_keeps_them():
    """ceil(r * N) == N after an earlier pruning keeps every token (the official code gathers with the global
    indices there: an index error or the wrong tokens). 64 tokens -> 32 -> ceil(0.99 * 32) = 32."""
    model = EVADVisionTransformer(keep_rates=[0.5, 0.99, 1.0, 1.0], fpn_indices=[0, 1, 2, 3], embed_dim=24, depth=4,
                                  num_heads=3, patch_size=4, pretrain_img_size=16).eval()
    seen = _record_indices(model)
    with torch.no_grad():
        out = model([torch.randn(1, 3, 8, 16, 16)])
    assert out.tokens.shape[1] == 32 and torch.equal(seen[0], seen[1]) and torch.equal(seen[1], out.kept_index)


def test_flop_count_per_keep_rate():
    """benchmarks/evad_flops.py: ViT-B at 16x224x224 without pruning is VideoMAE's published 180 GFLOPs; at short
    side 288 keep 0.7 and 0.6 cost 61% and 53% of keep 1.0 (the model zoo: 243 / 425 and 209 / 425 for the whole
    detector)."""
    spec = importlib.util.spec_from_file_location("evad_flops", REFERENCE.parents[1] / "benchmarks" / "evad_flops.py")
    flops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flops)
    assert flops.backbone_gflops(flops.evad_backbone("B", 1.0), 16, 224, 224) == pytest.approx(180.3, abs=0.05)
    full, keep07, keep06 = (flops.backbone_gflops(flops.evad_backbone("B", r), 16, 288, 288) for r in (1, 0.7, 0.6))
    assert full == pytest.approx(347.0, abs=0.05)
    assert keep07 == pytest.approx(212.9, abs=0.05) and keep06 == pytest.approx(185.1, abs=0.05)


def _zoo_cfg(body):
    """The backbone part of the official ViT_B_16x4_KTP / ViT_L_16x4_KTP configs in our keys."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = body
    cfg.MODEL.META_ARCHITECTURE = "EVAD"
    cfg.DATA.NUM_FRAMES = 16
    if body == "EVAD-ViT-L":
        cfg.ViT.merge_from_list(["EMBED_DIM", 1024, "DEPTH", 24, "NUM_HEADS", 16, "DROP_PATH_RATE", 0.2])
        cfg.EVAD.KEEP_RATES = [0.7 if i in (6, 12, 18) else 1.0 for i in range(24)]
        cfg.EVAD.FPN_INDICES = [5, 11, 17, 23]
    else:
        cfg.ViT.DROP_PATH_RATE = 0.1
        cfg.EVAD.KEEP_RATES = [0.7 if i in (3, 6, 9) else 1.0 for i in range(12)]
    return cfg


@pytest.mark.parametrize("body", ["EVAD-ViT-B", "EVAD-ViT-L"])
def test_zoo_backbones_have_the_official_key_layout_and_load_full_size_files(tmp_path, body):
    """key_layout.json: names and shapes of the official model-zoo ViTs' state dicts. A full-size official
    file with that layout (zero tensors with stride 0: small on disk) loads into ours with nothing missing."""
    layout = json.loads((FIXTURES / "key_layout.json").read_text())[body]
    cfg = _zoo_cfg(body)
    validate_config(cfg)
    with torch.device("meta"):
        model = build_backbone(cfg)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == layout
    backbone_state = {k: torch.zeros(1).expand(shape) for k, shape in layout.items()}
    holder = torch.nn.Module()
    holder.backbone = model
    report = load_weights(holder, _official_evad_file(tmp_path / "evad.pth", backbone_state), log=None)
    assert report.ok and len(report.loaded) == len(layout) and report.dropped


def test_official_evad_checkpoint_converts_to_ours(tmp_path):
    from stmixer.checkpoint.convert import convert

    path = _official_evad_file(tmp_path / "evad.pyth", _tiny_evad(depth=4).state_dict())
    convert(str(path), str(tmp_path / "ours.pth"))
    original, converted = read_checkpoint(path), read_checkpoint(tmp_path / "ours.pth")
    assert converted.format == "stmixer" and converted.state_dict.keys() == original.state_dict.keys()
    assert all(torch.equal(converted.state_dict[k], v) for k, v in original.state_dict.items())
