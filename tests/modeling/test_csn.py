"""The ir-CSN backbones ("CSN-50", "CSN-152") and their weight files, held to the official TubeR code.

The ``tuber``-marked tests regenerate the fixture's Caffe2 blobs from the seed recipe
(tests/reference/tuber/recipe.py), write them as a float32 MATLAB ``.mat`` (TubeR's format) or a
VMZ ``{"blobs": ...}`` pickle, load them through ``stmixer.checkpoint`` and compare with
tests/reference/tuber/csn (made by tests/reference/make_query_detector_fixtures.py from TubeR's
``models/backbones/ir_CSN_{50,152}.py`` and its own ``.mat`` loader): float64 within 1e-9 x
max|value|; float32 within F32_TOL.
"""

import importlib.util
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

from stmixer.checkpoint import CheckpointFormatError, load_weights, read_checkpoint
from stmixer.checkpoint import csn as csn_format
from stmixer.config import get_cfg, validate_config
from stmixer.config.config import ConfigError
from stmixer.modeling.backbones import IrCSN
from stmixer.modeling.build import build_backbone
from stmixer.modeling.necks import build_neck

TUBER = Path(__file__).resolve().parents[1] / "reference" / "tuber"
FIXTURES = TUBER / "csn"
F64_TOL = 1e-9
# float32 vs the float64 answers, relative to max|value|: measured worst 8.0e-7 (layer4, CSN-50); 25x margin
# for other CPUs / BLAS kernels.
F32_TOL = 2e-5


