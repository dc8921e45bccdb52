"""AVA frame-mAP for the engine (reset / process / evaluate) and for files on disk."""

import json
import logging
import os
import warnings

import numpy as np

from ..utils.io import atomic_open
from .ava_csv import AVATable, read_ava_csv, read_exclusions, round5, write_detections_csv
from .frame_map import PROTOCOLS, evaluate_frame_map
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


def evaluate_files(groundtruth, detections, labelmap, exclusions=None, protocol="stmixer", reference=False):
    """Frame-mAP of an AVA detection CSV against a ground-truth CSV.

    Args:
        groundtruth: ground-truth CSV (``video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]``).
        detections: detection CSV (``video_id,timestamp,x1,y1,x2,y2,action_id,score``).
        labelmap: label map ``.pbtxt`` (v2.1 ``item {name id}`` or v2.2 ``label {name label_id}``).
        exclusions: CSV of excluded ``video_id,timestamp`` keyframes, or None.
        protocol: "stmixer" (default) or "activitynet".
        reference: compute with the slow plain-loop reference implementation instead.

    Returns:
        (FrameMAP, LabelMap).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    label_map = read_labelmap(labelmap)
    excluded = read_exclusions(exclusions)
    gt = read_ava_csv(groundtruth, keep_actions=label_map.ids, keep_data_rows=True)
    det = read_ava_csv(detections, keep_actions=label_map.ids)
    if len(det) == 0:
        _empty_detections_warning(detections, label_map)
    compute = reference_frame_map if reference else evaluate_frame_map
    return compute(gt, det, label_map, excluded, protocol), label_map


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


class AVAEvaluator:
    """Accumulates per-keyframe detections and computes the AVA frame-mAP.

    ``process`` may be called on every process of a distributed run; ``evaluate``
    gathers everything onto rank 0, writes the official-format detection CSV and a
    metrics JSON into ``output_folder`` (atomically) and returns the metrics there
    (``{}`` on other ranks). The metric is computed in memory, on exactly the numbers
    the CSV holds (5-decimal boxes and scores), so ``python -m stmixer.evaluation.ava``
    on the written CSV gives the same mAP.

    Args:
        groundtruth: ground-truth CSV path.
        labelmap: label map ``.pbtxt`` path.
        exclusions: excluded-keyframes CSV path, or None.
        protocol: "stmixer" (default; official STMixer / PySlowFast numbers) or "activitynet".
        output_folder: where ``detections.csv`` and ``frame_map.json`` go (None: nothing written).
    """

    def __init__(self, groundtruth, labelmap, exclusions=None, protocol="stmixer", output_folder=None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.output_folder = output_folder
        self.labelmap = read_labelmap(labelmap)
        self.excluded = read_exclusions(exclusions)
        self.groundtruth = read_ava_csv(groundtruth, keep_actions=self.labelmap.ids, keep_data_rows=True)
        self.reset()

    def reset(self):
        """Forget every processed keyframe."""
        self._records = []
        self._seen = {}

    def process(self, video_ids, timestamps, boxes, scores, indices=None):
        """Add the detections of a batch of keyframes.

        Args:
            video_ids: list[str], one per keyframe.
            timestamps: list[int] keyframe timestamps in seconds.
            boxes: list of float arrays or tensors ``[n_i, 4]``: normalized x1, y1, x2, y2 in [0, 1].
            scores: list of ``[n_i, A]`` arrays or tensors; column k is AVA action id k + 1.
            indices: optional list[int], the keyframes' dataset indices; when given for
                every keyframe, rows are written (and ties ranked) in that order, as the
                official STMixer does. Otherwise keyframes are sorted by (video_id, timestamp).

        Raises:
            ValueError: mismatched lengths or shapes, a non-integer timestamp, or a keyframe
                processed twice (it would silently double its detections).
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
            box = _as_numpy(boxes[i], f"boxes[{i}]", 4)
            score = _as_numpy(scores[i], f"scores[{i}]")
            if score.shape[0] != box.shape[0]:
                raise ValueError(f"keyframe {video},{timestamp:04d}: {box.shape[0]} boxes but {score.shape[0]} score rows")
            key = (video, timestamp)
            if key in self._seen:
                raise ValueError(
                    f"keyframe {video},{timestamp:04d} was processed twice (calls {self._seen[key]} and "
                    f"{len(self._records)}); drop sampler padding duplicates before process()"
                )
            self._seen[key] = len(self._records)
            index = None if indices is None else int(indices[i])
            self._records.append((index, video, timestamp, box, score))

    def _gathered_records(self):
        from ..utils import distributed

        records = [r for part in distributed.all_gather_object(self._records) for r in part]
        seen = {}
        for r in records:
            key = (r[1], r[2])
            if key in seen:
                raise ValueError(
                    f"keyframe {r[1]},{r[2]:04d} was processed by two processes; drop sampler padding duplicates"
                )
            seen[key] = True
        if records and all(r[0] is not None for r in records):
            records.sort(key=lambda r: r[0])
        else:
            records.sort(key=lambda r: (r[1], r[2]))
        return records, distributed.get_rank()

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
        """Gather, write the files, compute the metric.

        Returns:
            on rank 0: ``{"mAP", "per_class": {name: AP or None}, "protocol", "num_gt",
            "num_detections", "num_keyframes", "detections_csv"}``; ``{}`` on other ranks.
        """
        records, rank = self._gathered_records()
        if rank != 0:
            return {}
        det = self._detection_table(records)
        csv_path = None
        if self.output_folder:
            csv_path = os.path.join(self.output_folder, DETECTIONS_FILE)
            with atomic_open(csv_path, "wb") as f:
                write_detections_csv(f, det)
        if not np.isin(det.action, self.labelmap.ids).any():
            _empty_detections_warning("the processed keyframes", self.labelmap)
        result = evaluate_frame_map(self.groundtruth, det, self.labelmap, self.excluded, self.protocol)
        metrics = metrics_dict(result, self.labelmap, counts=True)
        metrics["num_keyframes"] = len(records)
        metrics["detections_csv"] = csv_path
        if self.output_folder:
            with atomic_open(os.path.join(self.output_folder, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)
        logger.info("AVA frame-mAP over %d keyframes:\n%s", len(records), format_table(result, self.labelmap))
        return metrics
