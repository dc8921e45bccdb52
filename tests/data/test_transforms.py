import numpy as np
import pytest
import torch

from stmixer.data.transforms import (
    BGR_FROM_BGR,
    RGB_FROM_BGR,
    ClipPixels,
    ClipTransform,
    boxes_to_pixels,
    choose_short_side,
    color_jitter,
    flip_boxes,
    flip_frames,
    frames_to_tensor,
    frames_to_tensor_reference,
    normalization_lut,
    pathway_frame_indices,
    pca_lighting_shift,
    resized_size,
    slow_pathway_indices,
)


@pytest.mark.parametrize(
    "size, short, cap, expected",
    [
        ((360, 640), 256, 1333, (256, 455)),  # long side int(640 / 360 * 256 + 0.5)
        ((640, 360), 256, 1333, (455, 256)),
        ((300, 300), 256, 1333, (256, 256)),
        ((320, 569), 320, 1333, (320, 569)),  # already at size
        ((100, 1000), 256, 1333, (133, 1333)),  # long side capped, short side follows
    ],
)
def test_resized_size_hand_computed(size, short, cap, expected):
    assert resized_size(*size, short, cap) == expected


def test_short_side_choice_and_range_bounds():
    rng = np.random.default_rng(0)
    chosen = {choose_short_side([256, 320], "choice", rng) for _ in range(200)}
    assert chosen == {256, 320}
    drawn = [choose_short_side([320, 256], "range", rng) for _ in range(2000)]
    assert min(drawn) == 256 and max(drawn) == 320 and len(set(drawn)) > 50
    with pytest.raises(ValueError, match="unknown short-side sampling mode"):
        choose_short_side([256], "uniform", rng)


@pytest.mark.parametrize("mode, allowed", [("choice", {256, 320}), ("range", set(range(256, 321)))])
def test_training_clip_sizes_stay_within_jitter_bounds(mode, allowed):
    frames = [np.zeros((360, 640, 3), np.uint8)] * 2
    transform = ClipTransform([256, 320], 1333, [0.45] * 3, [0.225] * 3, train=True, scale_mode=mode, flip_prob=0.5)
    rng = np.random.default_rng(1)
    for _ in range(20):
        pixels, boxes = transform(frames, np.array([[0.0, 0.0, 1.0, 1.0]], np.float32), rng)
        height, width = pixels.shape[-2:]
        assert height in allowed and width == int(640 / 360 * height + 0.5)
        # The official box scale (short-side ratio on both axes) is within half a pixel of the image's.
        np.testing.assert_allclose(boxes[0], [0, 0, width - 1, height - 1], atol=0.5)


def test_flip_of_boxes_and_frames_hand_computed():
    np.testing.assert_array_equal(flip_boxes(np.array([[1.0, 2.0, 4.0, 5.0]]), 10), [[5.0, 2.0, 8.0, 5.0]])
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(flip_frames([frame])[0], frame[:, ::-1])


def test_boxes_to_pixels_clips_to_last_pixel():
    np.testing.assert_allclose(
        boxes_to_pixels(np.array([[-0.1, 0.25, 0.5, 1.0]]), height=4, width=10), [[0.0, 1.0, 5.0, 3.0]]
    )


def test_test_time_scale_and_forced_flip_hand_computed():
    frame = np.zeros((2, 4, 3), np.uint8)
    frame[:, :, 0] = [[10, 20, 30, 40]] * 2  # blue columns
    transform = ClipTransform([2], 1333, [0.0] * 3, [1.0] * 3, train=False, flip_prob=1.0)
    pixels, boxes = transform([frame], np.array([[0.0, 0.0, 0.5, 1.0]], np.float32), np.random.default_rng(0))
    clip = pixels.to_tensor()
    # (0, 0, 2, 2) in pixels, clipped to (0, 0, 2, 1), flipped in a 4-wide frame: x -> 3 - x.
    np.testing.assert_allclose(boxes, [[1.0, 0.0, 3.0, 1.0]])
    np.testing.assert_allclose(clip[2, 0, 0].numpy() * 255, [40, 30, 20, 10], rtol=1e-6)


def test_boxes_follow_short_side_scaling():
    frames = [np.zeros((360, 640, 3), np.uint8)]
    transform = ClipTransform([256], 1333, [0.45] * 3, [0.225] * 3, train=False)
    pixels, boxes = transform(frames, np.array([[0.5, 0.5, 1.0, 1.0]], np.float32), np.random.default_rng(0))
    assert tuple(pixels.shape) == (3, 1, 256, 455)
    scale = 256 / 360  # the official factor on both axes
    np.testing.assert_allclose(boxes, [[320 * scale, 180 * scale, 454.0, 255.0]], rtol=1e-6)


