"""Builders from the config: the dataset of a split, its clip transform, and the DataLoader.

Resuming: the training loader's batch k (k = global iteration, from 0) depends only on
the seed, k, the rank and the world size. ``build_data_loader(cfg, True, start_iter=k,
seed=s)`` therefore yields exactly the batches, augmentations included, that an
uninterrupted run with seed ``s`` yields from iteration k on, with any number of workers.
"""

import functools
import logging
import math
import os
import random

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from ..ava_files import ava_kinetics_span, ava_span, read_box_csv, read_exclusions, read_frame_lists
from ..errors import UserError
from ..utils import distributed as comm
from ..utils.registry import Registry
from ..utils.threads import single_thread_worker
from .ava import AvaDataset, build_keyframes, log_summary
from .collate import BatchCollator
from .descriptions import describe
from .proposals import KeyframeProposals, log_proposal_summary, proposal_key, read_proposals
from .samplers import InferenceSampler, TrainingBatchSampler
from .transforms import ClipTransform
from .tube_dataset import (
    TubeDataset,
    TubeVideo,
    build_tube_keyframes,
    check_frame_template,
    log_tube_summary,
    read_tube_annotations,
)

DATASET_REGISTRY = Registry("dataset", config_key="DATA.DATASETS")


class DatasetConfigError(UserError, ValueError):
    """A config whose data keys do not fit together or point at missing files (names the key)."""


class DataRootError(DatasetConfigError):
    """``DATA.PATH_TO_DATA_DIR`` is empty or not a folder (a config error: exit status 2)."""

    exit_status = 2


def data_root(cfg):
    """``DATA.PATH_TO_DATA_DIR``, checked to be a folder (DataRootError naming the key and path if not)."""
    root = cfg.DATA.PATH_TO_DATA_DIR
    if not root:
        raise DataRootError("DATA.PATH_TO_DATA_DIR is empty: set it to the dataset root (see data/README.md)")
    if not os.path.isdir(root):
        what = "is not a folder" if os.path.exists(root) else "does not exist"
        raise DataRootError(f"DATA.PATH_TO_DATA_DIR = {root!r} {what}: set it to the dataset root (see data/README.md)")
    return root


def dataset_path(cfg, folder_key, name, key):
    """``DATA.PATH_TO_DATA_DIR / AVA.<folder_key> / name``; an error naming ``key`` if the file is missing
    (naming ``DATA.PATH_TO_DATA_DIR`` if the root itself is)."""
    data_root(cfg)
    folder = cfg.AVA[folder_key]
    path = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, folder, name)
    if not os.path.exists(path):
        raise DatasetConfigError(
            f"{path} does not exist ({key} = {name!r} in AVA.{folder_key} = {folder!r} under "
            f"DATA.PATH_TO_DATA_DIR = {cfg.DATA.PATH_TO_DATA_DIR!r})"
        )
    return path


def num_pathways(cfg):
    """Input pathways of the backbone (``MODEL.BACKBONE.PATHWAYS``), checked against ``DATA.INPUT_CHANNEL_NUM``."""
    pathways = cfg.MODEL.BACKBONE.PATHWAYS
    if pathways not in (1, 2) or len(cfg.DATA.INPUT_CHANNEL_NUM) != pathways:
        raise DatasetConfigError(
            f"MODEL.BACKBONE.PATHWAYS = {pathways} and DATA.INPUT_CHANNEL_NUM = {cfg.DATA.INPUT_CHANNEL_NUM} "
            "disagree: use 1 and [3] (SlowOnly, ViT) or 2 and [3, 3] (SlowFast)"
        )
    if pathways == 2 and cfg.DATA.NUM_FRAMES // cfg.SLOWFAST.ALPHA < 1:
        raise DatasetConfigError(
            f"DATA.NUM_FRAMES = {cfg.DATA.NUM_FRAMES} leaves no Slow frames at SLOWFAST.ALPHA = {cfg.SLOWFAST.ALPHA}"
        )
    return pathways


