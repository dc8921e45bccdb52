"""Validate a dataset: ``python -m stmixer.data.check --config-file F [KEY VALUE ...]``.

Datasets in the UCF101-24 / JHMDB-21 layout (``DATA.DATASETS`` ucf24, jhmdb, tubes) are
checked by ``check_tube_split``: the ground-truth pickle (read safely; a missing or malformed
key is one line naming it), the frame template, the number of classes, missing frames, frame
sizes against the pickle's ``resolution``, boxes outside the frame, and decoding. The rest of
this docstring is about the AVA layout.

Reads the files the config names for the training and test splits and reports:
missing config files; malformed rows of frame lists, box CSVs, label map and exclusions
(``file:line``); boxes outside [0, 1] or degenerate; action ids absent from the label
map or outside ``1..MODEL.STM.ACTION_CLASSES``; keyframes outside seconds 902..1798 or
of videos without frames; frame counts that disagree with 30 fps (a 15-minute AVA
segment, 900-1801 s, has 27,030 frames); missing frames; keyframes whose frame or clip
frames lie beyond the video; frames that do not decode (truncated JPEGs), whose JPEG
decoder reports corrupt data, or that change size within a video; empty frame lists or
box CSVs, and splits without a usable keyframe. With ``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE`` set, the
proposal files too: malformed rows (``file:line``) or pickle keys, kept proposals outside [0, 1]
(errors), keyframes without proposals (they get the fallback) and keys that match no keyframe of
the split (warnings, counted).

By default only the frames that the keyframe clips of the given config read are decoded
(the summary says how many of the listed frames that is); ``--all-frames`` decodes every
listed frame in ``--workers`` processes, with a progress bar on stderr. Prints a summary;
the exit status is 1 when there are errors, 2 for a bad command line or config (a missing
``DATA.PATH_TO_DATA_DIR`` included), 0 otherwise. Options and ``KEY VALUE`` overrides may
come in either order.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import os
import sys

from tqdm import tqdm

from ..ava_files import (
    AVA_FIRST_KEYFRAME_SECOND,
    AVA_FPS,
    AVA_LAST_KEYFRAME_SECOND,
    AVA_SPAN,
    AVA_START_SECOND,
    DataFormatError,
    ava_kinetics_span,
    ava_span,
    iter_lines,
    parse_box_row,
    read_exclusions,
    read_frame_lists,
    read_label_map,
)
from ..config import load_config
from ..errors import UserError, exit_on_user_error
from ..utils.threads import single_thread_worker
from .ava import clip_frame_indices
from .build import data_root
from .descriptions import describe
from .tube_dataset import (
    TubeDatasetError,
    TubeVideo,
    build_tube_keyframes,
    check_frame_template,
    read_tube_annotations,
)
from .frames import CorruptFrameError, FrameReadError, read_frame
from .proposals import ProposalFormatError, proposal_key, read_proposals, select_proposals

# Frames of a full AVA segment: seconds 900 to 1801 at 30 fps.
AVA_SEGMENT_FRAMES = 27030
# Frame counts in this range look like AVA segments extracted at the wrong rate or cut wrongly.
_AVA_LIKE_RANGE = (26000, 28000)
# Decoding: frames per task of a worker process, tasks in flight per worker, fewest frames worth a process pool.
_CHUNK_FRAMES = 64
_CHUNKS_IN_FLIGHT = 4
_MIN_POOL_FRAMES = 256


class Report:
    """Problems found, grouped by category; each category keeps its first ``max_examples`` messages."""

    def __init__(self, max_examples=10):
        self.max_examples = max_examples
        self.counts = {"error": collections.Counter(), "warning": collections.Counter()}
        self.examples = {"error": collections.defaultdict(list), "warning": collections.defaultdict(list)}
        self.notes = []

    def add(self, severity, category, message):
        """Record one problem (severity "error" or "warning")."""
        self.counts[severity][category] += 1
        if len(self.examples[severity][category]) < self.max_examples:
            self.examples[severity][category].append(message)

    def error(self, category, message):
        self.add("error", category, message)

    def warning(self, category, message):
        self.add("warning", category, message)

    def note(self, message):
        """A line of the summary (sizes of what was checked)."""
        self.notes.append(message)

    @property
    def num_errors(self):
        return sum(self.counts["error"].values())

    def categories(self, severity):
        """Category names of ``severity`` with at least one problem."""
        return sorted(self.counts[severity])

    def render(self):
        """The printable summary."""
        lines = list(self.notes)
        for severity in ("error", "warning"):
            for category in self.categories(severity):
                lines.append(f"{severity.upper()} {category}: {self.counts[severity][category]}")
                for message in self.examples[severity][category]:
                    lines.append(f"    {message}")
                hidden = self.counts[severity][category] - len(self.examples[severity][category])
                if hidden > 0:
                    lines.append(f"    ... and {hidden} more")
        warnings = sum(self.counts["warning"].values())
        lines.append(f"{self.num_errors} errors, {warnings} warnings")
        return "\n".join(lines)


def _existing(report, cfg, folder_key, name, key):
    path = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.AVA[folder_key], name)
    if not os.path.isfile(path):
        report.error("missing file", f"{path} ({key} = {name!r}) does not exist")
        return None
    return path


def _empty_file(report, path, key, expected):
    report.error("empty file", f"{path} ({key}) has no rows; expected {expected}")


def _has_rows_after_header(path):
    """Whether the text file ``path`` has a non-blank line after its first (header) line."""
    with open(path, "rb") as f:
        f.readline()
        return any(line.strip() for line in f)


def check_label_map(cfg, report):
    """The label map ``{id: name}`` (empty when missing or malformed, which is reported)."""
    path = _existing(report, cfg, "ANNOTATION_DIR", cfg.AVA.LABEL_MAP_FILE, "AVA.LABEL_MAP_FILE")
    if path is None:
        return {}
    try:
        labels = read_label_map(path)
    except DataFormatError as e:
        report.error("malformed row", str(e))
        return {}
    report.note(f"label map {path}: {len(labels)} classes")
    return labels


def check_exclusions(cfg, report):
    """The excluded (video, second) keyframes ({} when unset, missing or malformed)."""
    if not cfg.AVA.EXCLUSION_FILE:
        return set()
    path = _existing(report, cfg, "ANNOTATION_DIR", cfg.AVA.EXCLUSION_FILE, "AVA.EXCLUSION_FILE")
    if path is None:
        return set()
    try:
        return read_exclusions(path)
    except DataFormatError as e:
        report.error("malformed row", str(e))
        return set()


def check_box_file(path, key, has_score, label_map, num_classes, report, span=ava_span):
    """Every row of one box CSV (``key``: its config key); returns the keyframes it annotates:
    {(video, second): source}. ``span``: video name -> KeyframeSpan (AVA-Kinetics: ``ava_kinetics_span``)."""
    keyframes = {}
    rows = 0
    with contextlib.closing(iter_lines(path)) as lines:  # UTF-8, a bad byte named by file:line
        for line_no, line in lines:
            if not line.strip():
                continue
            rows += 1
            where = f"{path}:{line_no}"
            try:
                video, second, box, _, action, _ = parse_box_row(line, has_score)
            except ValueError as e:
                category = "degenerate box" if "inverted" in str(e) else "malformed row"
                report.error(category, f"{where}: {e}; row: {line.strip()!r}")
                continue
            if any(v < 0.0 or v > 1.0 for v in box):
                report.error("box outside [0, 1]", f"{where}: {line.strip()!r}")
            elif box[2] <= box[0] or box[3] <= box[1]:
                report.error("degenerate box", f"{where}: zero width or height: {line.strip()!r}")
            if action != -1 and action not in label_map:
                if not 1 <= action <= num_classes:
                    report.error("unknown label", f"{where}: action_id {action} is not in the label map and "
                                 f"outside 1..{num_classes} (MODEL.STM.ACTION_CLASSES)")
                else:
                    report.warning("label not in label map", f"{where}: action_id {action} (trained, never evaluated)")
            video_span = span(video)
            if not video_span.first <= second <= video_span.last:
                if video_span == AVA_SPAN:
                    report.warning("keyframe outside 902..1798 s", f"{where}: second {second} (ignored by the loader)")
                else:
                    report.warning("keyframe outside its Kinetics clip", f"{where}: second {second} is outside "
                                   f"{video_span.first}..{video_span.last} (ignored by the loader)")
                continue
            keyframes.setdefault((video, second), where)
    if not rows:
        _empty_file(report, path, key, "rows video_id,second,x1,y1,x2,y2,action_id,person_id")
    return keyframes


def check_frame_counts(videos, frames_per_video, report, span=ava_span):
    """Frame counts of the AVA videos against ``frames_per_video`` (if given) or the AVA segment length
    (Kinetics clips of AVA-Kinetics, per ``span``, are not checked here)."""
    for video in videos:
        if span(video.name) != AVA_SPAN:
            continue
        n = video.num_frames
        if frames_per_video is not None and n != frames_per_video:
            report.error("frame count", f"video {video.name}: {n} frames listed, expected {frames_per_video}")
        elif frames_per_video is None and _AVA_LIKE_RANGE[0] < n < _AVA_LIKE_RANGE[1] and n != AVA_SEGMENT_FRAMES:
            report.error(
                "frame count",
                f"video {video.name}: {n} frames; a 15-minute AVA segment (900-1801 s at {AVA_FPS} fps) has "
                f"{AVA_SEGMENT_FRAMES}: extract with ffmpeg -r {AVA_FPS} (see data/README.md)",
            )


def check_frames_exist(frame_dir, videos, report):
    """Every listed frame exists; returns the number of listed frames."""
    total = 0
    for video in videos:
        listing = {}
        missing = []
        for i in range(video.num_frames):
            rel = video.path(i)
            folder, name = os.path.split(os.path.join(frame_dir, rel))
            if folder not in listing:
                listing[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if name not in listing[folder]:
                missing.append(os.path.join(folder, name))
        total += video.num_frames
        for path in missing:
            report.error("missing frame", path)
    return total


def _decode_chunk(paths):
    """Decode frames; per path ``(size or None, category or None, message)``; "missing" frames are
    already reported by ``check_frames_exist``."""
    results = []
    for path in paths:
        try:
            results.append((read_frame(path, retries=0).shape[:2], None, None))
        except CorruptFrameError as e:
            results.append((None, "corrupt frame", str(e)))
        except FrameReadError as e:
            category = "missing" if not os.path.exists(path) else "unreadable frame"
            results.append((None, category, str(e)))
    return results


def _chunks(paths_by_video):
    for video, paths in paths_by_video:
        for i in range(0, len(paths), _CHUNK_FRAMES):
            yield video, paths[i:i + _CHUNK_FRAMES]


def _decoded_chunks(paths_by_video, workers):
    """Yield ``(video, paths, results of _decode_chunk)`` in order; with ``workers`` > 1, decoded in
    that many processes, at most ``_CHUNKS_IN_FLIGHT`` chunks per process queued at a time."""
    chunks = _chunks(paths_by_video)
    if workers <= 1:
        for video, paths in chunks:
            yield video, paths, _decode_chunk(paths)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=single_thread_worker) as pool:
        pending = collections.deque()
        for video, paths in chunks:
            pending.append((video, paths, pool.submit(_decode_chunk, paths)))
            if len(pending) >= workers * _CHUNKS_IN_FLIGHT:
                video, paths, future = pending.popleft()
                yield video, paths, future.result()
        while pending:
            video, paths, future = pending.popleft()
            yield video, paths, future.result()


def check_decoding(paths_by_video, total, workers, report, progress=None):
    """Decode frames; report corrupt ones and size changes within a video.

    Args:
        paths_by_video: iterable of ``(video name, [frame paths])`` (may be a generator).
        total: number of paths in it (for the progress bar; a pool is used above 256).
        workers: decoding processes.
        report: the Report.
        progress: None, or the description of a progress bar (tqdm, with ETA) on stderr.

    Returns:
        the number of frames decoded (listed frames that exist).
    """
    sizes = {}
    decoded = 0
    bar = tqdm(total=total, desc=progress, unit="frame", file=sys.stderr, disable=progress is None)
    try:
        for video, paths, results in _decoded_chunks(paths_by_video, workers if total > _MIN_POOL_FRAMES else 1):
            for path, (size, category, message) in zip(paths, results):
                if category == "missing":
                    continue
                decoded += 1
                if category:
                    report.error(category, message)
                elif sizes.setdefault(video, (size, path))[0] != size:
                    first_size, first_path = sizes[video]
                    report.error("frame size", f"{path} is {size[1]}x{size[0]}, {first_path} is "
                                 f"{first_size[1]}x{first_size[0]}")
            bar.update(len(paths))
    finally:
        bar.close()
    return decoded


def check_proposal_file(cfg, split, keyframes, report, kinetics=False):
    """Check the split's proposal file (``PROPOSALS.TRAIN_FILE`` / ``TEST_FILE``), if one is set: bad rows or
    keys, kept boxes outside [0, 1], keyframes without proposals (they get the fallback) and keys that match
    no keyframe of the split (``keyframes``: its used (video, second) pairs)."""
    key = "TRAIN_FILE" if split == "train" else "TEST_FILE"
    name = cfg.PROPOSALS[key]
    if not name:
        return
    path = _existing(report, cfg, "ANNOTATION_DIR", name, f"PROPOSALS.{key}")
    if path is None:
        return
    try:
        proposals = read_proposals(path, on_error=lambda e: report.error("malformed proposal", str(e)))
    except ProposalFormatError as e:
        report.error("malformed proposal", str(e))
        return
    wanted = {proposal_key(video, second, kinetics): f"{video} at {second} s" for video, second in keyframes}
    without = [where for k, where in wanted.items() if k not in proposals or len(proposals[k]) == 0]
    for k in wanted:
        if k in proposals and len(proposals[k]):
            boxes, _ = select_proposals(proposals[k], cfg.PROPOSALS.DET_SCORE_THR, cfg.PROPOSALS.NUM_MAX)
            if boxes.min() < 0.0 or boxes.max() > 1.0:
                report.error("proposal outside [0, 1]", f"{path}: key {k!r}: kept proposals have coordinates in "
                             f"[{boxes.min():g}, {boxes.max():g}]; expected normalized boxes")
    unused = sorted(set(proposals) - set(wanted))
    for k in unused:
        report.warning("proposal key of no keyframe", f"{path}: key {k!r} matches no annotated keyframe of the "
                       f"{split} split")
    for where in without:
        report.warning("keyframe without proposals", f"{path}: no proposals for {where} (it gets the "
                       + ("ground-truth" if split == "train" and cfg.PROPOSALS.TRAIN_FALLBACK == "gt" else "whole-frame")
                       + " fallback)")
    report.note(f"{split}: proposals {path}: {len(proposals)} keys, {len(wanted) - len(without)} of {len(wanted)} "
                f"keyframes have proposals, {len(unused)} keys match no keyframe")


def check_split(cfg, split, label_map, excluded, report, decode="clips", workers=1, frames_per_video=None,
                progress=False):
    """Check one split ("train" or "test") of the dataset ``cfg`` describes (``progress``: a bar on stderr
    while decoding)."""
    lists, boxes = ("TRAIN_LISTS", "TRAIN_GT_BOX_LISTS") if split == "train" else ("TEST_LISTS", "TEST_GT_BOX_LISTS")
    list_paths = [_existing(report, cfg, "FRAME_LIST_DIR", name, f"AVA.{lists}") for name in cfg.AVA[lists]]
    for path in list_paths:
        if path and not _has_rows_after_header(path):
            _empty_file(report, path, f"AVA.{lists}", "a header line, then rows "
                        "'original_vido_id video_idx frame_idx path labels'")
    try:
        videos = read_frame_lists([p for p in list_paths if p])
    except DataFormatError as e:
        report.error("malformed row", str(e))
        videos = []
    keyframes = {}
    span = ava_kinetics_span if describe(cfg).name == "ava_kinetics" else ava_span
    for name in cfg.AVA[boxes]:
        path = _existing(report, cfg, "ANNOTATION_DIR", name, f"AVA.{boxes}")
        if path:
            keyframes.update(check_box_file(path, f"AVA.{boxes}", "predicted_boxes" in name, label_map,
                                            cfg.MODEL.STM.ACTION_CLASSES, report, span))
    frame_dir = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.AVA.FRAME_DIR)
    check_frame_counts(videos, frames_per_video, report, span)
    num_frames = check_frames_exist(frame_dir, videos, report)
    by_name = {video.name: video for video in videos}
    to_decode = collections.defaultdict(set)
    used = 0
    for (name, second), source in sorted(keyframes.items()):
        if (name, second) in excluded:
            continue
        video = by_name.get(name)
        if video is None:
            if videos:
                report.warning("keyframe of a video without frames", f"{source}: video {name} is not in AVA.{lists}")
            continue
        used += 1
        center = span(name).frame_index(second)
        if center >= video.num_frames:
            report.error("keyframe beyond the video", f"{source}: {name} at {second} s is frame {center}, "
                         f"the video has {video.num_frames} frames")
            continue
        start = center - (cfg.DATA.NUM_FRAMES * cfg.DATA.SAMPLING_RATE) // 2
        end = start + (cfg.DATA.NUM_FRAMES - 1) * cfg.DATA.SAMPLING_RATE
        if start < 0 or end >= video.num_frames:
            report.warning("clip clamped at the video's ends", f"{source}: {name} at {second} s needs frames "
                           f"{start}..{end} of 0..{video.num_frames - 1} (edge frames are repeated)")
        if decode == "clips":
            indices = clip_frame_indices(center, cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, video.num_frames)
            to_decode[name].update(os.path.join(frame_dir, video.path(i)) for i in indices)
    check_proposal_file(cfg, split, [k for k in sorted(keyframes) if k not in excluded and k[0] in by_name], report,
                        kinetics=span is ava_kinetics_span)
    if not used:
        report.error("no usable keyframe", f"{split}: no annotated keyframe of AVA.{boxes} {list(cfg.AVA[boxes])} "
                     f"belongs to a video of AVA.{lists} {list(cfg.AVA[lists])} at seconds "
                     f"{AVA_FIRST_KEYFRAME_SECOND}..{AVA_LAST_KEYFRAME_SECOND} (training and testing need one)")
    report.note(
        f"{split}: {len(videos)} videos, {num_frames} frames listed, {used} annotated keyframes "
        f"(seconds {AVA_FIRST_KEYFRAME_SECOND}..{AVA_LAST_KEYFRAME_SECOND}, frame index = (second - "
        f"{AVA_START_SECOND}) * {AVA_FPS}"
        + ("; Kinetics clips <id>_<start>_<end>: seconds start..end, frame index = (second - start) * "
           f"{AVA_FPS})" if span is ava_kinetics_span else ")")
    )
    if decode == "none":
        report.note(f"{split}: decoded no frames (--decode none)")
        return
    if decode == "all":
        paths_by_video = (
            (video.name, [os.path.join(frame_dir, video.path(i)) for i in range(video.num_frames)]) for video in videos
        )
        total = num_frames
    else:
        paths_by_video = [(name, sorted(paths)) for name, paths in to_decode.items()]
        total = sum(len(paths) for _, paths in paths_by_video)
    decoded = check_decoding(paths_by_video, total, workers, report, f"decoding {split} frames" if progress else None)
    if decode == "all":
        missing = f" ({num_frames - decoded} are missing)" if decoded < num_frames else ""
        report.note(f"{split}: decoded all {num_frames} listed frames{missing}")
    else:
        report.note(
            f"{split}: decoded {decoded} of {num_frames} listed frames: those the {used} keyframe clips read "
            f"(DATA.NUM_FRAMES {cfg.DATA.NUM_FRAMES} at DATA.SAMPLING_RATE {cfg.DATA.SAMPLING_RATE}); frames that "
            "no clip of this config reads were not decoded (--all-frames decodes every listed frame)"
        )


def check_tube_split(cfg, split, report, decode="clips", workers=1, progress=False):
    """Check one split ("train" or "test") of a UCF101-24 / JHMDB-21 layout dataset (see the module docstring)."""
    from ..evaluation.tubes import TubeFormatError

    path = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.TUBES.GT_FILE)
    if not os.path.isfile(path):
        report.error("missing file", f"{path} (TUBES.GT_FILE = {cfg.TUBES.GT_FILE!r}) does not exist")
        return
    pickle_split = "train" if split == "train" else "test"
    try:
        check_frame_template(cfg.TUBES.FRAME_TEMPLATE)
        annotations = read_tube_annotations(path, pickle_split, cfg.TUBES.SPLIT)
        keyframes = build_tube_keyframes(annotations, cfg.MODEL.STM.ACTION_CLASSES, every_frame=split != "train")
    except (TubeFormatError, TubeDatasetError) as e:
        if str(e) not in report.examples["error"]["ground truth"]:  # the same file fails both splits alike
            report.error("ground truth", str(e))
        return
    gt = annotations.groundtruth
    if len(gt.labels) != cfg.MODEL.STM.ACTION_CLASSES:
        report.warning("number of classes", f"{path}: 'labels' has {len(gt.labels)} classes, "
                       f"MODEL.STM.ACTION_CLASSES = {cfg.MODEL.STM.ACTION_CLASSES} (the extra outputs stay unused)")
    frame_dir = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.TUBES.FRAME_DIR)
    videos = [TubeVideo(v, gt.nframes[v], cfg.TUBES.FRAME_TEMPLATE) for v in gt.videos]
    num_frames = check_frames_exist(frame_dir, videos, report)
    num_tubes = 0
    for video in videos:
        height, width = annotations.resolution[video.name]
        for label, tubes in gt.tubes[video.name].items():
            for i, tube in enumerate(tubes):
                num_tubes += 1
                box = tube[:, 1:5]
                if (box[:, 2:] <= box[:, :2]).any():
                    report.error("degenerate box", f"{path}: 'gttubes'['{video.name}'][{label}][{i}] has a box "
                                 "with x2 <= x1 or y2 <= y1")
                elif (box < -1).any() or (box[:, [0, 2]] > width + 1).any() or (box[:, [1, 3]] > height + 1).any():
                    report.warning("box outside the frame", f"{path}: 'gttubes'['{video.name}'][{label}][{i}] has a "
                                   f"box outside the {width}x{height} frame ('resolution'); it is clipped")
        first = os.path.join(frame_dir, video.path(0))
        if os.path.isfile(first):
            try:
                size = read_frame(first).shape[:2]
            except (FrameReadError, CorruptFrameError):
                continue  # reported by the decoding below
            if tuple(size) != (height, width):
                report.error("frame size", f"{first} is {size[1]}x{size[0]}, but 'resolution'['{video.name}'] of "
                             f"{path} says {width}x{height} (boxes are normalized by it)")
    if len(keyframes) == 0:
        report.error("no usable keyframe", f"{split}: no annotated frame in the {pickle_split} videos of split "
                     f"TUBES.SPLIT = {cfg.TUBES.SPLIT} (training and testing need one)")
    report.note(
        f"{split}: {len(videos)} videos ('{pickle_split}_videos' split {cfg.TUBES.SPLIT}), {num_frames} frames, "
        f"{num_tubes} tubes, {len(keyframes)} samples ({'frames with a box' if split == 'train' else 'every frame'}; "
        f"{len(gt.labels)} classes)"
    )
    if decode == "none":
        report.note(f"{split}: decoded no frames (--decode none)")
        return
    paths_by_video = [
        (video.name, [os.path.join(frame_dir, video.path(i)) for i in range(video.num_frames)]) for video in videos
    ]
    decoded = check_decoding(paths_by_video, num_frames, workers, report,
                             f"decoding {split} frames" if progress else None)
    report.note(f"{split}: decoded all {decoded} frames (every frame is a keyframe; clips read them all)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.data.check",
        description="Check a dataset (AVA layout, or UCF101-24 / JHMDB-21 layout) against a config "
                    "(see data/README.md).",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (default: the built-in defaults)")
    parser.add_argument("--split", choices=("train", "test", "both"), default="both", help="splits to check (default both)")
    parser.add_argument(
        "--decode", choices=("clips", "all", "none"), default="clips",
        help="frames to decode: those the keyframe clips read (default), every listed frame, or none",
    )
    parser.add_argument("--all-frames", dest="decode", action="store_const", const="all",
                        help="decode every listed frame in --workers processes, with a progress bar "
                        "(same as --decode all)")
    parser.add_argument("--frames-per-video", type=int, default=None, metavar="N",
                        help="expected frames per video (27030 for AVA); default: only AVA-like counts are checked")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), metavar="N",
                        help="decoding processes (default: the CPUs this process may use)")
    parser.add_argument("--max-examples", type=int, default=10, help="messages shown per problem category")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides (options may come before or after them)")
    return parser


def check_recognition_split(cfg, split, report):
    """Check one list file of a recognition dataset (``RECOGNITION.*``): its lines, and that every
    video's first and last frame files exist (frame decoding is not checked here)."""
    from .recognition import check_filename_template, read_video_list

    key = "RECOGNITION.TRAIN_LIST" if split == "train" else "RECOGNITION.TEST_LIST"
    path = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.RECOGNITION.TRAIN_LIST if split == "train"
                        else cfg.RECOGNITION.TEST_LIST)
    if not os.path.isfile(path):
        report.error("missing file", f"{path} ({key}) does not exist")
        return
    try:
        check_filename_template(cfg.RECOGNITION.FILENAME_TMPL)
        videos = read_video_list(path, cfg.MODEL.RECOGNIZER.NUM_CLASSES)
    except UserError as e:  # VideoListError, a bad template, an unreadable file
        report.error("list file", str(e))
        return
    root = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.RECOGNITION.TRAIN_FRAME_DIR if split == "train"
                        else cfg.RECOGNITION.TEST_FRAME_DIR)
    for video in videos:
        for index in (0, video.num_frames - 1):
            frame = os.path.join(root, video.frame_dir, cfg.RECOGNITION.FILENAME_TMPL.format(
                index + cfg.RECOGNITION.START_INDEX))
            if not os.path.isfile(frame):
                report.error("missing frame", f"{frame} (video {video.frame_dir} of {path}, {video.num_frames} frames "
                             f"from RECOGNITION.START_INDEX {cfg.RECOGNITION.START_INDEX})")
                break
    classes = len({v.label for v in videos})
    report.note(f"{split}: {len(videos)} videos, {sum(v.num_frames for v in videos)} frames, {classes} classes")


