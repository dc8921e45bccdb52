"""Video classification from raw frames: list files, frame sampling, crops and the dataset.

List file (mmaction2's / MMAction's ``rawframe`` annotation format), one video per line::

    <frame dir> <num frames> <label>

``frame dir`` is relative to the split's frame root (``DATA.PATH_TO_DATA_DIR / RECOGNITION.TRAIN_FRAME_DIR``
or ``TEST_FRAME_DIR``)
and may contain spaces (the last two fields are split off); ``num frames`` is the number of
frame files; ``label`` is the 0-based class index. Empty lines and lines starting with ``#``
are skipped. Frame ``i`` (0-based) of a video is the file
``RECOGNITION.FILENAME_TMPL.format(i + RECOGNITION.START_INDEX)`` in its folder (Kinetics-400
and Something-Something v2 as mmaction2 extracts them: ``img_{:05d}.jpg``, 1-based;
Something-Something v1 as released: ``{:05d}.jpg``, 1-based).

Frame sampling (indices 0-based before ``START_INDEX`` is added) follows mmaction2's
``SampleFrames`` numerically (``sample_frames``); TSN-style segment sampling at test time
takes the centre of each segment (``segment_centres``, MMAction 0.x's rule). A dataset item
is one *view*: in testing each video has ``views`` items (clips x crops) whose scores the
evaluator averages per video.
"""

import dataclasses
import logging
import os

import numpy as np
import torch

from ..errors import UserError, read_text
from .frames import CorruptFrameLog, read_frames
from .samplers import sample_generators
from .transforms import (
    BGR_FROM_BGR,
    RGB_FROM_BGR,
    ClipPixels,
    choose_short_side,
    flip_frames,
    frames_to_tensor_reference,
    normalization_lut,
    pathway_frame_indices,
    resize_frames,
    resized_size,
)

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("dense", "segments")
OUT_OF_BOUND_MODES = ("loop", "repeat_last")


class VideoListError(UserError, ValueError):
    """A malformed line of a recognition list file (the message names file:line and what was expected)."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One line of a list file: frame folder (relative to the frame root), frame count, 0-based label."""

    frame_dir: str
    num_frames: int
    label: int


def read_video_list(path, num_classes=None):
    """Parse a list file (see the module docstring) into VideoRecords.

    Args:
        path: the list file.
        num_classes: labels must lie in ``[0, num_classes)`` when given.

    Raises:
        VideoListError naming ``path:line`` for a malformed line; UserFileNotFoundError if missing.
    """
    records = []
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 2)
        if len(fields) != 3:
            raise VideoListError(f"{path}:{number}: expected '<frame dir> <num frames> <label>', got {raw!r}")
        frame_dir, frames, label = fields
        try:
            frames, label = int(frames), int(label)
        except ValueError:
            raise VideoListError(
                f"{path}:{number}: the frame count and label must be integers "
                f"('<frame dir> <num frames> <label>'), got {raw!r}"
            ) from None
        if frames < 1:
            raise VideoListError(f"{path}:{number}: the frame count must be at least 1, got {frames}")
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1} (MODEL.RECOGNIZER.NUM_CLASSES = {num_classes})" if num_classes else ">= 0"
            raise VideoListError(f"{path}:{number}: label {label} is outside {bound}")
        records.append(VideoRecord(frame_dir, frames, label))
    if not records:
        raise VideoListError(f"{path}: the list holds no video ('<frame dir> <num frames> <label>' per line)")
    return records


def check_filename_template(template, key="RECOGNITION.FILENAME_TMPL"):
    """``template.format(1)`` must work (a ``str.format`` template of the frame number)."""
    try:
        name = template.format(1)
    except (IndexError, KeyError, ValueError) as e:
        raise UserError(f"{key} = {template!r} is not a format string of one frame number, e.g. 'img_{{:05d}}.jpg' "
                        f"({e})") from None
    if name == template:
        raise UserError(f"{key} = {template!r} has no '{{}}' field for the frame number, e.g. 'img_{{:05d}}.jpg'")