def build_transform(cfg, is_train, reference=False):
    """The ClipTransform of a split (``reference``: plain-PyTorch tensor conversion)."""
    for key in ("TRAIN_MIN_SCALES",) if is_train else ("TEST_MIN_SCALES",):
        sizes = cfg.DATA[key]
        if not sizes or any(not isinstance(s, int) or s <= 0 for s in sizes):
            raise DatasetConfigError(f"DATA.{key} must be a non-empty list of positive integers (pixels), got {sizes}")
    if cfg.DATA.TRAIN_SCALE_SAMPLING not in ("choice", "range"):
        raise DatasetConfigError(
            f"DATA.TRAIN_SCALE_SAMPLING = {cfg.DATA.TRAIN_SCALE_SAMPLING!r}; expected 'choice' or 'range'"
        )
    common = dict(
        mean=cfg.DATA.MEAN,
        std=cfg.DATA.STD,
        output_bgr=cfg.AVA.BGR != cfg.DATA.REVERSE_INPUT_CHANNEL,
        reference=reference,
        box_style=cfg.DATA.BOX_TRANSFORM,
    )
    if is_train:
        color = cfg.AVA.TRAIN_USE_COLOR_AUGMENTATION
        return ClipTransform(
            cfg.DATA.TRAIN_MIN_SCALES,
            cfg.DATA.TRAIN_MAX_SCALE,
            train=True,
            scale_mode=cfg.DATA.TRAIN_SCALE_SAMPLING,
            crop_size=cfg.DATA.TRAIN_CROP_SIZE,
            flip_prob=0.5 if cfg.DATA.RANDOM_FLIP else 0.0,
            color_jitter=color and not cfg.AVA.TRAIN_PCA_JITTER_ONLY,
            pca_lighting=(cfg.AVA.TRAIN_PCA_EIGVAL, cfg.AVA.TRAIN_PCA_EIGVEC) if color else None,
            **common,
        )
    return ClipTransform(
        cfg.DATA.TEST_MIN_SCALES,
        cfg.DATA.TEST_MAX_SCALE,
        train=False,
        flip_prob=1.0 if cfg.AVA.TEST_FORCE_FLIP else 0.0,
        **common,
    )


def read_split_annotations(cfg, is_train, span=ava_span):
    """(videos, KeyframeTable, SkippedRows) of a split, read from the files the config names
    (``span``: video name -> KeyframeSpan, see ``stmixer.ava_files``)."""
    lists, boxes = ("TRAIN_LISTS", "TRAIN_GT_BOX_LISTS") if is_train else ("TEST_LISTS", "TEST_GT_BOX_LISTS")
    videos = read_frame_lists(
        [dataset_path(cfg, "FRAME_LIST_DIR", name, f"AVA.{lists}") for name in cfg.AVA[lists]]
    )
    box_rows = []
    for name in cfg.AVA[boxes]:
        path = dataset_path(cfg, "ANNOTATION_DIR", name, f"AVA.{boxes}")
        if "predicted_boxes" in name:
            box_rows.append(read_box_csv(path, has_score=True, min_score=cfg.AVA.DETECTION_SCORE_THRESH))
        else:
            box_rows.append(read_box_csv(path))
    excluded = frozenset()
    if cfg.AVA.EXCLUSION_FILE:
        excluded = read_exclusions(dataset_path(cfg, "ANNOTATION_DIR", cfg.AVA.EXCLUSION_FILE, "AVA.EXCLUSION_FILE"))
    keyframes, skipped = build_keyframes(videos, box_rows, cfg.MODEL.STM.ACTION_CLASSES, excluded, span)
    if len(keyframes) == 0:
        raise DatasetConfigError(
            f"no annotated keyframe of AVA.{boxes} {list(cfg.AVA[boxes])} belongs to a video of AVA.{lists} "
            f"{list(cfg.AVA[lists])} at its keyframe seconds (AVA: 902..1798; run python -m stmixer.data.check)"
        )
    return videos, keyframes, skipped


