"""ST-ABN through train_net.py / test_net.py (TEST.SAVE_ATTENTION) and demo.py --attention on the
synthetic recognition dataset, on the CPU."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.data.synthetic import main as make_synthetic
from stmixer.engine.demo import main as demo_main
from stmixer.engine.recognition import attention_saver
from stmixer.errors import UserError
from stmixer.modeling import build_detector
from stmixer.modeling.stabn.visualize import attention_panel, jet, write_png

from .conftest import run_python

CONFIG = "config_files/stabn/tiny-synthetic-stabn.yaml"
FRAMES, CROP = 8, 48


def tiny_opts(data_dir, output_dir):
    """The config as it is (width-4 SlowOnly R18 + ST-ABN, 8 TSN segments, 48-pixel crops, 288 iterations of
    8 clips), tested on 3 crops per video (the multi-crop path)."""
    return ["DATA.PATH_TO_DATA_DIR", str(data_dir), "OUTPUT_DIR", str(output_dir), "RECOGNITION.TEST_NUM_CROPS", "3"]


def png_size(path):
    """(width, height) from a PNG's IHDR, after checking the signature and every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size = 8, None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        pos += 12 + length
    return size


@pytest.fixture(scope="module")
def stabn_data(tmp_path_factory):
    """The config's dataset: 240 two-second videos of 48 x 64 pixels, motions of 20-25 % of the short side;
    192 train, 48 val (12 per class)."""
    root = tmp_path_factory.mktemp("stabn-data")
    make_synthetic(["--format", "recognition", "--out", str(root), "--videos", "240", "--seconds", "2",
                    "--size", "48", "64", "--motion-amplitude", "0.2", "0.25", "--workers", "1"])
    return root


@pytest.fixture(scope="module")
def trained(repo_root, stabn_data, tmp_path_factory):
    """train_net.py with the tiny config (288 iterations), whose final test writes the attention maps to
    OUTPUT_DIR/attention."""
    out = tmp_path_factory.mktemp("stabn-train")
    run_python(["train_net.py", "--config-file", CONFIG, "--skip-val", *tiny_opts(stabn_data, out),
                "TEST.SAVE_ATTENTION", "attention"], repo_root)
    return out


def test_tiny_stabn_learns_the_motion_classes(trained):
    """Chance is 25 % (motion-only classes). Measured top-1 on the 48 val videos x 3 crops, train_net.py's seeds
    2 (the default, this test) .. 5: 1.00, 0.69, 0.71, 0.54; the bar, 0.45 (22 of 48 videos; by chance with
    probability ~1e-3), leaves room for another machine's floating-point path."""
    entries = [json.loads(line) for line in (trained / "metrics.json").read_text().splitlines()]
    assert any("loss_att" in e for e in entries) and any("loss_cls" in e for e in entries)
    metrics = json.loads((trained / "inference" / "rawframes" / "recognition_metrics.json").read_text())
    assert metrics["num_videos"] == 48 and metrics["views"] == 3
    assert metrics["top1_acc"] >= 0.45, metrics


