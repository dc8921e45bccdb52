"""The recognition data path: list files, frame sampling and crops (against mmaction2), the dataset."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.data.build import DatasetConfigError, build_data_loader, build_dataset
from stmixer.data.recognition import (
    VideoListError,
    centre_crop_offset,
    read_video_list,
    sample_frames,
    segment_centres,
    three_crop_offsets,
)
from stmixer.data.synthetic import RECOGNITION_CLASSES, generate_recognition_dataset
from stmixer.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "recognition" / "cases.json"


@pytest.fixture(scope="module")
def cases():
    return json.loads(FIXTURES.read_text())


class LegacyStream:
    """``rng.integers`` drawn from NumPy's legacy global stream, as mmaction2's ``np.random.randint``."""

    def integers(self, high, size=None):
        return np.random.randint(high, size=size)


@pytest.mark.mmaction2
def test_sample_frames_equal_mmaction2(cases):
    for case in cases["sample_frames"]:
        np.random.seed(case["seed"])
        inds = sample_frames(case["total_frames"], case["clip_len"], case["frame_interval"], case["num_clips"],
                             case["test_mode"], LegacyStream(), case["out_of_bound_opt"])
        assert inds.shape == (case["num_clips"], case["clip_len"])
        assert inds.reshape(-1).tolist() == case["frame_inds"], case


@pytest.mark.mmaction2
def test_crops_equal_mmaction2(cases):
    for case in cases["crops"]:
        h, w, s = case["height"], case["width"], case["crop"]
        y, x = centre_crop_offset(h, w, s)
        assert [x, y, x + s, y + s] == case["center_crop_bbox"]
        if "three_crop_bboxes" in case:  # one bbox per (crop, frame); the fixture has one frame
            assert [[x, y, x + s, y + s] for y, x in three_crop_offsets(h, w, s)] == case["three_crop_bboxes"]


def test_segment_centres_equal_mmaction2_for_single_frames():
    for n, segments in ((37, 8), (6, 8), (300, 25), (8, 8)):
        assert segment_centres(n, 1, 1, segments).tolist() == sample_frames(n, 1, 1, segments, True, None).tolist()
    # several frames per segment: MMAction 0.x's centre rule, tick = (n - len * step + 1) / N
    assert segment_centres(40, 2, 3, 4)[:, 0].tolist() == [int(35 / 8 + 35 / 4 * k) for k in range(4)]


def write(tmp_path, text, name="list.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_list_file_parses_dirs_with_spaces_and_skips_comments(tmp_path):
    path = write(tmp_path, "# comment\nabseiling/a b 300 0\n\n12345 47 173\n")
    videos = read_video_list(path, num_classes=174)
    assert [(v.frame_dir, v.num_frames, v.label) for v in videos] == [("abseiling/a b", 300, 0), ("12345", 47, 173)]


@pytest.mark.parametrize("line, expected", [
    ("video_only", "expected '<frame dir> <num frames> <label>'"),
    ("v 3x 1", "must be integers"),
    ("v 0 1", "at least 1"),
    ("v 10 4", "label 4 is outside 0..3"),
    ("v 10 -1", "label -1"),
])
def test_bad_list_line_names_file_and_line(tmp_path, line, expected):
    path = write(tmp_path, f"good 10 0\n{line}\n")
    with pytest.raises(VideoListError, match=expected) as info:
        read_video_list(path, num_classes=4)
    assert f"{path}:2:" in str(info.value) and isinstance(info.value, UserError)


@pytest.fixture(scope="module")
def recognition_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recognition")
    summary = generate_recognition_dataset(str(root), num_videos=8, seconds=0.5, size=(40, 52), seed=1, workers=1)
    return root, summary


def recognition_cfg(root, opts=()):
    cfg = get_cfg()
    repo = Path(__file__).resolve().parents[2]
    cfg.merge_from_file(str(repo / "config_files" / "synthetic" / "tiny-recognition.yaml"))
    cfg.merge_from_list(["DATA.PATH_TO_DATA_DIR", str(root), "DATALOADER.NUM_WORKERS", 0,
                         "DATA.TRAIN_MIN_SCALES", [40], "DATA.TEST_MIN_SCALES", [40],
                         "RECOGNITION.TRAIN_CROP_SIZE", 32, "RECOGNITION.TEST_CROP_SIZE", 40,
                         "MODEL.BACKBONE.PATHWAYS", 1, "DATA.INPUT_CHANNEL_NUM", [3], "DATA.NUM_FRAMES", 8,
                         "DATA.SAMPLING_RATE", 4, *opts])
    return cfg


def test_synthetic_lists_label_motion_classes(recognition_root):
    root, summary = recognition_root
    assert summary["num_classes"] == len(RECOGNITION_CLASSES) == 4
    videos = read_video_list(root / "val_list.txt", 4) + read_video_list(root / "train_list.txt", 4)
    assert len(videos) == 8 and {v.num_frames for v in videos} == {15}
    assert (root / "rawframes" / videos[0].frame_dir / "img_00015.jpg").is_file()
    assert not (root / "rawframes" / videos[0].frame_dir / "img_00016.jpg").exists()


def test_test_views_are_clips_times_crops(recognition_root):
    root, _ = recognition_root
    dataset = build_dataset(recognition_cfg(root), is_train=False)
    assert dataset.views == 2 * 3 and len(dataset) == 2 * 6  # 2 val videos
    sample = dataset[7]  # video 1, clip 0, crop 1
    assert sample["metadata"]["video_index"] == 1 and sample["metadata"]["view"] == 1
    assert sample["videos"][0].shape == (3, 8, 40, 40) and sample["labels"].tolist() == [dataset.videos[1].label]
    assert sample["boxes"].shape == (0, 4)
    left, right = dataset[6]["videos"][0], dataset[7]["videos"][0]
    assert not torch.equal(left, right)  # crops at the two ends of the long side


def test_segments_sampling_and_slowfast_pathways(recognition_root):
    root, _ = recognition_root
    cfg = recognition_cfg(root, ["RECOGNITION.SAMPLING", "segments", "RECOGNITION.NUM_SEGMENTS", 4,
                                 "RECOGNITION.TEST_NUM_CROPS", 1, "MODEL.BACKBONE.PATHWAYS", 2,
                                 "DATA.INPUT_CHANNEL_NUM", [3, 3], "SLOWFAST.ALPHA", 4])
    dataset = build_dataset(cfg, is_train=False)
    assert dataset.views == 1
    assert dataset.frame_indices(0, 0, None).tolist() == segment_centres(15, 2, 4, 4).reshape(-1).tolist()
    sample = dataset[0]
    assert [v.shape[1] for v in sample["videos"]] == [2, 8]
    train = build_dataset(cfg, is_train=True)
    inds = train.frame_indices(0, 0, np.random.default_rng(0))
    assert inds.shape == (8,)


def test_flip_is_disableable(recognition_root):
    root, _ = recognition_root
    flips = []
    for flag in (True, False):
        dataset = build_dataset(recognition_cfg(root, ["DATA.RANDOM_FLIP", flag]), is_train=True)
        flips.append(dataset.transform.flip_prob)
    assert flips == [0.5, 0.0]


def test_crop_larger_than_short_side_is_a_config_error(recognition_root):
    root, _ = recognition_root
    with pytest.raises(DatasetConfigError, match="RECOGNITION.TEST_CROP_SIZE"):
        build_dataset(recognition_cfg(root, ["RECOGNITION.TEST_CROP_SIZE", 48]), is_train=False)


def test_loader_batches_without_padding(recognition_root):
    root, _ = recognition_root
    cfg = recognition_cfg(root, ["SOLVER.VIDEOS_PER_BATCH", 2, "DATALOADER.SIZE_DIVISIBILITY", 32])
    batch = next(iter(build_data_loader(cfg, is_train=True, max_iter=1)))
    assert batch["videos"][0].shape == (2, 3, 8, 32, 32)
    assert [lab.tolist() for lab in batch["labels"]] == [[lab] for lab in batch["labels"][0].new_tensor(
        [build_dataset(cfg, True).videos[i].label for i in batch["indices"].tolist()]).tolist()]


def test_recognition_keys_with_closed_value_sets_are_validated():
    from stmixer.config import ConfigError, validate_config

    cfg = get_cfg()
    cfg.merge_from_list(["RECOGNITION.SAMPLING", "tsn", "RECOGNITION.TEST_NUM_CROPS", 2,
                         "RECOGNITION.OUT_OF_BOUND", "clamp", "MODEL.RECOGNIZER.NUM_CLASSES", 0])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    for key in ("RECOGNITION.SAMPLING", "RECOGNITION.TEST_NUM_CROPS", "RECOGNITION.OUT_OF_BOUND",
                "MODEL.RECOGNIZER.NUM_CLASSES"):
        assert key in str(info.value)


def test_data_check_reads_recognition_lists_and_finds_missing_frames(recognition_root, tmp_path):
    from stmixer.data.check import run_checks

    root, _ = recognition_root
    report = run_checks(recognition_cfg(root), ("train", "test"))
    assert report.num_errors == 0 and "train: 6 videos, 90 frames" in report.render()
    (tmp_path / "rawframes").symlink_to(root / "rawframes")
    (tmp_path / "train_list.txt").write_text((root / "train_list.txt").read_text().replace(" 15 ", " 16 ", 1))
    (tmp_path / "val_list.txt").write_text("broken line\n")
    report = run_checks(recognition_cfg(tmp_path), ("train", "test"))
    text = report.render()
    assert report.num_errors == 2 and "img_00016.jpg" in text and "val_list.txt:1:" in text
