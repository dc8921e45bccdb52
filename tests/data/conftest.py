"""Fixtures of the data tests: a tiny synthetic AVA-layout dataset and configs pointing at it."""

import os

import cv2
import numpy as np
import pytest

from stmixer.config import get_cfg
from stmixer.data.synthetic import CLASS_NAMES, generate_dataset

TINY = dict(num_videos=4, seconds=2, size=(64, 80), seed=3, workers=1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A generated synthetic dataset (3 train + 1 val videos, 2 keyframes each, 64x80 frames): (root, summary)."""
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_dataset(str(root), **TINY)
    return root, summary


def dataset_cfg(root, opts=()):
    """A config reading ``root`` with small clips (8 frames at rate 4, short side 64), 2-clip batches,
    then the ``opts`` overrides (KEY, VALUE, ...)."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "DATA.PATH_TO_DATA_DIR", str(root),
        "DATA.NUM_FRAMES", 8,
        "DATA.SAMPLING_RATE", 4,
        "DATA.TRAIN_MIN_SCALES", [64],
        "DATA.TEST_MIN_SCALES", [64],
        "MODEL.STM.ACTION_CLASSES", len(CLASS_NAMES),
        "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.VIDEOS_PER_BATCH", 2,
        "TEST.VIDEOS_PER_BATCH", 2,
    ])
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture
def make_cfg():
    """``make_cfg(root, opts=())``: see ``dataset_cfg``."""
    return dataset_cfg


@pytest.fixture
def tiny_cfg(tiny_dataset):
    """Config of ``tiny_dataset`` (mutable copy)."""
    return dataset_cfg(tiny_dataset[0])


def make_layout(root, num_frames=125, height=6, width=10, gt="v,902,0.1,0.2,0.5,1.0,3,0\nv,904,0.1,0.2,0.5,1.0,1,0\n"):
    """A one-video AVA layout under ``root`` whose frame f is uniform BGR (f, 100, 200), stored
    losslessly (PNG bytes in .jpg files); train and val both list it and use ``gt`` as boxes."""
    os.makedirs(root / "frames" / "v")
    for f in range(num_frames):
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[:] = (f, 100, 200)
        ok, data = cv2.imencode(".png", image)
        (root / "frames" / "v" / f"v_{f + 1:06d}.jpg").write_bytes(data.tobytes())
    os.makedirs(root / "frame_lists")
    rows = "".join(f'v 0 {f} v/v_{f + 1:06d}.jpg ""\n' for f in range(num_frames))
    for split in ("train", "val"):
        (root / "frame_lists" / f"{split}.csv").write_text("original_vido_id video_idx frame_idx path labels\n" + rows)
    ann = root / "annotations_v2.2"
    os.makedirs(ann)
    for split in ("train", "val"):
        (ann / f"ava_{split}_v2.2.csv").write_text(gt)
    (ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text('item {\n  name: "x"\n  id: 1\n}\n')
    (ann / "ava_val_excluded_timestamps_v2.2.csv").write_text("")
    return root


@pytest.fixture
def layout(tmp_path):
    """``layout(**kwargs)``: a hand-made one-video dataset in ``tmp_path`` (see ``make_layout``)."""
    return lambda **kwargs: make_layout(tmp_path, **kwargs)


def corrupt_jpeg_middle(path, seed=0):
    """Overwrite the middle third of the JPEG file ``path`` with random bytes, keeping its start
    (SOI, headers) and its end-of-image marker: OpenCV still decodes it, into partly garbage pixels."""
    data = bytearray(path.read_bytes())
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    start, stop = len(data) // 3, 2 * len(data) // 3
    data[start:stop] = np.random.default_rng(seed).integers(0, 256, stop - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    assert cv2.imread(str(path)) is not None  # the silent case
    return path


@pytest.fixture
def corrupt_jpeg():
    """``corrupt_jpeg(path)``: see ``corrupt_jpeg_middle``."""
    return corrupt_jpeg_middle
