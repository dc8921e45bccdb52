"""AVA-layout dataset: keyframes with their person boxes and action labels, read as clips.

Layout (paths relative to ``DATA.PATH_TO_DATA_DIR``; see data/README.md):
``frames/<video>/<video>_%06d.jpg`` at 30 fps, frame index 0 = second 900;
``frame_lists/{train,val}.csv``; ``annotations_v2.2/`` box CSVs, label map, exclusions.

A sample is one keyframe (video, second) with at least one box. Rows of one person at
one keyframe (same coordinate text) are merged into one box with several labels, as in
the official code.
"""

import collections
import dataclasses
import logging
import os
from typing import Dict

import numpy as np
import torch

from ..ava_files import (
    AVA_FIRST_KEYFRAME_SECOND,
    AVA_LAST_KEYFRAME_SECOND,
    DataFormatError,
    ava_span,
)
from .frames import CorruptFrameLog, read_frame, read_frames
from .samplers import sample_generators
from .transforms import pathway_frame_indices

logger = logging.getLogger("stmixer.data.ava")


@dataclasses.dataclass
class KeyframeTable:
    """All keyframes of a split in flat arrays (no per-keyframe Python objects, so worker
    processes do not copy them on access).

    Keyframe k has boxes ``boxes[box_offsets[k]:box_offsets[k + 1]]``; box j has action
    ids ``labels[label_offsets[j]:label_offsets[j + 1]]`` (ids >= 1; a box may have none).
    """

    video_index: np.ndarray  # int64 [K] index into the frame-list videos
    seconds: np.ndarray  # int64 [K] AVA timestamps
    box_offsets: np.ndarray  # int64 [K + 1]
    boxes: np.ndarray  # float32 [N, 4] normalized x1, y1, x2, y2
    label_offsets: np.ndarray  # int64 [N + 1]
    labels: np.ndarray  # int64 [L]

    @classmethod
    def from_lists(cls, video_index, seconds, box_offsets, boxes, label_offsets, labels):
        """A table from the Python lists a builder appends to (boxes: ``[x1, y1, x2, y2]`` each)."""
        return cls(
            video_index=np.asarray(video_index, dtype=np.int64),
            seconds=np.asarray(seconds, dtype=np.int64),
            box_offsets=np.asarray(box_offsets, dtype=np.int64),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            label_offsets=np.asarray(label_offsets, dtype=np.int64),
            labels=np.asarray(labels, dtype=np.int64),
        )

    def __len__(self):
        return len(self.seconds)

    @property
    def num_boxes(self):
        """Total number of (merged) boxes."""
        return len(self.boxes)

    def boxes_of(self, k):
        """float32 ``[n, 4]`` normalized boxes of keyframe ``k``."""
        return self.boxes[self.box_offsets[k]:self.box_offsets[k + 1]]

    def labels_of(self, k):
        """List of n int64 arrays: the action ids of each box of keyframe ``k``."""
        first, last = self.box_offsets[k], self.box_offsets[k + 1]
        return [self.labels[self.label_offsets[j]:self.label_offsets[j + 1]] for j in range(first, last)]

    def multi_hot(self, k, num_classes):
        """float32 ``[n, num_classes]`` labels of keyframe ``k``; column c is action id c + 1."""
        ids = self.labels_of(k)
        out = np.zeros((len(ids), num_classes), dtype=np.float32)
        for row, box_ids in enumerate(ids):
            out[row, box_ids - 1] = 1.0
        return out


@dataclasses.dataclass
class SkippedRows:
    """Box-CSV rows and keyframes left out while building a KeyframeTable (for logs and the checker)."""

    outside_keyframe_range: int = 0
    unknown_video: Dict[str, int] = dataclasses.field(default_factory=dict)
    excluded_keyframes: int = 0


