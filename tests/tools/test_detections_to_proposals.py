"""stmixer.tools.detections_to_proposals: demo.py --json detections -> a proposal CSV the readers take."""

import json

import numpy as np
import pytest

from stmixer.data.proposals import read_proposals
from stmixer.tools.detections_to_proposals import main


def _records(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_detections_become_proposals_per_whole_second(tmp_path, capsys):
    dets = _records(tmp_path / "street.jsonl", [
        {"time": 0.0, "frame": 0, "persons": [
            {"box": [0.1, 0.2, 0.4, 0.9], "score": 0.97, "actions": [{"id": 1, "name": "a", "score": 0.8}]},
            {"box": [0.5, 0.1, 0.8, 0.7], "score": 0.55, "actions": []}]},
        {"time": 0.5, "frame": 12, "persons": [{"box": [0.0, 0.0, 1.0, 1.0], "score": 0.9, "actions": []}]},
        {"time": 1.0, "frame": 24, "persons": []},
        {"time": 2.0, "frame": 48, "persons": [{"box": [0.3, 0.3, 0.6, 0.8], "score": 0.75, "actions": []}]},
    ])
    out = tmp_path / "props" / "street.csv"
    assert main([str(dets), str(out), "--min-score", "0.6"]) == 0
    assert out.read_text().splitlines() == ["street,0,0.1,0.2,0.4,0.9,0.97", "street,2,0.3,0.3,0.6,0.8,0.75"]
    proposals = read_proposals(str(out))
    assert sorted(proposals) == ["street,0000", "street,0002"]
    np.testing.assert_allclose(proposals["street,0000"], [[0.1, 0.2, 0.4, 0.9, 0.97]])
    printed = capsys.readouterr()
    assert f"1 records of {dets} are not on a whole second" in printed.out + printed.err
    assert main([str(dets), str(out), "--video-id", "cam7"]) == 0
    assert sorted(read_proposals(str(out))) == ["cam7,0000", "cam7,0002"]


def test_a_line_that_is_not_a_record_is_one_error_naming_it(tmp_path, capsys):
    dets = tmp_path / "bad.jsonl"
    dets.write_text(json.dumps({"time": 0.0, "persons": []}) + "\n" + '{"time": 1.0, "persons": [{"box": [1]}]}\n')
    with pytest.raises(SystemExit) as exit_info:
        main([str(dets), str(tmp_path / "out.csv")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {dets}:2: expected a demo.py --json record" in err, err
    assert not (tmp_path / "out.csv").exists()