# ----------------------------------------------------------------------------- frame sampling
def sample_frames(num_frames, clip_len, frame_interval, num_clips, test_mode, rng, out_of_bound="loop"):
    """0-based frame indices ``[num_clips, clip_len]``: mmaction2's ``SampleFrames`` (no target fps,
    no temporal jitter, no twice-sampling, ``keep_tail_frames`` False).

    Training (random): clip k starts at ``k * a + U{0..a-1}`` with
    ``a = (num_frames - clip_len * frame_interval + 1) // num_clips`` (sorted random starts,
    evenly spread or zero starts for short videos). Testing: ``clip_len == 1``: segment
    centres ``floor(k * n / num_clips + n / (2 num_clips))``; otherwise ``num_clips`` starts
    evenly spread over ``0..max(n - ((clip_len - 1) * frame_interval + 1), 0)`` (rounded; one
    clip: the middle one). Indices past the end wrap around (``"loop"``) or repeat the clip's
    last valid frame (``"repeat_last"``).

    Args:
        rng: numpy Generator (training only; mmaction2 uses the global ``np.random``).
    """
    if test_mode:
        ori_clip_len = (clip_len - 1) * frame_interval + 1
        if clip_len == 1:
            avg = num_frames / float(num_clips)
            offsets = np.arange(num_clips) * avg + avg / 2.0
        else:
            max_offset = max(num_frames - ori_clip_len, 0)
            if num_clips > 1:
                offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
            else:
                offsets = np.array([max_offset // 2])
    else:
        ori_clip_len = clip_len * frame_interval
        avg = (num_frames - ori_clip_len + 1) // num_clips
        if avg > 0:
            offsets = np.arange(num_clips) * avg + rng.integers(avg, size=num_clips)
        elif num_frames > max(num_clips, ori_clip_len):
            offsets = np.sort(rng.integers(num_frames - ori_clip_len + 1, size=num_clips))
        elif avg == 0:
            offsets = np.around(np.arange(num_clips) * ((num_frames - ori_clip_len + 1.0) / num_clips))
        else:
            offsets = np.zeros(num_clips, dtype=np.int64)
    return _clip_indices(offsets, num_frames, clip_len, frame_interval, out_of_bound)


def segment_centres(num_frames, clip_len, frame_interval, num_segments, out_of_bound="loop"):
    """Test-time TSN segment sampling: the clip of each of ``num_segments`` equal segments at the
    segment's centre, ``int(k * s + s / 2)`` with ``s = (num_frames - clip_len * frame_interval + 1) / N``
    (MMAction 0.x's ``_get_test_indices``; for ``clip_len == 1`` equal to ``sample_frames``'s test
    rule). Returns ``[num_segments, clip_len]`` 0-based indices."""
    step = max(num_frames - clip_len * frame_interval + 1, 0) / float(num_segments)
    offsets = np.array([int(step / 2.0 + step * k) for k in range(num_segments)])
    return _clip_indices(offsets, num_frames, clip_len, frame_interval, out_of_bound)


def _clip_indices(offsets, num_frames, clip_len, frame_interval, out_of_bound):
    inds = (np.asarray(offsets)[:, None] + np.arange(clip_len)[None, :] * frame_interval).astype(np.int64)
    if out_of_bound == "loop":
        return np.mod(inds, num_frames)
    if out_of_bound == "repeat_last":
        safe = inds < num_frames
        last = np.max(safe * inds, axis=1)
        return np.where(safe, inds, last[:, None])
    raise ValueError(f"RECOGNITION.OUT_OF_BOUND = {out_of_bound!r}; expected one of {OUT_OF_BOUND_MODES}")


# ----------------------------------------------------------------------------- crops
def random_crop_offset(height, width, size, rng):
    """(y, x) of a ``size`` x ``size`` crop drawn uniformly, every position possible (mmaction2 ``RandomCrop``)."""
    return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))


def centre_crop_offset(height, width, size):
    """(y, x) of the centred crop, ``(H - size) // 2`` (mmaction2 ``CenterCrop``)."""
    return (height - size) // 2, (width - size) // 2


def three_crop_offsets(height, width, size):
    """(y, x) of mmaction2's ``ThreeCrop`` along the long side: start, end, middle (in that order),
    centred on the short side (equal to mmaction2's when ``size`` is the short side, which it requires)."""
    if height > width:
        step, x = (height - size) // 2, (width - size) // 2
        return [(0, x), (2 * step, x), (step, x)]
    step, y = (width - size) // 2, (height - size) // 2
    return [(y, 0), (y, 2 * step), (y, step)]


def crop_frames(frames, y, x, size):
    """``frames[y:y+size, x:x+size]`` of every ``[H, W, 3]`` frame (contiguous copies)."""
    return [np.ascontiguousarray(f[y:y + size, x:x + size]) for f in frames]