def build_keyframes(videos, box_rows, num_classes, excluded=frozenset(), span=ava_span):
    """Merge box-CSV rows into keyframes, ordered by video (frame-list order) then second.

    Args:
        videos: list of VideoFrames from the frame lists (defines the video order).
        box_rows: list of BoxRows (one per CSV file, merged in order).
        num_classes: action ids must lie in ``1..num_classes`` (``MODEL.STM.ACTION_CLASSES``).
        excluded: set of (video_id, second) keyframes to leave out.
        span: video name -> KeyframeSpan (timeline start and keyframe range; ``ava_span``:
            every video starts at second 900 with keyframes 902..1798).

    Returns:
        (KeyframeTable, SkippedRows). Rows outside the video's keyframe seconds (AVA: 902..1798; the official code
        crashes on them) and rows of videos absent from the frame lists (the official code
        stops with a bare assertion) are skipped and counted.

    Raises:
        DataFormatError naming file:line for an action id outside ``1..num_classes``, or a
        keyframe whose frame lies beyond its video's last listed frame.
    """
    video_index = {video.name: i for i, video in enumerate(videos)}
    skipped = SkippedRows()
    # video index -> second -> box text -> [box, [action ids]]
    merged = collections.defaultdict(lambda: collections.defaultdict(dict))
    first_source = {}
    excluded_seen = set()
    for rows in box_rows:
        for i in range(len(rows)):
            video, second, action = rows.videos[i], int(rows.seconds[i]), int(rows.actions[i])
            if action != -1 and not 1 <= action <= num_classes:
                raise DataFormatError(
                    f"{rows.source(i)}: action_id {action} is outside 1..{num_classes} "
                    "(MODEL.STM.ACTION_CLASSES); empty means 'no label'"
                )
            video_span = span(video)
            if not video_span.first <= second <= video_span.last:
                skipped.outside_keyframe_range += 1
                continue
            if video not in video_index:
                skipped.unknown_video[video] = skipped.unknown_video.get(video, 0) + 1
                continue
            if (video, second) in excluded:
                excluded_seen.add((video, second))
                continue
            boxes = merged[video_index[video]][second]
            entry = boxes.get(rows.box_keys[i])
            if entry is None:
                entry = boxes[rows.box_keys[i]] = [rows.boxes[i], []]
                first_source.setdefault((video, second), rows.source(i))
            if action != -1:
                entry[1].append(action)
    skipped.excluded_keyframes = len(excluded_seen)

    video_of, seconds, box_offsets, boxes, label_offsets, labels = [], [], [0], [], [0], []
    for v in sorted(merged):
        for second in sorted(merged[v]):
            center = span(videos[v].name).frame_index(second)
            if center >= videos[v].num_frames:
                raise DataFormatError(
                    f"{first_source[(videos[v].name, second)]}: keyframe {videos[v].name} at {second} s is frame "
                    f"{center}, but the frame lists give this video only {videos[v].num_frames} frames "
                    "(frames must be extracted at 30 fps from second 900; run python -m stmixer.data.check)"
                )
            video_of.append(v)
            seconds.append(second)
            for box, actions in merged[v][second].values():
                boxes.append(box)
                labels.extend(actions)
                label_offsets.append(len(labels))
            box_offsets.append(len(boxes))
    table = KeyframeTable.from_lists(video_of, seconds, box_offsets, boxes, label_offsets, labels)
    return table, skipped


def clip_frame_indices(center, num_frames, sampling_rate, video_length):
    """0-based frame indices of a clip centred on a keyframe, clamped to the video.

    Frames ``start + i * sampling_rate`` for ``i < num_frames`` with
    ``start = center - (num_frames * sampling_rate) // 2`` (the official sampling, so the
    keyframe is frame ``num_frames // 2`` of the clip when the span is even). Indices
    before the first frame become 0 and indices past the last become ``video_length - 1``.
    The official code gives fewer than ``num_frames`` frames when the span is odd (e.g.
    one frame at rate 1 gives none); here a clip always has ``num_frames`` frames.

    Returns:
        list of ``num_frames`` ints.
    """
    start = center - (num_frames * sampling_rate) // 2
    last = video_length - 1
    return [min(max(start + i * sampling_rate, 0), last) for i in range(num_frames)]