def random_frames(seed=0, count=3, height=5, width=7):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.mark.parametrize("order", [RGB_FROM_BGR, BGR_FROM_BGR])
def test_fast_and_reference_tensor_conversion_agree(order):
    frames = random_frames()
    mean, std, shift = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.01, -0.02, 0.03)
    fast = frames_to_tensor(frames, order, normalization_lut(mean, std, shift))
    reference = frames_to_tensor_reference(frames, order, mean, std, shift)
    assert fast.shape == reference.shape == (3, 3, 5, 7) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, rtol=0, atol=2e-6)
    # Spot check: output channel 0 of RGB order is the frames' red channel (BGR index 2).
    source = order[0]
    expected = (frames[1][2, 3, source] / 255 + shift[0] - mean[0]) / std[0]
    assert fast[0, 1, 2, 3].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(pca_lighting=([0.225, 0.224, 0.229], np.eye(3).tolist())),
        dict(color_jitter=True, pca_lighting=([0.225, 0.224, 0.229], np.eye(3).tolist()), output_bgr=True),
    ],
)
def test_clip_transform_fast_and_reference_agree(options):
    frames = random_frames(count=4, height=12, width=20)
    boxes = np.array([[0.1, 0.2, 0.6, 0.9]], np.float32)
    outputs = []
    for reference in (False, True):
        transform = ClipTransform([8, 10], 100, [0.45] * 3, [0.225] * 3, train=True, flip_prob=0.5,
                                  reference=reference, **options)
        pixels, out_boxes = transform(frames, boxes, np.random.default_rng(7))
        outputs.append((pixels.to_tensor(), out_boxes))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])


def test_pca_lighting_shift_is_eigvec_times_weighted_alpha():
    alpha = np.random.default_rng(3).normal(0.0, 0.1, size=3)
    shift = pca_lighting_shift(np.random.default_rng(3), [1.0, 2.0, 3.0], np.eye(3))
    np.testing.assert_allclose(shift, alpha * [1.0, 2.0, 3.0], rtol=1e-6)


def test_color_jitter_on_gray_only_changes_brightness_within_bounds():
    for seed in range(10):
        clip = torch.full((3, 2, 4, 4), 0.5)
        out = color_jitter(clip, np.random.default_rng(seed))
        # Saturation and contrast leave a uniform gray clip unchanged; brightness scales it by 1 +- 0.4.
        assert torch.allclose(out, out[0, 0, 0, 0].expand_as(out))
        assert 0.5 * 0.6 - 1e-6 <= out[0, 0, 0, 0].item() <= 0.5 * 1.4 + 1e-6


def test_slow_pathway_indices_and_pathway_frames():
    assert slow_pathway_indices(32, 4).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert slow_pathway_indices(8, 4).tolist() == [0, 7]
    with pytest.raises(ValueError, match="no Slow frames"):
        slow_pathway_indices(4, 8)
    assert pathway_frame_indices(16, 1, 4) == [None]
    assert pathway_frame_indices(32, 2, 4) == [[0, 4, 8, 13, 17, 22, 26, 31], None]
    with pytest.raises(ValueError, match="PATHWAYS must be 1 or 2"):
        pathway_frame_indices(32, 3, 4)


def test_clip_pixels_select_and_write_into_a_view():
    frames = random_frames(count=6, height=3, width=4)
    lut = normalization_lut([0.45] * 3, [0.225] * 3)
    pixels = ClipPixels(frames, RGB_FROM_BGR, lut)
    full = pixels.to_tensor()
    assert pixels.shape == (3, 6, 3, 4) and pixels.select(None) is pixels
    slow = pixels.select([0, 5])
    assert slow.shape == (3, 2, 3, 4)
    torch.testing.assert_close(slow.to_tensor(), full[:, [0, 5]], rtol=0, atol=0)
    canvas = torch.zeros(3, 2, 5, 7)
    slow.to_tensor(out=canvas[:, :, :3, :4])  # a strided view, as inside a padded batch
    torch.testing.assert_close(canvas[:, :, :3, :4], full[:, [0, 5]], rtol=0, atol=0)
    assert torch.count_nonzero(canvas[:, :, 3:]) == 0 and torch.count_nonzero(canvas[..., 4:]) == 0
    as_tensor = ClipPixels(tensor=full)
    torch.testing.assert_close(as_tensor.select([0, 5]).to_tensor(), full[:, [0, 5]])
    with pytest.raises(ValueError, match="either frames"):
        ClipPixels()
