"""The TubeR fork's Sparse R-CNN checkpoints load into our ``SparseRCNN`` (issue 17: every config loads its
checkpoint format).

The fork's state-dict layout (``tests/reference/sparse_rcnn/fork_key_layout.json``, recorded from the fork's
own detector built from its yaml by ``tests/reference/make_sparse_rcnn_fork_layout.py``) is written as a fake
training checkpoint of the fork (DDP ``module.`` keys, yacs config, one distinct constant per tensor) and
loaded into the detector built from ``config_files/tuber/Sparse_CSN50_AVA21.yaml``.
"""

import json
from pathlib import Path

import pytest
import torch

from stmixer.checkpoint import load_weights, read_checkpoint, save_checkpoint
from stmixer.checkpoint.tuber_sparse import DROP_EXTRA, DROP_POOLING
from stmixer.config import load_config
from stmixer.modeling import build_detector

pytestmark = pytest.mark.tuber

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = json.loads((ROOT / "tests" / "reference" / "sparse_rcnn" / "fork_key_layout.json").read_text())["layout"]


def _value(i, key):
    return torch.tensor(i if key.endswith("num_batches_tracked") else i + 0.5,
                        dtype=torch.int64 if key.endswith("num_batches_tracked") else torch.float32)


def _fake_fork_checkpoint(path):
    """A fork training checkpoint (``utils/model_utils.save_checkpoint``) with the real layout: tensor i holds
    i + 0.5 everywhere (stride-0 tensors, so the file stays small)."""
    from yacs.config import CfgNode

    state = {f"module.{k}": _value(i, k).expand(shape) for i, (k, shape) in enumerate(LAYOUT.items())}
    cfg = CfgNode({"CONFIG": CfgNode({"MODEL": CfgNode({"NAME": "Sparse R-CNN", "BACKBONE_NAME": "CSN-50"})})})
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"last_epoch": 7},
                "max_accuracy": 0.21, "epoch": 7, "config": cfg}, path)
    return path


def _expected_target(key):
    """Our key of a fork key, or None where the fork's tensor has no counterpart (by hand, from the layout)."""
    if key.startswith("backbone.0.body."):
        return "backbone." + key[len("backbone.0.body."):]
    if key.startswith(("backbone.0.query_pool.", "backbone.0.pool_decoder.", "input_proj.3.")):
        return None
    if key.startswith("input_proj."):
        return "lateral_convs." + key[len("input_proj."):]
    if key.startswith("init_proposal_"):
        return "head." + key
    assert key.startswith("head.head_series."), key
    return key


def test_fork_checkpoint_loads_into_sparse_csn50(tmp_path):
    contents = read_checkpoint(_fake_fork_checkpoint(tmp_path / "ckpt_epoch_7.pth"))
    assert contents.format == "tuber_sparse_rcnn"
    assert contents.extras["epoch"] == 7 and contents.extras["config"]["CONFIG"]["MODEL"]["NAME"] == "Sparse R-CNN"
    model = build_detector(load_config(str(ROOT / "config_files" / "tuber" / "Sparse_CSN50_AVA21.yaml")))
    report = load_weights(model, contents, log=None)
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert report.not_stored == [] and report.skipped == {}
    targets = {k: _expected_target(k) for k in LAYOUT}
    dropped = [k for k, t in targets.items() if t is None]
    assert report.dropped == {
        DROP_POOLING: [k for k in dropped if k.startswith("backbone.0.")],
        DROP_EXTRA: [k for k in dropped if k.startswith("input_proj.3.")],
    }
    assert len(report.dropped[DROP_POOLING]) == 21 and len(report.dropped[DROP_EXTRA]) == 4
    state = model.state_dict()
    extra = [k for k in state if k.startswith("extra_convs.")]
    assert report.left_at_init == {"extra_convs.* (not in the file)": extra} and len(extra) == 4
    assert sorted(report.loaded) == sorted(t for t in targets.values() if t) == sorted(set(state) - set(extra))
    for i, (key, target) in enumerate(targets.items()):  # every counterpart receives exactly the fork's value
        if target:
            assert torch.equal(state[target], _value(i, key).expand(LAYOUT[key])), (key, target)
    assert "head.head_series.7.inst_interact.dynamic_layer.weight" in report.loaded


def test_sparse_rcnn_with_extra_levels_saves_and_reloads(tmp_path):
    """A SparseRCNN with an extra pyramid level (``extra_convs``, as Sparse_CSN50_AVA21) writes checkpoints
    (save_checkpoint used to refuse the part) and reads them back as our format, not as the fork's."""
    cfg = load_config(str(ROOT / "config_files" / "synthetic" / "tiny-sparse-rcnn.yaml"),
                      ["MODEL.SPARSE_RCNN.FEATMAP_STRIDES", "[8, 16, 32, 64]", "MODEL.SPARSE_RCNN.EXTRA_LEVELS", "1"])
    model = build_detector(cfg)
    assert any(k.startswith("extra_convs.") for k in model.state_dict())
    save_checkpoint(tmp_path / "model_final.pth", model.state_dict(), iteration=3)
    contents = read_checkpoint(tmp_path / "model_final.pth")
    assert contents.format == "stmixer"
    fresh = build_detector(cfg)
    report = load_weights(fresh, contents, log=None)
    assert report.ok and not report.left_at_init and not report.dropped
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

