"""Test-time clips of a continuous frame stream (a user's video): one clip per keyframe, built as testing builds them.

AVA annotates one keyframe per second; on a user's video the keyframes are
``k / keyframe_rate`` seconds, k = 0, 1, ..., for every keyframe inside the video.
A keyframe's clip takes the frames ``clip_frame_indices`` gives (centred on it,
clamped at the video's ends exactly like the AVA test clips) from the stream
resampled to ``DATA.TARGET_FPS``, and goes through the test ClipTransform and the
SlowFast pathway selection, so a clip is the one ``AvaDataset`` would build from the
same frames (tested).

With person proposals (two-stage detectors, ``demo.py --proposals``), each sample also carries the
keyframe's proposals, transformed together with it by the same call of the test transform as
``AvaDataset`` makes (boxes stacked), so they land on the clip exactly as a test sample's would.

Frames are scaled to the test size as they arrive (the transform would scale each
frame the same way) and kept only while a pending keyframe still needs them, so memory
stays at one clip span of small frames, whatever the video's length and keyframe rate.
"""

import math

import numpy as np
import torch

from ..errors import UserError
from .ava import clip_frame_indices
from .transforms import resize_frames

_NO_BOXES = np.zeros((0, 4), dtype=np.float32)


class ClipTooShortError(UserError, ValueError):
    """The stream ends before it holds the frames of one clip."""


def keyframe_center(time_s, fps):
    """Index of the resampled frame nearest ``time_s`` seconds at ``fps`` frames per second."""
    return int(math.floor(time_s * fps + 0.5))


