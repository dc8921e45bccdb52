"""mmaction2-format checkpoints load into our 3-D ResNets, which then reproduce mmaction2's backbones.

The fixtures (``tests/reference/mmaction2/backbone``, made by
``tests/reference/make_mmaction2_backbone_fixtures.py`` from mmaction2's own ``ResNet3dSlowOnly`` /
``ResNet3dSlowFast``) hold each case's seed and key manifest; the weights and the clip are regenerated
here bit for bit, written as mmaction2 / mmengine checkpoints with the real key layout, read by
the loader under test, and the features compared in float64.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmixer.checkpoint import load_weights
from stmixer.checkpoint.errors import CheckpointMismatchError
from stmixer.checkpoint.formats import read_checkpoint
from stmixer.config import get_cfg, validate_config
from stmixer.modeling.backbones.resnet3d import build_slowonly
from stmixer.modeling.backbones.slowfast import build_slowfast

pytestmark = pytest.mark.mmaction2

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
FIXTURES = REFERENCE / "mmaction2" / "backbone"
RTOL = 1e-9
HEAD_KEYS = {"roi_head.bbox_head.fc_cls.weight": (81, 2048), "roi_head.bbox_head.fc_cls.bias": (81,)}
HEAD_REASON = "roi_head.* (the model holds no roi_head)"  # kept by the format (FastRCNN loads it), skipped here

# Our config for each mmaction2 AVA backbone (configs/detection/slowonly, slowfast).
SLOWONLY_OPTS = [
    "RESNET.DEPTH", 50, "RESNET.SPATIAL_STRIDES", [[1], [2], [2], [1]],
    "RESNET.NUM_BLOCK_TEMP_KERNEL", [[3], [4], [6], [3]], "DATA.INPUT_CHANNEL_NUM", [3],
]
NONLOCAL_OPTS = [
    "NONLOCAL.LOCATION", [[[]], [[0, 2]], [[0, 2, 4]], [[]]], "NONLOCAL.INSTANTIATION", "softmax",
    "NONLOCAL.STYLE", "mmaction2", "NONLOCAL.POOL", [[[1, 2, 2]], [[1, 2, 2]], [[1, 2, 2]], [[1, 2, 2]]],
]
SLOWFAST_OPTS = [
    "RESNET.DEPTH", 50, "RESNET.SPATIAL_STRIDES", [[1, 1], [2, 2], [2, 2], [1, 1]],
    "RESNET.SPATIAL_DILATIONS", [[1, 1], [1, 1], [1, 1], [1, 1]],
    "RESNET.NUM_BLOCK_TEMP_KERNEL", [[3, 3], [4, 4], [6, 6], [3, 3]], "DATA.INPUT_CHANNEL_NUM", [3, 3],
    "NONLOCAL.LOCATION", [[[], []], [[], []], [[], []], [[], []]], "NONLOCAL.GROUP", [[1, 1], [1, 1], [1, 1], [1, 1]],
    "SLOWFAST.ALPHA", 4, "SLOWFAST.BETA_INV", 8, "SLOWFAST.FUSION_CONV_CHANNEL_RATIO", 2,
    "SLOWFAST.FUSION_KERNEL_SZ", 7, "SLOWFAST.FUSION_BN_RELU", False, "MODEL.BACKBONE.PATHWAYS", 2,
    "DATA.NUM_FRAMES", 16,
]
CASES = {
    "slowonly_r50_4x16": (build_slowonly, SLOWONLY_OPTS),
    "slowonly_r50_nl_4x16": (build_slowonly, SLOWONLY_OPTS + NONLOCAL_OPTS),
    "slowonly_r101_8x8": (build_slowonly, SLOWONLY_OPTS + ["RESNET.DEPTH", 101,
                                                          "RESNET.NUM_BLOCK_TEMP_KERNEL", [[3], [4], [23], [3]]]),
    "slowfast_r50_8x8": (build_slowfast, SLOWFAST_OPTS),
    "slowfast_r50_4x16": (build_slowfast, SLOWFAST_OPTS + ["SLOWFAST.ALPHA", 8, "SLOWFAST.FUSION_KERNEL_SZ", 5,
                                                           "DATA.NUM_FRAMES", 32]),
}


def _generator():
    spec = importlib.util.spec_from_file_location("mm_backbone_fixtures",
                                                  REFERENCE / "make_mmaction2_backbone_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


class Holder(nn.Module):
    """The detector's ``backbone`` part alone (what a backbone checkpoint loads into)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def case_meta(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def build(name, **overrides):
    builder, opts = CASES[name]
    cfg = get_cfg()
    cfg.merge_from_list(opts)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    validate_config(cfg)
    return Holder(builder(cfg)).double().eval()


