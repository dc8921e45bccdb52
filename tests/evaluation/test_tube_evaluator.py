"""TubeEvaluator: the engine's reset / process / evaluate for frame-mAP and video-mAP."""

import csv
import json
import pickle

import numpy as np
import pytest

from stmixer.data.synthetic import TUBE_CLASSES, generate_tube_dataset
from stmixer.evaluation import tubes
from stmixer.evaluation.tube_evaluator import TubeEvaluator


@pytest.fixture(scope="module")
def groundtruth(tmp_path_factory):
    """(pickle path, its dict) of a synthetic UCF-style dataset: 4 videos of 25 frames (1 test video)."""
    root = tmp_path_factory.mktemp("ucf")
    generate_tube_dataset(str(root), "ucf24", num_videos=4, seconds=1.0, size=(48, 64), seed=2, workers=1,
                          val_fraction=0.25)
    path = root / "UCF101v2-GT.pkl"
    with open(path, "rb") as f:
        return path, pickle.load(f)


def perfect_records(gt):
    """Per test frame: (video, frame, normalized GT boxes, one-hot scores), in frame order."""
    records = []
    for video in gt["test_videos"][0]:
        height, width = gt["resolution"][video]
        for f in range(1, gt["nframes"][video] + 1):
            boxes, scores = [], []
            for label, tlist in gt["gttubes"][video].items():
                for tube in tlist:
                    boxes.append(tube[f - 1, 1:] / [width, height, width, height])
                    score = np.full(len(TUBE_CLASSES), 0.01, dtype=np.float32)
                    score[label] = 0.9
                    scores.append(score)
            records.append((video, f, np.asarray(boxes, np.float32), np.asarray(scores, np.float32)))
    return records


def feed(evaluator, records, indices):
    evaluator.process([r[0] for r in records], [r[1] for r in records], [r[2] for r in records],
                      [r[3] for r in records], indices=indices)


def test_perfect_detections_score_one_and_the_csv_gives_the_same_numbers(groundtruth, tmp_path):
    path, gt = groundtruth
    records = perfect_records(gt)
    evaluator = TubeEvaluator(path, output_folder=str(tmp_path), num_keyframes=len(records))
    feed(evaluator, records, list(range(len(records))))
    metrics = evaluator.evaluate()
    present = [c for c in range(len(TUBE_CLASSES))
               if any(c in gt["gttubes"][v] for v in gt["test_videos"][0])]
    for c in present:
        assert metrics["per_class"][TUBE_CLASSES[c]]["frame_AP"] == pytest.approx(1.0)
        assert metrics["per_class"][TUBE_CLASSES[c]]["video_AP"]["0.5"] == pytest.approx(1.0)
    assert metrics["mAP"] == metrics["frame_mAP"] == pytest.approx(len(present) / len(TUBE_CLASSES))
    assert metrics["num_keyframes"] == len(records)
    with open(metrics["detections_csv"]) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["video", "frame", "x1", "y1", "x2", "y2", "label", "score"]
    assert int(rows[1][1]) == 1  # 1-based frames
    from_file = tubes.evaluate_files(path, metrics["detections_csv"]).to_dict()
    assert from_file["frame_mAP"] == metrics["frame_mAP"] and from_file["video_mAP"] == metrics["video_mAP"]
    assert json.loads((tmp_path / "tube_map.json").read_text())["video_mAP"] == metrics["video_mAP"]


def test_padding_copies_are_dropped_and_lost_frames_are_an_error(groundtruth):
    path, gt = groundtruth
    records = perfect_records(gt)
    n = len(records)
    evaluator = TubeEvaluator(path, num_keyframes=n)
    feed(evaluator, records + records[:2], list(range(n)) + [0, 1])  # sampler padding repeats indices 0 and 1
    assert evaluator.evaluate()["num_keyframes"] == n
    evaluator.reset()
    feed(evaluator, records[1:], list(range(1, n)))
    with pytest.raises(RuntimeError, match="lost 1 of"):
        evaluator.evaluate()


def test_detections_per_frame_keeps_the_best_rows(groundtruth, tmp_path):
    path, gt = groundtruth
    records = perfect_records(gt)
    evaluator = TubeEvaluator(path, output_folder=str(tmp_path), num_keyframes=len(records), detections_per_frame=2)
    feed(evaluator, records, list(range(len(records))))
    metrics = evaluator.evaluate()
    with open(metrics["detections_csv"]) as f:
        rows = list(csv.reader(f))[1:]
    per_frame = {}
    for row in rows:
        per_frame.setdefault((row[0], row[1]), []).append(float(row[7]))
    assert max(len(v) for v in per_frame.values()) == 2
    assert all(min(v) == pytest.approx(0.9) for v in per_frame.values())  # the one-hot class, not the 0.01 rest