def clip_arguments(cfg, is_train, reference=False, defer_pixels=False):
    """The keyword arguments every keyframe-clip dataset (``AvaDataset`` and its subclasses) takes from ``cfg``."""
    return dict(
        num_frames=cfg.DATA.NUM_FRAMES,
        sampling_rate=cfg.DATA.SAMPLING_RATE,
        transform=build_transform(cfg, is_train, reference=reference),
        num_classes=cfg.MODEL.STM.ACTION_CLASSES,
        num_pathways=num_pathways(cfg),
        alpha=cfg.SLOWFAST.ALPHA,
        slow_frames=cfg.DATA.SLOW_PATHWAY_FRAMES,
        defer_pixels=defer_pixels,
    )


def proposal_file(cfg, is_train):
    """Path of the split's proposal file (``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE`` under ``AVA.ANNOTATION_DIR``,
    or absolute), or None when the key is empty."""
    key = "TRAIN_FILE" if is_train else "TEST_FILE"
    name = cfg.PROPOSALS[key]
    if not name:
        return None
    return dataset_path(cfg, "ANNOTATION_DIR", name, f"PROPOSALS.{key}")


def read_split_proposals(cfg, is_train, videos, keyframes, kinetics=False):
    """KeyframeProposals of a split (aligned with ``keyframes``), or None when the split has no proposal file."""
    path = proposal_file(cfg, is_train)
    if path is None:
        return None
    keys = [
        proposal_key(videos[v].name, second, kinetics) for v, second in zip(keyframes.video_index, keyframes.seconds)
    ]
    proposals = KeyframeProposals.build(
        read_proposals(path), keys, cfg.PROPOSALS.DET_SCORE_THR, cfg.PROPOSALS.NUM_MAX,
        fallback=cfg.PROPOSALS.TRAIN_FALLBACK if is_train else "whole_frame", source=path,
    )
    log_proposal_summary(proposals, "train" if is_train else "test")
    return proposals


@DATASET_REGISTRY.register("ava_v2.2", "ava_v2.1", "ava")
def build_ava_dataset(cfg, is_train, reference=False, defer_pixels=False, span=ava_span):
    """AvaDataset of the training (``is_train``) or test split described by ``cfg`` (with the split's
    proposals when ``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE`` names a file)."""
    videos, keyframes, skipped = read_split_annotations(cfg, is_train, span)
    dataset = AvaDataset(
        frame_dir=os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.AVA.FRAME_DIR),
        videos=videos,
        keyframes=keyframes,
        span=span,
        proposals=read_split_proposals(cfg, is_train, videos, keyframes, kinetics=span is ava_kinetics_span),
        **clip_arguments(cfg, is_train, reference, defer_pixels),
    )
    log_summary("train" if is_train else "test", dataset, skipped)
    return dataset


@DATASET_REGISTRY.register("ava_kinetics")
def build_ava_kinetics_dataset(cfg, is_train, reference=False, defer_pixels=False):
    """AVA-Kinetics (mmaction2's layout): the AVA layout whose frame lists and box CSVs also hold
    Kinetics clips ``<youtube id>_<start>_<end>``, each on its own timeline (``ava_kinetics_span``)."""
    return build_ava_dataset(cfg, is_train, reference, defer_pixels, span=ava_kinetics_span)


def tube_groundtruth_path(cfg):
    """``DATA.PATH_TO_DATA_DIR / TUBES.GT_FILE``; an error naming the key if it is missing."""
    path = os.path.join(data_root(cfg), cfg.TUBES.GT_FILE)
    if not os.path.isfile(path):
        raise DatasetConfigError(
            f"{path} does not exist (TUBES.GT_FILE = {cfg.TUBES.GT_FILE!r} under DATA.PATH_TO_DATA_DIR = "
            f"{cfg.DATA.PATH_TO_DATA_DIR!r}; see data/README.md)"
        )
    return path


