"""``runner.train`` called in-process with explicit arguments on the micro model: metrics.json is the run's history."""

import json

import pytest

from stmixer.config import load_config
from stmixer.engine import runner

from .conftest import TINY_CONFIG, micro_opts


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(repo_root, micro_dataset, tmp_path_factory):
    """A 6-iteration run (checkpoints at 2, 4 and the end) with its final evaluation."""
    out = tmp_path_factory.mktemp("in_process")
    cfg = load_config(str(repo_root / TINY_CONFIG), micro_opts(micro_dataset, out))
    runner.train(cfg, skip_val=True)
    return cfg, out


def test_final_evaluation_is_recorded(finished_run):
    _, out = finished_run
    records = _records(out)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6, 6]
    final = records[-1]
    assert final["type"] == "eval" and set(final) == {"iteration", "type", "eval/mAP"}
    assert final["eval/mAP"] == json.loads((out / "inference" / "ava_v2.2" / "frame_map.json").read_text())["mAP"]


def test_resumed_run_replaces_the_records_it_replays(finished_run, tmp_path):
    cfg, out = finished_run
    # A run killed after iteration 5's record: its last checkpoint is model_0000004.pth.
    (tmp_path / "model_0000004.pth").write_bytes((out / "model_0000004.pth").read_bytes())
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in _records(out)[:5]))
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.freeze()
    runner.train(cfg, skip_val=True)
    resumed = _records(tmp_path)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4, 5, 6, 6]
    assert resumed[-1]["type"] == "eval"
    # Training already finished: starting again evaluates again, and the new record replaces the old one.
    runner.train(cfg, skip_val=True)
    assert [r["iteration"] for r in _records(tmp_path)] == [1, 2, 3, 4, 5, 6, 6]
