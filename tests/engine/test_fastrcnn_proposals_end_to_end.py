"""train_net.py with a two-stage detector (FastRCNN) on synthetic data whose person proposals come from the
generator's proposal pickles (PROPOSALS.TRAIN_FILE / TEST_FILE): training, then evaluation on the test
proposals, with the plain RoI head and with ACRN (the LFB heads' end-to-end run is in
tests/modeling/test_lfb.py). Pipeline correctness only (a few iterations of a tiny model)."""

import json

import pytest

from stmixer.data.synthetic import PROPOSAL_FILE, main as make_synthetic

from .conftest import run_python

CONFIG = "config_files/synthetic/tiny-fastrcnn.yaml"


@pytest.mark.parametrize("shared_head", ["", "ACRN"])
def test_train_and_evaluate_with_proposal_files(repo_root, tmp_path, shared_head):
    data, out = tmp_path / "syn", tmp_path / "out"
    assert make_synthetic(["--out", str(data), "--videos", "4", "--seconds", "2", "--size", "64", "80",
                           "--workers", "1", "--val-fraction", "0.25"]) == 0
    run_python(["train_net.py", "--config-file", CONFIG,
                "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(out),
                "DATA.TRAIN_MIN_SCALES", "[64]", "DATA.TEST_MIN_SCALES", "[64]", "DATALOADER.NUM_WORKERS", "0",
                "SOLVER.ITER_PER_EPOCH", "2", "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "()",
                "SOLVER.WARMUP_EPOCH", "0", "SOLVER.EVAL_AFTER", "0", "SOLVER.EVAL_PERIOD", "1",
                "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.VIDEOS_PER_BATCH", "2", "TEST.VIDEOS_PER_BATCH", "2",
                "PROPOSALS.TRAIN_FILE", PROPOSAL_FILE.format(split="train", ext="pkl"),
                "PROPOSALS.TEST_FILE", PROPOSAL_FILE.format(split="val", ext="pkl"),
                "PROPOSALS.DET_SCORE_THR", "0.7", "DATA.BOX_TRANSFORM", "mmaction2",
                "MODEL.ROI_HEAD.SHARED_HEAD", shared_head], repo_root)
    metrics = json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())
    assert metrics["num_keyframes"] >= 1 and 0.0 <= metrics["mAP"] <= 1.0
    assert sum(metrics["num_detections"].values()) > 0
    log = (out / "log.txt").read_text()
    assert "train proposals from" in log and "test proposals from" in log