def read_tube_split(cfg, is_train):
    """TubeAnnotations of the training or test split (``TUBES.SPLIT``) of the ground-truth pickle."""
    return read_tube_annotations(tube_groundtruth_path(cfg), "train" if is_train else "test", cfg.TUBES.SPLIT)


@DATASET_REGISTRY.register("ucf24", "ucf101_24", "jhmdb", "jhmdb21", "tubes")
def build_tube_dataset(cfg, is_train, reference=False, defer_pixels=False):
    """TubeDataset (UCF101-24 / JHMDB-21 layout) of the training (``is_train``) or test split."""
    for key in ("TRAIN_FILE", "TEST_FILE"):
        if cfg.PROPOSALS[key]:
            raise DatasetConfigError(
                f"PROPOSALS.{key} = {cfg.PROPOSALS[key]!r}: proposal files are read for the AVA-layout datasets "
                f"only (ava, ava_kinetics), not {cfg.DATA.DATASETS[0]!r}; set it to \"\""
            )
    check_frame_template(cfg.TUBES.FRAME_TEMPLATE)
    annotations = read_tube_split(cfg, is_train)
    gt = annotations.groundtruth
    keyframes = build_tube_keyframes(annotations, cfg.MODEL.STM.ACTION_CLASSES, every_frame=not is_train)
    if len(keyframes) == 0:
        raise DatasetConfigError(
            f"{gt.source}: no annotated frame in the {'train' if is_train else 'test'} videos of split "
            f"TUBES.SPLIT = {cfg.TUBES.SPLIT} (run python -m stmixer.data.check)"
        )
    dataset = TubeDataset(
        frame_dir=os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.TUBES.FRAME_DIR),
        videos=[TubeVideo(v, gt.nframes[v], cfg.TUBES.FRAME_TEMPLATE) for v in gt.videos],
        keyframes=keyframes,
        **clip_arguments(cfg, is_train, reference, defer_pixels),
        labels=gt.labels,
    )
    log_tube_summary(f"{describe(cfg).name} {'train' if is_train else 'test'}", dataset)
    return dataset


def recognition_clip_length(cfg):
    """(frames per clip or segment, segments) of the recognition sampling: "dense": DATA.NUM_FRAMES
    frames, 1 segment; "segments": DATA.NUM_FRAMES / RECOGNITION.NUM_SEGMENTS frames per segment."""
    if cfg.RECOGNITION.SAMPLING != "segments":
        return cfg.DATA.NUM_FRAMES, 1
    segments = cfg.RECOGNITION.NUM_SEGMENTS
    if segments < 1 or cfg.DATA.NUM_FRAMES % segments:
        raise DatasetConfigError(
            f"DATA.NUM_FRAMES = {cfg.DATA.NUM_FRAMES} must be a multiple of RECOGNITION.NUM_SEGMENTS = {segments} "
            "(RECOGNITION.SAMPLING segments: the clip is NUM_SEGMENTS segments of equal length)"
        )
    return cfg.DATA.NUM_FRAMES // segments, segments