def test_test_net_writes_attention_maps_of_every_view(trained, stabn_data):
    val = [line.split()[0] for line in (stabn_data / "val_list.txt").read_text().splitlines() if line.strip()]
    folder = trained / "attention"
    for video in val[:4]:
        for crop in range(3):
            stem = folder / f"{video}_clip0_crop{crop}"
            with np.load(stem.with_suffix(".npz")) as arrays:
                spatial, temporal, scores = arrays["spatial_attention"], arrays["temporal_attention"], arrays["scores"]
            assert spatial.shape == (FRAMES, CROP // 16, CROP // 16) and temporal.shape == (FRAMES,)
            assert ((spatial > 0) & (spatial < 1)).all() and ((temporal > 0) & (temporal < 1)).all()
            assert scores.shape == (4,) and abs(scores.sum() - 1) < 1e-5
            assert png_size(stem.with_suffix(".png")) == (FRAMES * CROP, CROP + CROP // 8)
    assert len(list(folder.glob("*.npz"))) == len(list(folder.glob("*.png"))) == 3 * len(val)


def test_demo_classifies_one_video_and_writes_its_attention_maps(repo_root, trained, stabn_data, tmp_path,
                                                                isolated_logger, monkeypatch):
    monkeypatch.chdir(repo_root)
    video = sorted((stabn_data / "rawframes").iterdir())[0]
    out_json, att = tmp_path / "classes.json", tmp_path / "att"
    demo_main(["--config-file", CONFIG, "--input", str(video), "--input-fps", "30", "--json", str(out_json),
               "--attention", str(att), "--labelmap", str(stabn_data / "classes.txt"), "--topk", "2", "--no-progress",
               *tiny_opts(stabn_data, tmp_path / "out"), "MODEL.WEIGHT", str(trained / "model_final.pth")])
    result = json.loads(out_json.read_text())
    assert result["views"] == 3 and len(result["classes"]) == 2
    names = (stabn_data / "classes.txt").read_text().split()
    assert all(c["name"] == names[c["id"]] for c in result["classes"])
    assert result["classes"][0]["score"] >= result["classes"][1]["score"]
    assert sorted(p.name for p in att.glob("*.npz")) == [f"{video.name}_clip0_crop{k}.npz" for k in range(3)]
    assert len(list(att.glob("*.png"))) == 3


def test_demo_output_video_with_a_recognizer_is_a_user_error(repo_root, trained, stabn_data, tmp_path, capsys,
                                                            isolated_logger, monkeypatch):
    monkeypatch.chdir(repo_root)
    video = sorted((stabn_data / "rawframes").iterdir())[0]
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--config-file", CONFIG, "--input", str(video), "--output", str(tmp_path / "o.mp4"),
                   *tiny_opts(stabn_data, tmp_path / "out"), "MODEL.WEIGHT", str(trained / "model_final.pth")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "the annotated video is for detectors" in err and "Traceback" not in err


def test_save_attention_with_a_head_without_attention_is_a_user_error(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Recognizer3D", "MODEL.RECOGNIZER.HEAD", "linear",
                         "MODEL.RECOGNIZER.NUM_CLASSES", "3", "MODEL.BACKBONE.CONV_BODY", "PySlowonly",
                         "MODEL.BACKBONE.PATHWAYS", "1", "DATA.INPUT_CHANNEL_NUM", "[3]", "RESNET.DEPTH", "18",
                         "RESNET.TRANS_FUNC", "basic_transform", "RESNET.WIDTH_PER_GROUP", "4",
                         "RESNET.NUM_BLOCK_TEMP_KERNEL", "[[2], [2], [2], [2]]",
                         "MODEL.BACKBONE.CHANNELS_LAST", "False",
                         "OUTPUT_DIR", str(tmp_path), "TEST.SAVE_ATTENTION", "att"])
    model = build_detector(cfg).eval()
    on_batch, handle = attention_saver(cfg, None, model)
    with torch.no_grad():
        scores = model(torch.randn(1, 3, 4, 32, 32))
    with pytest.raises(UserError, match="MODEL.RECOGNIZER.HEAD = 'linear' gives no attention maps"):
        on_batch({"indices": torch.tensor([0])}, scores)
    handle.remove()
    cfg.TEST.SAVE_ATTENTION = ""
    assert attention_saver(cfg, None, model) == (None, None)


def test_attention_panel_and_jet(tmp_path):
    """jet: dark blue at 0, green at 0.5, dark red at 1; the panel blends 0.6 frame + 0.4 jet(spatial) under a
    strip of jet(temporal) per frame."""
    assert jet(0.0).tolist() == [0, 0, 128] and jet(0.5).tolist() == [128, 255, 128]
    assert jet(1.0).tolist() == [128, 0, 0]
    frames = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    spatial = np.zeros((2, 2, 2))
    spatial[1] = 1.0
    panel = attention_panel(frames, spatial, np.array([0.0, 1.0]))
    assert panel.shape == (18, 32, 3)  # a 16 // 8 = 2-row strip above each 16 x 16 frame, frames side by side
    assert panel[0, 0].tolist() == [0, 0, 128] and panel[0, 16].tolist() == [128, 0, 0]
    assert panel[5, 3].tolist() == [60, 60, 111] and panel[5, 20].tolist() == [111, 60, 60]  # 0.6 x 100 + 0.4 x 128
    write_png(tmp_path / "p.png", panel)
    assert png_size(tmp_path / "p.png") == (32, 18)
