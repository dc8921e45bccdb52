"""Every config of config_files/stabn/ merges onto our defaults, builds and runs a tiny CPU forward."""

from pathlib import Path

import pytest
import torch

from stmixer.config import load_config
from stmixer.modeling import build_detector
from stmixer.modeling.stabn import STABNHead

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config_files" / "stabn"
OFFICIAL = ["sthv1-st-abn-32.yaml", "sthv1-st-abn-32-2.yaml", "sthv2-st-abn-32.yaml", "sthv2-st-abn-32-2.yaml",
            "kinetics400-st-abn-32x2.yaml"]


def test_the_folder_holds_one_config_per_official_setting_and_the_tiny_one():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(OFFICIAL + ["tiny-synthetic-stabn.yaml"])


@pytest.mark.parametrize("name", OFFICIAL + ["tiny-synthetic-stabn.yaml"])
def test_config_builds_and_runs_a_tiny_forward(name):
    cfg = load_config(str(CONFIG_DIR / name), freeze=False)
    assert cfg.MODEL.RECOGNIZER.HEAD == "stabn" and not cfg.MODEL.STABN.APPLY_ATT_LOSS_WEIGHT
    if name != "tiny-synthetic-stabn.yaml":
        assert cfg.DATA.NUM_FRAMES == 32 and cfg.RESNET.DEPTH == 50
        assert cfg.MODEL.RECOGNIZER.NUM_CLASSES == (400 if name.startswith("kinetics") else 174)
        assert cfg.SOLVER.OPTIMIZING_METHOD == "sgd" and cfg.SOLVER.NESTEROV and cfg.SOLVER.STEPS == (75, 125)
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    assert isinstance(model.head, STABNHead)
    assert model.head.att_fc.in_features == cfg.MODEL.RECOGNIZER.NUM_CLASSES * cfg.DATA.NUM_FRAMES
    with torch.no_grad():
        probs = model(torch.randn(1, 3, cfg.DATA.NUM_FRAMES, 32, 32))
    assert probs.shape == (1, cfg.MODEL.RECOGNIZER.NUM_CLASSES) and torch.isfinite(probs).all()
