"""mmaction2's training crop (``DATA.TRAIN_CROP_SIZE``) and Slow-pathway frames (``DATA.SLOW_PATHWAY_FRAMES``)."""

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.data.build import build_transform
from stmixer.data.transforms import (
    ClipTransform,
    crop_boxes,
    crop_frames,
    pathway_frame_indices,
    random_crop_offsets,
    resize_frames,
    resized_size,
    slow_pathway_indices,
)


def test_crop_offsets_exclude_the_last_position_as_mmaction2():
    """numpy randint(0, H - size) never returns H - size: the last row/column is never reached."""
    rng = np.random.default_rng(0)
    seen = {random_crop_offsets(10, 13, 8, rng) for _ in range(400)}
    assert {y for y, _ in seen} == {0, 1} and {x for _, x in seen} == set(range(5))
    assert random_crop_offsets(8, 20, 8, rng)[0] == 0  # the side equals the crop: offset 0, no draw
    with pytest.raises(ValueError, match="TRAIN_CROP_SIZE"):
        random_crop_offsets(7, 20, 8, rng)


def test_crop_boxes_shift_and_clip():
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 4.0, 4.0], [50.0, 40.0, 90.0, 60.0]], dtype=np.float32)
    out = crop_boxes(boxes, y=3, x=8, size=32)
    np.testing.assert_array_equal(out, [[2, 2, 22, 22], [0, 0, 0, 1], [31, 31, 31, 31]])
    assert out.dtype == np.float32


def _frames(height, width, count=3):
    """Frames whose pixel (y, x) of frame t encodes y, x and t."""
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(y + t) % 256, x % 256, (y * 7 + x * 3 + t) % 256], axis=-1).astype(np.uint8)
            for t in range(count)]


def test_clip_transform_crops_frames_and_boxes_together():
    frames = _frames(90, 160)
    boxes = np.array([[0.1, 0.2, 0.6, 0.9], [0.7, 0.0, 1.0, 0.3]], dtype=np.float32)
    transform = ClipTransform([72], 1333, [0.0] * 3, [1.0] * 3, train=True, crop_size=64, reference=True)
    pixels, out_boxes = transform(frames, boxes, np.random.default_rng(5))
    # Replay: one short side (no draw), the crop's two draws, no flip.
    y, x = random_crop_offsets(72, 128, 64, np.random.default_rng(5))
    height, width = resized_size(90, 160, 72, 1333)
    assert (height, width) == (72, 128)
    resized = resize_frames(frames, height, width)
    expected = torch.from_numpy(np.stack(crop_frames(resized, y, x, 64), axis=1)).float()  # [H, T, W, C] -> below
    expected = expected.permute(3, 1, 0, 2)[[2, 1, 0]] / 255.0  # RGB channels of the BGR frames, [3, T, H, W]
    clip = pixels.to_tensor()
    assert clip.shape == (3, 3, 64, 64)
    torch.testing.assert_close(clip, expected)
    scale = np.float32(72 / 90)
    expected_boxes = np.clip(boxes * np.array([160, 90, 160, 90], np.float32) * scale - [x, y, x, y], 0, 63)
    np.testing.assert_allclose(out_boxes, expected_boxes, rtol=0, atol=1e-4)


def test_crop_is_training_only_and_configured_by_data_key():
    cfg = get_cfg()
    cfg.merge_from_list(["DATA.TRAIN_CROP_SIZE", 256, "DATA.TRAIN_MIN_SCALES", [256, 320],
                         "DATA.TRAIN_SCALE_SAMPLING", "range"])
    assert build_transform(cfg, is_train=True).crop_size == 256
    assert build_transform(cfg, is_train=False).crop_size == 0
    frames = _frames(120, 200, count=1)
    train = build_transform(cfg, is_train=True)
    for seed in range(4):
        pixels, out = train(frames, np.array([[0.0, 0.0, 1.0, 1.0]], np.float32), np.random.default_rng(seed))
        assert pixels.shape == (3, 1, 256, 256)
        assert out.min() >= 0 and out.max() <= 255
    assert build_transform(get_cfg(), is_train=True).crop_size == 0


def test_slow_pathway_stride_is_mmaction2_nearest_resample():
    assert slow_pathway_indices(32, 4, "stride").tolist() == list(range(0, 32, 4))
    assert slow_pathway_indices(32, 8, "stride").tolist() == [0, 8, 16, 24]
    assert slow_pathway_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]  # PySlowFast default
    # mmaction2's ResNet3dSlowFast: nearest interpolation by 1 / resample_rate picks these frames.
    clip = torch.arange(32, dtype=torch.float64).view(1, 1, 32, 1, 1)
    picked = torch.nn.functional.interpolate(clip, mode="nearest", scale_factor=(1.0 / 4, 1.0, 1.0))
    assert picked.flatten().long().tolist() == slow_pathway_indices(32, 4, "stride").tolist()
    assert pathway_frame_indices(16, 2, 4, "stride") == [[0, 4, 8, 12], None]
    with pytest.raises(ValueError, match="SLOW_PATHWAY_FRAMES"):
        slow_pathway_indices(32, 4, "nearest")