def _recipe():
    spec = importlib.util.spec_from_file_location("tuber_fixture_recipe", TUBER / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _recipe()


class Holder(nn.Module):
    """A detector-shaped module holding only the backbone (what load_weights matches against)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def _meta(case):
    return json.loads((FIXTURES / f"{case}.json").read_text())


def _expected(case):
    with np.load(FIXTURES / f"{case}.npz") as data:
        return dict(data)


def _close(ours, ref, tol, what):
    ours = ours.detach().double().numpy() if isinstance(ours, torch.Tensor) else ours
    assert ours.shape == ref.shape, what
    err = np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


def _blobs(meta, with_extras=True):
    blobs = recipe.fake_blobs(meta["manifest"], meta["seed"])
    if with_extras:
        seed = meta["seed"]
        blobs.update({
            "last_out_L400_w": recipe.fake_value(seed, "last_out_L400_w", (400, 2048), "fc_weight"),
            "last_out_L400_b": recipe.fake_value(seed, "last_out_L400_b", (400,), "bias"),
            "lr": np.asarray([[0.001]]),
            "model_iter": np.asarray([[12345.0]]),
            "conv1_w_momentum": recipe.fake_value(seed, "conv1_w_momentum", (64, 3, 3, 7, 7), "bias"),
        })
    return blobs


def _write_mat(path, blobs):
    scipy.io.savemat(path, {k: v.astype(np.float32) for k, v in blobs.items()})
    return path


def _loaded_csn(meta, path, **kwargs):
    model = Holder(IrCSN(depth=meta["depth"], **kwargs))
    report = load_weights(model, str(path))
    return model.backbone, report


@pytest.fixture(scope="module")
def csn50_mat(tmp_path_factory):
    """CSN-50 fixture blobs as TubeR's float32 ``.mat`` (with classifier and training metadata)."""
    return _write_mat(tmp_path_factory.mktemp("csn") / "irCSN_50.mat", _blobs(_meta("csn50")))


# ----------------------------------------------------------------------------- layout (no fixture run)
@pytest.mark.tuber
@pytest.mark.parametrize("case", ["csn50", "csn152"])
def test_state_dict_keys_are_tubers(case):
    """Our parameter names are TubeR's (``backbone.body.<name>``), in its order; only its unused
    classifier ``out_fc`` is absent."""
    meta = _meta(case)
    official = [k for k in meta["official_state_dict_keys"] if not k.startswith("out_fc.")]
    assert list(IrCSN(depth=meta["depth"]).state_dict()) == official


@pytest.mark.tuber
@pytest.mark.parametrize("case", ["csn50", "csn152"])
def test_blob_names_are_the_official_layout(case):
    """``csn.blob_names`` lists exactly the blobs the official loader reads, and maps each to a tensor of
    our model with the blob's shape; ``blob_to_module_path`` agrees."""
    meta = _meta(case)
    ours = csn_format.blob_names(meta["depth"])
    assert [name for name, _ in ours] == [name for name, _ in meta["manifest"]]
    state = IrCSN(depth=meta["depth"]).state_dict()
    shapes = dict((name, tuple(shape)) for name, shape in meta["manifest"])
    assert sorted(path for _, path in ours) == sorted(k for k in state if not k.endswith("num_batches_tracked"))
    for name, path in ours:
        assert tuple(state[path].shape) == shapes[name], name
        assert csn_format.blob_to_module_path(name, meta["depth"]) == path
    assert csn_format.depth_of({name for name, _ in ours}) == meta["depth"]


@pytest.mark.tuber
def test_frozen_stages_2_is_tubers_tune_point_4():
    frozen = [k for k, p in IrCSN(depth=50, frozen_stages=2).named_parameters() if not p.requires_grad]
    assert frozen == _meta("csn50")["frozen_by_tune_point_4"]
    assert all(p.requires_grad for p in IrCSN(depth=50).parameters())


# ----------------------------------------------------------------------------- the official numbers
@pytest.mark.tuber
def test_csn50_mat_forward_and_gradients_f64(csn50_mat):
    """TubeR's ``.mat`` through our loader: every backbone tensor loaded, classifier / metadata dropped;
    eval-mode stage outputs and parameter gradients equal the official ones (float64)."""
    meta, expected = _meta("csn50"), _expected("csn50")
    backbone, report = _loaded_csn(meta, csn50_mat)
    assert report.ok and not report.missing and not report.unexpected
    assert len(report.loaded) == len(meta["manifest"])
    assert sorted(report.dropped["classifier head"]) == ["last_out_L400_b", "last_out_L400_w"]
    assert sorted(report.dropped["training metadata"]) == ["lr", "model_iter"]
    assert report.dropped["SGD momentum"] == ["conv1_w_momentum"]
    backbone = backbone.double().eval()
    video = torch.from_numpy(recipe.fake_input(meta["seed"], meta["input_shape"]))
    levels = backbone([video])
    step = meta["channel_step"]
    for s, level in enumerate(levels, start=1):
        ref = expected[f"eval/layer{s}"]
        _close(level if s == 4 else level[:, ::step], ref, F64_TOL, f"layer{s}")
        assert list(level.shape) == meta["stats"][f"eval/layer{s}"]["shape"]
    assert torch.equal(backbone.last_stage([video])[0], levels[3])
    w = torch.from_numpy(recipe.grad_weight(meta["seed"], tuple(levels[3].shape)))
    (levels[3] * w).sum().backward()
    params = dict(backbone.named_parameters())
    for name in meta["grad_params"]:
        _close(params[name].grad, expected[f"grad/{name}"], F64_TOL, f"grad {name}")


@pytest.mark.tuber
def test_csn50_training_mode_batchnorm_f64(csn50_mat):
    """Training mode as TubeR trains it: BatchNorm on batch statistics (eps 1e-3), running statistics
    updated with momentum 0.1."""
    meta, expected = _meta("csn50"), _expected("csn50")
    backbone, _ = _loaded_csn(meta, csn50_mat)
    backbone = backbone.double().train()
    video = torch.from_numpy(recipe.fake_input(meta["seed"], meta["input_shape"]))
    with torch.no_grad():
        out = backbone([video])[3]
    _close(out, expected["train/layer4"], F64_TOL, "train layer4")
    buffers = backbone.state_dict()
    for name in meta["train_buffers"]:
        _close(buffers[name], expected[f"train/{name}"], F64_TOL, name)
    # frozen_bn keeps the running statistics (and so differs from TubeR's training mode)
    frozen, _ = _loaded_csn(meta, csn50_mat, frozen_bn=True)
    frozen = frozen.double().train()
    with torch.no_grad():
        frozen_out = frozen([video])[3]
    _close(frozen_out, expected["eval/layer4"], F64_TOL, "frozen-BN train layer4 == eval")


@pytest.mark.tuber
def test_csn50_float32(csn50_mat):
    meta, expected = _meta("csn50"), _expected("csn50")
    backbone, _ = _loaded_csn(meta, csn50_mat)
    video = torch.from_numpy(recipe.fake_input(meta["seed"], meta["input_shape"])).float()
    with torch.no_grad():
        out = backbone.eval()([video])[3]
    _close(out, expected["eval/layer4"], F32_TOL, "float32 layer4")


@pytest.mark.tuber
def test_csn152_mat_forward_f64(tmp_path):
    meta, expected = _meta("csn152"), _expected("csn152")
    path = _write_mat(tmp_path / "irCSN_152.mat", _blobs(meta, with_extras=False))
    backbone, report = _loaded_csn(meta, path)
    assert report.ok and len(report.loaded) == len(meta["manifest"])
    backbone = backbone.double().eval()
    video = torch.from_numpy(recipe.fake_input(meta["seed"], meta["input_shape"]))
    with torch.no_grad():
        levels = backbone([video])
    for s, level in enumerate(levels, start=1):
        ref = expected[f"eval/layer{s}"]
        _close(level if s == 4 else level[:, ::meta["channel_step"]], ref, F64_TOL, f"layer{s}")


# ----------------------------------------------------------------------------- other files of the family
@pytest.mark.tuber
def test_vmz_pickle_loads_as_the_mat(csn50_mat, tmp_path):
    """VMZ's Caffe2 ``{"blobs": ...}`` pickle (1-D BatchNorm blobs, Python-2 style latin-1 pickle) gives the
    same tensors as TubeR's ``.mat``."""
    meta = _meta("csn50")
    blobs = {k: v.astype(np.float32) for k, v in _blobs(meta).items()}
    path = tmp_path / "irCSN_50_ft_kinetics.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    from_pkl, from_mat = read_checkpoint(str(path)), read_checkpoint(str(csn50_mat))
    assert from_pkl.format == from_mat.format == "caffe2_csn"
    assert from_mat.description.endswith("MATLAB .mat file")
    assert list(from_pkl.state_dict) == list(from_mat.state_dict)
    for key, value in from_mat.state_dict.items():
        assert torch.equal(from_pkl.state_dict[key], value), key
    assert from_pkl.dropped == from_mat.dropped


@pytest.mark.tuber
def test_tuber_pth_backbone_part(tmp_path):
    """A TubeR training checkpoint (DDP keys, yacs config): ``backbone.body.*`` loads into the CSN, its
    ``out_fc`` is dropped, the transformer and the Backbone wrapper's temporal pooling are kept below
    ``tuber_head.`` (skipped by a model without one); nothing in the file is executed."""
    from yacs.config import CfgNode

    source = IrCSN(depth=50)
    with torch.no_grad():
        for i, t in enumerate(source.state_dict().values()):
            if t.is_floating_point():
                t.copy_(torch.linspace(-1, 1, t.numel()).view_as(t) + i * 1e-3)
    model_state = {f"module.backbone.body.{k}": v for k, v in source.state_dict().items()}
    model_state.update({
        "module.backbone.body.out_fc.weight": torch.zeros(400, 2048),
        "module.backbone.body.out_fc.bias": torch.zeros(400),
        "module.backbone.query_pool.weight": torch.zeros(1, 2048),
        "module.backbone.pool_decoder.layers.0.linear1.weight": torch.zeros(2048, 2048),
        "module.transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(768, 256),
        "module.query_embed.weight": torch.zeros(15, 256),
        "module.input_proj.weight": torch.zeros(256, 2048, 1, 1, 1),
        "module.class_fc.weight": torch.zeros(80, 256),
    })
    cfg = CfgNode({"CONFIG": CfgNode({"MODEL": CfgNode({"BACKBONE_NAME": "CSN-50"})})})
    path = tmp_path / "ADTR_CSN_50_decode_ava_21.pth"
    torch.save({"model": model_state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 19,
                "max_accuracy": 0.27, "config": cfg}, path)
    contents = read_checkpoint(str(path))
    assert contents.format == "tuber"
    assert contents.extras["config"]["CONFIG"]["MODEL"]["BACKBONE_NAME"] == "CSN-50"
    assert "tuber_head.query_pool.weight" in contents.state_dict
    assert "tuber_head.transformer.encoder.layers.0.self_attn.in_proj_weight" in contents.state_dict
    model = Holder(IrCSN(depth=50))
    report = load_weights(model, contents)
    assert report.ok and len(report.loaded) == len(source.state_dict())
    assert sum(len(v) for v in report.skipped.values()) == 6
    assert len(report.dropped["classifier head (TubeR's unused CSN out_fc)"]) == 2
    for key, value in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_mat_files_that_are_not_weights(tmp_path):
    struct = tmp_path / "struct.mat"
    scipy.io.savemat(struct, {"conv1_w": np.zeros((2, 2)), "info": {"a": 1.0}})
    with pytest.raises(CheckpointFormatError, match="'info'"):
        read_checkpoint(str(struct))
    v73 = tmp_path / "v73.mat"
    v73.write_bytes(b"MATLAB 7.3 MAT-file, Platform: GLNXA64" + b" " * 90 + b"\x89HDF")
    with pytest.raises(CheckpointFormatError, match="v7.3"):
        read_checkpoint(str(v73))


def test_wrong_depth_or_layout_is_reported(csn50_mat):
    """CSN-50 weights into a CSN-152 do not load quietly."""
    from stmixer.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_weights(Holder(IrCSN(depth=152)), str(csn50_mat))


# ----------------------------------------------------------------------------- config / builder
def test_build_backbone_strides_and_neck():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.CONV_BODY", "CSN-50"])
    backbone = build_backbone(cfg)
    assert isinstance(backbone, IrCSN) and backbone.depth == 50
    assert backbone.out_channels == [256, 512, 1024, 2048]
    assert backbone.bn1.eps == 1e-3 and backbone.bn1.momentum == 0.1
    video = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        levels = backbone([video])
    # TubeR: temporal strides 1, 2, 4, 8; spatial 4, 8, 16 and 16 (LAST_STRIDE False)
    assert [tuple(x.shape[2:]) for x in levels] == [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 2, 2)]
    neck = build_neck(cfg, backbone.out_channels)
    with torch.no_grad():
        outs = neck(levels)
    assert [tuple(o.shape) for o in outs] == [(1, cfg.MODEL.STM.HIDDEN_DIM) + tuple(x.shape[2:]) for x in levels]
    cfg.merge_from_list(["MODEL.CSN.LAST_STRIDE", True, "MODEL.CSN.FROZEN_STAGES", 0])
    backbone = build_backbone(cfg)
    assert backbone.spatial_strides == [4, 8, 16, 32]
    assert [k for k, p in backbone.named_parameters() if not p.requires_grad] == [
        "conv1.weight", "bn1.weight", "bn1.bias"]
    cfg.merge_from_list(["MODEL.BACKBONE.CONV_BODY", "CSN-152"])
    assert build_backbone(cfg).depth == 152


