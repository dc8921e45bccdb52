"""Suspicious inputs: official numbers, one warning per kind (count, first file:line), --strict refuses."""

import json
import logging

import numpy as np
import pytest

from stmixer.evaluation import AVAEvaluator, EvaluationError
from stmixer.evaluation.ava import main
from stmixer.evaluation.input_checks import duplicate_rows

from evaluation_cases import FULL, make_table

GT = [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0), ("v", 903, (0.2, 0.2, 0.6, 0.6), 2, 0)]
DET = [("v", 902, (0.1, 0.1, 0.5, 0.5), 1, 0.9), ("v", 903, (0.2, 0.2, 0.6, 0.6), 2, 0.8)]
DET_OTHER_VIDEO = [("w",) + row[1:] for row in DET]


def run_cli(paths, tmp_path, capsys, *extra):
    out = tmp_path / "m.json"
    argv = ["--groundtruth", paths["groundtruth"], "--detections", paths["detections"], "--labelmap",
            paths["labelmap"], "--json", str(out), *extra]
    status = main(argv)
    err = capsys.readouterr().err
    return status, json.loads(out.read_text())["mAP"], [line for line in err.splitlines() if line.startswith("warning:")]


def test_clean_inputs_give_no_warning(write_files, tmp_path, capsys):
    paths = write_files(GT, DET, ids=(1, 2))
    assert run_cli(paths, tmp_path, capsys) == (0, 1.0, [])


@pytest.mark.parametrize(
    "det_rows, gt_rows, ids, mean_ap, words, line",
    [
        (DET + DET, GT, (1, 2), 0.5, "2 detection rows repeat an earlier row", 3),  # every row twice, appended
        ([DET[0], DET[0], DET[1], DET[1]], GT, (1, 2), 0.5, "2 detection rows repeat an earlier row", 2),
        (DET_OTHER_VIDEO, GT, (1, 2), 0.0,
         "2 detection rows (1 of 1 videos) are of a video the ground truth", 1),
        (DET + [("v", 902, (0.1, 0.1, 1.5, 0.5), 1, 0.1)], GT, (1, 2), 1.0, "1 detection rows have a box outside [0, 1]", 3),
        (DET + [("v", 902, (0.5, 0.1, 0.1, 0.5), 1, 0.1)], GT, (1, 2), 1.0, "1 detection rows have an inverted or empty box", 3),
        (DET, GT + [("v", 903, FULL, 7, 0)], (1, 2), 1.0, "1 ground-truth rows of 1 classes absent from the label map", 3),
        (DET, [("v", 902, (0.1, 0.1, 0.5, 1.2), 1, 0)] + GT[1:], (1, 2), 0.5, "1 ground-truth rows have a box outside", 1),
    ],
    ids=["appended-twice", "each-row-twice", "unknown-videos", "outside", "inverted", "gt-class-not-in-map", "gt-outside"],
)
def test_each_problem_warns_once_and_strict_refuses(write_files, tmp_path, capsys, det_rows, gt_rows, ids, mean_ap,
                                                     words, line):
    paths = write_files(gt_rows, det_rows, ids=ids)
    status, value, warnings = run_cli(paths, tmp_path, capsys)
    assert status == 0 and value == pytest.approx(mean_ap)  # the official number
    assert len(warnings) == 1 and words in warnings[0], warnings
    source = paths["groundtruth"] if "ground-truth" in words else paths["detections"]
    assert f"first: {source}:{line}" in warnings[0]
    (tmp_path / "m.json").unlink()
    if "absent from the label map" in words:  # the label map selects the evaluated classes: never refused
        assert run_cli(paths, tmp_path, capsys, "--strict")[:2] == (0, pytest.approx(mean_ap))
        return
    with pytest.raises(SystemExit) as exit_info:
        run_cli(paths, tmp_path, capsys, "--strict")
    assert exit_info.value.code == 2
    assert not (tmp_path / "m.json").exists()


def test_strict_error_is_one_line(write_files, tmp_path, capsys):
    paths = write_files(GT, DET + DET, ids=(1, 2))
    with pytest.raises(SystemExit):
        run_cli(paths, tmp_path, capsys, "--strict")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 2 detection rows repeat an earlier row") and "strict" in err[0]


def _reference_duplicates(table):
    seen, out = set(), []
    for row in range(len(table)):
        box = table.box_index[row]
        key = (table.videos[table.box_video[box]], int(table.box_timestamp[box]), *table.boxes[box].tolist(),
               int(table.action[row]))
        out.append(key in seen)
        seen.add(key)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_duplicate_rows_match_a_plain_set(seed):
    rng = np.random.default_rng(seed)
    boxes = [tuple(b) for b in rng.integers(0, 3, (4, 4)) / 4.0]
    rows = [(f"v{rng.integers(2)}", 902 + int(rng.integers(2)), boxes[rng.integers(4)], int(rng.integers(1, 4)), 0.5)
            for _ in range(60)]
    table = make_table(rows)
    assert duplicate_rows(table).tolist() == _reference_duplicates(table)
    ordered = make_table(sorted(set(rows)))
    assert not duplicate_rows(ordered).any()


def test_engine_evaluator_logs_the_summary_and_strict_raises(write_files, tmp_path, caplog):
    paths = write_files(GT, [], ids=(1, 2))
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.5]], dtype=np.float32)  # the same box twice
    scores = np.array([[0.9, 0.1], [0.9, 0.1]], dtype=np.float32)
    evaluator = AVAEvaluator(paths["groundtruth"], paths["labelmap"], output_folder=tmp_path)
    evaluator.process(["v"], [902], [boxes], [scores])
    with caplog.at_level(logging.WARNING, logger="stmixer.evaluation"):
        evaluator.evaluate()
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 detection rows repeat an earlier row" in message and f"first: {tmp_path / 'detections.csv'}:3" in message
    strict = AVAEvaluator(paths["groundtruth"], paths["labelmap"], output_folder=tmp_path / "strict", strict=True)
    strict.process(["v"], [902], [boxes], [scores])
    with pytest.raises(EvaluationError, match="repeat an earlier row"):
        strict.evaluate()
    assert (tmp_path / "strict" / "detections.csv").exists()  # what was written is kept
