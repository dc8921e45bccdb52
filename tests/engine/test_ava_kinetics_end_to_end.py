"""train_net.py on synthetic AVA-Kinetics data: the evaluation writes frame-mAP overall and per part.

Pipeline correctness only (a few iterations of the micro model)."""

import json

from stmixer.data.synthetic import main as make_synthetic

from .conftest import micro_opts, run_python


def test_train_and_evaluate_ava_kinetics(repo_root, tmp_path):
    data, out = tmp_path / "avak", tmp_path / "out"
    assert make_synthetic(["--format", "ava_kinetics", "--out", str(data), "--videos", "3", "--kinetics-clips", "3",
                           "--seconds", "1", "--size", "64", "96", "--workers", "1", "--val-fraction", "0.34"]) == 0
    run_python(["train_net.py", "--config-file", "config_files/synthetic/tiny-slowonly.yaml", "--skip-val",
                *micro_opts(data, out), "DATA.DATASETS", "['ava_kinetics']", "SOLVER.MAX_EPOCH", "1",
                "SOLVER.STEPS", "()", "SOLVER.WARMUP_EPOCH", "0"], repo_root)
    metrics = json.loads((out / "inference" / "ava_kinetics" / "frame_map.json").read_text())
    assert set(metrics["parts"]) == {"ava", "kinetics"}
    assert metrics["num_keyframes"] == 2  # one val video (1 keyframe) + one val clip (1 keyframe)
    for part in metrics["parts"].values():
        assert sum(part["num_gt"].values()) > 0 and 0.0 <= part["mAP"] <= 1.0
    assert "frame-mAP per part: ava" in (out / "log.txt").read_text()
