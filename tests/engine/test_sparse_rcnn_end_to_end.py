"""train_net.py / test_net.py / demo.py with the Sparse R-CNN action detector
(config_files/synthetic/tiny-sparse-rcnn.yaml) on synthetic data: training, periodic evaluation, test_net on the
final checkpoint, then demo.py on a short video. Pipeline correctness only (a few iterations of a tiny model)."""

import json

from stmixer.data.synthetic import main as make_synthetic, write_synthetic_video

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
    video = tmp_path / "clip.mp4"
    write_synthetic_video(str(video), seconds=2, size=(72, 96), fps=24, seed=1, render_short_side=64)
    result = run_python(["demo.py", "--config-file", str(out / "config.yaml"), "--input", str(video),
                         "--output", str(tmp_path / "labelled.mp4"), "--json", str(tmp_path / "labelled.jsonl"),
                         "MODEL.WEIGHT", str(out / "model_final.pth"), "MODEL.STM.PERSON_THRESHOLD", "0.0"], repo_root)
    assert "Annotated video written" in result.stdout + result.stderr
    records = [json.loads(line) for line in (tmp_path / "labelled.jsonl").read_text().splitlines()]
    assert records and any(r["persons"] for r in records)
