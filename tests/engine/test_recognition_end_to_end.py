"""The recognition task through train_net.py / test_net.py on CPU, sharded testing, and the
recognizer -> detector backbone transfer."""

import json

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.data.synthetic import main as make_synthetic
from stmixer.engine import runner
from stmixer.engine.checkpointer import Checkpointer
from stmixer.modeling import build_detector

from .conftest import TINY_CONFIG, free_port, micro_opts, run_python

RECOGNITION_CONFIG = "config_files/synthetic/tiny-recognition.yaml"


def recognition_opts(data_dir, output_dir):
    """The tiny SlowFast recognizer at width 4 on 4-frame (Slow: 1) 32-pixel clips; 1 clip x 3 crops."""
    return [
        "DATA.PATH_TO_DATA_DIR", str(data_dir), "OUTPUT_DIR", str(output_dir),
        "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "4", "DATA.TRAIN_MIN_SCALES", "[40]",
        "DATA.TEST_MIN_SCALES", "[40]", "RECOGNITION.TRAIN_CROP_SIZE", "32", "RECOGNITION.TEST_CROP_SIZE", "40",
        "RECOGNITION.TEST_NUM_CLIPS", "1", "RECOGNITION.TEST_NUM_CROPS", "3", "RESNET.WIDTH_PER_GROUP", "4",
        "DATALOADER.NUM_WORKERS", "1", "SOLVER.MAX_EPOCH", "6", "SOLVER.STEPS", "(4,)", "SOLVER.WARMUP_EPOCH", "1",
        "SOLVER.CHECKPOINT_PERIOD", "6", "SOLVER.VIDEOS_PER_BATCH", "4", "SOLVER.LOG_PERIOD", "5",
        "TEST.VIDEOS_PER_BATCH", "4",
    ]


@pytest.fixture(scope="module")
def recognition_data(tmp_path_factory):
    """24 one-second videos of 40 x 52 pixels: 19 train, 5 val (15 test views: 8 + 7 on two processes)."""
    root = tmp_path_factory.mktemp("recognition")
    make_synthetic(["--format", "recognition", "--out", str(root), "--videos", "24", "--seconds", "1",
                    "--size", "40", "52", "--workers", "1", "--val-fraction", "0.2"])
    return root


@pytest.fixture(scope="module")
def trained(repo_root, recognition_data, tmp_path_factory):
    """train_net.py: 30 iterations (5 per epoch), periodic evaluation off, final test on."""
    out = tmp_path_factory.mktemp("train")
    run_python(["train_net.py", "--config-file", RECOGNITION_CONFIG, "--skip-val",
                *recognition_opts(recognition_data, out)], repo_root)
    return out


def test_train_net_trains_and_reports_accuracy(trained):
    log = (trained / "log.txt").read_text()
    assert "Starting training from iteration 0 of 30" in log
    assert "top-1" in log and "mean-class accuracy" in log and "over 5 videos x 3 views" in log
    metrics = json.loads((trained / "inference" / "rawframes" / "recognition_metrics.json").read_text())
    assert set(metrics) >= {"top1_acc", "top5_acc", "mean_class_accuracy"} and metrics["num_videos"] == 5
    entries = [json.loads(line) for line in (trained / "metrics.json").read_text().splitlines()]
    losses = [e["loss_cls"] for e in entries if "loss_cls" in e]
    assert losses and all(np.isfinite(losses))
    assert any("eval/top1_acc" in e for e in entries)


def test_test_net_on_one_and_two_processes_agree(repo_root, recognition_data, trained, tmp_path):
    weight = str(trained / "model_final.pth")
    one, two = tmp_path / "one", tmp_path / "two"
    run_python(["test_net.py", "--config-file", RECOGNITION_CONFIG, *recognition_opts(recognition_data, one),
                "MODEL.WEIGHT", weight], repo_root)
    run_python(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                "test_net.py", "--config-file", RECOGNITION_CONFIG, *recognition_opts(recognition_data, two),
                "MODEL.WEIGHT", weight], repo_root)
    folder = "inference/rawframes"
    metrics = [json.loads((d / folder / "recognition_metrics.json").read_text()) for d in (one, two)]
    assert metrics[0] == metrics[1]
    scores = [np.load(d / folder / "video_scores.npz") for d in (one, two)]
    np.testing.assert_allclose(scores[0]["scores"], scores[1]["scores"], rtol=0, atol=1e-6)
    assert np.array_equal(scores[0]["labels"], scores[1]["labels"])
    assert "Process group ready: world size 2" in (two / "log.txt").read_text()


def test_recognizer_checkpoint_transfers_into_a_detector_backbone(repo_root, recognition_data, tmp_path):
    """A recognizer trained 2 steps, loaded into a tiny STMixer as --transfer --no-head does: backbone equal."""
    recognizer_out = tmp_path / "recognizer"
    run_python(["train_net.py", "--config-file", RECOGNITION_CONFIG, "--skip-val", "--skip-final-test",
                *recognition_opts(recognition_data, recognizer_out), "SOLVER.ITER_PER_EPOCH", "1",
                "SOLVER.MAX_EPOCH", "2", "SOLVER.STEPS", "(1,)", "SOLVER.CHECKPOINT_PERIOD", "2"], repo_root)
    weight = recognizer_out / "model_final.pth"
    recognizer_state = torch.load(weight, map_location="cpu", weights_only=True)["model"]
    assert any(k.startswith("head.projection.") for k in recognizer_state)

    recognizer_cfg = get_cfg()
    recognizer_cfg.merge_from_file(str(repo_root / RECOGNITION_CONFIG))
    recognizer_cfg.merge_from_list(recognition_opts(recognition_data, recognizer_out))
    cfg = get_cfg()  # the micro STMixer detector with the recognizer's backbone settings
    cfg.merge_from_file(str(repo_root / TINY_CONFIG))
    cfg.merge_from_list(micro_opts(recognition_data, tmp_path / "detector") + ["MODEL.WEIGHT", str(weight)])
    for node in ("RESNET", "SLOWFAST", "NONLOCAL"):
        cfg[node] = recognizer_cfg[node].clone()
    cfg.MODEL.BACKBONE = recognizer_cfg.MODEL.BACKBONE.clone()
    cfg.DATA.NUM_FRAMES = recognizer_cfg.DATA.NUM_FRAMES
    cfg.DATA.INPUT_CHANNEL_NUM = recognizer_cfg.DATA.INPUT_CHANNEL_NUM
    detector = build_detector(cfg)
    start = runner._start_state(cfg, detector, Checkpointer(str(tmp_path / "detector"), detector), 10,
                                transfer=True, no_head=True)
    assert start == 0
    backbone = {k: v for k, v in detector.state_dict().items() if k.startswith("backbone.")}
    assert backbone and all(torch.equal(v, recognizer_state[k]) for k, v in backbone.items()
                            if not k.endswith("num_batches_tracked"))


def test_a_detector_on_a_recognition_dataset_is_a_user_error(repo_root, recognition_data, tmp_path):
    result = run_python(["train_net.py", "--config-file", RECOGNITION_CONFIG,
                         *recognition_opts(recognition_data, tmp_path), "MODEL.META_ARCHITECTURE", "STMDetector",
                         "MODEL.STM.TEMPORAL_POINTS", "1"],
                        repo_root, check=False)
    assert result.returncode != 0
    assert "MODEL.META_ARCHITECTURE = 'STMDetector' is a detection model" in result.stderr
    assert "Traceback" not in result.stderr
