"""TubeR's AVA annotation JSON (stmixer.data.tuber_json): written by the synthetic generator, read back into
the same ground truth as the AVA CSV, converted both ways, bad files named."""

import json

import numpy as np
import pytest

from stmixer.ava_files import read_box_csv
from stmixer.data.synthetic import main as make_synthetic
from stmixer.data.tuber_json import TubeRJSONError, main as convert, read_tuber_json


def _rows_set(rows):
    return {(rows.videos[i], int(rows.seconds[i]), tuple(np.round(rows.boxes[i], 6)), int(rows.actions[i]))
            for i in range(len(rows))}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    assert make_synthetic(["--out", str(out), "--videos", "3", "--seconds", "2", "--size", "48", "64",
                           "--workers", "1", "--val-fraction", "0.34"]) == 0
    return out / "annotations_v2.2"


def test_synthetic_writes_tuber_json_with_the_csv_ground_truth(synthetic):
    for split in ("train", "val"):
        csv_rows = read_box_csv(synthetic / f"ava_{split}_v2.2.csv")
        data = json.loads((synthetic / f"ava_{split}_v22.json").read_text())
        assert set(data["frame_keys_list"]) == {f"{v},{int(s):04d}" for v, s in zip(csv_rows.videos, csv_rows.seconds)}
        entry = data["video_frame_bbox"][data["frame_keys_list"][0]]
        assert len(entry["bboxes"]) == len(entry["acts"]) and all(min(a) >= 0 for a in entry["acts"])  # 0-based
        assert _rows_set(read_tuber_json(synthetic / f"ava_{split}_v22.json")) == _rows_set(csv_rows)


def test_tuber_json_converts_to_csv_and_back(synthetic, tmp_path):
    source = synthetic / "ava_train_v22.json"
    assert convert([str(source), str(tmp_path / "gt.csv")]) == 0
    assert _rows_set(read_box_csv(tmp_path / "gt.csv")) == _rows_set(read_tuber_json(source))
    assert convert(["--to-json", str(tmp_path / "gt.csv"), str(tmp_path / "again.json")]) == 0
    assert _rows_set(read_tuber_json(tmp_path / "again.json")) == _rows_set(read_tuber_json(source))


@pytest.mark.parametrize("content, expected", [
    ('{"frames": {}}', "video_frame_bbox"),
    ('{"video_frame_bbox": {"vid,0902": {"bboxes": [[0.1, 0.1, 0.5]], "acts": [[1]]}}}', "box 0"),
    ('{"video_frame_bbox": {"vid,0902": {"bboxes": [[0.5, 0.1, 0.1, 0.5]], "acts": [[1]]}}}', "x1 <= x2"),
    ('{"video_frame_bbox": {"vid,0902": {"bboxes": [[0.1, 0.1, 0.5, 0.5]], "acts": [[-1]]}}}', "acts 0"),
    ('{"video_frame_bbox": {"vid0902": {"bboxes": [], "acts": []}}}', "<video_id>,<second>"),
    ("not json", "not valid UTF-8 JSON"),
])
def test_bad_tuber_json_is_named(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TubeRJSONError, match=expected) as info:
        read_tuber_json(path)
    assert str(path) in str(info.value)