class RecognitionTransform:
    """Per-clip transform of a recognition split: short-side resize, crop, flip, normalization.

    Training: the short side is drawn from ``short_sides`` (``scale_mode``, see
    ``choose_short_side``), then a random ``crop_size`` square crop and a horizontal flip with
    ``flip_prob`` (PySlowFast's Kinetics recipe; 0 for Something-Something, whose labels depend
    on direction). Testing: the short side is ``short_sides[0]``, then the centre crop
    (``num_crops`` 1) or crop ``crop_index`` of the three crops (``num_crops`` 3).

    Args:
        short_sides, max_long_side: see ``ClipTransform`` (``DATA.TRAIN_MIN_SCALES`` / ``TEST_MIN_SCALES``, ...).
        crop_size: side of the square crop in pixels (<= the short side).
        mean, std: normalization per output channel (pixels scaled to [0, 1]).
        train: training or test recipe.
        scale_mode: "choice" or "range".
        flip_prob: probability of a horizontal flip (training).
        num_crops: 1 or 3 (testing).
        output_bgr: BGR channels for the model instead of RGB.
        reference: plain-PyTorch tensor conversion instead of the lookup tables.
    """

    def __init__(self, short_sides, max_long_side, crop_size, mean, std, train, scale_mode="choice", flip_prob=0.0,
                 num_crops=1, output_bgr=False, reference=False):
        if num_crops not in (1, 3):
            raise ValueError(f"RECOGNITION.TEST_NUM_CROPS must be 1 or 3, got {num_crops}")
        self.short_sides = [int(s) for s in short_sides]
        self.max_long_side = int(max_long_side)
        self.crop_size = int(crop_size)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.train = train
        self.scale_mode = scale_mode
        self.flip_prob = float(flip_prob) if train else 0.0
        self.num_crops = 1 if train else int(num_crops)
        self.channel_order = BGR_FROM_BGR if output_bgr else RGB_FROM_BGR
        self.reference = reference
        self.lut = normalization_lut(self.mean, self.std)

    def __call__(self, frames, rng, crop_index=0, scale_rng=None):
        """``frames``: T uint8 ``[H, W, 3]`` BGR arrays -> ClipPixels of the float32 ``[3, T, S, S]`` clip
        (S = ``crop_size``). ``scale_rng``: the Generator of the training short side (default ``rng``)."""
        height, width = frames[0].shape[:2]
        short_side = choose_short_side(self.short_sides, self.scale_mode, rng if scale_rng is None else scale_rng) \
            if self.train else self.short_sides[0]
        new_height, new_width = resized_size(height, width, short_side, self.max_long_side)
        if min(new_height, new_width) < self.crop_size:
            raise UserError(
                f"frames resized to {new_width}x{new_height} are smaller than the {self.crop_size}-pixel crop: "
                "the short sides (DATA.TRAIN_MIN_SCALES / DATA.TEST_MIN_SCALES) must be at least "
                "RECOGNITION.TRAIN_CROP_SIZE / TEST_CROP_SIZE"
            )
        frames = resize_frames(frames, new_height, new_width)
        if self.train:
            y, x = random_crop_offset(new_height, new_width, self.crop_size, rng)
        elif self.num_crops == 1:
            y, x = centre_crop_offset(new_height, new_width, self.crop_size)
        else:
            y, x = three_crop_offsets(new_height, new_width, self.crop_size)[crop_index]
        frames = crop_frames(frames, y, x, self.crop_size)
        if self.flip_prob > 0.0 and rng.random() < self.flip_prob:
            frames = flip_frames(frames)
        if self.reference:
            return ClipPixels(tensor=frames_to_tensor_reference(frames, self.channel_order, self.mean, self.std))
        return ClipPixels(frames, self.channel_order, self.lut)


