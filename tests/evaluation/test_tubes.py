"""Frame-mAP / video-mAP for UCF101-24 and JHMDB-21 (stmixer.evaluation.tubes).

The fixtures hold the numbers of the ACT evaluation (MOC-Detector) on small cases
(tests/reference/make_tubes_fixtures.py; see fixtures/tubes/README.md).
"""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stmixer.errors import UserError
from stmixer.evaluation import tubes as T

FIXTURES = Path(__file__).parent / "fixtures" / "tubes"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_fixture(name):
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    g = dict(data["groundtruth"])
    g["gttubes"] = {v: {int(c): [np.array(a, dtype=np.float32) for a in lst] for c, lst in t.items()}
                    for v, t in g["gttubes"].items()}
    d = data["detections"]
    videos = [d["videos"][i] for i in d["video"]]
    boxes = np.array(d["x1y1x2y2"]).reshape(-1, 4)
    det = T.Detections.from_arrays(videos, d["frame"], boxes, d["label"], d["score"])
    return g, det, data["expected"]


def test_fixtures_are_there():
    assert {"perfect", "hand", "random_small", "random_ties", "random_multi", "random_dense"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_equal_to_the_reference(name):
    g, det, expected = load_fixture(name)
    res = T.evaluate(T.groundtruth_from_dict(g, name), det)
    assert res.frame_map == pytest.approx(expected["frame_mAP"], abs=1e-6)
    assert res.frame_ap == pytest.approx(expected["frame_AP"], abs=1e-6)
    for key, value in expected["video_mAP"].items():
        assert res.video_map[key] == pytest.approx(value, abs=1e-6), key
        assert [ap[key] for ap in res.video_ap] == pytest.approx(expected["video_AP"][key], abs=1e-6), key
    assert set(res.video_map) == {"0.2", "0.5", "0.75", "0.5:0.95"}


def tube(frames, box):
    frames = np.asarray(frames, dtype=np.float32)
    return np.concatenate([frames[:, None], np.tile(np.asarray(box, np.float32), (frames.size, 1))], axis=1)


def gt_dict(tubes_by_video, nframes, labels=("a", "b")):
    return {"labels": list(labels), "gttubes": tubes_by_video, "nframes": nframes,
            "resolution": {v: (240, 320) for v in nframes}, "train_videos": [[]], "test_videos": [list(nframes)]}


def test_iou_with_inclusive_areas():
    a = np.array([[0, 0, 9, 9]], dtype=np.float64)
    b = np.array([[5, 0, 14, 9]], dtype=np.float32)
    assert T._iou_overlap2d(a, b)[0] == pytest.approx(50 / 150)  # 10x10 boxes (+1), 5x10 overlap


def test_spatio_temporal_iou():
    boxes = np.concatenate([tube(range(1, 11), (0, 0, 9, 9))[:, 1:], tube(range(6, 16), (5, 0, 14, 9))[:, 1:]])
    tubes = T._TubeSet(np.array([1, 6]), np.array([10, 10]), np.array([0, 10]), boxes)
    iou, zero, dtype = T._tube_pair_iou(tubes, np.array([0, 0]), tubes, np.array([1, 0]))
    assert iou[0] == pytest.approx((50 / 150) * (5 / 15))  # spatial 1/3 on frames 6-10, temporal 5/15
    assert iou[1] == 1.0 and not zero.any() and dtype == np.float32
    far = T._TubeSet(np.array([1, 20]), np.array([5, 5]), np.array([0, 5]), np.zeros((10, 4), np.float32))
    iou, zero, _ = T._tube_pair_iou(far, np.array([0]), far, np.array([1]))
    assert iou[0] == 0 and zero[0]


def test_ap_is_the_trapezoid_from_precision_one():
    # ranked TP, FP, TP with 2 ground truths: points (1,0) (1,.5) (.5,.5) (2/3,1)
    assert T._pr_ap(np.array([True, False, True]), 2) == pytest.approx(0.5 * 1.0 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-7)
    assert T._pr_ap(np.array([], dtype=bool), 3) == 0.0


def test_perfect_detections_score_one():
    gt = gt_dict({"v1": {0: [tube(range(3, 33), (10, 20, 60, 90))]}, "v2": {1: [tube(range(1, 21), (5, 5, 50, 50))]}},
                 {"v1": 40, "v2": 20})
    rows = [("v1", f, 10, 20, 60, 90, 0, 0.9) for f in range(3, 33)]
    rows += [("v2", f, 5, 5, 50, 50, 1, 0.8) for f in range(1, 21)]
    det = T.Detections.from_arrays([r[0] for r in rows], [r[1] for r in rows], [r[2:6] for r in rows],
                                   [r[6] for r in rows], [r[7] for r in rows])
    res = T.evaluate(T.groundtruth_from_dict(gt), det, return_tubes=True)
    # (AP is a float32 sum in the reference: 1 to float32 precision)
    assert res.frame_map == pytest.approx(1.0, abs=1e-6)
    assert list(res.video_map.values()) == pytest.approx([1.0] * 4, abs=1e-6)
    assert res.num_tubes == [1, 1] and res.num_gt_tubes == [1, 1]
    (arr, score), = res.tubes[("v1", "a")]
    assert arr[0, 0] == 3 and arr[-1, 0] == 32 and score == pytest.approx(0.9)


def test_short_tubes_and_gaps():
    # a gap splits the detections into two tubes of 10 frames: both under 15 frames, no tube at all
    gt = gt_dict({"v": {0: [tube(range(1, 22), (0, 0, 50, 50))]}}, {"v": 21})
    frames = [f for f in range(1, 22) if f != 11]
    det = T.Detections.from_arrays(["v"] * 20, frames, [(0, 0, 50, 50)] * 20, [0] * 20, [0.9] * 20)
    res = T.evaluate(T.groundtruth_from_dict(gt), det)
    assert res.frame_ap[0] == pytest.approx(20 / 21, abs=1e-6) and res.num_tubes[0] == 0
    assert res.video_map["0.2"] == 0.0


def write_case(tmp_path, gt, rows, header=True):
    gt_path, det_path = tmp_path / "gt.pkl", tmp_path / "det.csv"
    gt_path.write_bytes(pickle.dumps(gt))
    lines = (["video,frame,x1,y1,x2,y2,label,score"] if header else []) + [",".join(map(str, r)) for r in rows]
    det_path.write_text("\n".join(lines) + "\n")
    return gt_path, det_path


def small_case():
    gt = gt_dict({"a/1": {0: [tube(range(1, 21), (10, 10, 60, 80))]},
                  "b/1": {1: [tube(range(5, 25), (100, 50, 150, 120))]}}, {"a/1": 20, "b/1": 30})
    gt["train_videos"] = [["c/1"]]
    gt["nframes"]["c/1"] = 5
    gt["gttubes"]["c/1"] = {}
    rows = [("a/1", f, 10, 10, 60, 80, "a", 0.9) for f in range(1, 21)]
    rows += [("b/1", f, 101, 50, 150, 121, 1, 0.7) for f in range(5, 25)]
    rows += [("b/1", f, 0, 0, 30, 30, 0, 0.95) for f in range(1, 20)]  # a false-positive tube of class a
    rows += [("c/1", 1, 0, 0, 10, 10, 0, 0.5)]  # a train video: ignored
    return gt, rows


def test_cli_end_to_end(tmp_path, repo_root):
    gt, rows = small_case()
    gt_path, det_path = write_case(tmp_path, gt, rows)
    out = tmp_path / "out" / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "stmixer.evaluation.tubes", "--groundtruth", str(gt_path),
                           "--detections", str(det_path), "--json", str(out), "--split", "test"],
                          cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"frame_mAP", "video_mAP", "per_class"}
    assert set(metrics["video_mAP"]) == {"0.2", "0.5", "0.75", "0.5:0.95"}
    # class a: the false-positive tube (0.95) ranks first, then the true one: points (1, 0) (0, 0)
    # (0.5, 1), trapezoid AP 0.25 (no VOC interpolation); class b: 1
    assert metrics["video_mAP"]["0.5"] == pytest.approx(0.625)
    assert metrics["per_class"]["a"]["video_AP"]["0.5"] == pytest.approx(0.25)
    assert metrics["per_class"]["b"]["frame_AP"] == pytest.approx(1.0)
    assert "video-mAP" in proc.stdout
    direct = T.evaluate_files(gt_path, det_path)
    assert metrics == json.loads(json.dumps(direct.to_dict()))


