"""The entry points' argument handling, config merging and process-group set-up (CPU, gloo)."""

import os
import socket
import subprocess
import sys

import pytest

from stmixer.config import get_cfg
from stmixer.engine.launch import build_parser

CONFIG = "config_files/PySlowfast-R50-K400-8x8.yaml"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", ["train_net.py", "test_net.py"])
def test_help(script, repo_root):
    result = _run([script, "--help"], repo_root)
    assert result.returncode == 0
    assert "--config-file" in result.stdout
    assert "torchrun" in result.stdout


def test_parser_accepts_both_local_rank_spellings():
    parser = build_parser("train")
    assert parser.parse_args(["--config-file", "f", "--local-rank=3"]).local_rank == 3
    assert parser.parse_args(["--config-file", "f", "--local_rank", "1"]).local_rank == 1
    args = parser.parse_args(["--config-file", "f", "--transfer", "--no-head", "--seed", "5", "OUTPUT_DIR", "x"])
    assert args.transfer and args.no_head and args.seed == 5 and args.opts == ["OUTPUT_DIR", "x"]


def test_single_process_writes_log_and_config(repo_root, tmp_path):
    out = tmp_path / "out"
    result = _run(["test_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out), "MODEL.WEIGHT", "m.pth"], repo_root)
    assert result.returncode == 0, result.stderr
    assert "Single process" in result.stdout
    log = (out / "log.txt").read_text()
    assert "PyTorch" in log and "CUDA available" in log
    saved = get_cfg()
    saved.merge_from_file(str(out / "config.yaml"))
    assert saved.MODEL.WEIGHT == "m.pth"
    assert saved.MODEL.BACKBONE.CONV_BODY == "PySlowfast-R50"


def test_bad_key_exits_with_clear_message(repo_root, tmp_path):
    result = _run(["train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(tmp_path), "SOLVER.BASE_LRR", "1"], repo_root)
    assert result.returncode == 2
    assert "unknown config key SOLVER.BASE_LRR" in result.stderr
    assert "SOLVER.BASE_LR" in result.stderr
    assert "Traceback" not in result.stderr


def _check_two_rank_logs(out):
    rank0 = (out / "log.txt").read_text()
    rank1 = (out / "log.txt.rank1").read_text()
    for text in (rank0, rank1):
        assert "Process group ready: world size 2, backend gloo" in text
        # The all-gather in set-up went through: both ranks list both processes.
        assert "0@" in text and "1@" in text
    assert (out / "config.yaml").exists()


def test_torchrun_two_processes(repo_root, tmp_path):
    out = tmp_path / "out"
    result = _run(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out)],
        repo_root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _check_two_rank_logs(out)


def test_torch_distributed_launch_two_processes(repo_root, tmp_path):
    out = tmp_path / "out"
    result = _run(
        ["-m", "torch.distributed.launch", "--nproc_per_node=2", "--master_port", str(_free_port()),
         "test_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out)],
        repo_root,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _check_two_rank_logs(out)
    assert "'local_rank': 1" in (out / "log.txt.rank1").read_text()
