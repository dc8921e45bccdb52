import logging
import os
import pathlib
import shutil

import numpy as np
import pytest

from stmixer.data import build_dataset
from stmixer.data.ava import build_keyframes, clip_frame_indices
from stmixer.data.formats import DataFormatError, VideoFrames, read_box_csv


def official_indices(center, num_frames, rate, length):
    """The official sampling, re-derived: range(c - L/2, c + L/2, rate) clamped, L = frames * rate."""
    half = num_frames * rate // 2
    return [min(max(i, 0), length - 1) for i in range(center - half, center + half, rate)]


@pytest.mark.parametrize(
    "center, frames, rate, length, expected",
    [
        (60, 8, 4, 200, [44, 48, 52, 56, 60, 64, 68, 72]),
        (60, 4, 16, 200, [28, 44, 60, 76]),
        (5, 4, 4, 200, [0, 1, 5, 9]),  # clamped at the start
        (100, 4, 8, 105, [84, 92, 100, 104]),  # clamped at the end
        (3, 4, 4, 6, [0, 0, 3, 5]),  # both ends
        (10, 3, 1, 50, [9, 10, 11]),  # odd span: the official code gives only 2 frames here
        (10, 1, 1, 50, [10]),  # ... and none here
    ],
)
def test_clip_frame_indices_hand_computed(center, frames, rate, length, expected):
    assert clip_frame_indices(center, frames, rate, length) == expected


@pytest.mark.parametrize("frames, rate", [(8, 4), (32, 2), (4, 16), (16, 4), (2, 3)])
def test_clip_frame_indices_match_official_for_even_spans(frames, rate):
    for center, length in [(60, 200), (10, 200), (190, 200), (60, 61)]:
        assert clip_frame_indices(center, frames, rate, length) == official_indices(center, frames, rate, length)


GT = """b,903,0.1,0.1,0.2,0.2,5,0
a,903,0.3,0.3,0.4,0.4,1,0
a,902,0.1,0.1,0.2,0.2,3,0
a,902,0.1,0.1,0.2,0.2,7,0
a,902,0.10,0.1,0.2,0.2,9,1
a,902,0.5,0.5,0.6,0.6,,2
a,904,0.1,0.1,0.2,0.2,2,0
a,901,0.1,0.1,0.2,0.2,2,0
c,902,0.1,0.1,0.2,0.2,2,0
a,902,0.1,0.1,0.2,0.2,3,0
"""


def test_build_keyframes_merges_labels_orders_and_excludes(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text(GT)
    videos = [VideoFrames("a", 200), VideoFrames("b", 200)]
    table, skipped = build_keyframes(videos, [read_box_csv(str(path))], num_classes=10, excluded={("a", 904)})
    # Order: videos in frame-list order, seconds ascending; (a, 904) excluded.
    assert list(zip(table.video_index.tolist(), table.seconds.tolist())) == [(0, 902), (0, 903), (1, 903)]
    np.testing.assert_allclose(table.boxes_of(0), [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6]])
    # Rows with the same coordinate text merge (3 and 7; the repeated 3 is kept, harmless in a
    # multi-hot); "0.10" is another text, hence another box (the official merge key).
    assert [ids.tolist() for ids in table.labels_of(0)] == [[3, 7, 3], [9], []]
    hot = table.multi_hot(0, 10)
    expected = np.zeros((3, 10), dtype=np.float32)
    expected[0, [2, 6]] = 1
    expected[1, 8] = 1
    np.testing.assert_array_equal(hot, expected)
    assert hot.dtype == np.float32
    assert [ids.tolist() for ids in table.labels_of(2)] == [[5]]
    assert skipped.outside_keyframe_range == 1
    assert skipped.unknown_video == {"c": 1}
    assert skipped.excluded_keyframes == 1


