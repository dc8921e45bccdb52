"""The entry points' argument handling, config merging and process-group set-up (CPU, gloo)."""

import pytest

from stmixer.engine.launch import build_parser

from .conftest import run_python

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
