"""Validate a dataset in the AVA layout: ``python -m stmixer.data.check --config-file F [KEY VALUE ...]``.

Reads the files the config names for the training and test splits and reports:
missing config files; malformed rows of frame lists, box CSVs, label map and exclusions
(``file:line``); boxes outside [0, 1] or degenerate; action ids absent from the label
map or outside ``1..MODEL.STM.ACTION_CLASSES``; keyframes outside seconds 902..1798 or
of videos without frames; frame counts that disagree with 30 fps (a 15-minute AVA
segment, 900-1801 s, has 27,030 frames); missing frames; keyframes whose frame or clip
frames lie beyond the video; frames that do not decode (truncated or corrupt JPEGs) or
change size within a video. Prints a summary; the exit status is 1 when there are
errors, 2 for a bad command line or config, 0 otherwise.
"""

import argparse
import collections
import concurrent.futures
import os
import sys

from ..config import ConfigError, load_config
from ..utils.threads import single_thread_worker
from .ava import clip_frame_indices
from .formats import (
    AVA_FIRST_KEYFRAME_SECOND,
    AVA_FPS,
    AVA_LAST_KEYFRAME_SECOND,
    AVA_START_SECOND,
    DataFormatError,
    parse_box_row,
    read_exclusions,
    read_frame_lists,
    read_label_map,
    second_to_frame_index,
)
from .frames import FrameReadError, read_frame

# Frames of a full AVA segment: seconds 900 to 1801 at 30 fps.
AVA_SEGMENT_FRAMES = 27030
# Frame counts in this range look like AVA segments extracted at the wrong rate or cut wrongly.
_AVA_LIKE_RANGE = (26000, 28000)


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


def check_box_file(path, has_score, label_map, num_classes, report):
    """Every row of one box CSV; returns the keyframes it annotates: {(video, second): source}."""
    keyframes = {}
    with open(path, "r") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
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
            if not AVA_FIRST_KEYFRAME_SECOND <= second <= AVA_LAST_KEYFRAME_SECOND:
                report.warning("keyframe outside 902..1798 s", f"{where}: second {second} (ignored by the loader)")
                continue
            keyframes.setdefault((video, second), where)
    return keyframes


def check_frame_counts(videos, frames_per_video, report):
    """Frame counts against ``frames_per_video`` (if given) or the AVA segment length."""
    for video in videos:
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


def _decode_one(path):
    try:
        return path, read_frame(path, retries=0).shape[:2], None
    except FrameReadError as e:
        return path, None, str(e)


def check_decoding(paths_by_video, workers, report):
    """Decode frames (in ``workers`` processes); report corrupt ones and size changes within a video."""
    jobs = [(video, path) for video, paths in paths_by_video.items() for path in paths if os.path.exists(path)]
    sizes = {}
    results = map(_decode_one, (p for _, p in jobs))
    pool = None
    if workers > 1 and len(jobs) > 256:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=single_thread_worker)
        results = pool.map(_decode_one, (p for _, p in jobs), chunksize=64)
    try:
        for (video, _), (path, size, problem) in zip(jobs, results):
            if problem:
                report.error("unreadable frame", problem)
            elif sizes.setdefault(video, (size, path))[0] != size:
                first_size, first_path = sizes[video]
                report.error("frame size", f"{path} is {size[1]}x{size[0]}, {first_path} is {first_size[1]}x{first_size[0]}")
    finally:
        if pool is not None:
            pool.shutdown()
    return len(jobs)


def check_split(cfg, split, label_map, excluded, report, decode="clips", workers=1, frames_per_video=None):
    """Check one split ("train" or "test") of the dataset ``cfg`` describes."""
    lists, boxes = ("TRAIN_LISTS", "TRAIN_GT_BOX_LISTS") if split == "train" else ("TEST_LISTS", "TEST_GT_BOX_LISTS")
    list_paths = [_existing(report, cfg, "FRAME_LIST_DIR", name, f"AVA.{lists}") for name in cfg.AVA[lists]]
    try:
        videos = read_frame_lists([p for p in list_paths if p])
    except DataFormatError as e:
        report.error("malformed row", str(e))
        videos = []
    keyframes = {}
    for name in cfg.AVA[boxes]:
        path = _existing(report, cfg, "ANNOTATION_DIR", name, f"AVA.{boxes}")
        if path:
            keyframes.update(check_box_file(path, "predicted_boxes" in name, label_map,
                                            cfg.MODEL.STM.ACTION_CLASSES, report))
    frame_dir = os.path.join(cfg.DATA.PATH_TO_DATA_DIR, cfg.AVA.FRAME_DIR)
    check_frame_counts(videos, frames_per_video, report)
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
        center = second_to_frame_index(second)
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
    if decode == "all":
        for video in videos:
            to_decode[video.name] = {os.path.join(frame_dir, video.path(i)) for i in range(video.num_frames)}
    decoded = check_decoding({k: sorted(v) for k, v in to_decode.items()}, workers, report) if decode != "none" else 0
    report.note(
        f"{split}: {len(videos)} videos, {num_frames} frames listed, {used} annotated keyframes "
        f"(seconds {AVA_FIRST_KEYFRAME_SECOND}..{AVA_LAST_KEYFRAME_SECOND}, frame index = (second - "
        f"{AVA_START_SECOND}) * {AVA_FPS}), {decoded} frames decoded"
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m stmixer.data.check",
        description="Check a dataset in the AVA layout against a config (see data/README.md).",
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config (default: the built-in defaults)")
    parser.add_argument("--split", choices=("train", "test", "both"), default="both", help="splits to check (default both)")
    parser.add_argument(
        "--decode", choices=("clips", "all", "none"), default="clips",
        help="frames to decode: those the keyframe clips read (default), every listed frame, or none",
    )
    parser.add_argument("--frames-per-video", type=int, default=None, metavar="N",
                        help="expected frames per video (27030 for AVA); default: only AVA-like counts are checked")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="decoding processes")
    parser.add_argument("--max-examples", type=int, default=10, help="messages shown per problem category")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return parser


def run_checks(cfg, splits, decode="clips", workers=1, frames_per_video=None, max_examples=10):
    """Check the splits of the dataset ``cfg`` describes; returns the Report."""
    report = Report(max_examples)
    report.note(f"dataset root: {cfg.DATA.PATH_TO_DATA_DIR}")
    label_map = check_label_map(cfg, report)
    excluded = check_exclusions(cfg, report)
    for split in splits:
        check_split(cfg, split, label_map, excluded, report, decode, workers, frames_per_video)
    return report


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts, freeze=False)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not cfg.DATA.PATH_TO_DATA_DIR or not os.path.isdir(cfg.DATA.PATH_TO_DATA_DIR):
        print(f"error: DATA.PATH_TO_DATA_DIR = {cfg.DATA.PATH_TO_DATA_DIR!r} is not a folder", file=sys.stderr)
        return 2
    splits = ("train", "test") if args.split == "both" else (args.split,)
    report = run_checks(cfg, splits, args.decode, args.workers, args.frames_per_video, args.max_examples)
    print(report.render())
    return 1 if report.num_errors else 0


if __name__ == "__main__":
    sys.exit(main())