class AvaDataset(torch.utils.data.Dataset):
    """Keyframe clips of an AVA-layout dataset.

    Args:
        frame_dir: folder the frame-list paths are relative to.
        videos: list of VideoFrames (frame-list order).
        keyframes: KeyframeTable.
        num_frames: frames per clip (``DATA.NUM_FRAMES``; the Fast pathway for SlowFast).
        sampling_rate: step between clip frames, in frames (``DATA.SAMPLING_RATE``).
        transform: ClipTransform.
        num_classes: width of the multi-hot labels (``MODEL.STM.ACTION_CLASSES``).
        num_pathways: 1, or 2 for SlowFast.
        alpha: SlowFast frame-rate ratio (``SLOWFAST.ALPHA``).
        slow_frames: how the Slow pathway's frames are picked (``DATA.SLOW_PATHWAY_FRAMES``).
        span: video name -> KeyframeSpan (``ava_span``: the AVA timeline for every video).
        defer_pixels: leave the float conversion to the batch collator: "videos" then holds
            ClipPixels instead of tensors, which BatchCollator writes straight into the
            padded batch (one write per pixel; the training and test loaders use this).
        proposals: KeyframeProposals aligned with ``keyframes`` (``stmixer.data.proposals``), or None.

    Items are looked up by dataset index, or by ``(index, entropy)`` where ``entropy`` (a
    tuple of ints) seeds every random choice of that sample: the training sampler passes
    it so that a sample's augmentation does not depend on which worker loads it.
    Without it, training randomness comes from NumPy's global generator. A third part
    ``(index, entropy, scale_entropy)`` seeds the training short side alone (see
    ``sample_generators``).

    A sample is a dict:
        "videos": list of float32 ``[3, T_p, H, W]`` (normalized; Slow first for SlowFast), or
            of ClipPixels with ``defer_pixels``,
        "whwh": float32 ``[4]`` = (W, H, W, H) of the resized clip,
        "boxes": float32 ``[n, 4]`` absolute x1, y1, x2, y2 pixels of the resized clip,
        "labels": float32 ``[n, num_classes]`` multi-hot (column c = action id c + 1),
        "metadata": {"video_id": str, "timestamp": int seconds, "orig_size": (h, w) on disk},
        "index": int dataset index,
    and with ``proposals``:
        "proposals": float32 ``[m, 4]`` absolute x1, y1, x2, y2 pixels of the resized clip (transformed
            together with "boxes": stacked, one call of the transform),
        "proposal_scores": float32 ``[m]``.
    """

    def __init__(self, frame_dir, videos, keyframes, num_frames, sampling_rate, transform, num_classes,
                 num_pathways=1, alpha=4, defer_pixels=False, span=ava_span, slow_frames="linspace",
                 proposals=None):
        self.frame_dir = frame_dir
        self.proposals = proposals
        self.span = span
        self.videos = videos
        self.keyframes = keyframes
        self.num_frames = int(num_frames)
        self.sampling_rate = int(sampling_rate)
        self.transform = transform
        self.num_classes = int(num_classes)
        self.pathway_frames = pathway_frame_indices(self.num_frames, int(num_pathways), int(alpha), slow_frames)
        self.defer_pixels = defer_pixels
        self._frame_sizes = {}
        # Corrupt JPEGs are used as decoded, with one warning per file (per process).
        self.corrupt_frames = CorruptFrameLog(logger)

    def __len__(self):
        return len(self.keyframes)

    def keyframe_info(self, index):
        """{"video_id": str, "timestamp": int seconds} of sample ``index``."""
        video = self.videos[self.keyframes.video_index[index]]
        return {"video_id": video.name, "timestamp": int(self.keyframes.seconds[index])}

    def clip_frame_paths(self, index):
        """Frame file paths of sample ``index``'s clip, in order (clamped at the video's ends)."""
        video = self.videos[self.keyframes.video_index[index]]
        center = self.span(video.name).frame_index(int(self.keyframes.seconds[index]))
        indices = clip_frame_indices(center, self.num_frames, self.sampling_rate, video.num_frames)
        return [os.path.join(self.frame_dir, video.path(i)) for i in indices]

    def frame_size(self, video_index):
        """(height, width) of a video's frames, from its first frame (cached)."""
        if video_index not in self._frame_sizes:
            video = self.videos[video_index]
            self._frame_sizes[video_index] = read_frame(
                os.path.join(self.frame_dir, video.path(0)), on_corrupt=self.corrupt_frames
            ).shape[:2]
        return self._frame_sizes[video_index]

    def aspect_groups(self):
        """int64 ``[len(self)]``: 0 for landscape clips (height < width), 1 for the others (official grouping)."""
        groups = {}
        for v in np.unique(self.keyframes.video_index):
            height, width = self.frame_size(int(v))
            groups[int(v)] = 0 if height < width else 1
        return np.asarray([groups[int(v)] for v in self.keyframes.video_index], dtype=np.int64)

    def __getitem__(self, key):
        index, rng, scale_rng = sample_generators(key)
        frames = read_frames(self.clip_frame_paths(index), on_corrupt=self.corrupt_frames)
        orig_size = tuple(frames[0].shape[:2])
        boxes = self.keyframes.boxes_of(index)
        if self.proposals is not None:
            proposals, scores = self.proposals.of(index, boxes)
            stacked = np.concatenate([boxes.astype(np.float64), proposals])
            pixels, out = self.transform(frames, stacked, rng, scale_rng=scale_rng)
            if len(out) != len(stacked):  # a transform that drops rows would mix boxes and proposals up
                raise RuntimeError(f"the clip transform returned {len(out)} boxes for {len(stacked)}; it must "
                                   "transform every row (boxes and proposals are stacked)")
            boxes, proposals = out[:len(boxes)], out[len(boxes):]
        else:
            pixels, boxes = self.transform(frames, boxes, rng, scale_rng=scale_rng)
        height, width = pixels.shape[-2:]
        pathways = [pixels.select(indices) for indices in self.pathway_frames]
        info = self.keyframe_info(index)
        sample = {
            "videos": pathways if self.defer_pixels else [p.to_tensor() for p in pathways],
            "whwh": torch.tensor([width, height, width, height], dtype=torch.float32),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "labels": torch.from_numpy(self.keyframes.multi_hot(index, self.num_classes)),
            "metadata": {"video_id": info["video_id"], "timestamp": info["timestamp"], "orig_size": orig_size},
            "index": int(index),
        }
        if self.proposals is not None:
            sample["proposals"] = torch.from_numpy(np.ascontiguousarray(proposals, dtype=np.float32))
            sample["proposal_scores"] = torch.from_numpy(scores)
        return sample


def log_summary(split, dataset, skipped):
    """Log the size of a split and warn about skipped annotation rows."""
    total_frames = sum(video.num_frames for video in dataset.videos)
    logger.info(
        "AVA %s split: %d videos, %d frames, %d keyframes, %d boxes",
        split, len(dataset.videos), total_frames, len(dataset), dataset.keyframes.num_boxes,
    )
    if skipped.outside_keyframe_range:
        logger.warning(
            "%d box rows lie outside seconds %d..%d and are ignored",
            skipped.outside_keyframe_range, AVA_FIRST_KEYFRAME_SECOND, AVA_LAST_KEYFRAME_SECOND,
        )
    if skipped.unknown_video:
        names = sorted(skipped.unknown_video)
        logger.warning(
            "%d box rows name %d videos absent from the frame lists and are ignored (e.g. %s)",
            sum(skipped.unknown_video.values()), len(names), ", ".join(names[:5]),
        )
    if skipped.excluded_keyframes:
        logger.info("%d annotated keyframes are excluded (exclusion file)", skipped.excluded_keyframes)

