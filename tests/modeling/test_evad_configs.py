"""EVAD's model-zoo configs (``config_files/evad/``) and official checkpoints of the whole detector.

Every zoo row's config merges onto our defaults, validates, builds with ``build_detector`` and runs a forward
on a tiny CPU clip; an official EVAD checkpoint with the real key layout of the ViT-B and ViT-L zoo detectors
(``tests/reference/evad/detector/key_layout.json``, recorded from the official ``EVAD(cfg)`` on the meta
device) loads into the detector built from the matching config, every tensor accounted for.
"""

import json
from pathlib import Path

import pytest
import torch

from stmixer.checkpoint import load_weights
from stmixer.checkpoint.formats import read_checkpoint
from stmixer.config import load_config
from stmixer.modeling import build_detector
from stmixer.solver.optimizer import build_param_groups

pytestmark = pytest.mark.evad

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "config_files" / "evad").glob("*.yaml"))
LAYOUT = json.loads((ROOT / "tests" / "reference" / "evad" / "detector" / "key_layout.json").read_text())


def test_every_zoo_row_has_a_config():
    assert [p.stem for p in CONFIGS] == ["ViT_B_16x4", "ViT_B_16x4_KTP", "ViT_B_16x4_KTP_EW",
                                         "ViT_B_16x4_KTP_VideoMAEv2", "ViT_L_16x4_KTP"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_zoo_config_builds_and_runs(path):
    cfg = load_config(str(path))
    model = build_detector(cfg).eval()
    assert type(model).__name__ == "EVAD"
    with torch.no_grad():
        dets = model(torch.randn(1, 3, 16, 64, 64), None, torch.tensor([[64.0, 64.0, 64.0, 64.0]]))
    assert dets[0]["scores"].shape[1] == 80 and dets[0]["boxes"].shape[1] == 4
    kept = model.backbone.keep_rates
    assert kept == [float(r) for r in cfg.EVAD.KEEP_RATES] and len(kept) == cfg.ViT.DEPTH


def _fake_official(path, layout):
    """An official EVAD checkpoint (PySlowFast dict) with ``layout``'s keys and shapes (stride-0 tensors)."""
    state = {k: torch.zeros((), dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32).expand(s)
             for k, s in layout.items()}
    torch.save({"epoch": 12, "model_state": state, "optimizer_state": {}, "cfg": "MODEL:\n  MODEL_NAME: EVAD\n"},
               path)
    return path


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_official_checkpoint_loads_into_the_whole_detector(tmp_path, name):
    model = build_detector(load_config(str(ROOT / "config_files" / "evad" / f"{name}.yaml")))
    contents = read_checkpoint(_fake_official(tmp_path / "checkpoint_epoch_00012.pyth", LAYOUT[name]))
    assert contents.format == "evad"
    report = load_weights(model, contents, log=None)
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert report.dropped == {"loss buffers (rebuilt from the config)": ["criterion.empty_weight"]}
    assert len(report.loaded) == len(LAYOUT[name]) - 1
    assert report.not_stored == []  # the criterion's empty_weight is a non-persistent buffer
    params = {n for n, _ in model.named_parameters()}
    assert params <= set(report.loaded)  # every parameter comes from the file
    assert "evad_head.person.head_series.5.inst_interact.dynamic_layer.weight" in report.loaded
    assert "evad_head.det_head.decoder.blocks.0.act_module.0.weight" in report.loaded


def test_optimizer_groups_follow_the_official_solver():
    cfg = load_config(str(ROOT / "config_files" / "evad" / "ViT_B_16x4_KTP.yaml"))
    model = build_detector(cfg)
    groups = {n: (g["lr_scale"], g["weight_decay"]) for g in build_param_groups(model, cfg) for n in g["names"]}
    assert groups["evad_head.det_head.decoder.blocks.0.attn.qkv.weight"] == (8.0, 1e-4)
    assert groups["evad_head.person.head_series.0.bboxes_delta.weight"] == (8.0, 1e-4)
    assert groups["evad_head.det_head.mask_token"] == (8.0, 0.0)
    assert groups["evad_head.det_head.decoder.blocks.0.norm1.weight"] == (8.0, 0.0)
    assert groups["evad_head.person.init_proposal_boxes.weight"] == (1.0, 1e-4)
    assert groups["evad_fpn.fpn_output2.bias"] == (1.0, 0.0)
    assert groups["backbone.blocks.0.attn.qkv.weight"] == (1.0, 1e-4)
