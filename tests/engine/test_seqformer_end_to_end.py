"""train_net.py with SeqFormer (MODEL.META_ARCHITECTURE "SeqFormer", config_files/synthetic/tiny-seqformer.yaml) on
synthetic data: training (loss terms of every decoder layer logged), checkpoint, evaluation (frame-mAP over every
query's detections), then demo.py with the trained weights. Pipeline correctness only (a few iterations)."""

import json

from stmixer.data.synthetic import main as make_synthetic, write_synthetic_video

from .conftest import run_python

CONFIG = "config_files/synthetic/tiny-seqformer.yaml"


def test_seqformer_trains_and_evaluates_on_synthetic_data(repo_root, tmp_path):
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
    assert "loss_ce_0" in log and "loss_giou" in log and "loss_ce_b" not in log
    assert (out / "model_final.pth").is_file()
    video = tmp_path / "clip.mp4"
    write_synthetic_video(str(video), seconds=2, size=(64, 80), fps=12, seed=1, render_short_side=64)
    result = run_python(["demo.py", "--config-file", str(out / "config.yaml"), "--input", str(video),
                         "--output", str(tmp_path / "labelled.mp4"), "--json", str(tmp_path / "labelled.jsonl"),
                         "--threshold", "0", "MODEL.WEIGHT", str(out / "model_final.pth"),
                         "DATA.TEST_MIN_SCALES", "[64]", "MODEL.STM.PERSON_THRESHOLD", "0"], repo_root)
    assert "Annotated video written" in result.stdout + result.stderr
    records = [json.loads(line) for line in (tmp_path / "labelled.jsonl").read_text().splitlines()]
    assert [r["time"] for r in records] == [0.0, 1.0]
    for record in records:  # SeqFormer's person score is a query's best action score (no actor switch)
        assert len(record["persons"]) == 4  # every query at thresholds 0
        for person in record["persons"]:
            assert len(person["box"]) == 4 and 0 <= person["score"] <= 1