class RawFrameDataset(torch.utils.data.Dataset):
    """Video classification dataset over raw frames; an item is one view of one video.

    Args:
        frame_root: folder the list's frame dirs are relative to.
        videos: list of VideoRecord.
        filename_tmpl: ``str.format`` template of the frame number (e.g. ``img_{:05d}.jpg``).
        start_index: file number of frame 0 (1 for the Kinetics / Something-Something layouts).
        transform: RecognitionTransform of the split.
        sampling: "dense" (one clip of ``clip_len`` frames ``frame_interval`` apart per item;
            testing: ``test_num_clips`` clips per video spread over it) or "segments" (TSN:
            ``num_segments`` segments, ``clip_len`` frames each, concatenated in time; training:
            random offset in each segment; testing: segment centres).
        clip_len, frame_interval: frames per clip (per segment) and their stride.
        num_segments: segments (``sampling`` "segments").
        test_num_clips: clips per video at test time (``sampling`` "dense").
        train: training (random sampling, one view per video) or testing (all views).
        num_pathways, alpha: model input pathways (SlowFast: Slow = every alpha-th frame).
        defer_pixels: items carry ClipPixels for the collator (the loader's path); False: tensors.
        out_of_bound: "loop" or "repeat_last" (see ``sample_frames``).

    Test items are ordered video by video, ``view = clip * num_crops + crop``; ``views`` is the
    count per video. Item layout (the batch dict of ``BatchCollator``): "videos" (per pathway
    ``[3, T_p, S, S]``), "whwh" ``[4]``, "boxes" ``[0, 4]`` (none), "labels" int64 ``[1]`` (the class),
    "metadata" {video_id, video_index, view, orig_size}, "index".
    """

    def __init__(self, frame_root, videos, filename_tmpl, start_index, transform, sampling="dense", clip_len=8,
                 frame_interval=8, num_segments=1, test_num_clips=1, train=True, num_pathways=1, alpha=4,
                 defer_pixels=False, out_of_bound="loop"):
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"RECOGNITION.SAMPLING = {sampling!r}; expected one of {SAMPLING_MODES}")
        self.frame_root = frame_root
        self.videos = list(videos)
        self.filename_tmpl = filename_tmpl
        self.start_index = int(start_index)
        self.transform = transform
        self.sampling = sampling
        self.clip_len, self.frame_interval = int(clip_len), int(frame_interval)
        self.num_segments = int(num_segments)
        self.train = train
        self.num_clips = 1 if (train or sampling == "segments") else int(test_num_clips)
        self.num_crops = transform.num_crops
        self.views = self.num_clips * self.num_crops
        frames_per_item = self.clip_len * (self.num_segments if sampling == "segments" else 1)
        self.pathway_frames = pathway_frame_indices(frames_per_item, num_pathways, alpha)
        self.defer_pixels = defer_pixels
        self.out_of_bound = out_of_bound
        self.corrupt_frames = CorruptFrameLog(logger)

    #: Batches are not padded (every crop is ``crop_size`` square; padding would enter the head's average pool).
    size_divisibility = 0

    def __len__(self):
        return len(self.videos) * self.views

    def locate(self, index):
        """(video index, clip, crop) of item ``index``."""
        video, view = divmod(int(index), self.views)
        clip, crop = divmod(view, self.num_crops)
        return video, clip, crop

    def labels(self):
        """int64 ``[num_videos]`` class of every video."""
        return np.array([v.label for v in self.videos], dtype=np.int64)

    def aspect_groups(self):
        """All crops are square: one group."""
        return np.zeros(len(self), dtype=np.int64)

    def frame_indices(self, video_index, clip, rng):
        """0-based frame indices (flat, in time order) of one item of ``video_index``."""
        record = self.videos[video_index]
        if self.sampling == "segments":
            if self.train:
                inds = sample_frames(record.num_frames, self.clip_len, self.frame_interval, self.num_segments,
                                     False, rng, self.out_of_bound)
            else:
                inds = segment_centres(record.num_frames, self.clip_len, self.frame_interval, self.num_segments,
                                       self.out_of_bound)
            return inds.reshape(-1)
        if self.train:
            return sample_frames(record.num_frames, self.clip_len, self.frame_interval, 1, False, rng,
                                 self.out_of_bound)[0]
        return sample_frames(record.num_frames, self.clip_len, self.frame_interval, self.num_clips, True, rng,
                             self.out_of_bound)[clip]

    def frame_paths(self, video_index, indices):
        folder = os.path.join(self.frame_root, self.videos[video_index].frame_dir)
        return [os.path.join(folder, self.filename_tmpl.format(int(i) + self.start_index)) for i in indices]

    def __getitem__(self, key):
        index, rng, scale_rng = sample_generators(key)
        video, clip, crop = self.locate(index)
        frames = read_frames(self.frame_paths(video, self.frame_indices(video, clip, rng)),
                             on_corrupt=self.corrupt_frames)
        orig_size = tuple(frames[0].shape[:2])
        pixels = self.transform(frames, rng, crop, scale_rng=scale_rng)
        height, width = pixels.shape[-2:]
        pathways = [pixels.select(indices) for indices in self.pathway_frames]
        return {
            "videos": pathways if self.defer_pixels else [p.to_tensor() for p in pathways],
            "whwh": torch.tensor([width, height, width, height], dtype=torch.float32),
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.tensor([self.videos[video].label], dtype=torch.int64),
            "metadata": {"video_id": self.videos[video].frame_dir, "video_index": video,
                         "view": index % self.views, "orig_size": orig_size},
            "index": int(index),
        }
