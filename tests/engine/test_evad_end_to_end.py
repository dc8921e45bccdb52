"""train_net.py, test_net.py and demo.py with the EVAD detector (config_files/synthetic/tiny-evad.yaml) on
synthetic data: a few training iterations with token dropout active, periodic evaluation, test_net on the saved
weights, demo.py on an odd-size video. Pipeline correctness only (a tiny model, a few iterations)."""

import json

import pytest

from stmixer.data.synthetic import main as make_synthetic, write_synthetic_video

from .conftest import free_port, run_python

pytestmark = pytest.mark.evad
CONFIG = "config_files/synthetic/tiny-evad.yaml"


def test_evad_trains_and_evaluates(repo_root, tmp_path):
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "96",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    common = ["DATA.PATH_TO_DATA_DIR", str(data), "DATALOADER.NUM_WORKERS", "0", "TEST.VIDEOS_PER_BATCH", "2"]
    run_python(["train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out), *common,
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "()",
                "SOLVER.WARMUP_EPOCH", "0", "SOLVER.EVAL_AFTER", "0", "SOLVER.EVAL_PERIOD", "1",
                "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2"], repo_root)
    metrics = json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert metrics["num_keyframes"] >= 1 and 0.0 <= metrics["mAP"] <= 1.0
    assert sum(metrics["num_detections"].values()) > 0
    log = (out / "log.txt").read_text()
    assert "loss_bce" in log and "loss_giou_0" in log
    weights = sorted(out.glob("**/model_final*.pth")) or sorted(out.glob("**/*.pth"))
    assert weights, sorted(p.name for p in out.rglob("*"))
    test_out = tmp_path / "test"
    run_python(["test_net.py", "--config-file", CONFIG, "MODEL.WEIGHT", str(weights[-1]), "OUTPUT_DIR",
                str(test_out), *common], repo_root)
    again = json.loads((test_out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert again["mAP"] == pytest.approx(metrics["mAP"])
    video = tmp_path / "clip.mp4"
    write_synthetic_video(str(video), seconds=3, size=(203, 360), fps=24, seed=4, render_short_side=64)
    result = run_python(["demo.py", "--config-file", CONFIG, "--input", str(video), "--output",
                         str(tmp_path / "labelled.mp4"), "--json", str(tmp_path / "labelled.jsonl"),
                         "MODEL.WEIGHT", str(weights[-1])], repo_root)
    assert "Annotated video written" in result.stdout + result.stderr
    records = [json.loads(line) for line in (tmp_path / "labelled.jsonl").read_text().splitlines()]
    assert [r["time"] for r in records] == [0.0, 1.0, 2.0]


def test_evad_trains_with_torchrun_on_two_processes(repo_root, tmp_path):
    """DDP over 2 processes (gloo): every EVAD parameter takes part in each step (no unused-parameter error),
    the person detector's box count is averaged over the processes."""
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "96",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                "train_net.py", "--config-file", CONFIG, "--skip-val", "--skip-final-test",
                "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0",
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "()",
                "SOLVER.WARMUP_EPOCH", "0", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2",
                "SOLVER.LOG_PERIOD", "1"], repo_root)
    log = (out / "log.txt").read_text()
    assert "Process group ready: world size 2, backend gloo" in log
    assert (out / "model_final.pth").exists()
