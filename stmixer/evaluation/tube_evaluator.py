"""Frame-mAP and video-mAP of UCF101-24 / JHMDB-21 for the engine (reset / process / evaluate).

``TubeEvaluator`` gathers per-frame detections across processes exactly like
``AVAEvaluator`` (the shared ``KeyframeEvaluator``), turns each frame's boxes x classes
into rows ``video,frame,x1,y1,x2,y2,label,score`` (1-based frames, pixel boxes of the
video's ``resolution``, 0-based class index), keeps the ``detections_per_frame``
best-scored rows of each frame, writes them to ``detections.csv`` and computes the metrics
of ``stmixer.evaluation.tubes`` on exactly the numbers of that file, so
``python -m stmixer.evaluation.tubes --groundtruth GT.pkl --detections detections.csv``
prints the same.
"""

import json
import logging
import os

import numpy as np

from ..utils.io import atomic_open
from .evaluator import KeyframeEvaluator
from .tubes import Detections, evaluate, format_report, read_detections

logger = logging.getLogger("stmixer.evaluation")

DETECTIONS_FILE = "detections.csv"
METRICS_FILE = "tube_map.json"


class TubeEvaluator(KeyframeEvaluator):
    """Accumulates per-frame detections and computes frame-mAP@0.5 and video-mAP.

    Args:
        groundtruth: ground-truth pickle path (labels, gttubes, nframes, *_videos, resolution).
        split: "test" or "train" video list; fold: its number (1-based; JHMDB-21 has 3).
        output_folder: where ``detections.csv`` and ``tube_map.json`` go (None: nothing written).
        num_keyframes: dataset length (every index must be processed by some process).
        detections_per_frame: the best (box, class) rows kept per frame (``TUBES.DETECTIONS_PER_FRAME``).

    ``process`` takes ``timestamps`` = 1-based frame numbers, boxes normalized ``[n, 4]``
    x1, y1, x2, y2 in [0, 1] and scores ``[n, A]`` (column c = class index c of ``labels``).
    """

    def __init__(self, groundtruth, split="test", fold=1, output_folder=None, num_keyframes=None,
                 detections_per_frame=100):
        self.path = groundtruth
        self.split, self.fold = split, fold
        self.output_folder = output_folder
        self.detections_per_frame = int(detections_per_frame)
        self._annotations = None
        super().__init__(num_keyframes)

    def annotations(self):
        """(GroundTruth of the split, ``{video: (height, width)}``), read on first use."""
        if self._annotations is None:
            from ..data.tube_dataset import read_tube_annotations

            ann = read_tube_annotations(self.path, self.split, self.fold)
            self._annotations = (ann.groundtruth, ann.resolution)
        return self._annotations

    def _rows(self, records, resolution):
        """Arrays (video, frame, pixel boxes, label, score) of the kept rows, rounded as the CSV writes them."""
        video, frame, boxes, label, score = [], [], [], [], []
        for _, vid, number, box, scores in records:
            if box.shape[0] == 0 or scores.shape[1] == 0:
                continue
            height, width = resolution[vid]
            flat = scores.reshape(-1)
            k = min(self.detections_per_frame, flat.size)
            top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
            top = top[np.lexsort((top, -flat[top]))]  # by score, ties by (box, class) order
            b, c = np.divmod(top, scores.shape[1])
            video.extend([vid] * k)
            frame.append(np.full(k, number, dtype=np.int64))
            boxes.append(box[b].astype(np.float64) * np.array([width, height, width, height]))
            label.append(c.astype(np.int64))
            score.append(flat[top].astype(np.float64))
        if not video:
            return [], np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)
        return (video, np.concatenate(frame), np.round(np.concatenate(boxes), 3), np.concatenate(label),
                np.round(np.concatenate(score), 6))

    def evaluate(self):
        """Gather onto rank 0, write the files, compute the metrics.

        Returns:
            on rank 0: the ``tubes`` JSON (``frame_mAP``, ``video_mAP`` {"0.2", "0.5", "0.75", "0.5:0.95"},
            ``per_class``, ...) plus ``"mAP"`` (= frame-mAP, the periodic evaluation's scalar),
            ``"num_keyframes"`` and ``"detections_csv"``; ``{}`` on other ranks.
        """
        records = self._gathered_records()
        if records is None:
            return {}
        gt, resolution = self.annotations()
        video, frame, boxes, label, score = self._rows(records, resolution)
        csv_path = None
        if self.output_folder:
            csv_path = os.path.join(self.output_folder, DETECTIONS_FILE)
            with atomic_open(csv_path, "w") as f:
                f.write("video,frame,x1,y1,x2,y2,label,score\n")
                for i in range(len(video)):
                    x1, y1, x2, y2 = boxes[i]
                    f.write(f"{video[i]},{frame[i]},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{label[i]},{score[i]:.6f}\n")
            det = read_detections(csv_path)  # the metrics are those of the file, number for number
        else:
            det = Detections.from_arrays(np.asarray(video, dtype=object), frame, boxes, label, score)
        result = evaluate(gt, det)
        metrics = result.to_dict()
        metrics["mAP"] = result.frame_map
        metrics["num_keyframes"] = len(records)
        metrics["detections_csv"] = csv_path
        if self.output_folder:
            with atomic_open(os.path.join(self.output_folder, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)
        logger.info("frame-mAP and video-mAP over %d frames:\n%s", len(records), format_report(result))
        return metrics
