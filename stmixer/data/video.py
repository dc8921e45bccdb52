"""Video files and frame folders as streams of timed frames; writing videos atomically.

Frames are uint8 ``[H, W, 3]`` BGR arrays (as OpenCV decodes them) with their
presentation time in seconds from the first frame. Nothing holds a whole video in
memory: readers and the resampler are generators.

Decoding and encoding go through PyAV (FFmpeg), so any container and codec FFmpeg
reads works, at any size and frame rate. Output videos are H.264 when both sides
are even (playable everywhere) and MPEG-4 Part 2 otherwise (H.264 in 4:2:0 cannot
encode an odd side; MPEG-4 keeps the exact size instead of cropping a pixel).
"""

import logging
import math
import os
import re
from fractions import Fraction

import av
import numpy as np

from ..errors import UserError
from ..utils.io import temporary_sibling
from .frames import CorruptFrameLog, read_frame

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
# Packet sizes of MPEG transport streams (plain TS, and M2TS/Blu-ray with a 4-byte timestamp).
TS_PACKET_SIZES = (188, 192)


class VideoReadError(UserError, OSError):
    """A video or frame folder that is missing, empty or cannot be decoded (names the path)."""


class VideoSource:
    """The frames of a video file or of a folder of images, with their times.

    Args:
        path: a video file (anything FFmpeg decodes) or a folder of JPEG/PNG/BMP frames,
            taken in natural order of their names (``frame_2`` before ``frame_10``).
        folder_fps: frame rate of a frame folder (frames per second); ignored for videos.

    Attributes:
        path: the input path.
        fps: frame rate (frames per second): the container's average rate for a video.
        num_frames: frame count, exact for a folder, from the container (or duration x fps)
            for a video, 0 when the container does not say.
        height, width: frame size in pixels.

    Raises:
        VideoReadError naming ``path`` when it does not exist, is an empty folder, or has
        no decodable video stream.
    """

    def __init__(self, path, folder_fps=30.0):
        if not os.path.exists(path):
            raise VideoReadError(f"input not found: {path}")
        self.path = path
        self._checked_whole = False  # the truncation warning is given once, on the first full decode
        self.is_folder = os.path.isdir(path)
        if self.is_folder:
            self._files = frame_folder_files(path)
            if folder_fps <= 0:
                raise VideoReadError(f"{path}: the frame rate of a frame folder must be positive, got {folder_fps}")
            self.fps = float(folder_fps)
            self.num_frames = len(self._files)
            self._corrupt = CorruptFrameLog(logger)  # corrupt JPEGs: shown as decoded, one warning per file
            self.height, self.width = read_frame(self._files[0], on_corrupt=self._corrupt).shape[:2]
            return
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise VideoReadError(f"{path} holds no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                self.height, self.width = stream.height, stream.width
                self.num_frames = int(stream.frames or 0)
                if not self.num_frames and stream.duration and stream.time_base and self.fps:
                    self.num_frames = int(round(float(stream.duration * stream.time_base) * self.fps))
                self._is_transport_stream = "mpegts" in container.format.name.split(",")
        except av.error.FFmpegError as e:
            raise VideoReadError(f"cannot decode {path}: {e}") from None
        if not self.fps or not self.height or not self.width:
            raise VideoReadError(f"cannot decode {path}: no frame rate or frame size in its video stream")

    def frames(self):
        """Yield ``(time_s, frame)`` for every frame in display order: float seconds from the first frame,
        uint8 ``[H, W, 3]`` BGR.

        Raises:
            VideoReadError naming the path when the file has no decodable frame, or when a
            frame's size differs from the first one's.
        """
        if self.is_folder:
            for i, file in enumerate(self._files):
                frame = read_frame(file, on_corrupt=self._corrupt)
                if frame.shape[:2] != (self.height, self.width):
                    raise VideoReadError(
                        f"{file} is {frame.shape[1]}x{frame.shape[0]} but the folder's first frame is "
                        f"{self.width}x{self.height}; all frames must have one size"
                    )
                yield i / self.fps, frame
            return
        yield from self._decode()

    def _decode(self):
        count, first_time, warned_rotation, damaged = 0, None, False, []
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if frame.time is None:
                        time_s = count / self.fps
                    else:
                        first_time = frame.time if first_time is None else first_time
                        time_s = frame.time - first_time
                    rotation = getattr(frame, "rotation", 0)
                    if rotation and not warned_rotation:
                        logger.warning("%s asks players to rotate it by %d degrees; frames are used as stored",
                                       self.path, rotation)
                        warned_rotation = True
                    if frame.is_corrupt:
                        damaged.append(count)
                    image = frame.to_ndarray(format="bgr24")
                    if image.shape[:2] != (self.height, self.width):
                        raise VideoReadError(
                            f"{self.path}: frame {count} is {image.shape[1]}x{image.shape[0]}, the stream "
                            f"says {self.width}x{self.height}; videos that change size are not supported"
                        )
                    count += 1
                    yield time_s, image
        except av.error.FFmpegError as e:
            raise VideoReadError(f"cannot decode {self.path} (after {count} frames): {e}") from None
        if count == 0:
            raise VideoReadError(f"{self.path} holds no decodable video frame")
        if not self._checked_whole:
            self._checked_whole = True
            self._warn_if_truncated(count, damaged)

    def _warn_if_truncated(self, count, damaged):
        """One warning naming the file and the frames decoded when the video looks cut short or damaged.

        Signs: fewer frames than the container declares (by more than its rounding), frames the
        decoder flags as damaged (a cut inside a frame), a transport stream ending inside a packet.
        """
        reasons = []
        if self.num_frames and count < self.num_frames - 1:
            reasons.append(f"{count} frames decoded, but its container declares {self.num_frames}")
        if damaged:
            reasons.append(f"{len(damaged)} damaged frame{'s' if len(damaged) > 1 else ''} from frame {damaged[0]} on")
        if self._is_transport_stream and all(os.path.getsize(self.path) % n for n in TS_PACKET_SIZES):
            reasons.append("the file ends inside a 188-byte transport-stream packet")
        if reasons:
            logger.warning("%s: the video looks truncated or damaged (%s); using the %d frames decoded",
                           self.path, "; ".join(reasons), count)


def frame_folder_files(folder):
    """Image files of ``folder`` in natural order of their names; VideoReadError when there is none."""
    files = [name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise VideoReadError(f"{folder} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")

    def natural_key(name):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

    return [os.path.join(folder, name) for name in sorted(files, key=natural_key)]


def resample(timed_frames, fps):
    """Resample a stream of timed frames to a constant rate by nearest frame in time.

    Args:
        timed_frames: iterable of ``(time_s, frame)`` with non-decreasing times.
        fps: output rate (frames per second).

    Yields:
        ``(index, frame)`` for output frames ``index = 0, 1, ...`` at times ``index / fps``,
        each the input frame nearest in time (the earlier one on a tie), up to the time of the
        last input frame. The input frame objects are passed through (no copies).
    """
    if fps <= 0:
        raise ValueError(f"the resampling rate must be positive, got {fps}")
    index = 0
    previous = None
    for time_s, frame in timed_frames:
        if previous is not None:
            midpoint = (previous[0] + time_s) / 2.0
            while index / fps <= midpoint:
                yield index, previous[1]
                index += 1
        previous = (time_s, frame)
    if previous is not None:
        while index / fps <= previous[0] + 1e-9:
            yield index, previous[1]
            index += 1


def resampled_length(duration_s, fps):
    """Frames that ``resample`` gives for a stream whose last frame is at ``duration_s`` seconds."""
    return int(math.floor(duration_s * fps + 1e-9)) + 1


class VideoWriter:
    """Write frames to a video file atomically: ``path`` appears complete when ``close`` succeeds.

    Args:
        path: output file; the container follows its extension (``.mp4``, ``.mkv``, ``.avi``, ...).
        fps: frame rate (frames per second; fractional rates such as 29.97 are kept).
        height, width: frame size in pixels (odd sizes allowed).

    Use as a context manager; on an exception the partial file is removed and ``path`` is untouched.
    """

    def __init__(self, path, fps, height, width):
        self.path = path
        fd, self._tmp_path = temporary_sibling(path, os.path.splitext(path)[1] or ".mp4")
        os.close(fd)
        self.height, self.width = int(height), int(width)
        self._container = None
        try:
            self._container = av.open(self._tmp_path, mode="w")
            codec = "libx264" if self.height % 2 == 0 and self.width % 2 == 0 else "mpeg4"
            rate = Fraction(fps).limit_denominator(1001)
            self._stream = self._container.add_stream(codec, rate=rate)
            self._stream.width, self._stream.height = self.width, self.height
            self._stream.pix_fmt = "yuv420p"
            if codec == "mpeg4":
                self._stream.bit_rate = max(1_000_000, int(self.height * self.width * float(rate) * 0.15))
        except BaseException:
            self.abort()
            raise
        self.frames_written = 0

    def write(self, frame):
        """Append one uint8 ``[height, width, 3]`` BGR frame."""
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame of {frame.shape[1]}x{frame.shape[0]} written to a {self.width}x{self.height} video")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self):
        """Flush the encoder and move the finished file to ``path``."""
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        os.replace(self._tmp_path, self.path)

    def abort(self):
        """Drop the partial file (``path`` is left as it was)."""
        if self._container is not None:
            try:
                self._container.close()
            except av.error.FFmpegError:
                pass
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
