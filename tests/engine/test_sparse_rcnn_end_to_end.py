"""train_net.py / test_net.py with the Sparse R-CNN action detector (config_files/synthetic/tiny-sparse-rcnn.yaml)
on synthetic data: training, periodic evaluation, then test_net on the final checkpoint. Pipeline correctness
only (a few iterations of a tiny model)."""

import json

from stmixer.data.synthetic import main as make_synthetic

from .conftest import run_python

CONFIG = "config_files/synthetic/tiny-sparse-rcnn.yaml"


def test_train_and_evaluate_sparse_rcnn(repo_root, tmp_path):
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "80",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    common = ["DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out), "DATA.TRAIN_MIN_SCALES", "[64]",
              "DATA.TEST_MIN_SCALES", "[64]", "DATALOADER.NUM_WORKERS", "0", "TEST.VIDEOS_PER_BATCH", "2"]
    run_python(["train_net.py", "--config-file", CONFIG, *common,
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "()",
                "SOLVER.WARMUP_EPOCH", "0", "SOLVER.EVAL_AFTER", "0", "SOLVER.EVAL_PERIOD", "1",
                "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2"], repo_root)
    metrics = json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert metrics["num_keyframes"] >= 1 and 0.0 <= metrics["mAP"] <= 1.0
    # every kept query is a detection: 8 per clip (DETECTIONS_PER_CLIP)
    assert sum(metrics["num_detections"].values()) > 0
    log = (out / "log.txt").read_text()
    assert "loss_ce_0" in log and "loss_giou" in log
    test_out = tmp_path / "test"
    run_python(["test_net.py", "--config-file", CONFIG, *[v if v != str(out) else str(test_out) for v in common],
                "MODEL.WEIGHT", str(out / "model_final.pth")], repo_root)
    again = json.loads((test_out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert again["mAP"] == metrics["mAP"]