def test_build_keyframes_rejects_unknown_action_and_short_video(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_text("a,902,0.1,0.1,0.2,0.2,11,0\n")
    with pytest.raises(DataFormatError, match=r"gt.csv:1: action_id 11 is outside 1..10"):
        build_keyframes([VideoFrames("a", 200)], [read_box_csv(str(path))], num_classes=10)
    path.write_text("a,902,0.1,0.1,0.2,0.2,1,0\na,904,0.1,0.1,0.2,0.2,1,0\n")
    with pytest.raises(DataFormatError, match=r"gt.csv:2: keyframe a at 904 s is frame 120, .* only 100 frames"):
        build_keyframes([VideoFrames("a", 100)], [read_box_csv(str(path))], num_classes=10)


def test_dataset_sample_hand_computed(layout, make_cfg):
    root = layout()
    cfg = make_cfg(root, ["DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 8, "DATA.TEST_MIN_SCALES", [6],
                             "MODEL.STM.ACTION_CLASSES", 4])
    dataset = build_dataset(cfg, is_train=False)
    assert len(dataset) == 2
    first, last = dataset[0], dataset[1]
    (clip,) = first["videos"]
    assert clip.shape == (3, 4, 6, 10) and clip.dtype.is_floating_point
    # RGB output: channel 2 is blue, which holds the frame index; frames 44, 52, 60, 68 around frame 60.
    expected_blue = (np.array([44, 52, 60, 68], dtype=np.float32) / 255 - 0.45) / 0.225
    np.testing.assert_allclose(clip[2, :, 0, 0].numpy(), expected_blue, rtol=1e-6)
    np.testing.assert_allclose(clip[0].numpy(), (200 / 255 - 0.45) / 0.225, rtol=1e-6)
    # Keyframe 904 = frame 120: 104, 112, 120, 128 -> clamped to the last frame (124).
    blue = last["videos"][0][2, :, 0, 0].numpy() * 0.225 + 0.45
    np.testing.assert_allclose(blue * 255, [104, 112, 120, 124], atol=1e-3)
    # Box (0.1, 0.2, 0.5, 1.0) of a 10x6 frame -> (1, 1.2, 5, 6) clipped to y <= 5.
    np.testing.assert_allclose(first["boxes"].numpy(), [[1.0, 1.2, 5.0, 5.0]], rtol=1e-6)
    np.testing.assert_array_equal(first["labels"].numpy(), [[0, 0, 1, 0]])
    np.testing.assert_array_equal(first["whwh"].numpy(), [10, 6, 10, 6])
    assert first["metadata"] == {"video_id": "v", "timestamp": 902, "orig_size": (6, 10)}
    assert first["index"] == 0


def test_dataset_bgr_and_reverse_switches(layout, make_cfg):
    root = layout()
    opts = ["DATA.NUM_FRAMES", 2, "DATA.SAMPLING_RATE", 1, "DATA.TEST_MIN_SCALES", [6]]
    rgb = build_dataset(make_cfg(root, opts), False)[0]["videos"][0]
    bgr = build_dataset(make_cfg(root, opts + ["AVA.BGR", True]), False)[0]["videos"][0]
    both = build_dataset(make_cfg(root, opts + ["AVA.BGR", True, "DATA.REVERSE_INPUT_CHANNEL", True]), False)
    np.testing.assert_array_equal(bgr.numpy(), rgb.flip(0).numpy())
    np.testing.assert_array_equal(both[0]["videos"][0].numpy(), rgb.numpy())


def test_loader_names_missing_and_corrupt_frames(layout, make_cfg):
    from stmixer.data.frames import FrameReadError

    root = layout()
    cfg = make_cfg(root, ["DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 8, "DATA.TEST_MIN_SCALES", [6]])
    dataset = build_dataset(cfg, False)
    missing = root / "frames" / "v" / "v_000053.jpg"  # frame 52 of keyframe 902's clip
    os.remove(missing)
    with pytest.raises(FrameReadError, match="missing: .*v_000053.jpg"):
        dataset[0]
    corrupt = root / "frames" / "v" / "v_000113.jpg"  # frame 112 of keyframe 904's clip
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is no image")
    with pytest.raises(FrameReadError, match="truncated.*v_000113.jpg"):
        dataset[1]
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(FrameReadError, match="corrupt or not an image: .*v_000113.jpg"):
        dataset[1]


def test_loader_names_file_line_of_malformed_row(layout, make_cfg):
    root = layout(gt="v,902,0.1,0.2,0.5,1.0,3,0\nv,903,0.1,0.2\n")
    with pytest.raises(DataFormatError, match=r"ava_val_v2.2.csv:2: expected 7 comma-separated fields"):
        build_dataset(make_cfg(root), False)


def test_dataset_warns_once_naming_a_corrupt_frame(tiny_dataset, make_cfg, tmp_path, corrupt_jpeg):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset[0], root)
    dataset = build_dataset(make_cfg(root), True)
    corrupt = corrupt_jpeg(pathlib.Path(dataset.clip_frame_paths(0)[3]))
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("stmixer.data.ava")
    logger.addHandler(handler)
    try:
        for _ in range(3):  # the same clip again: no new warning
            sample = dataset[0]
    finally:
        logger.removeHandler(handler)
    assert sample["videos"][0].shape[1] == 8  # the clip is still read
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1 and str(corrupt) in messages[0] and "1 corrupt frame file so far" in messages[0]
