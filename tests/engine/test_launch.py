"""The entry points' argument handling, config merging and process-group set-up (CPU, gloo)."""

import pytest
import torch

from stmixer.config import load_config
from stmixer.engine.launch import build_parser
from stmixer.modeling import build_detector

from .conftest import TINY_CONFIG, micro_opts, run_python

CONFIG = "config_files/PySlowfast-R50-K400-8x8.yaml"


@pytest.mark.parametrize("script", ["train_net.py", "test_net.py"])
def test_help(script, repo_root):
    result = run_python([script, "--help"], repo_root)
    assert result.returncode == 0
    assert "--config-file" in result.stdout
    assert "torchrun" in result.stdout


def test_parser_accepts_both_local_rank_spellings():
    parser = build_parser("train")
    assert parser.parse_args(["--config-file", "f", "--local-rank=3"]).local_rank == 3
    assert parser.parse_args(["--config-file", "f", "--local_rank", "1"]).local_rank == 1
    args = parser.parse_intermixed_args(["--config-file", "f", "--transfer", "OUTPUT_DIR", "x", "SOLVER.X", "-1",
                                         "--no-head", "--seed", "5"])
    assert args.transfer and args.no_head and args.seed == 5 and args.opts == ["OUTPUT_DIR", "x", "SOLVER.X", "-1"]


def test_bad_key_exits_with_clear_message(repo_root, tmp_path):
    result = run_python(["train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), "SOLVER.BASE_LRR", "1"], repo_root, check=False)
    assert result.returncode == 2
    assert "unknown config key SOLVER.BASE_LRR" in result.stderr
    assert "SOLVER.BASE_LR" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(autouse=True)
def _logger(isolated_logger):
    return isolated_logger


def _train_in_process(repo_root, opts):
    """train_net.main in this process; returns its exit status."""
    import train_net

    with pytest.raises(SystemExit) as caught:
        train_net.main(["--config-file", str(repo_root / TINY_CONFIG), "--skip-val", "--skip-final-test", *opts])
    return caught.value.code


def test_missing_data_folder_is_reported_once(repo_root, tmp_path, capfd):
    missing = tmp_path / "no_data"
    assert _train_in_process(repo_root, micro_opts(missing, tmp_path / "out")) == 2  # a config error
    out, err = capfd.readouterr()
    assert err.count("error: ") == 1
    assert (out + err).count(f"DATA.PATH_TO_DATA_DIR = '{missing}' does not exist") == 1
    assert "Traceback" not in out + err
    assert "Traceback" in (tmp_path / "out" / "log.txt").read_text()  # the traceback goes to the log file


def test_checkpoint_that_does_not_fit_is_reported_once(repo_root, tmp_path, capfd):
    opts = micro_opts(tmp_path / "no_data", tmp_path / "out")
    narrow = load_config(str(repo_root / TINY_CONFIG), [*opts, "MODEL.STM.HIDDEN_DIM", "16"])
    torch.save({"model": build_detector(narrow).state_dict()}, tmp_path / "narrow.pth")
    assert _train_in_process(repo_root, [*opts, "MODEL.WEIGHT", str(tmp_path / "narrow.pth")]) == 1
    out, err = capfd.readouterr()
    both = out + err
    assert both.count("the checkpoint does not fit the model") == 1
    assert both.count("shape mismatch") == 1 and both.count("lateral_convs.0.bias (file [16] vs model [32])") == 1
