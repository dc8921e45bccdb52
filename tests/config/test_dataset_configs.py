"""The UCF101-24 / JHMDB-21 configs and the tiny synthetic ones load, validate and describe their dataset."""

import pytest

from stmixer.config import load_config
from stmixer.data.descriptions import describe

CONFIGS = [
    ("ucf24/PySlowfast-R50-K400-8x8.yaml", 24, "ucf24"), ("ucf24/VMAE-ViTB-16x4.yaml", 24, "ucf24"),
    ("jhmdb/PySlowfast-R50-K400-8x8.yaml", 21, "jhmdb"), ("jhmdb/VMAE-ViTB-16x4.yaml", 21, "jhmdb"),
    ("synthetic/tiny-ucf24.yaml", 4, "ucf24"), ("synthetic/tiny-jhmdb.yaml", 4, "jhmdb"),
]


@pytest.mark.parametrize("name, classes, dataset", CONFIGS)
def test_dataset_configs_load(name, classes, dataset, repo_root):
    cfg = load_config(str(repo_root / "config_files" / name))
    assert cfg.MODEL.STM.ACTION_CLASSES == classes
    description = describe(cfg)
    assert description.evaluator == "tubes" and description.name == dataset
    frame = cfg.TUBES.FRAME_TEMPLATE.format(video="Class/v_1", frame=7)
    assert frame.startswith("Class/v_1/00007.")


def test_official_ava_configs_keep_their_epoch(repo_root):
    for name in ("PySlowfast-R50-K400-8x8.yaml", "VMAE-ViTB-16x4.yaml"):
        cfg = load_config(str(repo_root / "config_files" / name))
        assert cfg.SOLVER.ITER_PER_EPOCH in (11524, 23048) and describe(cfg).evaluator == "ava"


def test_ava_kinetics_config(repo_root):
    cfg = load_config(str(repo_root / "config_files" / "ava_kinetics" / "PySlowonly-R50-K400-4x16.yaml"))
    description = describe(cfg)
    assert description.name == "ava_kinetics" and description.evaluator == "ava" and description.layout == "ava"
    assert cfg.MODEL.STM.ACTION_CLASSES == 80 and cfg.SOLVER.ITER_PER_EPOCH == 0
