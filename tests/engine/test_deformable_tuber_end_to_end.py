"""train_net.py / test_net.py with Deformable TubeR (config_files/synthetic/tiny-d2-tuber.yaml: the fork's D2 on a
random ir-CSN-50, shrunk; D3 and D4 by MODEL.TUBER.DEFORMABLE.VARIANT) on synthetic data: training, checkpoint,
evaluation, then test_net.py on the saved checkpoint. Pipeline correctness only (a few iterations)."""

import json

import pytest

from stmixer.data.synthetic import main as make_synthetic

from .conftest import run_python

CONFIG = "config_files/synthetic/tiny-d2-tuber.yaml"


@pytest.mark.parametrize("variant", ["D2", "D3", "D4"])
def test_deformable_tuber_trains_and_evaluates_on_synthetic_data(repo_root, tmp_path, variant):
    """Each of the fork's variants: train, checkpoint, evaluate, test_net on the checkpoint (same mAP)."""
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "80",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    common = ["DATA.PATH_TO_DATA_DIR", str(data), "DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]",
              "DATALOADER.NUM_WORKERS", "0", "TEST.VIDEOS_PER_BATCH", "2",
              "MODEL.TUBER.DEFORMABLE.VARIANT", variant]
    run_python(["train_net.py", "--config-file", CONFIG, *common, "OUTPUT_DIR", str(out),
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.EVAL_AFTER", "0",
                "SOLVER.EVAL_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2",
                "SOLVER.LOG_PERIOD", "1"], repo_root)
    metrics = json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert metrics["num_keyframes"] >= 1 and 0.0 <= metrics["mAP"] <= 1.0
    log = (out / "log.txt").read_text()
    assert "loss_ce_b_0" in log and "loss_giou" in log
    checkpoint = out / "model_final.pth"
    assert checkpoint.is_file()
    out2 = tmp_path / "test"
    run_python(["test_net.py", "--config-file", CONFIG, *common, "OUTPUT_DIR", str(out2),
                "MODEL.WEIGHT", str(checkpoint)], repo_root)
    again = json.loads((out2 / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert again["mAP"] == metrics["mAP"]
