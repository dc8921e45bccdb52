"""benchmarks/quickstart_seeds.py: the summary over finished seed runs (no training here)."""

import importlib.util
import json


def _script(repo_root):
    spec = importlib.util.spec_from_file_location("quickstart_seeds", repo_root / "benchmarks" / "quickstart_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_run(folder, value):
    (folder / "inference" / "ava_v2.2").mkdir(parents=True)
    (folder / "inference" / "ava_v2.2" / "frame_map.json").write_text(json.dumps({"mAP": value}))
    (folder / "model_final.pth").write_bytes(b"")


def test_summary_prints_each_seed_and_mean_and_sample_std(repo_root, tmp_path, capsys):
    _finished_run(tmp_path / "seed1", 0.70)
    _finished_run(tmp_path / "seed2", 0.80)
    (tmp_path / "seed3" / "inference" / "ava_v2.2").mkdir(parents=True)  # periodic evaluation only: unfinished
    (tmp_path / "seed3" / "inference" / "ava_v2.2" / "frame_map.json").write_text(json.dumps({"mAP": 0.1}))
    status = _script(repo_root).main(["--seeds", "1", "2", "3", "--out", str(tmp_path), "--summary-only"])
    lines = capsys.readouterr().out.splitlines()
    assert status == 1  # one seed unfinished
    assert lines[0].startswith("seed 1: frame-mAP 0.7000") and lines[1].startswith("seed 2: frame-mAP 0.8000")
    assert lines[2].startswith("seed 3: frame-mAP unfinished")
    assert lines[3].startswith("frame-mAP over 2 seeds: 0.7500 ± 0.0707 (sample std)")