@DATASET_REGISTRY.register("kinetics400", "sthv1", "sthv2", "rawframes")
def build_recognition_dataset(cfg, is_train, reference=False, defer_pixels=False):
    """RawFrameDataset (video classification) of the training (``is_train``) or test list file."""
    from .recognition import RawFrameDataset, RecognitionTransform, check_filename_template, read_video_list

    root = data_root(cfg)
    key = "RECOGNITION.TRAIN_LIST" if is_train else "RECOGNITION.TEST_LIST"
    name = cfg.RECOGNITION.TRAIN_LIST if is_train else cfg.RECOGNITION.TEST_LIST
    path = os.path.join(root, name)
    if not name or not os.path.isfile(path):
        raise DatasetConfigError(
            f"{path} does not exist ({key} = {name!r} under DATA.PATH_TO_DATA_DIR = {root!r}; see docs/recognition.md)"
        )
    check_filename_template(cfg.RECOGNITION.FILENAME_TMPL)
    clip_len, segments = recognition_clip_length(cfg)
    crop = cfg.RECOGNITION.TRAIN_CROP_SIZE if is_train else cfg.RECOGNITION.TEST_CROP_SIZE
    sides = cfg.DATA.TRAIN_MIN_SCALES if is_train else cfg.DATA.TEST_MIN_SCALES[:1]
    if not sides or min(sides) < crop:
        raise DatasetConfigError(
            f"DATA.{'TRAIN' if is_train else 'TEST'}_MIN_SCALES = {list(sides)} must be at least "
            f"RECOGNITION.{'TRAIN' if is_train else 'TEST'}_CROP_SIZE = {crop} (the crop lies inside the resized frame)"
        )
    transform = RecognitionTransform(
        sides, cfg.DATA.TRAIN_MAX_SCALE if is_train else cfg.DATA.TEST_MAX_SCALE, crop, cfg.DATA.MEAN, cfg.DATA.STD,
        train=is_train, scale_mode=cfg.DATA.TRAIN_SCALE_SAMPLING, flip_prob=0.5 if cfg.DATA.RANDOM_FLIP else 0.0,
        num_crops=cfg.RECOGNITION.TEST_NUM_CROPS, output_bgr=cfg.DATA.REVERSE_INPUT_CHANNEL,
        reference=reference,
    )
    videos = read_video_list(path, cfg.MODEL.RECOGNIZER.NUM_CLASSES)
    frame_dir = cfg.RECOGNITION.TRAIN_FRAME_DIR if is_train else cfg.RECOGNITION.TEST_FRAME_DIR
    dataset = RawFrameDataset(
        os.path.join(root, frame_dir), videos, cfg.RECOGNITION.FILENAME_TMPL, cfg.RECOGNITION.START_INDEX, transform, sampling=cfg.RECOGNITION.SAMPLING, clip_len=clip_len,
        frame_interval=cfg.DATA.SAMPLING_RATE, num_segments=segments, test_num_clips=cfg.RECOGNITION.TEST_NUM_CLIPS,
        train=is_train, num_pathways=num_pathways(cfg), alpha=cfg.SLOWFAST.ALPHA, defer_pixels=defer_pixels,
        out_of_bound=cfg.RECOGNITION.OUT_OF_BOUND,
    )
    logging.getLogger(__name__).info("%s %s: %d videos, %d views each (%s sampling)", describe(cfg).name,
                                     "train" if is_train else "test", len(videos), dataset.views,
                                     cfg.RECOGNITION.SAMPLING)
    return dataset


def resolve_epoch_length(cfg):
    """``(cfg, train_dataset)``: with ``SOLVER.ITER_PER_EPOCH 0``, a copy of ``cfg`` whose epoch is the
    training split's size, ``ceil(samples / SOLVER.VIDEOS_PER_BATCH)``, and the dataset it counted
    (reuse it); otherwise ``(cfg, None)`` unchanged."""
    if cfg.SOLVER.ITER_PER_EPOCH != 0:
        return cfg, None
    dataset = build_dataset(cfg, is_train=True, defer_pixels=True)
    per_epoch = max(1, math.ceil(len(dataset) / cfg.SOLVER.VIDEOS_PER_BATCH))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.ITER_PER_EPOCH = per_epoch
    cfg.freeze()
    return cfg, dataset


def build_dataset(cfg, is_train, reference=False, defer_pixels=False):
    """The dataset named by ``DATA.DATASETS`` (exactly one name) for the training or test split.

    Args:
        cfg: the config.
        is_train: training split (``AVA.TRAIN_*`` files, random augmentation) or test split.
        reference: use the plain-PyTorch pixel conversion (slower; for checks).
        defer_pixels: samples carry ClipPixels for the collator to write into the batch
            (what ``build_data_loader`` uses); False gives float tensors.
    """
    if len(cfg.DATA.DATASETS) != 1:
        raise DatasetConfigError(f"DATA.DATASETS must name exactly one dataset, got {list(cfg.DATA.DATASETS)}")
    return DATASET_REGISTRY.get(cfg.DATA.DATASETS[0])(cfg, is_train, reference=reference, defer_pixels=defer_pixels)


