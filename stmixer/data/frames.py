"""Reading extracted video frames (JPEG or PNG files) into uint8 arrays, with errors naming the file.

JPEG files are decoded by libjpeg-turbo through simplejpeg, which reports libjpeg's
corrupt-data warnings per call (OpenCV decodes such files into partly garbage pixels and
at most prints a line without the file name). The pixels equal ``cv2.imdecode``'s (same
library, accurate DCT, fancy upsampling). Other formats (PNG) go through OpenCV.
"""

import time

import cv2
import numpy as np
import simplejpeg

from ..errors import UserError

# A JPEG file ends with the EOI marker; some encoders append a few padding bytes after it.
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL_SEARCH = 32


class FrameReadError(UserError, OSError):
    """A frame that is missing, unreadable, truncated or not a decodable image (names the path)."""


class CorruptFrameError(FrameReadError):
    """A JPEG frame whose decoder reported corrupt data: it decodes, but its pixels may be partly garbage."""


class CorruptFrameLog:
    """An ``on_corrupt`` handler for ``read_frame(s)``: logs a warning the first time each corrupt
    file is read, with the number of distinct corrupt files this object has seen (per process:
    each data-loader worker holds its own copy of the dataset and so of this log).

    Args:
        logger: a ``logging.Logger``.
    """

    def __init__(self, logger):
        self.logger = logger
        self.paths = set()

    @property
    def count(self):
        """Distinct corrupt frame files seen so far."""
        return len(self.paths)

    def __call__(self, path, message):
        if path in self.paths:
            return
        self.paths.add(path)
        n = self.count
        self.logger.warning(
            "corrupt JPEG data in %s: %s; its pixels may be partly garbage and are used as they are (%d corrupt frame "
            "file%s so far in this process; python -m stmixer.data.check --all-frames lists them all)",
            path, message, n, "" if n == 1 else "s",
        )


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


def _libjpeg_message(error):
    """libjpeg's message in a simplejpeg error (which may repeat it)."""
    text = str(error).strip()
    half = len(text) // 2
    return text[:half] if len(text) % 2 == 0 and text[:half] == text[half:] else text


def _decode_jpeg(data, path, on_corrupt):
    try:
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as e:
        message = _libjpeg_message(e)
    # strict=True also fails on libjpeg's warnings; without it, only hard errors remain.
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False)
    except ValueError as e:
        message = _libjpeg_message(e)
        # OpenCV's libjpeg build gets through a few of these (a file that decoded before still decodes).
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise FrameReadError(f"frame file is corrupt or not an image: {path} ({message})") from None
    if on_corrupt is None:
        raise CorruptFrameError(f"corrupt JPEG data in {path}: {message} (its pixels may be partly garbage)")
    on_corrupt(path, message)
    return image


def decode_frame(data, path, on_corrupt=None):
    """Decode the bytes of one image file into a uint8 ``[H, W, 3]`` BGR array.

    Args:
        data: the file's bytes.
        path: the file's name, for messages.
        on_corrupt: what to do with a JPEG whose decoder reports corrupt data (e.g. bytes
            overwritten in its middle; it still decodes, into partly garbage pixels): None
            raises CorruptFrameError; a callable ``on_corrupt(path, message)`` (e.g. a
            CorruptFrameLog) is called and the decoded pixels are returned.

    Raises:
        FrameReadError naming ``path`` for an empty file, a JPEG without its end marker
        (truncated: OpenCV would silently return a partly grey image), or bytes that do not
        decode as an image; CorruptFrameError (see ``on_corrupt``).
    """
    if not data:
        raise FrameReadError(f"frame file is empty: {path}")
    if data[:2] == _JPEG_START:
        if _JPEG_END not in data[-_JPEG_TAIL_SEARCH:]:
            raise FrameReadError(f"JPEG frame is truncated (no end-of-image marker): {path}")
        return _decode_jpeg(data, path, on_corrupt)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise FrameReadError(f"frame file is corrupt or not an image: {path}")
    return image


def read_frame(path, retries=2, retry_wait_s=0.5, on_corrupt=None):
    """Read one frame file as a uint8 ``[H, W, 3]`` BGR array (FrameReadError naming the path on
    failure; ``on_corrupt``: see ``decode_frame``)."""
    return decode_frame(_read_bytes(path, retries, retry_wait_s), path, on_corrupt)


def read_frames(paths, on_corrupt=None):
    """Read the frames of one clip.

    Args:
        paths: frame file paths, in clip order (repeats allowed: clamped indices).
        on_corrupt: see ``decode_frame``.

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
            image = decoded[path] = read_frame(path, on_corrupt=on_corrupt)
            if frames and image.shape != frames[0].shape:
                raise FrameReadError(
                    f"frame {path} is {image.shape[1]}x{image.shape[0]} but {paths[0]} is "
                    f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames of a video must have one size"
                )
        frames.append(image)
    return frames
