"""A small, learnable action-detection dataset in the AVA on-disk layout (or the UCF101-24 / JHMDB-21 one),
or a video classification dataset in the raw-frame layout (``--format recognition``).

``python -m stmixer.data.synthetic --out DIR [--format {ava,ucf24,jhmdb}] [--videos N] [--seconds S]
[--size H W] [--seed K]`` writes the dataset (``--format ucf24`` / ``jhmdb``: see "UCF101-24 /
JHMDB-21 layout" below); ``--video FILE [--seconds S] [--size H W] [--fps F]`` writes one video
file of the same kind (with its ground truth) to try ``demo.py`` on.

Every video shows 2-4 "actors" (outlined shapes) on a textured background that pans
steadily. Each actor keeps its classes for the whole video and carries 1-3 actions:

* exactly one shape class: disc, square, triangle, cross (appearance);
* optionally one marking class: striped, spot (appearance);
* optionally one motion class: sway (horizontal oscillation), bob (vertical
  oscillation), circle (circular motion). Actors without a motion class stand still.

Motion classes are defined by movement over time alone: shape, size, colour and
marking are drawn independently of the motion, the oscillation phase is random, and the
anchors of still and moving actors come from the same range, so one frame says nothing
about them. Periods (1.2-1.8 s) and amplitudes (7-10 % of the short side) make the
motion plain within 8 frames at rate 4 (about 1 s) and within 4 frames at rate 16.

Files (defaults of the config, so only ``DATA.PATH_TO_DATA_DIR`` needs setting):
``frames/<video>/<video>_%06d.jpg`` (30 fps, frame 1 = second 900),
``frame_lists/{train,val}.csv``, ``annotations_v2.2/ava_{train,val}_v2.2.csv`` (and TubeR's JSON form of
it, ``annotations_v2.2/ava_{train,val}_v22.json``, ``stmixer.data.tuber_json``),
``annotations_v2.2/ava_action_list_v2.2_for_activitynet_2019.pbtxt``,
``annotations_v2.2/ava_val_excluded_timestamps_v2.2.csv``,
``annotations_v2.2/ava_{train,val}_predicted_boxes.csv``, the same fake detections as mmaction2's
proposal files ``annotations_v2.2/ava_dense_proposals_{train,val}.FAIR.recall_93.9.pkl`` (or ``.csv``
with ``--proposals-format csv``; ``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE``) and ``synthetic_dataset.json``
(what was generated, with the class definitions).

UCF101-24 / JHMDB-21 layout (``--format ucf24`` / ``jhmdb``): the same videos, ``--seconds``
long at 25 / 30 fps, frames ``rgb-images/syn/<video>/%05d.jpg`` (ucf24) or
``Frames/syn/<video>/%05d.png`` (jhmdb), 1-based, and the ground-truth pickle
``UCF101v2-GT.pkl`` / ``JHMDB-GT.pkl`` (labels, gttubes, nframes, train_videos, test_videos,
resolution; jhmdb has 3 splits). Every actor is one tube over the whole video, labelled by
how it moves: still, sway, bob or circle (4 classes, all defined by motion alone).

Recognition layout (``--format recognition``): each video shows one actor and is labelled by
how it moves (still, sway, bob, circle; 0-based labels in that order), ``--seconds`` long at
30 fps: ``rawframes/<video>/img_%05d.jpg`` (1-based), ``train_list.txt`` / ``val_list.txt``
(``<video> <num frames> <label>``), ``classes.txt``.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import pickle
import sys
import time
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..ava_files import (
    AVA_FIRST_KEYFRAME_SECOND,
    AVA_FPS,
    AVA_START_SECOND,
    FRAME_LIST_HEADER,
    KeyframeSpan,
    ava_frame_name,
    read_box_csv,
    second_to_frame_index,
    write_label_map,
)
from ..utils.io import atomic_open
from .proposals import proposal_key
from .tuber_json import write_tuber_json

SHAPES = ("disc", "square", "triangle", "cross")
MARKINGS = ("striped", "spot")
MOTIONS = ("sway", "bob", "circle")
CLASS_DEFINITIONS = {
    "disc": "appearance: the actor is an ellipse",
    "square": "appearance: the actor is a rectangle",
    "triangle": "appearance: the actor is a triangle pointing up",
    "cross": "appearance: the actor is a plus-shaped cross",
    "striped": "appearance: diagonal dark stripes on the actor",
    "spot": "appearance: a white spot in the middle of the actor",
    "sway": "motion only: the actor oscillates left-right",
    "bob": "motion only: the actor oscillates up-down",
    "circle": "motion only: the actor moves on a circle",
}
CLASS_NAMES = SHAPES + MARKINGS + MOTIONS
ACTION_ID = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}

# Half the largest clip span of the official configs (32 frames at rate 2, 4 at rate 16): frames
# after the last keyframe that a clip may read.
_CLIP_HALF_SPAN = 32
_OUTLINE_PX = 2
_MIN_SIZE = (32, 48)


@dataclasses.dataclass
class Actor:
    """One actor of a video; pixel units of the frame, time in seconds from second 900."""

    shape: str
    marking: Optional[str]
    motion: Optional[str]
    width: int
    height: int
    anchor: Tuple[float, float]  # top-left corner (x, y) at zero displacement
    amplitude: float
    period: float
    phase: float
    clockwise: bool
    color: Tuple[int, int, int]  # BGR
    stripe_period: int

    @property
    def actions(self):
        """Sorted action ids of the actor."""
        return sorted(ACTION_ID[n] for n in (self.shape, self.marking, self.motion) if n is not None)


@dataclasses.dataclass
class VideoSpec:
    """Everything needed to render one video and annotate its keyframes."""

    name: str
    split: str
    height: int
    width: int
    num_frames: int
    keyframe_seconds: List[int]
    excluded_seconds: List[int]
    texture_seed: int
    pan_velocity: Tuple[float, float]  # px per second (x, y)
    pan_origin: Tuple[float, float]
    actors: List[Actor]
    start_second: int = AVA_START_SECOND  # second of frame index 0 (a Kinetics clip: its <start>)


def displacement(actor, t):
    """(dx, dy) pixels of ``actor`` at time ``t`` seconds (0 for still actors)."""
    if actor.motion is None:
        return 0.0, 0.0
    angle = 2.0 * math.pi * t / actor.period + actor.phase
    if actor.motion == "sway":
        return actor.amplitude * math.sin(angle), 0.0
    if actor.motion == "bob":
        return 0.0, actor.amplitude * math.sin(angle)
    sign = 1.0 if actor.clockwise else -1.0
    return actor.amplitude * math.cos(angle), sign * actor.amplitude * math.sin(angle)


def top_left(actor, t):
    """Integer (x, y) of the actor's sprite corner at time ``t`` seconds (frame f of the dataset: ``f / AVA_FPS``)."""
    dx, dy = displacement(actor, t)
    return int(round(actor.anchor[0] + dx)), int(round(actor.anchor[1] + dy))