@pytest.mark.parametrize("mutate, message", [
    (lambda g, r: g.pop("gttubes"), "key 'gttubes' missing"),
    (lambda g, r: g.pop("test_videos"), "key 'test_videos' missing"),
    (lambda g, r: g["nframes"].update({"a/1": 0}), "'nframes'['a/1']"),
    (lambda g, r: g["gttubes"]["a/1"].update({0: [tube([1, 2, 4], (0, 0, 5, 5))]}), "consecutive"),
    (lambda g, r: g["gttubes"]["a/1"].update({0: [tube([0, 1, 2], (0, 0, 5, 5))]}), "integers >= 1"),
    (lambda g, r: g["gttubes"]["a/1"].update({0: [tube([1.5, 2.5], (0, 0, 5, 5))]}), "integers >= 1"),
    (lambda g, r: g.update(test_videos=[[]]), "'test_videos'[0] has no videos"),
    (lambda g, r: g["gttubes"]["a/1"].update({7: []}), "'gttubes'['a/1'][7]"),
    (lambda g, r: g["gttubes"]["a/1"].update({0: [np.zeros((3, 4))]}), "shape (n >= 1, 5)"),
])
def test_bad_groundtruth_names_file_and_key(tmp_path, mutate, message):
    gt, rows = small_case()
    mutate(gt, rows)
    gt_path, det_path = write_case(tmp_path, gt, rows)
    with pytest.raises(UserError) as e:
        T.evaluate_files(gt_path, det_path)
    assert str(gt_path) in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("bad_row, message", [
    ("a/1,3,1,2,3,4,0", ":3: expected 8 fields"),
    ("a/1,x,1,2,3,4,0,0.5", ":3: frame 'x' is not an integer"),
    ("a/1,3,1,2,3,nan,0,0.5", ":3: box or score is not a finite number"),
    ("a/1,21,1,2,3,4,0,0.5", ":3: frame 21 is outside 1..20"),
    ("z/9,1,1,2,3,4,0,0.5", ":3: video 'z/9' is not in the ground truth"),
    ("a/1,1,1,2,3,4,walk,0.5", ":3: label 'walk' is neither a class index nor a class name"),
    ("a/1,1,1,2,3,4,5,0.5", ":3: class index 5 is not in 0..1"),
])
def test_bad_detections_name_file_and_line(tmp_path, bad_row, message):
    gt, rows = small_case()
    gt_path, det_path = write_case(tmp_path, gt, rows[:1])
    det_path.write_text(det_path.read_text() + bad_row + "\n")
    with pytest.raises(UserError) as e:
        T.evaluate_files(gt_path, det_path)
    assert f"{det_path}{message}" in str(e.value)


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    gt_path = tmp_path / "gt.pkl"
    gt_path.write_bytes(b"not a pickle")
    (tmp_path / "det.csv").write_text("")
    with pytest.raises(SystemExit) as e:
        T.main(["--groundtruth", str(gt_path), "--detections", str(tmp_path / "det.csv"),
                "--json", str(tmp_path / "o.json")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {gt_path}: not a readable ground-truth pickle")
    assert not (tmp_path / "o.json").exists()


def test_folds_and_train_split():
    gt, rows = small_case()
    gt["test_videos"] = [["a/1"], ["b/1"], ["a/1", "b/1"]]
    assert T.groundtruth_from_dict(gt, "gt", "test", 2).videos == ["b/1"]
    assert T.groundtruth_from_dict(gt, "gt", "train").videos == ["c/1"]
    with pytest.raises(UserError, match="no split 4"):
        T.groundtruth_from_dict(gt, "gt", "test", 4)


def test_empty_detections():
    gt, _ = small_case()
    det = T.Detections.from_arrays([], [], np.zeros((0, 4)), [], [])
    res = T.evaluate(T.groundtruth_from_dict(gt), det)
    assert res.frame_map == 0.0 and res.video_map["0.5"] == 0.0


def test_csv_readers_agree(tmp_path):
    text = ("video,frame,x1,y1,x2,y2,label,score\n"
            "a/1,1,10.1,10,60,80,a,0.9\n\n"
            "b/1,5,0.30000000000000004,50,150,120,1,0.7\r\n"
            "NA,2, 1,2,3,4 ,0,1e-3\n")
    path = tmp_path / "det.csv"
    path.write_text(text)
    fast = T._read_detections_fast(text, path, ["a", "b"])
    rows = T._read_detections_rows(text, path, ["a", "b"])
    assert fast is not None
    for name in ("video", "frame", "boxes", "label", "score", "line"):
        assert np.array_equal(getattr(fast, name), getattr(rows, name)), name
    assert fast.line.tolist() == [2, 4, 5] and fast.label.tolist() == [0, 1, 0]
    assert fast.boxes[1, 0] == 0.30000000000000004


def test_groundtruth_pickle_is_read_without_running_code(tmp_path):
    """A ground-truth pickle that asks for a callable is refused (the restricted unpickler), nothing runs."""
    import os

    from stmixer.errors import UserError
    from stmixer.evaluation.tubes import read_groundtruth

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "gt.pkl"
    path.write_bytes(pickle.dumps({"labels": ["a"], "gttubes": Evil()}))
    with pytest.raises(UserError, match="not a readable ground-truth pickle.*refusing to load global"):
        read_groundtruth(path)