def per_process_batch_size(total, world_size, key):
    """``total / world_size``; an error naming ``key`` when it does not divide evenly."""
    if total < 1 or total % world_size:
        raise DatasetConfigError(
            f"{key} = {total} must be a positive multiple of the number of processes ({world_size}): "
            "every process takes an equal share of each batch"
        )
    return total // world_size


def seed_worker(worker_id, seed, rank):
    """DataLoader ``worker_init_fn``: seed Python, NumPy and PyTorch from (seed, rank, worker) and
    keep PyTorch and OpenCV single-threaded (the workers already run in parallel).

    Training augmentation does not use these generators: every sample is seeded by its
    ``(seed, pass, position)`` (see TrainingBatchSampler), so batches do not depend on
    which worker, or how many, loaded them."""
    state = np.random.SeedSequence([seed, rank, worker_id]).generate_state(2, dtype=np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    single_thread_worker()


def build_data_loader(cfg, is_train, start_iter=0, max_iter=None, seed=0, dataset=None, rank=None, world_size=None,
                      pin_memory=False):
    """The DataLoader of the training or test split; it yields batch dicts (see BatchCollator).

    Args:
        cfg: the config.
        is_train: training (iteration-based stream) or testing (every keyframe once).
        start_iter: training only: the global iteration of the first batch (resume).
        max_iter: training only: stop before this iteration; default
            ``SOLVER.MAX_EPOCH * SOLVER.ITER_PER_EPOCH`` (the official run length; ITER_PER_EPOCH 0:
            the split's size, as ``resolve_epoch_length``).
        seed: non-negative run seed, the same on every process.
        dataset: a prebuilt dataset (default: ``build_dataset(cfg, is_train, defer_pixels=True)``).
        rank, world_size: default from the process group.
        pin_memory: passed to the DataLoader.

    Per process, a batch has ``SOLVER.VIDEOS_PER_BATCH`` (training) or
    ``TEST.VIDEOS_PER_BATCH`` (testing) divided by the world size clips. Training batches
    of batch k are identical for any ``start_iter <= k`` (see the module docstring); the
    test loader shards the keyframes in contiguous blocks padded with repeats, and
    ``batch["indices"]`` tells the engine which keyframe each clip is.
    """
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    if dataset is None:
        dataset = build_dataset(cfg, is_train, defer_pixels=True)
    if is_train:
        batch_size = per_process_batch_size(cfg.SOLVER.VIDEOS_PER_BATCH, world_size, "SOLVER.VIDEOS_PER_BATCH")
        if max_iter is None:
            per_epoch = cfg.SOLVER.ITER_PER_EPOCH or max(1, math.ceil(len(dataset) / cfg.SOLVER.VIDEOS_PER_BATCH))
            max_iter = cfg.SOLVER.MAX_EPOCH * per_epoch
        group_ids = dataset.aspect_groups() if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
        batch_sampler = TrainingBatchSampler(
            len(dataset), batch_size, seed=seed, rank=rank, world_size=world_size,
            start_iter=start_iter, num_iters=max_iter, group_ids=group_ids,
            shared_scale_draws=cfg.DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES,
        )
    else:
        batch_size = per_process_batch_size(cfg.TEST.VIDEOS_PER_BATCH, world_size, "TEST.VIDEOS_PER_BATCH")
        batch_sampler = BatchSampler(InferenceSampler(len(dataset), rank, world_size), batch_size, drop_last=False)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=BatchCollator(getattr(dataset, "size_divisibility", cfg.DATALOADER.SIZE_DIVISIBILITY)),
        worker_init_fn=functools.partial(seed_worker, seed=seed, rank=rank),
        generator=generator,
        pin_memory=pin_memory,
    )
