import logging

import cv2
import numpy as np
import pytest

from stmixer.data.frames import CorruptFrameError, CorruptFrameLog, FrameReadError, read_frame, read_frames


def smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((height, width, 3)) * 255).astype(np.uint8), (9, 9), 3)


@pytest.mark.parametrize(
    "ext, params, gray",
    [
        (".jpg", [], False),  # 4:2:0 chroma
        (".jpg", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], False),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], False),
        (".jpg", [], True),
        (".png", [], False),  # PNG bytes in a .jpg file
    ],
)
def test_pixels_equal_opencv(tmp_path, ext, params, gray):
    image = smooth_image(61, 83)
    data = cv2.imencode(ext, image[..., 0] if gray else image, params)[1].tobytes()
    path = tmp_path / "f.jpg"
    path.write_bytes(data)
    got = read_frame(str(path))
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert got.dtype == np.uint8 and got.shape == (61, 83, 3)
    np.testing.assert_array_equal(got, want)
    got[0, 0] = 0  # writable, as OpenCV's arrays


@pytest.fixture
def write_corrupt_jpeg(corrupt_jpeg):
    """``write_corrupt_jpeg(path)``: a 320x240 JPEG at ``path`` with random bytes in its middle."""

    def write(path):
        path.write_bytes(cv2.imencode(".jpg", smooth_image(240, 320))[1].tobytes())
        return corrupt_jpeg(path)

    return write


def test_corrupt_middle_is_an_error_naming_the_file(tmp_path, write_corrupt_jpeg):
    path = write_corrupt_jpeg(tmp_path / "frame_000007.jpg")
    with pytest.raises(CorruptFrameError, match=r"corrupt JPEG data in .*frame_000007\.jpg: \w.*may be partly garbage"):
        read_frame(str(path))
    assert issubclass(CorruptFrameError, FrameReadError)


def test_corrupt_frame_log_warns_once_per_file_with_a_count(tmp_path, write_corrupt_jpeg):
    bad = [write_corrupt_jpeg(tmp_path / f"bad{i}.jpg") for i in range(2)]
    good = tmp_path / "good.jpg"
    good.write_bytes(cv2.imencode(".jpg", smooth_image(240, 320))[1].tobytes())
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("test_frames.corrupt")
    logger.addHandler(handler)
    log = CorruptFrameLog(logger)
    paths = [str(p) for p in (bad[0], good, bad[0], bad[1], bad[0])]
    frames = read_frames(paths, on_corrupt=log)
    frames += read_frames(paths, on_corrupt=log)  # a second clip reading the same files
    logger.removeHandler(handler)
    assert len(frames) == 10 and all(f.shape == (240, 320, 3) for f in frames)
    messages = [r.getMessage() for r in records]
    assert [r.levelno for r in records] == [logging.WARNING] * 2
    assert str(bad[0]) in messages[0] and "1 corrupt frame file so far" in messages[0]
    assert str(bad[1]) in messages[1] and "2 corrupt frame files so far" in messages[1]
    assert log.count == 2


def test_header_warning_that_opencv_decodes_is_corrupt_with_opencv_pixels(tmp_path):
    data = bytearray(cv2.imencode(".jpg", smooth_image(48, 64))[1].tobytes())
    assert data[6:11] == b"JFIF\0"
    data[11] = 0  # JFIF major version 0: libjpeg warns while reading the header
    path = tmp_path / "f.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFrameError, match=r"f\.jpg: Warning: unknown JFIF revision number 0"):
        read_frame(str(path))
    seen = []
    image = read_frame(str(path), on_corrupt=lambda p, message: seen.append(p))
    assert seen == [str(path)]
    np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR))
