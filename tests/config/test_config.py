import pytest

from stmixer.config import ConfigError, get_cfg
from stmixer.config.reference import key_comments

OFFICIAL = [
    "PySlowfast-R101-NL-K600-8x8.yaml",
    "PySlowfast-R50-K400-8x8.yaml",
    "PySlowonly-R50-K400-4x16.yaml",
    "VMAE-ViTB-16x4.yaml",
    "VMAEv2-ViTB-16x4.yaml",
]


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.STM.NUM_QUERIES = 7
    assert b.MODEL.STM.NUM_QUERIES == 100
    assert get_cfg().MODEL.STM.NUM_QUERIES == 100


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_configs_shipped_unchanged_and_merge(name, shared_dir, repo_root):
    shipped = repo_root / "config_files" / name
    official = shared_dir / "reference" / "official_configs" / name
    assert shipped.read_bytes() == official.read_bytes()
    cfg = get_cfg()
    cfg.merge_from_file(str(shipped))
    # Types decoded as the official yacs tree would: "1e-4" and "(5, 8)" are literals.
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(1e-4)
    assert cfg.SOLVER.STEPS == (5, 8)
    assert isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.MODEL.STM.NUM_STAGES == 6


def test_official_values_land(repo_root):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "PySlowfast-R101-NL-K600-8x8.yaml"))
    assert cfg.MODEL.BACKBONE.CONV_BODY == "PySlowfast-R101"
    assert cfg.RESNET.DEPTH == 101
    assert cfg.NONLOCAL.LOCATION[2] == [[6, 13, 20], []]
    assert cfg.SLOWFAST.ALPHA == 4 and cfg.SLOWFAST.FUSION_KERNEL_SZ == 5
    assert cfg.DATA.INPUT_CHANNEL_NUM == [3, 3]
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "VMAEv2-ViTB-16x4.yaml"))
    assert cfg.MODEL.STM.ACTION_WEIGHT == 48.0
    assert cfg.ViT.LAYER_DECAY == 1.0 and cfg.ViT.USE_CHECKPOINT is True


def test_every_key_has_a_comment():
    comments = key_comments()
    keys = get_cfg().all_keys()
    missing = [k for k in keys if not comments.get(k)]
    assert not missing, f"keys without a comment in defaults.py: {missing}"
    assert set(comments) == set(keys)


def test_misspelt_key_in_file_names_file_line_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  STM:\n    NUM_QUERIES: 50\n    HIDEN_DIM: 128\n")
    cfg = get_cfg()
    with pytest.raises(ConfigError) as info:
        cfg.merge_from_file(str(path))
    message = str(info.value)
    assert f"{path}:4" in message
    assert "MODEL.STM.HIDEN_DIM" in message
    assert "MODEL.STM.HIDDEN_DIM" in message
    # A failed merge leaves the config untouched.
    assert cfg.MODEL.STM.NUM_QUERIES == 100


def test_misplaced_key_on_command_line_suggests_full_name():
    cfg = get_cfg()
    with pytest.raises(ConfigError) as info:
        cfg.merge_from_list(["MODEL.NUM_QUERIES", "10"])
    assert "command line" in str(info.value)
    assert "MODEL.STM.NUM_QUERIES" in str(info.value)


def test_command_line_values_are_typed():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "1e-5", "SOLVER.STEPS", "(3, 4)", "SOLVER.WARMUP_FACTOR", "1",
                         "OUTPUT_DIR", "out/run1", "DATA.TRAIN_MIN_SCALES", "[128, 160]"])
    assert cfg.SOLVER.BASE_LR == 1e-5
    assert cfg.SOLVER.STEPS == (3, 4)
    assert cfg.SOLVER.WARMUP_FACTOR == 1.0 and isinstance(cfg.SOLVER.WARMUP_FACTOR, float)
    assert cfg.OUTPUT_DIR == "out/run1"
    assert cfg.DATA.TRAIN_MIN_SCALES == [128, 160]


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["SOLVER.BASE_LR", "fast"], "expects a value of type float"),
        (["SOLVER.MAX_EPOCH"], "has no value"),
        (["MODEL.STM", "3"], "is a section"),
        (["MODEL.STM.NUM_QUERIES", "True"], "expects a value of type int"),
    ],
)
def test_bad_overrides(opts, fragment):
    with pytest.raises(ConfigError, match=fragment):
        get_cfg().merge_from_list(opts)


def test_frozen_config_refuses_merge():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(ConfigError, match="frozen"):
        cfg.merge_from_list(["OUTPUT_DIR", "x"])


def test_dump_round_trips(tmp_path, repo_root):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "PySlowfast-R50-K400-8x8.yaml"))
    path = tmp_path / "dumped.yaml"
    path.write_text(cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(path))
    assert again == cfg


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        get_cfg().merge_from_file(str(path))
