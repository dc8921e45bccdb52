"""The UCF101-24 / JHMDB-21 configs and the tiny synthetic ones load, validate and describe their dataset."""

import pytest

from stmixer.config import load_config
from stmixer.data.descriptions import describe
from stmixer.utils.run_dir import flatten

# Every STMixer backbone of the official configs, on both tube datasets.
OFFICIAL_MODELS = ["PySlowonly-R50-K400-4x16", "PySlowfast-R50-K400-8x8", "PySlowfast-R101-NL-K600-8x8",
                   "VMAE-ViTB-16x4", "VMAEv2-ViTB-16x4"]
TUBE_DATASETS = {"ucf24": 24, "jhmdb": 21}
CONFIGS = [(f"{dataset}/{model}.yaml", classes, dataset)
           for dataset, classes in TUBE_DATASETS.items() for model in OFFICIAL_MODELS] + [
    ("synthetic/tiny-ucf24.yaml", 4, "ucf24"), ("synthetic/tiny-jhmdb.yaml", 4, "jhmdb"),
]
# What a tube-dataset config may change of its official AVA sibling: the data, the classes, the schedule.
DATASET_KEYS = ("DATA.PATH_TO_DATA_DIR", "DATA.DATASETS", "TUBES.", "AVA.", "MODEL.STM.ACTION_CLASSES", "OUTPUT_DIR",
                "SOLVER.ITER_PER_EPOCH", "SOLVER.MAX_EPOCH", "SOLVER.STEPS", "SOLVER.WARMUP_EPOCH", "SOLVER.EVAL_AFTER")


@pytest.mark.parametrize("name, classes, dataset", CONFIGS)
def test_dataset_configs_load(name, classes, dataset, repo_root):
    cfg = load_config(str(repo_root / "config_files" / name))
    assert cfg.MODEL.STM.ACTION_CLASSES == classes
    description = describe(cfg)
    assert description.evaluator == "tubes" and description.name == dataset
    frame = cfg.TUBES.FRAME_TEMPLATE.format(video="Class/v_1", frame=7)
    assert frame.startswith("Class/v_1/00007.")


@pytest.mark.parametrize("dataset", sorted(TUBE_DATASETS))
@pytest.mark.parametrize("model", OFFICIAL_MODELS)
def test_tube_configs_keep_the_official_model(dataset, model, repo_root):
    official = flatten(load_config(str(repo_root / "config_files" / f"{model}.yaml")))
    ours = flatten(load_config(str(repo_root / "config_files" / dataset / f"{model}.yaml")))
    changed = {k for k in official if official[k] != ours[k]}
    assert changed and all(k.startswith(DATASET_KEYS) for k in changed), sorted(changed)


def test_official_ava_configs_keep_their_epoch(repo_root):
    for name in ("PySlowfast-R50-K400-8x8.yaml", "VMAE-ViTB-16x4.yaml"):
        cfg = load_config(str(repo_root / "config_files" / name))
        assert cfg.SOLVER.ITER_PER_EPOCH in (11524, 23048) and describe(cfg).evaluator == "ava"


def test_ava_kinetics_config(repo_root):
    cfg = load_config(str(repo_root / "config_files" / "ava_kinetics" / "PySlowonly-R50-K400-4x16.yaml"))
    description = describe(cfg)
    assert description.name == "ava_kinetics" and description.evaluator == "ava" and description.layout == "ava"
    assert cfg.MODEL.STM.ACTION_CLASSES == 80 and cfg.SOLVER.ITER_PER_EPOCH == 0