def test_config_checks():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.CONV_BODY", "CSN-50"])  # STMixer's decoder needs equal frames per level
    assert cfg.MODEL.META_ARCHITECTURE == "STMDetector"
    with pytest.raises(ConfigError, match="temporal strides 1, 2, 4, 8"):
        validate_config(cfg)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.CSN.FROZEN_STAGES", 5])
    with pytest.raises(ConfigError, match="MODEL.CSN.FROZEN_STAGES"):
        validate_config(cfg)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.CSN.BN_EPSILON", 0.0])
    with pytest.raises(ConfigError, match="MODEL.CSN.BN_EPSILON"):
        validate_config(cfg)


def test_fast_rcnn_on_csn50_trains(repo_root):
    """The two-stage detector takes CSN's last stage (output stride 16 with LAST_STRIDE False) as it takes
    SlowOnly's: one training step gives a finite loss and backbone gradients."""
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    cfg = load_config(str(repo_root / "config_files" / "synthetic" / "tiny-fastrcnn.yaml"),
                      ["MODEL.BACKBONE.CONV_BODY", "CSN-50", "DATA.NUM_FRAMES", "8"])
    model = build_detector(cfg).train()
    torch.manual_seed(0)
    losses = model(torch.randn(1, 3, 8, 64, 64), None, torch.tensor([[64.0, 64.0, 64.0, 64.0]]),
                   [torch.tensor([[4.0, 6.0, 40.0, 60.0]])], [torch.eye(9)[:1]])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert model.backbone.layer4[2].conv4.weight.grad.abs().max() > 0
