"""The command-line contract: python -m stmixer.evaluation.ava ... --json OUT.json."""

import json
import re
import subprocess
import sys

import pytest

from stmixer.evaluation.ava import main

from evaluation_cases import FULL

GT = [("v", 902, FULL, 1, 0), ("v", 902, (0.0, 0.0, 0.4, 0.4), 2, 1), ("v", 903, FULL, 2, 0), ("w", 1000, FULL, 5, 0)]
DET = [("v", 902, FULL, 1, 0.9), ("v", 902, (0.0, 0.0, 0.4, 0.4), 2, 0.3), ("v", "0903", FULL, 2, 0.8)]
DET += [("w", 1000, FULL, 5, 0.7), ("v", 903, FULL, 1, 0.95)]


def args(paths, out, *extra):
    return [
        "--groundtruth", paths["groundtruth"], "--detections", paths["detections"], "--labelmap", paths["labelmap"],
        "--exclusions", paths["exclusions"], "--json", str(out), *extra,
    ]


def test_cli_end_to_end_in_a_subprocess(write_files, tmp_path, repo_root):
    paths = write_files(GT, DET, ids=(1, 2, 3, 5), excluded=[("w", 1000)])
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "stmixer.evaluation.ava", *args(paths, out, "--protocol", "activitynet")],
        cwd=repo_root, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    # class 1: FP (0.95, keyframe 903 has no class-1 truth) then TP -> AP 1/2; class 2: both TP -> 1;
    # class 3: no ground truth -> null; class 5: its only keyframe is excluded -> null
    assert metrics == {"mAP": 0.75, "per_class": {"a1": 0.5, "a2": 1.0, "a3": None, "a5": None}, "protocol": "activitynet"}
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["rank", "id", "class", "AP", "#GT", "#detections"]
    assert [line.split()[2] for line in lines[1:5]] == ["a2", "a1", "a3", "a5"]  # sorted by AP, no-truth last
    assert lines[1].split()[3:] == ["1.0000", "2", "2"]
    assert "0.750000" in lines[-1] and "activitynet" in lines[-1]


def test_default_protocol_and_reference_agree(write_files, tmp_path, capsys):
    paths = write_files(GT, DET, ids=(1, 2, 3, 5))
    assert main(args(paths, tmp_path / "fast.json")) == 0
    assert main(args(paths, tmp_path / "slow.json", "--reference")) == 0
    fast, slow = (json.loads((tmp_path / name).read_text()) for name in ("fast.json", "slow.json"))
    assert fast == slow and fast["protocol"] == "stmixer" and fast["per_class"]["a5"] == 1.0


def test_plot(write_files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    paths = write_files(GT, DET, ids=(1, 2))
    assert main(args(paths, tmp_path / "m.json", "--plot", str(tmp_path / "ap.png"))) == 0
    assert (tmp_path / "ap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(write_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = write_files(GT, DET, ids=(1, 2))
    assert main(args(paths, tmp_path / "m.json", "--plot", str(tmp_path / "ap.png"))) == 1
    assert "pip install matplotlib" in capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == 0.75  # the metrics are still written


def test_empty_detections_give_zero_with_a_warning(write_files, tmp_path, capsys):
    paths = write_files(GT, [], ids=(1, 2))
    assert main(args(paths, tmp_path / "m.json")) == 0
    assert "warning:" in capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "mAP": 0.0, "per_class": {"a1": 0.0, "a2": 0.0}, "protocol": "stmixer"
    }


@pytest.mark.parametrize(
    "gt, det_text, labelmap_text, message",
    [
        (GT, "v,902,0.1,0.2,0.3,0.4,1,0.5\nv,902,0.1,0.2,oops,0.4,1,0.5\n", None, r"det.csv:2: box coordinate 'oops'"),
        ([("v", 902, (0.6, 0.0, 0.4, 1.0), 1, 0)], "", None, r"gt.csv:1: ground-truth box has x1 > x2"),
        (GT, "", 'item { name: "a1" }\n', r"labelmap.pbtxt:1: item block without id"),
    ],
    ids=["malformed-row", "gt-x1-greater-than-x2", "bad-labelmap"],
)
def test_bad_input_exits_2_naming_file_and_line(write_files, tmp_path, capsys, gt, det_text, labelmap_text, message):
    paths = write_files(gt, None, ids=(1, 2), det_text=det_text)
    if labelmap_text is not None:
        (tmp_path / "labelmap.pbtxt").write_text(labelmap_text)
    with pytest.raises(SystemExit) as exit_info:
        main(args(paths, tmp_path / "m.json"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(message, err), err
    assert not (tmp_path / "m.json").exists()


def test_a_folder_or_unreadable_path_is_one_error_line(write_files, tmp_path, capsys):
    paths = write_files(GT, DET, ids=(1, 2))
    paths["detections"] = str(tmp_path)  # a folder
    with pytest.raises(SystemExit) as exit_info:
        main(args(paths, tmp_path / "m.json"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(tmp_path) in err[0]
