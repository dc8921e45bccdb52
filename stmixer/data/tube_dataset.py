"""UCF101-24 / JHMDB-21 layout: frames per video and the ground-truth pickle, read as keyframe clips.

Layout (paths relative to ``DATA.PATH_TO_DATA_DIR``; see data/README.md)::

    <TUBES.FRAME_DIR>/<video>/00001.jpg ...   (TUBES.FRAME_TEMPLATE, 1-based frames; <video> is
                                               the pickle's name, e.g. Basketball/v_Basketball_g01_c01)
    <TUBES.GT_FILE>                           pickle: labels, gttubes, nframes, train_videos,
                                               test_videos, resolution

The pickle is read through the restricted unpickler (plain data and numpy arrays only) and
validated by ``stmixer.evaluation.tubes`` (errors name the key). Every frame is a keyframe:
a training sample is a frame with at least one ground-truth box; a test sample is every frame
of every test video (the frame-mAP counts detections on frames without ground truth, and
tube linking needs every frame). A box's label is its tube's class: multi-hot with one 1.
Samples are those of ``AvaDataset`` (same dict), with ``metadata["timestamp"]`` the 1-based
frame number.
"""

import dataclasses
import logging
import os

import numpy as np

from ..errors import UserError
from ..evaluation.tubes import TubeFormatError, _unpickle, groundtruth_from_dict
from .ava import AvaDataset, KeyframeTable, clip_frame_indices

logger = logging.getLogger("stmixer.data.tubes")


class TubeDatasetError(UserError, ValueError):
    """A ground-truth pickle or frame template that does not fit the config; the message names the key."""


@dataclasses.dataclass
class TubeVideo:
    """The frames of one video: ``template.format(video=name, frame=f)`` for f = 1..num_frames."""

    name: str
    num_frames: int
    template: str

    def path(self, index):
        """Relative path of the frame with 0-based ``index``."""
        return self.template.format(video=self.name, frame=index + 1)


@dataclasses.dataclass
class TubeAnnotations:
    """One split of a ground-truth pickle: the validated ground truth and the frame sizes."""

    groundtruth: object  # stmixer.evaluation.tubes.GroundTruth
    resolution: dict  # video -> (height, width) in pixels


def read_tube_annotations(path, split, fold):
    """Read, validate and keep one split (``"train"`` / ``"test"``, number ``fold``) of a GT pickle.

    Raises TubeFormatError naming the file and the key at fault (e.g. ``'resolution'``).
    """
    data = _unpickle(path)
    gt = groundtruth_from_dict(data, str(path), split, fold)
    resolution = data.get("resolution") if isinstance(data, dict) else None
    if not isinstance(resolution, dict):
        raise TubeFormatError(f"{path}: key 'resolution' missing (expected {{video: (height, width)}})")
    sizes = {}
    for v in gt.videos:
        size = resolution.get(v)
        try:
            height, width = (int(x) for x in size)
        except (TypeError, ValueError):
            raise TubeFormatError(f"{path}: 'resolution'['{v}'] = {size!r}, expected (height, width)") from None
        if height < 1 or width < 1:
            raise TubeFormatError(f"{path}: 'resolution'['{v}'] = {size!r}, expected positive (height, width)")
        sizes[v] = (height, width)
    return TubeAnnotations(gt, sizes)


def check_frame_template(template):
    """TubeDatasetError unless ``template`` formats with ``video`` and ``frame`` (TUBES.FRAME_TEMPLATE)."""
    try:
        a, b = template.format(video="v", frame=1), template.format(video="v", frame=2)
    except (KeyError, IndexError, ValueError) as e:
        raise TubeDatasetError(
            f"TUBES.FRAME_TEMPLATE = {template!r} does not format with {{video}} and {{frame}}: {e}"
        ) from None
    if a == b:
        raise TubeDatasetError(f"TUBES.FRAME_TEMPLATE = {template!r} gives every frame the same path: use {{frame}}")


def build_tube_keyframes(annotations, num_classes, every_frame):
    """A KeyframeTable of one split: one entry per frame with a box (``every_frame``: every frame).

    Videos in the pickle's split order, frames in order; boxes normalized by the video's
    ``resolution`` and clipped to [0, 1]; each box carries its tube's class + 1 as action id.
    ``KeyframeTable.seconds`` holds the 1-based frame numbers.
    """
    gt = annotations.groundtruth
    if len(gt.labels) > num_classes:
        raise TubeDatasetError(
            f"{gt.source}: 'labels' has {len(gt.labels)} classes but MODEL.STM.ACTION_CLASSES = {num_classes}"
        )
    video_of, frames, box_offsets, boxes, label_offsets, labels = [], [], [0], [], [0], []
    for v_index, video in enumerate(gt.videos):
        height, width = annotations.resolution[video]
        scale = np.array([width, height, width, height], dtype=np.float64)
        per_frame = {}
        for label, tubes in sorted(gt.tubes[video].items()):
            for tube in tubes:
                for row in np.asarray(tube, dtype=np.float64):
                    per_frame.setdefault(int(row[0]), []).append((row[1:5] / scale, label + 1))
        numbers = range(1, gt.nframes[video] + 1) if every_frame else sorted(per_frame)
        for f in numbers:
            if f > gt.nframes[video]:
                continue  # a tube past the video's end (accepted by the reference; no frame to read)
            video_of.append(v_index)
            frames.append(f)
            for box, action in per_frame.get(f, ()):
                boxes.append(np.clip(box, 0.0, 1.0))
                labels.append(action)
                label_offsets.append(len(labels))
            box_offsets.append(len(boxes))
    return KeyframeTable.from_lists(video_of, frames, box_offsets, boxes, label_offsets, labels)


class TubeDataset(AvaDataset):
    """Keyframe clips of a UCF101-24 / JHMDB-21 layout dataset (every frame a keyframe).

    Args: those of AvaDataset, with ``videos`` a list of TubeVideo and ``keyframes`` from
    ``build_tube_keyframes`` (timestamps = 1-based frame numbers); ``labels`` the class names.
    Samples are AvaDataset's; ``metadata["timestamp"]`` is the 1-based frame number.
    """

    def __init__(self, *args, labels=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = list(labels)

    def clip_frame_paths(self, index):
        """Frame file paths of sample ``index``'s clip, centred on its frame, clamped at the video's ends."""
        video = self.videos[self.keyframes.video_index[index]]
        center = int(self.keyframes.seconds[index]) - 1
        indices = clip_frame_indices(center, self.num_frames, self.sampling_rate, video.num_frames)
        return [os.path.join(self.frame_dir, video.path(i)) for i in indices]


def log_tube_summary(split, dataset):
    """Log the size of a split."""
    logger.info(
        "%s split: %d videos, %d frames, %d samples, %d boxes, %d classes",
        split, len(dataset.videos), sum(v.num_frames for v in dataset.videos), len(dataset),
        dataset.keyframes.num_boxes, len(dataset.labels),
    )