class KeyframeClips:
    """Turns a resampled frame stream into test samples, one per keyframe.

    Args:
        transform: the test ClipTransform (``build_transform(cfg, is_train=False)``).
        num_frames: frames per clip (``DATA.NUM_FRAMES``).
        sampling_rate: step between clip frames in resampled frames (``DATA.SAMPLING_RATE``).
        pathway_frames: frame indices of each pathway (``transforms.pathway_frame_indices``).
        fps: rate of the resampled stream (``DATA.TARGET_FPS``).
        keyframe_rate: keyframes per second.
        source_name: name of the input in error messages.
        proposals: None, or ``second -> (boxes float64 [n, 4] normalized x1, y1, x2, y2, scores float32 [n])``
            giving the person proposals of the keyframe at that whole second (n >= 1; e.g.
            ``proposals.VideoProposals``); keyframes must then fall on whole seconds.
        video_id: the input's video id in the samples' metadata (``img_keys`` of the two-stage detectors).
    """

    def __init__(self, transform, num_frames, sampling_rate, pathway_frames, fps, keyframe_rate, source_name="video",
                 proposals=None, video_id="video"):
        if keyframe_rate <= 0:
            raise ValueError(f"the keyframe rate must be positive, got {keyframe_rate}")
        if proposals is not None and not float(1.0 / keyframe_rate).is_integer():
            raise UserError(f"person proposals are given per whole second: the keyframe rate must be 1 (or 1/N "
                            f"for a keyframe every N seconds), got {keyframe_rate:g}")
        self.proposals = proposals
        self.video_id = str(video_id)
        self.transform = transform
        self.num_frames = int(num_frames)
        self.sampling_rate = int(sampling_rate)
        self.pathway_frames = pathway_frames
        self.fps = float(fps)
        self.keyframe_rate = float(keyframe_rate)
        self.source_name = source_name

    @property
    def clip_span(self):
        """Frames (of the resampled stream) one clip spans: ``num_frames * sampling_rate``."""
        return self.num_frames * self.sampling_rate

    def keyframe_time(self, k):
        """Time of keyframe ``k`` in seconds."""
        return k / self.keyframe_rate

    def __call__(self, resampled_frames):
        """Yield one sample per keyframe, in time order.

        Args:
            resampled_frames: iterable of ``(index, frame)`` with indices 0, 1, 2, ... (``video.resample``),
                frames uint8 ``[H, W, 3]`` BGR.

        Yields:
            dicts in the layout of AvaDataset samples with deferred pixels ("videos": ClipPixels per
            pathway, "whwh": float32 ``[4]`` of the resized clip, empty "boxes" and "labels",
            "metadata": {"time": keyframe seconds, "frame": its index in the resampled stream,
            "orig_size": (H, W), "video_id": str, "timestamp": int seconds}, "index": keyframe number k),
            ready for BatchCollator; with ``proposals`` also "proposals" float32 ``[m, 4]`` absolute
            x1, y1, x2, y2 pixels of the resized clip and "proposal_scores" float32 ``[m]``.

        Raises:
            ClipTooShortError when the stream has fewer frames than one clip spans.
        """
        window = {}
        size = orig_size = None
        k = 0
        length = 0
        for index, frame in resampled_frames:
            if size is None:
                orig_size = frame.shape[:2]
                size = self.transform.scaled_size(*orig_size)
            if index >= self._first_needed(k):
                window[index] = resize_frames([frame], *size)[0]
            length = index + 1
            if length < self.clip_span:
                continue
            while True:
                indices = self._indices(k, video_length=None)
                if max(indices[-1], keyframe_center(self.keyframe_time(k), self.fps)) >= length:
                    break
                yield self._sample(k, indices, window, orig_size)
                k += 1
                self._forget(window, k)
        if length < self.clip_span:
            raise ClipTooShortError(
                f"{self.source_name} has {length} frames at {self.fps:g} fps ({length / self.fps:.2f} s); one clip "
                f"spans {self.clip_span} frames (DATA.NUM_FRAMES {self.num_frames} x DATA.SAMPLING_RATE "
                f"{self.sampling_rate}, {self.clip_span / self.fps:.2f} s)"
            )
        while keyframe_center(self.keyframe_time(k), self.fps) < length:
            yield self._sample(k, self._indices(k, video_length=length), window, orig_size)
            k += 1
            self._forget(window, k)

    def _indices(self, k, video_length):
        center = keyframe_center(self.keyframe_time(k), self.fps)
        if video_length is None:  # not known yet: clamp the start only (frames past the end do not exist yet)
            start = center - self.clip_span // 2
            return [max(start + i * self.sampling_rate, 0) for i in range(self.num_frames)]
        return clip_frame_indices(center, self.num_frames, self.sampling_rate, video_length)

    def _first_needed(self, k):
        """The lowest frame index that keyframe ``k`` or a later one reads."""
        return max(keyframe_center(self.keyframe_time(k), self.fps) - self.clip_span // 2, 0)

    def _forget(self, window, next_k):
        first_needed = self._first_needed(next_k)
        for index in [i for i in window if i < first_needed]:
            del window[index]

    def _sample(self, k, indices, window, orig_size):
        second = int(round(self.keyframe_time(k)))
        boxes = _NO_BOXES
        if self.proposals is not None:
            boxes, scores = self.proposals(second)
        # The test transform draws no random number; the generator only fills the argument. The frames
        # were scaled on arrival: the boxes are converted from the decoded size (``source_size``).
        pixels, out = self.transform([window[i] for i in indices], boxes, np.random.default_rng(0),
                                     source_size=orig_size)
        height, width = pixels.shape[-2:]
        sample = {
            "videos": [pixels.select(p) for p in self.pathway_frames],
            "whwh": torch.tensor([width, height, width, height], dtype=torch.float32),
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros((0, 0), dtype=torch.float32),
            "metadata": {
                "time": self.keyframe_time(k),
                "frame": keyframe_center(self.keyframe_time(k), self.fps),
                "orig_size": tuple(orig_size),
                "video_id": self.video_id,
                "timestamp": second,
            },
            "index": k,
        }
        if self.proposals is not None:
            sample["proposals"] = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
            sample["proposal_scores"] = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        return sample