def render_sprite(actor):
    """The actor's look: (BGR uint8 ``[h, w, 3]``, bool mask ``[h, w]``) with a dark outline."""
    h, w = actor.height, actor.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cx, cy = w / 2.0, h / 2.0
    if actor.shape == "disc":
        mask = ((xx - cx) / cx) ** 2 + ((yy - cy) / cy) ** 2 <= 1.0
    elif actor.shape == "square":
        mask = np.ones((h, w), dtype=bool)
    elif actor.shape == "triangle":
        mask = np.abs(xx - cx) <= yy / h * cx + 0.5
        cy = h * 2.0 / 3.0
    elif actor.shape == "cross":
        mask = (np.abs(xx - cx) <= w / 6.0) | (np.abs(yy - cy) <= h / 6.0)
    else:
        raise ValueError(f"unknown shape {actor.shape!r}")
    kernel = np.ones((2 * _OUTLINE_PX + 1, 2 * _OUTLINE_PX + 1), np.uint8)
    inner = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:] = actor.color
    if actor.marking == "striped":
        stripes = ((xx + yy) // actor.stripe_period).astype(np.int64) % 2 == 1
        image[stripes] = (np.asarray(actor.color) * 0.35).astype(np.uint8)
    elif actor.marking == "spot":
        radius = 0.17 * min(w, h)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = 245
    image[mask & ~inner] = 20
    return image, mask


def sprite_extent(mask):
    """Tight (x1, y1, x2, y2) of a mask's pixels, x2 and y2 exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def make_texture(rng, height, width):
    """A seamless (periodic) background texture, uint8 BGR, at least ``height x width``.

    Smooth luminance blobs (1/f^2.2 noise) with a little colour noise and a soft grating,
    around a muted random base colour.
    """
    tex_h, tex_w = 2 ** math.ceil(math.log2(height)), 2 ** math.ceil(math.log2(width))
    fy, fx = np.fft.fftfreq(tex_h)[:, None], np.fft.fftfreq(tex_w)[None, :]
    spectrum = 1.0 / (np.sqrt(fx**2 + fy**2) + 1.0 / 64) ** 2.2

    def noise():
        field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((tex_h, tex_w))) * spectrum))
        return (field - field.mean()) / field.std()

    yy, xx = np.mgrid[0:tex_h, 0:tex_w]
    k = rng.integers(2, 6, size=4)
    grating = np.sin(2 * np.pi * (xx * k[0] / tex_w + yy * k[1] / tex_h)) * np.sin(
        2 * np.pi * (xx * k[2] / tex_w - yy * k[3] / tex_h)
    )
    base = rng.uniform(0.3, 0.65, size=3)
    luminance = 0.16 * noise() + 0.05 * grating
    texture = base[None, None, :] + luminance[..., None] + 0.05 * np.stack([noise() for _ in range(3)], axis=-1)
    return (np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _random_color(rng):
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(150, 256)]]], dtype=np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _balanced(rng, options, count):
    """``count`` entries cycling through ``options``, shuffled (equal frequencies up to one)."""
    return [options[i] for i in rng.permutation(np.arange(count) % len(options))]


def _gap(a, b):
    """Separation in pixels between boxes (x, y, w, h) along the axis where they are farther apart
    (negative: they overlap)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return max(bx - (ax + aw), ax - (bx + bw), by - (ay + ah), ay - (by + bh))


def _place(rng, sizes, amplitude, height, width, overlap_prob=0.12):
    """Anchors (top-left x, y) for actors of ``sizes`` [(w, h)], each kept inside the frame for
    any displacement up to ``amplitude``.

    Most actors are placed so that they never touch while moving (the best of 100 random
    positions); with ``overlap_prob`` an actor is put partly over an earlier one instead
    (centres 0.6-0.8 of its size apart beyond the motion, so at most about 40 % hidden).
    """
    anchors = []
    margin = amplitude + 1
    for i, (w, h) in enumerate(sizes):
        x_range = (margin, width - w - margin)
        y_range = (margin, height - h - margin)
        if i and rng.random() < overlap_prob:
            j = int(rng.integers(i))
            angle = rng.uniform(0, 2 * np.pi)
            reach = rng.uniform(0.6, 0.8) * max(w, h) + 2 * amplitude
            x = float(np.clip(anchors[j][0] + reach * np.cos(angle), *x_range))
            y = float(np.clip(anchors[j][1] + reach * np.sin(angle), *y_range))
        else:
            best, best_gap = None, -np.inf
            for _ in range(100):
                x, y = rng.uniform(*x_range), rng.uniform(*y_range)
                gap = min(
                    (_gap((x, y, w, h), (ax, ay, aw, ah)) - 2 * margin for (ax, ay), (aw, ah) in zip(anchors, sizes)),
                    default=0.0,
                )
                if gap > best_gap:
                    best, best_gap = (x, y), gap
                if gap >= 0:
                    break
            x, y = best
        anchors.append((x, y))
    return anchors


def plan_dataset(num_videos, seconds, height, width, seed, val_fraction=0.2, motion_amplitude=(0.07, 0.10)):
    """The VideoSpecs of a dataset (deterministic for the arguments).

    Args:
        num_videos: total videos; ``round(num_videos * val_fraction)`` (at least 1) go to val.
        seconds: annotated keyframes per video, at seconds 902, 903, ...
        height, width: frame size in pixels.
        seed: random seed.
        val_fraction: share of validation videos.
        motion_amplitude: (low, high) range of the motion classes' amplitude, as a fraction
            of the frame's short side.
    """
    if num_videos < 2:
        raise ValueError("--videos must be at least 2 (one train and one val video)")
    if seconds < 1:
        raise ValueError("--seconds must be at least 1")
    if min(height, width) < _MIN_SIZE[0] or max(height, width) < _MIN_SIZE[1]:
        raise ValueError(f"frames of {height}x{width} are too small for the actors; use at least 32x48")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    num_val = min(num_videos - 1, max(1, int(round(num_videos * val_fraction))))
    splits = ["train"] * (num_videos - num_val) + ["val"] * num_val
    keyframe_seconds = list(range(AVA_FIRST_KEYFRAME_SECOND, AVA_FIRST_KEYFRAME_SECOND + seconds))
    num_frames = second_to_frame_index(keyframe_seconds[-1]) + _CLIP_HALF_SPAN
    counts = rng.choice([2, 3, 4], size=num_videos, p=[0.35, 0.45, 0.2])
    short = min(height, width)
    specs = []
    for split in ("train", "val"):
        members = [v for v in range(num_videos) if splits[v] == split]
        total = int(sum(counts[v] for v in members))
        shapes = _balanced(rng, SHAPES, total)
        markings = _balanced(rng, (None, None) + MARKINGS, total)
        motions = _balanced(rng, (None,) + MOTIONS, total)
        used = 0
        for number, v in enumerate(members):
            n = int(counts[v])
            sizes = []
            for _ in range(n):
                side = rng.uniform(0.26, 0.36) * short
                aspect = rng.uniform(0.8, 1.25)
                sizes.append((int(round(side / math.sqrt(aspect))), int(round(side * math.sqrt(aspect)))))
            amplitudes = rng.uniform(*motion_amplitude, size=n) * short
            anchors = _place(rng, sizes, float(amplitudes.max()), height, width)
            actors = [
                Actor(
                    shape=shapes[used + a],
                    marking=markings[used + a],
                    motion=motions[used + a],
                    width=sizes[a][0],
                    height=sizes[a][1],
                    anchor=anchors[a],
                    amplitude=float(amplitudes[a]),
                    period=float(rng.uniform(1.2, 1.8)),
                    phase=float(rng.uniform(0, 2 * np.pi)),
                    clockwise=bool(rng.random() < 0.5),
                    color=_random_color(rng),
                    stripe_period=int(rng.integers(5, 8)),
                )
                for a in range(n)
            ]
            used += n
            speed, direction = rng.uniform(6.0, 24.0), rng.uniform(0, 2 * np.pi)
            excluded = []
            if split == "val" and seconds > 1 and rng.random() < 0.15:
                excluded = [int(rng.choice(keyframe_seconds))]
            specs.append(
                VideoSpec(
                    name=f"syn_{split}_{number:04d}",
                    split=split,
                    height=height,
                    width=width,
                    num_frames=num_frames,
                    keyframe_seconds=keyframe_seconds,
                    excluded_seconds=excluded,
                    texture_seed=int(rng.integers(2**62)),
                    pan_velocity=(speed * math.cos(direction), speed * math.sin(direction)),
                    pan_origin=(float(rng.uniform(0, 512)), float(rng.uniform(0, 512))),
                    actors=actors,
                )
            )
    return specs


#: Synthetic AVA-Kinetics: a Kinetics clip is cut as mmaction2's cut_kinetics.py cuts it around
#: its keyframe, seconds keyframe - 2 .. keyframe + 2 of the original video (120 frames at 30 fps).
KINETICS_CLIP_SECONDS = 4


def plan_kinetics_clips(num_clips, height, width, seed, val_fraction=0.2, motion_amplitude=(0.07, 0.10)):
    """VideoSpecs of synthetic Kinetics clips ``<11-character id>_<start:06d>_<end:06d>``, each with
    one keyframe at ``start + 2`` (frame index 60) and 120 frames (frame index 0 = second ``start``)."""
    specs = plan_dataset(num_clips, 1, height, width, seed + 1_000_003, val_fraction, motion_amplitude)
    out = []
    for number, spec in enumerate(specs):
        start = 10 + 7 * number  # where the clip lies in its (imaginary) YouTube video
        end = start + KINETICS_CLIP_SECONDS
        youtube_id = f"k{spec.split[:2]}{number:08d}"  # 11 characters, like a YouTube id
        out.append(dataclasses.replace(
            spec, name=f"{youtube_id}_{start:06d}_{end:06d}", num_frames=KINETICS_CLIP_SECONDS * AVA_FPS,
            keyframe_seconds=[start + KINETICS_CLIP_SECONDS // 2], excluded_seconds=[], start_second=start,
        ))
    return out


def render_frames(spec, fps=AVA_FPS, num_frames=None):
    """Yield the frames of ``spec``: uint8 ``[H, W, 3]`` BGR, frame f at time ``f / fps`` seconds.

    Args:
        spec: VideoSpec.
        fps: frame rate (frames per second); the dataset uses 30.
        num_frames: frames to render (default ``spec.num_frames``).
    """
    texture = make_texture(np.random.default_rng(spec.texture_seed), spec.height, spec.width)
    tex_h, tex_w = texture.shape[:2]
    tiled = np.tile(texture, (2, 2, 1))
    sprites = [render_sprite(actor) for actor in spec.actors]
    for f in range(spec.num_frames if num_frames is None else num_frames):
        t = f / fps
        ox = int(round(spec.pan_origin[0] + spec.pan_velocity[0] * t)) % tex_w
        oy = int(round(spec.pan_origin[1] + spec.pan_velocity[1] * t)) % tex_h
        frame = tiled[oy:oy + spec.height, ox:ox + spec.width].copy()
        for actor, (image, mask) in zip(spec.actors, sprites):
            x, y = top_left(actor, t)
            region = frame[y:y + actor.height, x:x + actor.width]
            region[mask] = image[mask]
        yield frame


def render_video(spec, frame_root, quality=90):
    """Write every frame of ``spec`` as JPEG under ``frame_root/<name>/``; returns the frame count."""
    os.makedirs(os.path.join(frame_root, spec.name), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for f, frame in enumerate(render_frames(spec)):
        path = os.path.join(frame_root, ava_frame_name(spec.name, f))
        if not cv2.imwrite(path, frame, params):
            raise OSError(f"cannot write frame {path}")
    return spec.num_frames


def actor_boxes(spec, t):
    """Normalized ``(x1, y1, x2, y2)`` of every actor's visible extent at time ``t`` seconds, in actor order."""
    boxes = []
    for actor in spec.actors:
        ex1, ey1, ex2, ey2 = sprite_extent(render_sprite(actor)[1])
        x, y = top_left(actor, t)
        boxes.append(((x + ex1) / spec.width, (y + ey1) / spec.height, (x + ex2) / spec.width, (y + ey2) / spec.height))
    return boxes


def keyframe_boxes(spec):
    """Per keyframe second (excluded ones left out): list of (person id, normalized box, action ids)."""
    out = {}
    for second in spec.keyframe_seconds:
        if second in spec.excluded_seconds:
            continue
        boxes = actor_boxes(spec, KeyframeSpan(spec.start_second, second, second).frame_index(second) / AVA_FPS)
        out[second] = [(person, box, actor.actions) for person, (actor, box) in enumerate(zip(spec.actors, boxes))]
    return out


def _fmt_box(box):
    return ",".join(f"{v:.3f}" for v in box)


def predicted_box_rows(spec, boxes, rng):
    """Rows ``video,second,x1,y1,x2,y2,,score`` of a fake person detector: every ground-truth
    box jittered (score 0.8-1.0) plus about one false positive every two keyframes (score < 0.6)."""
    rows = []
    for second, persons in boxes.items():
        for _, box, _ in persons:
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0.0, 0.03, size=4) * np.array([w, h, w, h])
            x1, y1, x2, y2 = np.clip(np.asarray(box) + jitter, 0.0, 1.0)
            if x2 - x1 > 0.01 and y2 - y1 > 0.01:
                rows.append(f"{spec.name},{second},{_fmt_box((x1, y1, x2, y2))},,{rng.uniform(0.8, 1.0):.4f}")
        for _ in range(rng.poisson(0.5)):
            w, h = rng.uniform(0.15, 0.35, size=2)
            x1, y1 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            rows.append(f"{spec.name},{second},{_fmt_box((x1, y1, x1 + w, y1 + h))},,{rng.uniform(0.02, 0.6):.4f}")
    return rows


#: Proposal files of the two-stage detectors, per split, with mmaction2's file names (so its configs'
#: ``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE`` find them); ``--proposals-format csv`` writes ``.csv`` instead of ``.pkl``.
PROPOSAL_FILE = "ava_dense_proposals_{split}.FAIR.recall_93.9.{ext}"


def write_proposal_file(path, predicted_rows, fmt="pkl"):
    """Write the fake person detector's boxes (``predicted_box_rows``: ground truth jittered, score
    0.8-1.0, plus false positives scored below 0.6) as a proposal file (``stmixer.data.proposals``).

    ``fmt`` "pkl": mmaction2's pickle ``{"<video>,<second:04d>": float64 [N, 5]}``, keyed by
    ``proposal_key`` (AVA-Kinetics clips under their YouTube id, as mmaction2 looks them up);
    "csv": lines ``video_id,timestamp,x1,y1,x2,y2,score`` (same keys). Returns the number of keyframes.
    """
    proposals = {}
    for row in predicted_rows:
        video, second, x1, y1, x2, y2, _, score = row.split(",")
        key = proposal_key(video, int(second), kinetics=True)
        proposals.setdefault(key, []).append([float(v) for v in (x1, y1, x2, y2, score)])
    if fmt == "pkl":
        with atomic_open(path, "wb") as f:
            pickle.dump({k: np.asarray(v, dtype=np.float64) for k, v in proposals.items()}, f, protocol=4)
    elif fmt == "csv":
        _write_lines(path, [f"{k},{','.join(f'{x:g}' for x in box)}" for k, boxes in proposals.items() for box in boxes])
    else:
        raise ValueError(f"unknown proposal file format {fmt!r}; expected 'pkl' or 'csv'")
    return len(proposals)


def write_annotations(specs, out_dir, seed, annotation_dir="annotations_v2.2", proposals_format="pkl"):
    """Write frame lists, box CSVs, label map, exclusions, predicted boxes and the proposal files
    (``PROPOSAL_FILE``, in ``proposals_format``); returns per-split counts."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    ann = os.path.join(out_dir, annotation_dir)
    counts = {}
    for split in ("train", "val"):
        members = [s for s in specs if s.split == split]
        frame_rows, gt_rows, predicted_rows = [], [], []
        class_counts = {name: 0 for name in CLASS_NAMES}
        keyframes = boxes_total = 0
        for video_idx, spec in enumerate(members):
            frame_rows.extend(
                f'{spec.name} {video_idx} {f} {ava_frame_name(spec.name, f)} ""' for f in range(spec.num_frames)
            )
            boxes = keyframe_boxes(spec)
            for second, persons in boxes.items():
                keyframes += 1
                for person, box, actions in persons:
                    boxes_total += 1
                    for action in actions:
                        class_counts[CLASS_NAMES[action - 1]] += 1
                        gt_rows.append(f"{spec.name},{second},{_fmt_box(box)},{action},{person}")
            predicted_rows.extend(predicted_box_rows(spec, boxes, rng))
        _write_lines(os.path.join(out_dir, "frame_lists", f"{split}.csv"), [FRAME_LIST_HEADER] + frame_rows)
        _write_lines(os.path.join(ann, f"ava_{split}_v2.2.csv"), gt_rows)
        # TubeR's JSON form of the same ground truth (stmixer.data.tuber_json)
        write_tuber_json(os.path.join(ann, f"ava_{split}_v22.json"),
                         read_box_csv(os.path.join(ann, f"ava_{split}_v2.2.csv")))
        _write_lines(os.path.join(ann, f"ava_{split}_predicted_boxes.csv"), predicted_rows)
        write_proposal_file(os.path.join(ann, PROPOSAL_FILE.format(split=split, ext=proposals_format)),
                            predicted_rows, proposals_format)
        counts[split] = {
            "videos": len(members),
            "frames": sum(s.num_frames for s in members),
            "keyframes": keyframes,
            "boxes": boxes_total,
            "labels_per_class": class_counts,
        }
    excluded = [f"{s.name},{second}" for s in specs for second in s.excluded_seconds]
    _write_lines(os.path.join(ann, "ava_val_excluded_timestamps_v2.2.csv"), excluded)
    with atomic_open(os.path.join(ann, "ava_action_list_v2.2_for_activitynet_2019.pbtxt"), "w") as f:
        write_label_map(f, CLASS_NAMES)
    return counts


def _write_lines(path, lines):
    with atomic_open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def generate_dataset(out_dir, num_videos=160, seconds=4, size=(128, 160), seed=0, val_fraction=0.2, workers=None,
                     quality=90, motion_amplitude=(0.07, 0.10), kinetics_clips=0, proposals_format="pkl"):
    """Generate the dataset under ``out_dir``; returns the summary also written to ``synthetic_dataset.json``.

    ``kinetics_clips`` > 0 (``--format ava_kinetics``) adds that many Kinetics-style clips
    (``plan_kinetics_clips``) to the same frame lists and box CSVs, as mmaction2's AVA-Kinetics.

    Frames are written first and the lists and annotations last, so an interrupted run
    leaves no frame lists (the loader then fails clearly instead of reading half a dataset).
    """
    start = time.time()
    height, width = size
    specs = plan_dataset(num_videos, seconds, height, width, seed, val_fraction, motion_amplitude)
    if kinetics_clips:
        specs = specs + plan_kinetics_clips(kinetics_clips, height, width, seed, val_fraction, motion_amplitude)
    frame_root = os.path.join(out_dir, "frames")
    workers = workers or len(os.sched_getaffinity(0))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(render_video, specs, [frame_root] * len(specs), [quality] * len(specs)))
    else:
        for spec in specs:
            render_video(spec, frame_root, quality)
    counts = write_annotations(specs, out_dir, seed, proposals_format=proposals_format)
    summary = {
        "generator": "python -m stmixer.data.synthetic",
        "arguments": {"videos": num_videos, "seconds": seconds, "size": [height, width], "seed": seed,
                      "val_fraction": val_fraction, "quality": quality, "motion_amplitude": list(motion_amplitude)},
        "fps": AVA_FPS,
        "frames_per_video": specs[0].num_frames,
        "keyframe_seconds": specs[0].keyframe_seconds,
        "action_classes": len(CLASS_NAMES),
        "classes": [
            {"id": ACTION_ID[name], "name": name, "definition": CLASS_DEFINITIONS[name]} for name in CLASS_NAMES
        ],
        "splits": counts,
        "generation_seconds": round(time.time() - start, 1),
    }
    if kinetics_clips:
        summary["format"] = "ava_kinetics"
        summary["kinetics_clips"] = [s.name for s in specs if s.start_second != AVA_START_SECOND]
    with atomic_open(os.path.join(out_dir, "synthetic_dataset.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


# ------------------------------------------------------------------------------ UCF101-24 / JHMDB-21 layout
#: One class per actor tube: how the actor moves ("still" actors stand still; the others are motion-only).
TUBE_CLASSES = ("still",) + MOTIONS
TUBE_CLASS_DEFINITIONS = {"still": "motion only: the actor does not move", **{m: CLASS_DEFINITIONS[m] for m in MOTIONS}}
#: Per format: frame rate, frame folder, frame file extension, ground-truth pickle, number of splits
#: (the files the configs under config_files/ucf24, config_files/jhmdb and the tiny synthetic ones expect).
TUBE_FORMATS = {
    "ucf24": {"fps": 25, "frame_dir": "rgb-images", "ext": "jpg", "gt_file": "UCF101v2-GT.pkl", "splits": 1},
    "jhmdb": {"fps": 30, "frame_dir": "Frames", "ext": "png", "gt_file": "JHMDB-GT.pkl", "splits": 3},
}
#: The first level of a synthetic video's name (UCF101-24 / JHMDB-21 name videos <class>/<video>;
#: a synthetic video holds several classes).
TUBE_VIDEO_GROUP = "syn"


def tube_video_name(spec):
    """The ground-truth pickle's name of ``spec``: ``syn/<name>``."""
    return f"{TUBE_VIDEO_GROUP}/{spec.name}"


def tube_label(actor):
    """0-based class index (into TUBE_CLASSES) of an actor's tube."""
    return TUBE_CLASSES.index(actor.motion or "still")


def render_tube_video(spec, frame_root, fps, num_frames, ext, quality=90):
    """Write frames ``frame_root/syn/<name>/%05d.<ext>`` (1-based) of ``spec`` at ``fps``; returns the count."""
    folder = os.path.join(frame_root, tube_video_name(spec))
    os.makedirs(folder, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == "jpg" else []
    for f, frame in enumerate(render_frames(spec, fps, num_frames)):
        path = os.path.join(folder, f"{f + 1:05d}.{ext}")
        if not cv2.imwrite(path, frame, params):
            raise OSError(f"cannot write frame {path}")
    return num_frames


def tube_groundtruth(specs, fps, num_frames, splits):
    """The ground-truth pickle's dict: every actor is one tube over the whole video, in pixels.

    Split 1 is the plan's train/val partition; further splits (JHMDB has 3) rotate the
    test videos through the list, keeping the same number of test videos.
    """
    names = [tube_video_name(s) for s in specs]
    gttubes, nframes, resolution = {}, {}, {}
    for spec, name in zip(specs, names):
        frames = np.arange(1, num_frames + 1, dtype=np.float32)[:, None]
        boxes = np.array([actor_boxes(spec, (f - 1) / fps) for f in range(1, num_frames + 1)], dtype=np.float64)
        boxes = np.clip(boxes * np.array([spec.width, spec.height, spec.width, spec.height]), 0,
                        [spec.width, spec.height, spec.width, spec.height])  # [frames, actors, 4] pixels
        tubes = {}
        for a, actor in enumerate(spec.actors):
            tubes.setdefault(tube_label(actor), []).append(
                np.concatenate([frames, boxes[:, a].astype(np.float32)], axis=1))
        gttubes[name], nframes[name], resolution[name] = tubes, num_frames, (spec.height, spec.width)
    test = [n for s, n in zip(specs, names) if s.split == "val"]
    train_lists, test_lists = [], []
    for k in range(splits):
        shift = k * len(test)
        rotated = names[shift % len(names):] + names[:shift % len(names)] if k else None
        test_k = test if k == 0 else sorted(rotated[:len(test)])
        train_lists.append([n for n in names if n not in test_k])
        test_lists.append(list(test_k))
    return {"labels": list(TUBE_CLASSES), "gttubes": gttubes, "nframes": nframes, "train_videos": train_lists,
            "test_videos": test_lists, "resolution": resolution}


def generate_tube_dataset(out_dir, fmt, num_videos=160, seconds=2.0, size=(128, 160), seed=0, val_fraction=0.2,
                          workers=None, quality=90, motion_amplitude=(0.07, 0.10)):
    """Generate a dataset in the UCF101-24 (``fmt="ucf24"``) or JHMDB-21 (``"jhmdb"``) layout under ``out_dir``.

    The videos are those of the AVA-layout generator (same planning and renderer), ``seconds``
    long at the format's frame rate; each actor is one tube labelled by its motion
    (TUBE_CLASSES). Frames first, the ground-truth pickle last (an interrupted run leaves none).
    Returns the summary also written to ``synthetic_dataset.json``.
    """
    import pickle

    start = time.time()
    form = TUBE_FORMATS[fmt]
    fps = form["fps"]
    num_frames = int(round(seconds * fps))
    if num_frames < 1:
        raise ValueError(f"--seconds {seconds} gives no frame at {fps} fps")
    height, width = size
    specs = plan_dataset(num_videos, 1, height, width, seed, val_fraction, motion_amplitude)
    frame_root = os.path.join(out_dir, form["frame_dir"])
    workers = workers or len(os.sched_getaffinity(0))
    args = (specs, [frame_root] * len(specs), [fps] * len(specs), [num_frames] * len(specs),
            [form["ext"]] * len(specs), [quality] * len(specs))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(render_tube_video, *args))
    else:
        for a in zip(*args):
            render_tube_video(*a)
    gt = tube_groundtruth(specs, fps, num_frames, form["splits"])
    with atomic_open(os.path.join(out_dir, form["gt_file"]), "wb") as f:
        pickle.dump(gt, f, protocol=2)  # the community's files are Python-2 pickles
    splits = {}
    for split, lists in (("train", gt["train_videos"][0]), ("test", gt["test_videos"][0])):
        tubes = [label for v in lists for label, ts in gt["gttubes"][v].items() for _ in ts]
        splits[split] = {"videos": len(lists), "frames": len(lists) * num_frames, "tubes": len(tubes),
                         "tubes_per_class": {TUBE_CLASSES[c]: tubes.count(c) for c in range(len(TUBE_CLASSES))}}
    summary = {
        "generator": f"python -m stmixer.data.synthetic --format {fmt}",
        "arguments": {"videos": num_videos, "seconds": seconds, "size": [height, width], "seed": seed,
                      "val_fraction": val_fraction, "quality": quality, "motion_amplitude": list(motion_amplitude)},
        "format": fmt,
        "fps": fps,
        "frames_per_video": num_frames,
        "frame_template": f"{form['frame_dir']}/<video>/%05d.{form['ext']}",
        "groundtruth": form["gt_file"],
        "action_classes": len(TUBE_CLASSES),
        "classes": [{"index": i, "name": n, "definition": TUBE_CLASS_DEFINITIONS[n]}
                    for i, n in enumerate(TUBE_CLASSES)],
        "splits": splits,
        "generation_seconds": round(time.time() - start, 1),
    }
    with atomic_open(os.path.join(out_dir, "synthetic_dataset.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


#: Recognition layout (``--format recognition``): one actor per video, labelled by how it moves.
RECOGNITION_CLASSES = TUBE_CLASSES
RECOGNITION_FPS = 30
RECOGNITION_FRAME_DIR = "rawframes"
RECOGNITION_TEMPLATE = "img_{:05d}.jpg"  # 1-based, as mmaction2 extracts Kinetics-400 frames
RECOGNITION_LISTS = {"train": "train_list.txt", "val": "val_list.txt"}


def plan_recognition_videos(num_videos, height, width, seed, val_fraction=0.2, motion_amplitude=(0.07, 0.10)):
    """(VideoSpecs, labels): the generator's videos reduced to one actor each, whose motion is the
    video's class (``RECOGNITION_CLASSES``: still, sway, bob, circle; balanced within each split)."""
    specs = plan_dataset(num_videos, 1, height, width, seed + 2_000_003, val_fraction, motion_amplitude)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    out, labels = [], []
    for split in ("train", "val"):
        members = [s for s in specs if s.split == split]
        classes = _balanced(rng, tuple(range(len(RECOGNITION_CLASSES))), len(members))
        for spec, label in zip(members, classes):
            motion = None if label == 0 else RECOGNITION_CLASSES[label]
            actor = dataclasses.replace(spec.actors[0], motion=motion)
            out.append(dataclasses.replace(spec, actors=[actor], excluded_seconds=[]))
            labels.append(int(label))
    return out, labels


def render_recognition_video(spec, frame_root, num_frames, quality=90):
    """Write frames ``frame_root/<name>/img_%05d.jpg`` (1-based) of ``spec`` at 30 fps; returns the count."""
    folder = os.path.join(frame_root, spec.name)
    os.makedirs(folder, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for f, frame in enumerate(render_frames(spec, RECOGNITION_FPS, num_frames)):
        path = os.path.join(folder, RECOGNITION_TEMPLATE.format(f + 1))
        if not cv2.imwrite(path, frame, params):
            raise OSError(f"cannot write frame {path}")
    return num_frames


def generate_recognition_dataset(out_dir, num_videos=160, seconds=2.0, size=(128, 160), seed=0, val_fraction=0.2,
                                 workers=None, quality=90, motion_amplitude=(0.07, 0.10)):
    """Generate a video classification dataset in the raw-frame layout under ``out_dir``:
    ``rawframes/<video>/img_%05d.jpg`` (30 fps, ``seconds`` long), list files ``train_list.txt`` /
    ``val_list.txt`` (``<video> <num frames> <label>``), ``classes.txt`` and ``synthetic_dataset.json``.
    Each video shows one actor; its label is how the actor moves (still / sway / bob / circle,
    motion-only classes: chance is 25 %). List files come last (an interrupted run leaves none).
    Returns the summary."""
    start = time.time()
    num_frames = int(round(seconds * RECOGNITION_FPS))
    if num_frames < 1:
        raise ValueError(f"--seconds {seconds} gives no frame at {RECOGNITION_FPS} fps")
    height, width = size
    specs, labels = plan_recognition_videos(num_videos, height, width, seed, val_fraction, motion_amplitude)
    frame_root = os.path.join(out_dir, RECOGNITION_FRAME_DIR)
    workers = workers or len(os.sched_getaffinity(0))
    args = (specs, [frame_root] * len(specs), [num_frames] * len(specs), [quality] * len(specs))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(render_recognition_video, *args))
    else:
        for a in zip(*args):
            render_recognition_video(*a)
    _write_lines(os.path.join(out_dir, "classes.txt"), list(RECOGNITION_CLASSES))
    splits = {}
    for split, name in RECOGNITION_LISTS.items():
        rows = [(spec.name, label) for spec, label in zip(specs, labels) if spec.split == split]
        _write_lines(os.path.join(out_dir, name), [f"{video} {num_frames} {label}" for video, label in rows])
        splits[split] = {"videos": len(rows), "frames": len(rows) * num_frames,
                         "videos_per_class": {c: sum(1 for _, lab in rows if lab == i)
                                              for i, c in enumerate(RECOGNITION_CLASSES)}}
    summary = {
        "generator": "python -m stmixer.data.synthetic --format recognition",
        "arguments": {"videos": num_videos, "seconds": seconds, "size": [height, width], "seed": seed,
                      "val_fraction": val_fraction, "quality": quality, "motion_amplitude": list(motion_amplitude)},
        "format": "recognition",
        "fps": RECOGNITION_FPS,
        "frames_per_video": num_frames,
        "frame_template": f"{RECOGNITION_FRAME_DIR}/<video>/{RECOGNITION_TEMPLATE}",
        "lists": RECOGNITION_LISTS,
        "num_classes": len(RECOGNITION_CLASSES),
        "classes": [{"index": i, "name": n, "definition": TUBE_CLASS_DEFINITIONS[n]}
                    for i, n in enumerate(RECOGNITION_CLASSES)],
        "splits": splits,
        "generation_seconds": round(time.time() - start, 1),
    }
    with atomic_open(os.path.join(out_dir, "synthetic_dataset.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def ground_truth_path(video_path):
    """Where ``write_synthetic_video`` puts the ground truth of ``video_path``: ``<stem>.ground_truth.jsonl``."""
    return os.path.splitext(video_path)[0] + ".ground_truth.jsonl"


def write_synthetic_video(path, seconds=6.0, size=(128, 160), fps=30.0, seed=0, motion_amplitude=(0.07, 0.10),
                          render_short_side=None):
    """Write one synthetic video file (e.g. to try ``demo.py``) and its per-frame ground truth.

    The video shows the actors of one dataset video (same classes and look) for ``seconds``
    at ``fps`` frames per second and any size (odd sizes too). Outlines, stripes and
    background grain have fixed sizes in pixels, so a video drawn at a much larger size than
    a model's training frames looks finer-grained to it than its training data;
    ``render_short_side`` draws the scene at that short side instead (same aspect ratio) and
    scales each frame up to ``size``, to match a dataset generated at that size. Beside it,
    ``ground_truth_path(path)`` holds one JSON line per frame in the layout of ``demo.py
    --json``: ``{"time": s, "frame": f, "persons": [{"box": [x1, y1, x2, y2] normalized,
    "actions": [{"id": k, "name": n}, ...]}, ...]}``.

    Returns:
        the number of frames written.
    """
    from .video import VideoWriter

    height, width = size
    draw_height, draw_width = size
    if render_short_side:
        scale = render_short_side / min(height, width)
        draw_height, draw_width = int(round(height * scale)), int(round(width * scale))
    spec = plan_dataset(2, 1, draw_height, draw_width, seed, val_fraction=0.5, motion_amplitude=motion_amplitude)[0]
    num_frames = max(1, int(round(seconds * fps)))
    with VideoWriter(path, fps, height, width) as writer:
        for frame in render_frames(spec, fps, num_frames):
            if frame.shape[:2] != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
            writer.write(frame)
    with atomic_open(ground_truth_path(path), "w") as f:
        for index in range(num_frames):
            t = index / fps
            persons = [
                {"box": [round(v, 5) for v in box],
                 "actions": [{"id": a, "name": CLASS_NAMES[a - 1]} for a in actor.actions]}
                for actor, box in zip(spec.actors, actor_boxes(spec, t))
            ]
            f.write(json.dumps({"time": round(t, 6), "frame": index, "persons": persons}) + "\n")
    return num_frames


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.data.synthetic",
        description="Write a small, learnable action-detection dataset in the AVA layout (see data/README.md), "
                    "or one synthetic video file (--video) to try demo.py on.",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="output folder (the dataset root, DATA.PATH_TO_DATA_DIR)")
    parser.add_argument("--format", choices=("ava", "ava_kinetics", "recognition") + tuple(TUBE_FORMATS), default="ava",
                        help="dataset layout: ava (default; frame lists + box CSVs), ucf24 or jhmdb (frames per video "
                             "+ ground-truth pickle, one tube per actor labelled still/sway/bob/circle), "
                             "ava_kinetics (the ava layout plus --kinetics-clips Kinetics-style clips "
                             "<id>_<start>_<end> with one keyframe each, in the same files), recognition (video "
                             "classification: frame folders + list files '<video> <num frames> <label>', one actor "
                             "per video labelled still/sway/bob/circle)")
    parser.add_argument("--kinetics-clips", type=int, default=None,
                        help="--format ava_kinetics: number of Kinetics clips, train and val together "
                             "(default: as many as --videos)")
    target.add_argument("--video", metavar="FILE",
                        help="write one video file instead (e.g. demo.mp4) and FILE's stem + .ground_truth.jsonl")
    parser.add_argument("--videos", type=int, default=None,
                        help="number of videos, train and val together (default 160)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="ava dataset: annotated keyframes per video, one per second from 902 (default 4); "
                             "ucf24/jhmdb dataset: duration of a video in seconds (default 2); "
                             "--video: duration in seconds (default 6)")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 160), metavar=("H", "W"), help="frame size (default 128 160)")
    parser.add_argument("--fps", type=float, default=AVA_FPS, help="--video only: frame rate (default 30)")
    parser.add_argument("--render-short-side", type=int, default=None, metavar="S",
                        help="--video only: draw at short side S and scale up to --size, to look like a dataset "
                             "generated at that size (default: draw at --size)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of validation videos (default 0.2)")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering frames (default: all CPUs)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--proposals-format", choices=("pkl", "csv"), default="pkl",
                        help="ava / ava_kinetics: format of the person-proposal files "
                             "annotations_v2.2/ava_dense_proposals_{train,val}.FAIR.recall_93.9.{pkl,csv} "
                             "(PROPOSALS.TRAIN_FILE / TEST_FILE): mmaction2's pickle (default) or CSV")
    parser.add_argument("--motion-amplitude", type=float, nargs=2, default=(0.07, 0.10), metavar=("LOW", "HIGH"),
                        help="amplitude range of sway/bob/circle, fraction of the short side (default 0.07 0.10)")
    args = parser.parse_args(argv)
    if args.video:
        return _video_main(args)
    if args.format == "recognition":
        return _recognition_main(args)
    if args.format not in ("ava", "ava_kinetics"):
        return _tube_main(args)
    if args.videos is None:
        args.videos = 160
    seconds = 4 if args.seconds is None else args.seconds
    if seconds != int(seconds):
        parser.error(f"--seconds counts keyframes of a dataset video and must be whole, got {seconds}")
    try:
        summary = generate_dataset(args.out, args.videos, int(seconds), tuple(args.size), args.seed,
                                   args.val_fraction, args.workers, args.quality, tuple(args.motion_amplitude),
                                   kinetics_clips=(args.kinetics_clips or args.videos)
                                   if args.format == "ava_kinetics" else 0, proposals_format=args.proposals_format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, c in summary["splits"].items():
        print(f"{split}: {c['videos']} videos, {c['frames']} frames, {c['keyframes']} keyframes, {c['boxes']} boxes")
    print(f"{summary['action_classes']} action classes; set MODEL.STM.ACTION_CLASSES {summary['action_classes']} "
          f"and DATA.PATH_TO_DATA_DIR {args.out}")
    print(f"written to {args.out} in {summary['generation_seconds']} s")
    return 0


def _tube_main(args):
    seconds = 2.0 if args.seconds is None else args.seconds
    try:
        summary = generate_tube_dataset(args.out, args.format, 160 if args.videos is None else args.videos, seconds,
                                        tuple(args.size), args.seed, args.val_fraction, args.workers, args.quality,
                                        tuple(args.motion_amplitude))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, c in summary["splits"].items():
        print(f"{split} (split 1): {c['videos']} videos, {c['frames']} frames, {c['tubes']} tubes")
    print(f"{summary['action_classes']} action classes ({', '.join(TUBE_CLASSES)}); ground truth "
          f"{summary['groundtruth']}, frames {summary['frame_template']}; set DATA.PATH_TO_DATA_DIR {args.out} "
          f"(config_files/synthetic/tiny-{args.format}.yaml)")
    print(f"written to {args.out} in {summary['generation_seconds']} s")
    return 0


def _recognition_main(args):
    seconds = 2.0 if args.seconds is None else args.seconds
    try:
        summary = generate_recognition_dataset(args.out, 160 if args.videos is None else args.videos, seconds,
                                               tuple(args.size), args.seed, args.val_fraction, args.workers,
                                               args.quality, tuple(args.motion_amplitude))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, c in summary["splits"].items():
        print(f"{split}: {c['videos']} videos, {c['frames']} frames")
    print(f"{summary['num_classes']} classes ({', '.join(RECOGNITION_CLASSES)}); lists "
          f"{', '.join(RECOGNITION_LISTS.values())}, frames {summary['frame_template']}; set DATA.PATH_TO_DATA_DIR "
          f"{args.out} (config_files/synthetic/tiny-recognition.yaml)")
    print(f"written to {args.out} in {summary['generation_seconds']} s")
    return 0


def _video_main(args):
    seconds = 6.0 if args.seconds is None else args.seconds
    if seconds <= 0 or args.fps <= 0:
        print(f"error: --seconds and --fps must be positive, got {seconds} and {args.fps}", file=sys.stderr)
        return 2
    try:
        frames = write_synthetic_video(args.video, seconds, tuple(args.size), args.fps, args.seed,
                                       tuple(args.motion_amplitude), args.render_short_side)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.video}: {frames} frames of {args.size[1]}x{args.size[0]} at {args.fps:g} fps; "
          f"ground truth in {ground_truth_path(args.video)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
