"""train_net.py with TubeR (MODEL.META_ARCHITECTURE "TubeR", config_files/synthetic/tiny-tuber.yaml) on synthetic
data: training (loss terms of every decoder layer logged), checkpoint, evaluation (frame-mAP over every query's
detections). Pipeline correctness only (a few iterations)."""

import json

from stmixer.data.synthetic import main as make_synthetic

from .conftest import run_python

CONFIG = "config_files/synthetic/tiny-tuber.yaml"


def test_tuber_trains_and_evaluates_on_synthetic_data(repo_root, tmp_path):
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "80",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    common = ["DATA.PATH_TO_DATA_DIR", str(data), "DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]",
              "DATALOADER.NUM_WORKERS", "0", "TEST.VIDEOS_PER_BATCH", "2"]
    run_python(["train_net.py", "--config-file", CONFIG, *common, "OUTPUT_DIR", str(out),
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.EVAL_AFTER", "0",
                "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2",
                "SOLVER.LOG_PERIOD", "1"], repo_root)
    metrics = json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert metrics["num_keyframes"] >= 1 and 0.0 <= metrics["mAP"] <= 1.0
    log = (out / "log.txt").read_text()
    assert "loss_ce_b_0" in log and "loss_giou" in log
    assert (out / "model_final.pth").is_file()


def test_tuber_jhmdb_head_trains_and_evaluates_on_synthetic_jhmdb(repo_root, tmp_path):
    """MODEL.TUBER.HEAD "frame" (config_files/synthetic/tiny-tuber-jhmdb.yaml) on the synthetic JHMDB-21 layout:
    training (switch and softmax terms of every layer), then frame-mAP and video-mAP of the test video."""
    data, out = tmp_path / "jhmdb", tmp_path / "out"
    assert make_synthetic(["--format", "jhmdb", "--out", str(data), "--videos", "4", "--seconds", "0.6",
                           "--size", "64", "80", "--workers", "1", "--val-fraction", "0.25"]) == 0
    run_python(["train_net.py", "--config-file", "config_files/synthetic/tiny-tuber-jhmdb.yaml",
                "DATA.PATH_TO_DATA_DIR", str(data), "DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]",
                "DATALOADER.NUM_WORKERS", "0", "TEST.VIDEOS_PER_BATCH", "6", "OUTPUT_DIR", str(out),
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.EVAL_AFTER", "0",
                "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2",
                "SOLVER.LOG_PERIOD", "1"], repo_root)
    metrics = json.loads((out / "inference" / "jhmdb" / "tube_map.json").read_text())
    assert metrics["num_keyframes"] == 18 and 0.0 <= metrics["frame_mAP"] <= 1.0  # every frame of the test video
    assert set(metrics["video_mAP"]) == {"0.2", "0.5", "0.75", "0.5:0.95"}
    log = (out / "log.txt").read_text()
    assert "loss_ce_b_0" in log and "loss_giou" in log and "jhmdb frame-mAP@0.5:" in log
