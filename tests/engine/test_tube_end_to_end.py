"""train_net.py / test_net.py on synthetic UCF101-24-style data: frame-mAP and video-mAP, one and two processes.

Pipeline correctness only (a few iterations of the micro model); what a real tiny training
reaches is measured in benchmarks/README.md ("Synthetic UCF101-24").
"""

import json

import numpy as np
import pytest

from stmixer.data.synthetic import main as make_synthetic

from .conftest import free_port, micro_opts, run_python

CONFIG = "config_files/synthetic/tiny-ucf24.yaml"


@pytest.fixture(scope="module")
def ucf_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-ucf24")
    assert make_synthetic(["--format", "ucf24", "--out", str(root), "--videos", "6", "--seconds", "1",
                           "--size", "64", "96", "--workers", "1", "--val-fraction", "0.34"]) == 0
    return root


def test_train_then_test_on_one_and_two_processes(repo_root, ucf_dataset, tmp_path):
    train_out, one, two = tmp_path / "train", tmp_path / "one", tmp_path / "two"
    classes = ["MODEL.STM.ACTION_CLASSES", "4"]
    result = run_python(["train_net.py", "--config-file", CONFIG, "--skip-val",
                         *micro_opts(ucf_dataset, train_out), *classes], repo_root)
    log = (train_out / "log.txt").read_text()
    assert "frame-mAP@0.5:" in log and "video-mAP: @0.2" in log, result.stdout[-2000:]
    weight = str(train_out / "model_final.pth")
    run_python(["test_net.py", "--config-file", CONFIG, *micro_opts(ucf_dataset, one), *classes,
                "MODEL.WEIGHT", weight], repo_root)
    run_python(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
                "test_net.py", "--config-file", CONFIG, *micro_opts(ucf_dataset, two), *classes,
                "MODEL.WEIGHT", weight], repo_root)
    folder = "inference/ucf24"
    rows_one = (one / folder / "detections.csv").read_text().splitlines()
    rows_two = (two / folder / "detections.csv").read_text().splitlines()
    assert rows_one[0] == "video,frame,x1,y1,x2,y2,label,score" and len(rows_one) > 1
    # Same rows in the same (dataset index) order; batches of 2 and 4 clips differ in the last float bits.
    assert [r.split(",")[:2] for r in rows_one] == [r.split(",")[:2] for r in rows_two]
    numbers_one = np.array([[float(v) for v in r.split(",")[2:]] for r in rows_one[1:]])
    numbers_two = np.array([[float(v) for v in r.split(",")[2:]] for r in rows_two[1:]])
    np.testing.assert_allclose(numbers_one, numbers_two, atol=2e-3)
    metrics_one = json.loads((one / folder / "tube_map.json").read_text())
    metrics_two = json.loads((two / folder / "tube_map.json").read_text())
    assert set(metrics_one["video_mAP"]) == {"0.2", "0.5", "0.75", "0.5:0.95"}
    assert metrics_one["frame_mAP"] == pytest.approx(metrics_two["frame_mAP"], abs=1e-3)
    assert metrics_one["video_mAP"] == pytest.approx(metrics_two["video_mAP"], abs=1e-3)
    assert metrics_one["num_keyframes"] == metrics_two["num_keyframes"] == 2 * 25  # every frame of 2 test videos
    assert "ucf24 frame-mAP@0.5:" in (one / "log.txt").read_text()
    assert "Process group ready: world size 2" in (two / "log.txt").read_text()


def test_train_on_jhmdb_style_split_2(repo_root, tmp_path):
    """JHMDB-21 layout (PNG frames, 3 splits): train_net trains and evaluates split 2 in one process."""
    data = tmp_path / "jhmdb"
    assert make_synthetic(["--format", "jhmdb", "--out", str(data), "--videos", "4", "--seconds", "0.6",
                           "--size", "64", "96", "--workers", "1", "--val-fraction", "0.25"]) == 0
    out = tmp_path / "out"
    run_python(["train_net.py", "--config-file", "config_files/synthetic/tiny-jhmdb.yaml", "--skip-val",
                *micro_opts(data, out), "MODEL.STM.ACTION_CLASSES", "4", "TUBES.SPLIT", "2"], repo_root)
    metrics = json.loads((out / "inference" / "jhmdb" / "tube_map.json").read_text())
    assert metrics["num_keyframes"] == 18  # the one test video of split 2, every frame (0.6 s at 30 fps)
    assert "jhmdb frame-mAP@0.5:" in (out / "log.txt").read_text()