def run_checks(cfg, splits, decode="clips", workers=1, frames_per_video=None, max_examples=10, progress=False):
    """Check the splits of the dataset ``cfg`` describes; returns the Report.

    Raises:
        DataRootError when ``DATA.PATH_TO_DATA_DIR`` is empty or not a folder.
    """
    report = Report(max_examples)
    report.note(f"dataset root: {data_root(cfg)}")
    if describe(cfg).layout == "tubes":
        report.note(f"{cfg.DATA.DATASETS[0]}: UCF101-24 / JHMDB-21 layout (TUBES.GT_FILE {cfg.TUBES.GT_FILE}, "
                    f"frames {cfg.TUBES.FRAME_DIR}/{cfg.TUBES.FRAME_TEMPLATE})")
        for split in splits:
            check_tube_split(cfg, split, report, decode, workers, progress)
        return report
    if describe(cfg).layout == "rawframes":
        report.note(f"{cfg.DATA.DATASETS[0]}: raw frames + list files (recognition; frames "
                    f"RECOGNITION.TRAIN_FRAME_DIR / TEST_FRAME_DIR + <frame dir>/{cfg.RECOGNITION.FILENAME_TMPL})")
        for split in splits:
            check_recognition_split(cfg, split, report)
        return report
    label_map = check_label_map(cfg, report)
    excluded = check_exclusions(cfg, report)
    for split in splits:
        check_split(cfg, split, label_map, excluded, report, decode, workers, frames_per_video, progress)
    return report


def main(argv=None):
    """The command line; returns the exit status (a bad config or data root exits with 2 and one line)."""
    args = build_parser().parse_intermixed_args(argv)
    with exit_on_user_error():
        cfg = load_config(args.config_file, args.opts, freeze=False)
        splits = ("train", "test") if args.split == "both" else (args.split,)
        report = run_checks(cfg, splits, args.decode, max(1, args.workers), args.frames_per_video, args.max_examples,
                            progress=True)
    print(report.render())
    return 1 if report.num_errors else 0


if __name__ == "__main__":
    sys.exit(main())