def write_mmaction2_file(path, meta, layout="detector", extra_backbone=None):
    """A checkpoint as mmaction2 / mmengine writes it: ``{"meta", "state_dict"}``; ``layout`` "detector"
    (``backbone.*`` + ``roi_head.*``), "recognizer" (``backbone.*`` + ``cls_head.*``) or "bare" (backbone keys)."""
    weights = GEN.fake_state_dict(meta["manifest"], meta["seed"])
    state = {}
    prefix = "" if layout == "bare" else "backbone."
    for key, value in weights.items():
        state[prefix + key] = torch.from_numpy(value)
    for key, value in (extra_backbone or {}).items():
        state[prefix + key] = value
    if layout == "detector":
        state.update({k: torch.full(shape, 0.5, dtype=torch.float64) for k, shape in HEAD_KEYS.items()})
    elif layout == "recognizer":
        state.update({"cls_head.fc_cls.weight": torch.zeros(400, 2048), "cls_head.fc_cls.bias": torch.zeros(400)})
    if layout == "bare":
        obj = state
    else:
        obj = {"meta": {"mmengine_version": "0.10.7", "epoch": 20, "iter": 1000, "seed": 0,
                        "dataset_meta": {"classes": ["a", "b"]}}, "state_dict": state}
    torch.save(obj, path)
    return path


def relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def run_case(name, model, dtype=torch.float64):
    meta = case_meta(name)
    video = torch.from_numpy(GEN.fake_input(meta["seed"], meta["input_shape"])).to(dtype)
    stats = meta["stats"]["input/video"]
    if dtype == torch.float64:  # the same clip as mmaction2's
        assert np.isclose(float(video.sum()), stats["sum"], rtol=1e-12, atol=0)
    captured = {}
    if meta["class"] == "ResNet3dSlowFast":
        rate = meta["kwargs"]["resample_rate"]
        videos = [video[:, :, ::rate], video[:, :, :: rate // meta["kwargs"]["speed_ratio"]]]
        model.backbone.s5.register_forward_hook(lambda m, i, o: captured.update(slow=o[0], fast=o[1]))
    else:
        videos = [video]
    with torch.no_grad():
        levels = model.backbone(videos)
    return meta, levels, captured


@pytest.mark.parametrize("name", sorted(CASES))
def test_mmaction2_checkpoint_reproduces_mmaction2_features(name, tmp_path):
    meta = case_meta(name)
    path = write_mmaction2_file(tmp_path / f"{name}.pth", meta)
    contents = read_checkpoint(path)
    assert contents.format == "mmaction2"
    assert set(contents.extras) == {"meta"}
    model = build(name)
    report = load_weights(model, contents)
    # Every key of the file is used (the backbone's, one to one) or reported (the RoI head's).
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert len(report.loaded) == len(meta["manifest"]) == len(model.state_dict())
    assert {k: sorted(v) for k, v in report.skipped.items()} == {HEAD_REASON: sorted(HEAD_KEYS)}
    assert not report.not_stored and not report.left_at_init and not report.dropped
    meta, levels, captured = run_case(name, model)
    with np.load(FIXTURES / f"{name}.npz") as data:
        expected = dict(data)
    if meta["class"] == "ResNet3dSlowFast":
        for key in ("slow", "fast"):
            ours = captured[key].numpy()
            assert ours.shape == expected[f"out/{key}"].shape
            assert relative_error(ours, expected[f"out/{key}"]) <= RTOL, key
        # Our last level is the Slow output with the Fast output max-pooled over ALPHA frames.
        ref = torch.from_numpy(expected["out/fast"])
        alpha = meta["kwargs"]["speed_ratio"]
        pooled = F.max_pool3d(ref, kernel_size=(alpha, 1, 1), stride=(alpha, 1, 1))
        ref_level = np.concatenate([expected["out/slow"], pooled.numpy()], axis=1)
        assert relative_error(levels[3].numpy(), ref_level) <= RTOL
    else:
        step = meta["channel_step"]
        for i, level in enumerate(levels):
            ours = level.numpy()
            stats = meta["stats"][f"out/level{i}"]
            assert list(ours.shape) == stats["shape"]
            ref = expected[f"out/level{i}"]
            assert relative_error(ours if i == 3 else ours[:, ::step], ref) <= RTOL, i
            assert np.isclose(float(ours.sum()), stats["sum"], rtol=RTOL, atol=0), i
            assert np.isclose(float((ours * ours).sum()), stats["sum_sq"], rtol=RTOL, atol=0), i


@pytest.mark.parametrize("layout", ["bare", "recognizer"])
def test_backbone_only_and_kinetics_recognizer_files(layout, tmp_path):
    name = "slowonly_r50_4x16"
    meta = case_meta(name)
    contents = read_checkpoint(write_mmaction2_file(tmp_path / "k400.pth", meta, layout=layout))
    assert contents.format == "mmaction2"
    model = build(name)
    report = load_weights(model, contents)
    assert report.ok and len(report.loaded) == len(meta["manifest"])
    expected_dropped = {} if layout == "bare" else {"classifier head": ["cls_head.fc_cls.weight",
                                                                        "cls_head.fc_cls.bias"]}
    assert report.dropped == expected_dropped
    _, levels, _ = run_case(name, model)
    with np.load(FIXTURES / f"{name}.npz") as data:
        assert relative_error(levels[3].numpy(), data["out/level3"]) <= RTOL


@pytest.mark.parametrize("name, overrides, missing", [
    # mmaction2's AVA SlowFast laterals have no BN: with PySlowFast's fused BN + ReLU the BN keys are missing.
    ("slowfast_r50_8x8", {"SLOWFAST.FUSION_BN_RELU": True}, "backbone.s1_fuse.bn.weight"),
    # mmcv's non-local conv_out has no bias: the PySlowFast-style block expects one.
    ("slowonly_r50_nl_4x16", {"NONLOCAL.STYLE": "pyslowfast"}, "backbone.s3.pathway0_nonlocal0.conv_out.bias"),
])
def test_wrong_options_are_reported_not_silently_loaded(name, overrides, missing, tmp_path):
    path = write_mmaction2_file(tmp_path / "x.pth", case_meta(name))
    model = build(name, **overrides)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, path)
    assert missing in info.value.report.missing
    assert "missing" in str(info.value)


def test_unknown_backbone_key_shows_as_unexpected(tmp_path):
    name = "slowonly_r50_4x16"
    extra = {"layer4.0.conv4.conv.weight": torch.zeros(1)}
    path = write_mmaction2_file(tmp_path / "x.pth", case_meta(name), extra_backbone=extra)
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(build(name), path)
    assert info.value.report.unexpected == ["backbone.layer4.0.conv4.conv.weight"]


def test_key_mapping_covers_the_optional_layouts():
    from stmixer.checkpoint.mmaction2 import backbone_key

    # lateral_norm=True laterals, non-local blocks without sub_sample, fast-path downsample, a 0.x counter.
    assert backbone_key("slow_path.layer2_lateral.bn.running_var") == "s3_fuse.bn.running_var"
    assert backbone_key("slow_path.conv1_lateral.conv.weight") == "s1_fuse.conv_f2s.weight"
    assert backbone_key("layer3.4.non_local_block.phi.conv.bias") == "s4.pathway0_nonlocal4.conv_phi.bias"
    assert backbone_key("layer3.4.non_local_block.conv_out.bn.weight") == "s4.pathway0_nonlocal4.bn.weight"
    assert backbone_key("fast_path.layer4.0.downsample.bn.num_batches_tracked") == \
        "s5.pathway1_res0.branch1_bn.num_batches_tracked"
    assert backbone_key("fc.weight") is None


@pytest.mark.parametrize("key, value", [("NONLOCAL.STYLE", "mmcv"), ("SLOWFAST.FUSION_BN_RELU", "no")])
def test_new_config_keys_are_validated(key, value):
    from stmixer.config import ConfigError

    cfg = get_cfg()
    with pytest.raises(ConfigError, match=key):  # the type check of the merge, or validate_config
        cfg.merge_from_list([key, value])
        validate_config(cfg)


# float32 (weights and clip rounded to float32, our backbone in float32) against the float64 answers:
# measured worst 8.2e-7 x max|value| (non-local case, res3), i.e. ~7 float32 ulps after 16-33 residual
# blocks; 1e-5 leaves a 12x margin while a real difference (e.g. the non-local pooling order: 0.74) fails.
RTOL_F32 = 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_run_within_float32_tolerance(name, tmp_path):
    meta = case_meta(name)
    model = build(name).float()
    load_weights(model, write_mmaction2_file(tmp_path / "x.pth", meta))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    meta, levels, captured = run_case(name, model, dtype=torch.float32)
    with np.load(FIXTURES / f"{name}.npz") as data:
        expected = dict(data)
    if captured:
        outputs = {f"out/{k}": v for k, v in captured.items()}
    else:
        step = meta["channel_step"]
        outputs = {f"out/level{i}": level if i == 3 else level[:, ::step] for i, level in enumerate(levels)}
    assert sorted(outputs) == sorted(expected)
    for key, ours in outputs.items():
        assert relative_error(ours.double().numpy(), expected[key]) <= RTOL_F32, key


def test_training_file_with_mmengine_message_hub_loads(tmp_path, monkeypatch):
    """mmengine training checkpoints hold ``message_hub`` with HistoryBuffer objects: read as inert placeholders."""
    import sys
    import types

    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:  # stands in for mmengine's class while the file is written
        def __init__(self):
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])
            self.max_length = 1000000

    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    meta = case_meta("slowonly_r50_4x16")
    path = write_mmaction2_file(tmp_path / "epoch_20.pth", meta, layout="bare")
    state = torch.load(path, weights_only=False)
    torch.save({"meta": {"epoch": 20}, "state_dict": state,
                "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}}}, path)
    monkeypatch.delitem(sys.modules, module.__name__)  # reading must not need mmengine
    contents = read_checkpoint(path)
    assert contents.format == "mmaction2"
    report = load_weights(build("slowonly_r50_4x16"), contents)
    assert report.ok and len(report.loaded) == len(meta["manifest"])
