"""Reading extracted video frames (JPEG or PNG files) into uint8 arrays, with errors naming the file."""

import time

import cv2
import numpy as np

from ..errors import UserError

# A JPEG file ends with the EOI marker; some encoders append a few padding bytes after it.
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL_SEARCH = 32


class FrameReadError(UserError, OSError):
    """A frame that is missing, unreadable, truncated or not a decodable image (names the path)."""


def _read_bytes(path, retries, retry_wait_s):
    for attempt in range(retries + 1):
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise FrameReadError(f"frame file is missing: {path}") from None
        except OSError as e:
            # Network file systems fail transiently; a missing file does not come back.
            if attempt == retries:
                raise FrameReadError(f"cannot read frame file {path}: {e}") from e
            time.sleep(retry_wait_s)


def decode_frame(data, path):
    """Decode the bytes of one image file into a uint8 ``[H, W, 3]`` BGR array.

    Raises:
        FrameReadError naming ``path`` for an empty file, a JPEG without its end marker
        (truncated: OpenCV would silently return a partly grey image), or bytes that do not
        decode as an image.
    """
    if not data:
        raise FrameReadError(f"frame file is empty: {path}")
    if data[:2] == _JPEG_START and _JPEG_END not in data[-_JPEG_TAIL_SEARCH:]:
        raise FrameReadError(f"JPEG frame is truncated (no end-of-image marker): {path}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameReadError(f"frame file is corrupt or not an image: {path}")
    return image


def read_frame(path, retries=2, retry_wait_s=0.5):
    """Read one frame file as a uint8 ``[H, W, 3]`` BGR array (FrameReadError naming the path on failure)."""
    return decode_frame(_read_bytes(path, retries, retry_wait_s), path)


def read_frames(paths):
    """Read the frames of one clip.

    Args:
        paths: frame file paths, in clip order (repeats allowed: clamped indices).

    Returns:
        list of uint8 ``[H, W, 3]`` BGR arrays, all of one size. A path repeated in
        ``paths`` is decoded once.

    Raises:
        FrameReadError naming the path of a missing or corrupt frame, or of a frame whose
        size differs from the first frame's.
    """
    decoded = {}
    frames = []
    for path in paths:
        image = decoded.get(path)
        if image is None:
            image = decoded[path] = read_frame(path)
            if frames and image.shape != frames[0].shape:
                raise FrameReadError(
                    f"frame {path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                    f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames of a video must have one size"
                )
        frames.append(image)
    return frames
