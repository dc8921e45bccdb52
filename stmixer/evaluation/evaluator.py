"""AVA frame-mAP for the engine (reset / process / evaluate) and for files on disk."""

import json
import logging
import os
import warnings

import numpy as np

from ..utils.io import atomic_open
from ..ava_files import read_exclusions
from ..ava_files import kinetics_clip_span
from .ava_csv import AVATable, read_ava_csv, round5, select_actions, select_videos, write_detections_csv
from .frame_map import PROTOCOLS, EvaluationError, evaluate_frame_map
from .input_checks import find_input_problems
from .labelmap import read_labelmap
from .reference import reference_frame_map
from .report import format_table, metrics_dict

logger = logging.getLogger("stmixer.evaluation")

DETECTIONS_FILE = "detections.csv"
METRICS_FILE = "frame_map.json"


def _empty_detections_warning(source, labelmap):
    warnings.warn(
        f"{source}: no detection of a label-map class ({len(labelmap.ids)} classes); every AP and the mAP are 0",
        stacklevel=3,
    )


def read_groundtruth(groundtruth, label_map):
    """(evaluated ground truth, every ground-truth row): AVATables with data rows, read once."""
    gt_all = read_ava_csv(groundtruth, keep_data_rows=True)
    return select_actions(gt_all, label_map.ids), gt_all


def report_input_problems(problems, strict, warn):
    """Pass each problem's message to ``warn``; with ``strict``, raise those it refuses as one EvaluationError."""
    refused = [p for p in problems if p.strict] if strict else []
    if refused:
        raise EvaluationError(
            "; ".join(p.message for p in refused) + " (strict evaluation: fix the inputs, or evaluate without strict)"
        )
    for problem in problems:
        warn(problem.message)


