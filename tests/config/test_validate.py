"""validate_config: impossible values, YAML booleans for strings, non-UTF-8 files, the default backbone."""

import pathlib
import subprocess
import sys

import pytest

from stmixer.config import ConfigError, get_cfg, load_config, validate_config
from stmixer.errors import UserError

# Every config file the project ships (official copies, synthetic ones, each family's) must validate.
_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "config_files"
# config_files/mmaction2/ use keys of several issue-#15 branches: tests/config/test_mmaction2_configs.py loads them.
CONFIG_FILES = sorted(str(p.relative_to(_CONFIG_DIR)) for p in _CONFIG_DIR.rglob("*.yaml") if p.parent.name != "mmaction2")


def test_default_config_validates_and_names_a_registered_backbone():
    from stmixer.modeling import BACKBONE_REGISTRY

    cfg = get_cfg()
    validate_config(cfg)
    assert cfg.MODEL.BACKBONE.CONV_BODY in BACKBONE_REGISTRY


def test_default_config_builds_a_detector_on_the_meta_device():
    import torch

    from stmixer.modeling import build_detector

    with torch.device("meta"):
        model = build_detector(get_cfg())
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_shipped_configs_validate(name, repo_root):
    cfg = load_config(str(repo_root / "config_files" / name))
    assert cfg.is_frozen()


def test_every_bad_key_is_named_at_once_with_its_source(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SOLVER:\n  ITER_PER_EPOCH: -1\n  MAX_EPOCH: -1\n")
    opts = ["DATA.NUM_FRAMES", "0", "MODEL.STM.HIDDEN_DIM", "100", "SOLVER.AMP", "fp8"]
    with pytest.raises(ConfigError) as info:
        load_config(str(path), opts)
    message = str(info.value)
    assert message.startswith("6 invalid config values:")
    assert f"SOLVER.ITER_PER_EPOCH = -1: expected a number >= 0 (set at {path}:2)" in message
    assert f"SOLVER.MAX_EPOCH = -1: expected a number > 0 (set at {path}:3)" in message
    assert "DATA.NUM_FRAMES = 0: expected a number > 0 (set on the command line)" in message
    assert "MODEL.STM.HIDDEN_DIM = 100: expected a multiple of MODEL.STM.NUM_HEADS = 8" in message
    assert "MODEL.STM.HIDDEN_DIM = 100: expected a multiple of 8" in message
    assert "SOLVER.AMP = 'fp8': expected one of 'off', 'bf16', 'fp16'" in message


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["MODEL.STM.N_GROUPS", "3"], "MODEL.STM.HIDDEN_DIM = 256: expected a multiple of MODEL.STM.N_GROUPS = 3"),
        (["MODEL.STM.TEMPORAL_POINTS", "8"], "MODEL.STM.TEMPORAL_POINTS = 8: expected 4"),
        (["MODEL.STM.PERSON_THRESHOLD", "1.5"], "PERSON_THRESHOLD = 1.5: expected a number in [0, 1]"),
        (["SOLVER.STEPS", "(8, 5)"], "SOLVER.STEPS = (8, 5): expected non-decreasing"),
        (["SOLVER.NONFINITE_LOSS", "ignore"], "SOLVER.NONFINITE_LOSS = 'ignore'"),
        (["TEST.EVAL_PROTOCOL", "voc"], "TEST.EVAL_PROTOCOL = 'voc'"),
        (["MODEL.STM.SAMPLER", "fast"], "MODEL.STM.SAMPLER = 'fast'"),
        (["MODEL.STM.ACTIVATION", "tanh"], "MODEL.STM.ACTIVATION = 'tanh'"),
        (["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR = -0.1: expected a number > 0"),
        (["SOLVER.CLIP_GRAD_NORM", "-1.0"], "SOLVER.CLIP_GRAD_NORM = -1.0: expected a number >= 0"),
        (["DATA.STD", "[0.2, 0.0, 0.2]"], "DATA.STD = [0.2, 0.0, 0.2]: expected standard deviations > 0"),
        (["MODEL.BACKBONE.PATHWAYS", "2"], "DATA.INPUT_CHANNEL_NUM = [3]: expected 2 entries"),
        (["MODEL.BACKBONE.CONV_BODY", "MAE-ViT-B", "DATA.NUM_FRAMES", "5"],
         "DATA.NUM_FRAMES = 5: expected a multiple of ViT.TUBELET_SIZE = 2"),
    ],
)
def test_impossible_values(opts, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("", opts)
    assert fragment in str(info.value)


def test_slowfast_clip_without_slow_frames(repo_root):
    with pytest.raises(ConfigError, match=r"DATA.NUM_FRAMES = 2: expected at least SLOWFAST.ALPHA = 4 frames"):
        load_config(str(repo_root / "config_files" / "PySlowfast-R50-K400-8x8.yaml"), ["DATA.NUM_FRAMES", "2"])


def test_unknown_conv_body_names_key_and_registered_names():
    from stmixer.modeling import build_detector

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.CONV_BODY = "Slowfast-Resnet50"
    with pytest.raises(ConfigError, match=r"MODEL.BACKBONE.CONV_BODY = 'Slowfast-Resnet50' is not a known backbone; "
                                          r"expected one of: CSN-152, CSN-50, EVAD-ViT-B, EVAD-ViT-L, MAE-ViT-B, MAE-ViT-L, "
                                          r"PySlowfast-R101, PySlowfast-R50, PySlowonly"):
        build_detector(cfg)


@pytest.mark.parametrize("word", ["off", "no", "false", "On"])
def test_yaml_boolean_for_a_string_key_says_to_quote_it(tmp_path, word):
    path = tmp_path / "amp.yaml"
    path.write_text(f"SOLVER:\n  BASE_LR: 0.1\n  AMP: {word}\n")
    with pytest.raises(ConfigError) as info:
        get_cfg().merge_from_file(str(path))
    assert str(info.value) == (
        f"{path}:3: config key SOLVER.AMP expects a string, but YAML reads the unquoted {word} as the boolean "
        f"{word.lower() in ('on', 'yes', 'true')}; quote it: AMP: \"{word}\""
    )


def test_quoted_off_is_accepted(tmp_path):
    path = tmp_path / "amp.yaml"
    path.write_text('SOLVER:\n  AMP: "off"\n')
    assert load_config(str(path)).SOLVER.AMP == "off"


def test_non_utf8_config_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# config\nOUTPUT_DIR: \"caf\u00e9\"\n".encode("latin-1"))
    with pytest.raises(UserError, match=rf"^{path}:2: not UTF-8 text"):
        get_cfg().merge_from_file(str(path))


def test_command_line_reports_one_line_per_bad_key(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "stmixer.config", "SOLVER.ITER_PER_EPOCH", "-1", "SOLVER.MAX_EPOCH", "-1"],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "error: 2 invalid config values:",
        "  SOLVER.MAX_EPOCH = -1: expected a number > 0 (set on the command line)",
        "  SOLVER.ITER_PER_EPOCH = -1: expected a number >= 0 (set on the command line)",
    ]