def evaluate_files(groundtruth, detections, labelmap, exclusions=None, protocol="stmixer", reference=False,
                   strict=False):
    """Frame-mAP of an AVA detection CSV against a ground-truth CSV.

    Args:
        groundtruth: ground-truth CSV (``video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]``).
        detections: detection CSV (``video_id,timestamp,x1,y1,x2,y2,action_id,score``).
        labelmap: label map ``.pbtxt`` (v2.1 ``item {name id}`` or v2.2 ``label {name label_id}``).
        exclusions: CSV of excluded ``video_id,timestamp`` keyframes, or None.
        protocol: "stmixer" (default), "activitynet" or "mmaction2" (see ``frame_map``).
        reference: compute with the slow plain-loop reference implementation instead.
        strict: raise EvaluationError for suspicious inputs (``input_checks``) instead of a
            ``UserWarning`` per kind.

    Returns:
        (FrameMAP, LabelMap).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    label_map = read_labelmap(labelmap)
    excluded = read_exclusions(exclusions)
    gt, gt_all = read_groundtruth(groundtruth, label_map)
    det = read_ava_csv(detections, keep_actions=label_map.ids)
    problems = find_input_problems(gt, det, label_map, gt_all, labelmap_source=str(labelmap))
    del gt_all
    report_input_problems(problems, strict, lambda message: warnings.warn(message, stacklevel=3))
    if len(det) == 0:
        _empty_detections_warning(detections, label_map)
    compute = reference_frame_map if reference else evaluate_frame_map
    return compute(gt, det, label_map, excluded, protocol), label_map


def _is_kinetics(video):
    return kinetics_clip_span(video) is not None


#: ``parts`` of AVAEvaluator: name -> {part name: video-name predicate}. "ava_kinetics": the
#: AVA videos and the Kinetics clips (``<youtube id>_<start>_<end>``) of AVA-Kinetics.
PARTS = {
    "ava_kinetics": {"ava": lambda video: not _is_kinetics(video), "kinetics": _is_kinetics},
}


def part_metrics(groundtruth, det, labelmap, excluded, protocol, parts):
    """``{part: metrics_dict(frame-mAP of that part's ground truth and detections)}`` for ``PARTS[parts]``:
    each part is scored alone, exactly as the whole (same protocol, same label map)."""
    out = {}
    for name, keep in PARTS[parts].items():
        result = evaluate_frame_map(select_videos(groundtruth, keep), select_videos(det, keep), labelmap, excluded,
                                    protocol)
        out[name] = metrics_dict(result, labelmap, counts=True)
    return out


def evaluate_file_parts(groundtruth, detections, labelmap, exclusions=None, protocol="stmixer", parts="ava_kinetics"):
    """``part_metrics`` of the files ``evaluate_files`` reads (each part scored alone)."""
    label_map = read_labelmap(labelmap)
    gt, _ = read_groundtruth(groundtruth, label_map)
    det = read_ava_csv(detections, keep_actions=label_map.ids)
    return part_metrics(gt, det, label_map, read_exclusions(exclusions), protocol, parts)


def _as_numpy(x, name, width=None):
    """A ``[n, width]`` float numpy array from an array or tensor (``[0, ...]`` empties allowed)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()  # float16 / bfloat16 widen exactly
        x = x.numpy()
    x = np.asarray(x)
    if x.size == 0:
        return np.zeros((0, width or (x.shape[-1] if x.ndim == 2 else 0)), dtype=np.float32)
    if x.ndim != 2 or (width is not None and x.shape[1] != width) or not np.issubdtype(x.dtype, np.floating):
        expected = f"[n, {width}]" if width else "[n, A]"
        raise ValueError(f"{name} must be a float {expected} array, got shape {tuple(x.shape)} and dtype {x.dtype}")
    return x


class KeyframeEvaluator:
    """What every evaluator shares: per-keyframe records and their gathering across processes.

    Every process ``process``-es the keyframes of its own shard (with their dataset
    indices); ``_gathered_records`` gathers them onto rank 0, drops sampler-padding copies
    by index and checks that no index is missing (``num_keyframes``). A keyframe is
    ``(video_id, timestamp)`` with the timestamp on the dataset's timeline (AVA: seconds;
    UCF101-24 / JHMDB-21: 1-based frame numbers). Subclasses add ``evaluate``.
    """

    def __init__(self, num_keyframes=None):
        self.num_keyframes = num_keyframes
        self.reset()

    def reset(self):
        """Forget every processed keyframe."""
        self._records = []
        self._seen = {}
        self._seen_index = {}

    def process(self, video_ids, timestamps, boxes, scores, indices=None):
        """Add the detections of a batch of keyframes.

        Args:
            video_ids: list[str], one per keyframe.
            timestamps: list[int] keyframe timestamps (seconds for AVA, 1-based frame numbers for tube datasets).
            boxes: list of float arrays or tensors ``[n_i, 4]``: normalized x1, y1, x2, y2 in [0, 1].
            scores: list of ``[n_i, A]`` arrays or tensors; column k is AVA action id k + 1.
            indices: optional list[int], the keyframes' dataset indices; when given for
                every keyframe, rows are written (and ties ranked) in that order, as the
                official STMixer does, and a keyframe seen again with the same index (sampler
                padding) is dropped. Otherwise keyframes are sorted by (video_id, timestamp).

        Raises:
            ValueError: mismatched lengths or shapes, a non-integer timestamp, a keyframe
                processed twice without the same index (it would silently double its
                detections), or one index given to two keyframes.
        """
        n = len(video_ids)
        if not (len(timestamps) == len(boxes) == len(scores) == n) or (indices is not None and len(indices) != n):
            raise ValueError(
                f"process() got {n} video_ids, {len(timestamps)} timestamps, {len(boxes)} boxes, "
                f"{len(scores)} scores{'' if indices is None else f', {len(indices)} indices'}: one of each per keyframe"
            )
        for i in range(n):
            video = video_ids[i]
            if not isinstance(video, str):
                raise ValueError(f"video_ids[{i}] must be a str, got {type(video).__name__}")
            timestamp = float(timestamps[i])
            if timestamp != int(timestamp):
                raise ValueError(f"timestamps[{i}] = {timestamps[i]} is not an integer number of seconds")
            timestamp = int(timestamp)
            index = None if indices is None else int(indices[i])
            key = (video, timestamp)
            if index is not None and index in self._seen_index:
                if self._seen_index[index] != key:
                    raise ValueError(f"dataset index {index} was given to keyframes {self._seen_index[index]} and {key}")
                continue  # sampler padding: the same dataset item again
            box = _as_numpy(boxes[i], f"boxes[{i}]", 4)
            score = _as_numpy(scores[i], f"scores[{i}]")
            if score.shape[0] != box.shape[0]:
                raise ValueError(f"keyframe {video},{timestamp:04d}: {box.shape[0]} boxes but {score.shape[0]} score rows")
            if key in self._seen:
                raise ValueError(
                    f"keyframe {video},{timestamp:04d} was processed twice (calls {self._seen[key]} and "
                    f"{len(self._records)}); drop sampler padding duplicates before process()"
                )
            self._seen[key] = len(self._records)
            if index is not None:
                self._seen_index[index] = key
            self._records.append((index, video, timestamp, box, score))

    def _gathered_records(self):
        """Every process's records on rank 0 (one per dataset index, in index order), ``None`` elsewhere."""
        from ..utils import distributed

        parts = distributed.all_gather_object(self._records)
        if distributed.get_rank() != 0:
            return None
        records, by_index, seen = [], {}, {}
        for r in (r for part in parts for r in part):
            key = (r[1], r[2])
            if r[0] is not None and r[0] in by_index:
                if by_index[r[0]] != key:
                    raise ValueError(f"dataset index {r[0]} was given to keyframes {by_index[r[0]]} and {key}")
                continue  # the same item on two processes: sampler padding
            if key in seen:
                raise ValueError(
                    f"keyframe {r[1]},{r[2]:04d} was processed by two processes; drop sampler padding duplicates"
                )
            seen[key] = True
            if r[0] is not None:
                by_index[r[0]] = key
            records.append(r)
        dropped = sum(len(part) for part in parts) - len(records)
        if dropped:
            logger.info("Dropped %d duplicate keyframes from sampler padding", dropped)
        if self.num_keyframes is not None:
            self._check_complete(by_index, len(records))
        if records and all(r[0] is not None for r in records):
            records.sort(key=lambda r: r[0])
        else:
            records.sort(key=lambda r: (r[1], r[2]))
        return records

    def _check_complete(self, by_index, num_records):
        """RuntimeError unless the records are exactly the dataset indices ``range(num_keyframes)``."""
        expected = self.num_keyframes
        if len(by_index) != num_records:
            raise RuntimeError(f"{num_records - len(by_index)} keyframes were processed without a dataset index; "
                               "pass indices= to process() when num_keyframes is set")
        missing = sorted(set(range(expected)) - set(by_index))
        if missing:
            raise RuntimeError(
                f"evaluation lost {len(missing)} of {expected} keyframes (first missing dataset indices: {missing[:10]})"
            )
        extra = sorted(set(by_index) - set(range(expected)))
        if extra:
            raise RuntimeError(f"unknown dataset indices {extra[:10]} (the dataset has {expected} keyframes)")

class AVAEvaluator(KeyframeEvaluator):
    """Accumulates per-keyframe detections and computes the AVA frame-mAP.

    The one place where a distributed evaluation comes together: every process
    ``process``-es the keyframes of its own shard (with their dataset indices), and
    ``evaluate`` gathers them onto rank 0, drops sampler-padding copies by index, checks
    that no index is missing, writes the official-format detection CSV and a metrics JSON
    into ``output_folder`` (atomically) and returns the metrics there (``{}`` on other
    ranks). Only rank 0 reads the ground truth, label map and exclusions (once, at its
    first ``evaluate``). The metric is computed in memory, on exactly the numbers the CSV
    holds (5-decimal boxes and scores), so ``python -m stmixer.evaluation.ava`` on the
    written CSV gives the same mAP.

    Args:
        groundtruth: ground-truth CSV path.
        labelmap: label map ``.pbtxt`` path.
        exclusions: excluded-keyframes CSV path, or None.
        protocol: "stmixer" (default; official STMixer / PySlowFast numbers), "activitynet" (the 2019
            challenge code) or "mmaction2" (mmaction2's ava_eval).
        output_folder: where ``detections.csv`` and ``frame_map.json`` go (None: nothing written).
        num_keyframes: dataset length; when given (with indices), ``evaluate`` checks that
            every index in ``range(num_keyframes)`` was processed by some process.
        strict: suspicious inputs (``input_checks``) raise EvaluationError instead of
            being logged as warnings.
        parts: None, or a name of ``PARTS`` ("ava_kinetics"): the metrics then also hold
            ``"parts": {part: metrics}``, each part (AVA videos, Kinetics clips) scored alone;
            the top-level mAP stays the one over everything (the AVA-Kinetics challenge number).
    """

    def __init__(self, groundtruth, labelmap, exclusions=None, protocol="stmixer", output_folder=None,
                 num_keyframes=None, strict=False, parts=None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        if parts is not None and parts not in PARTS:
            raise ValueError(f"unknown parts {parts!r}; expected one of {', '.join(PARTS)}")
        self.parts = parts
        self.protocol = protocol
        self.output_folder = output_folder
        self.paths = {"groundtruth": groundtruth, "labelmap": labelmap, "exclusions": exclusions}
        self.strict = strict
        self._annotations = None
        super().__init__(num_keyframes)

    def annotations(self):
        """(LabelMap, excluded keyframes, evaluated ground truth, every ground-truth row), read on first use."""
        if self._annotations is None:
            labelmap = read_labelmap(self.paths["labelmap"])
            excluded = read_exclusions(self.paths["exclusions"])
            gt, gt_all = read_groundtruth(self.paths["groundtruth"], labelmap)
            self._annotations = (labelmap, excluded, gt, gt_all)
        return self._annotations

    @property
    def labelmap(self):
        return self.annotations()[0]

    @property
    def groundtruth(self):
        return self.annotations()[2]

    def _detection_table(self, records):
        """AVATable of the rows the official writer produces (boxes and scores rounded to 5 decimals)."""
        records = [r for r in records if r[3].shape[0]]
        widths = {r[4].shape[1] for r in records}
        if len(widths) > 1:
            raise ValueError(f"score arrays have different numbers of classes: {sorted(widths)}")
        videos = list(dict.fromkeys(r[1] for r in records))
        code = {name: i for i, name in enumerate(videos)}
        sizes = [r[3].shape[0] for r in records]
        boxes = np.concatenate([r[3] for r in records]) if records else np.zeros((0, 4))
        score_matrix = np.concatenate([r[4] for r in records]) if records else np.zeros((0, 1))
        num_boxes, num_actions = score_matrix.shape
        keep = score_matrix >= 0  # the official writer keeps scores >= 0, box-major
        if keep.all():
            box_index = np.repeat(np.arange(num_boxes, dtype=np.int32), num_actions)
            action = np.tile(np.arange(1, num_actions + 1, dtype=np.int32), num_boxes)
            score = round5(score_matrix)
        else:
            box_index, column = (a.astype(np.int32) for a in np.nonzero(keep))
            action = column + 1
            score = round5(score_matrix[keep])
        del keep
        return AVATable(
            videos=videos,
            box_video=np.repeat(np.array([code[r[1]] for r in records], dtype=np.int32), sizes),
            box_timestamp=np.repeat(np.array([r[2] for r in records], dtype=np.int32), sizes),
            boxes=round5(boxes),
            box_index=box_index,
            action=action,
            score=score.reshape(-1),
            source="<detections>",
        )

    def evaluate(self):
        """Gather onto rank 0, write the files, compute the metric.

        Returns:
            on rank 0: ``{"mAP", "per_class": {name: AP or None}, "protocol", "num_gt",
            "num_detections", "num_keyframes", "detections_csv"}``; ``{}`` on other ranks.

        Raises:
            RuntimeError (rank 0): a dataset index missing (see ``num_keyframes``).
            EvaluationError (rank 0): with ``strict``, suspicious inputs.
        """
        records = self._gathered_records()
        if records is None:
            return {}
        labelmap, excluded, groundtruth, gt_all = self.annotations()
        det = self._detection_table(records)
        csv_path = None
        if self.output_folder:
            csv_path = os.path.join(self.output_folder, DETECTIONS_FILE)
            with atomic_open(csv_path, "wb") as f:
                write_detections_csv(f, det)
            det.source = csv_path  # its rows are the lines of the CSV, in order
        problems = find_input_problems(groundtruth, det, labelmap, gt_all, labelmap_source=self.paths["labelmap"])
        report_input_problems(problems, self.strict, logger.warning)
        if not np.isin(det.action, labelmap.ids).any():
            _empty_detections_warning("the processed keyframes", labelmap)
        result = evaluate_frame_map(groundtruth, det, labelmap, excluded, self.protocol)
        metrics = metrics_dict(result, labelmap, counts=True)
        metrics["num_keyframes"] = len(records)
        metrics["detections_csv"] = csv_path
        if self.parts:
            metrics["parts"] = part_metrics(groundtruth, det, labelmap, excluded, self.protocol, self.parts)
            logger.info("frame-mAP per part: %s", ", ".join(f"{k} {v['mAP']:.4f}" for k, v in metrics["parts"].items()))
        if self.output_folder:
            with atomic_open(os.path.join(self.output_folder, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)
        logger.info("AVA frame-mAP over %d keyframes:\n%s", len(records), format_table(result, labelmap))
        return metrics
