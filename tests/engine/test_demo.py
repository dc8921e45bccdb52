"""demo.py end to end with a small detector trained here on synthetic data, plus its parts."""

import json

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from stmixer.data.synthetic import CLASS_NAMES, ground_truth_path, main as make_synthetic, write_synthetic_video
from stmixer.data.video import VideoSource
from stmixer.engine.demo import keyframe_record, main as demo_main
from stmixer.utils.visualizer import PALETTE, draw_detections

from .conftest import TINY_CONFIG, micro_opts, run_python

# Training frames are 64 x 112 (about the 16:9 of the test video) and clips are scaled to a
# short side of 64. 384 iterations (about 65 s of CPU time) give a model that finds most of the
# 20 actors of the test video (test_detections_overlap_the_ground_truth_actors). A bound on work,
# not on seconds: the tests hold however busy the machine is.
TRAIN_SIZE = ("64", "112")
TRAIN_OPTS = ["SOLVER.ITER_PER_EPOCH", "32", "SOLVER.MAX_EPOCH", "12", "SOLVER.STEPS", "(9,)",
              "SOLVER.BASE_LR", "0.003", "SOLVER.VIDEOS_PER_BATCH", "8", "SOLVER.CHECKPOINT_PERIOD", "32",
              "SOLVER.LOG_PERIOD", "64",
              "MODEL.STM.NUM_QUERIES", "16", "MODEL.STM.DIM_FEEDFORWARD", "256", "MODEL.STM.SPATIAL_POINTS", "8",
              "MODEL.STM.NUM_HEADS", "4", "MODEL.BACKBONE.FROZEN_BN", "False"]


@pytest.fixture(scope="module")
def trained(repo_root, tmp_path_factory):
    """A small detector trained on a 40-video synthetic dataset: (config path, weights path)."""
    data = tmp_path_factory.mktemp("demo_data")
    make_synthetic(["--out", str(data), "--videos", "40", "--seconds", "4", "--size", *TRAIN_SIZE, "--workers", "2"])
    out = tmp_path_factory.mktemp("demo_model")
    run_python(["train_net.py", "--config-file", TINY_CONFIG, "--skip-val", "--skip-final-test",
                *micro_opts(data, out), *TRAIN_OPTS], repo_root)
    return out / "config.yaml", out / "model_final.pth"


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """5 s at 24 fps, 360 x 203 pixels, drawn at the training data's scale (short side 64): 4 actors."""
    path = tmp_path_factory.mktemp("demo_video") / "clip.mp4"
    write_synthetic_video(str(path), seconds=5, size=(203, 360), fps=24, seed=4, render_short_side=64)
    return path


@pytest.fixture(scope="module")
def demo_run(repo_root, trained, odd_video, tmp_path_factory):
    """``demo.py`` run as a user runs it, on the odd-size video: (output video, JSON lines)."""
    config, weights = trained
    out = tmp_path_factory.mktemp("demo_out")
    result = run_python(["demo.py", "--config-file", str(config), "--input", str(odd_video),
                         "--output", str(out / "labelled.mp4"), "--json", str(out / "labelled.jsonl"),
                         "MODEL.WEIGHT", str(weights)], repo_root)
    assert "Annotated video written" in result.stdout + result.stderr
    return out / "labelled.mp4", [json.loads(line) for line in (out / "labelled.jsonl").read_text().splitlines()]


def test_detections_overlap_the_ground_truth_actors(odd_video, demo_run):
    _, records = demo_run
    # 120 frames at 24 fps end at 4.958 s: keyframes at 0, 1, 2, 3 and 4 s.
    assert [r["time"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r["frame"] for r in records] == [0, 24, 48, 72, 96]
    truth = {line["frame"]: line for line in map(json.loads, open(ground_truth_path(str(odd_video))))}
    found = total = 0
    for record in records:
        gt = torch.tensor([p["box"] for p in truth[record["frame"]]["persons"]])
        detected = torch.tensor([p["box"] for p in record["persons"]]).reshape(-1, 4)
        best = box_iou(gt, detected).max(dim=1).values if len(detected) else torch.zeros(len(gt))
        found += int((best > 0.3).sum())
        total += len(gt)
        for person in record["persons"]:
            assert person["score"] >= 0.5
            assert all(a["name"] in CLASS_NAMES and a["score"] >= 0.5 for a in person["actions"])
            assert len(person["actions"]) <= 3
    # What 384 CPU iterations learn depends on the machine's float32 kernels: 17 of the 20 actors were found
    # with IoU > 0.5 on one machine, 9 on an AMD EPYC one (14 with IoU > 0.3; 1,024 iterations: 12 and 15;
    # SOLVER.BASE_LR 0.0031 instead of 0.003 there: 16 and 19).
    # A wrong box mapping for the odd frame size finds none.
    assert found / total >= 0.5, f"{found} of {total} actors found with IoU > 0.3"


def test_output_video_keeps_size_rate_and_frame_count(odd_video, demo_run):
    output, records = demo_run
    source, result = VideoSource(str(odd_video)), VideoSource(str(output))
    assert (result.width, result.height, result.fps) == (360, 203, 24.0)
    original = [frame for _, frame in source.frames()]
    labelled = [frame for _, frame in result.frames()]
    assert len(labelled) == len(original) == 120
    # Each output frame is its input frame with the latest keyframe's detections drawn (held until
    # the next keyframe, one per 24 frames here): it is much closer to that drawing than to the
    # bare frame or to the drawing of another keyframe (compression leaves ~29 dB).
    for i in (5, 23, 24, 60, 119):
        k = i // 24
        expected = draw_detections(original[i].copy(), records[k]["persons"])
        other = draw_detections(original[i].copy(), records[(k + 1) % len(records)]["persons"])
        match = cv2.PSNR(labelled[i], expected)
        assert match > cv2.PSNR(labelled[i], original[i]) + 4, i
        assert match > cv2.PSNR(labelled[i], other) + 4, i


def test_frame_folder_input_gives_the_video_detections(repo_root, trained, odd_video, demo_run, tmp_path):
    config, weights = trained
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (_, frame) in enumerate(VideoSource(str(odd_video)).frames()):
        cv2.imwrite(str(folder / f"img{i}.png"), frame)
    out = tmp_path / "folder.jsonl"
    # Same process settings as demo_run (one thread), so the arithmetic is the same to the bit.
    run_python(["demo.py", "--config-file", str(config), "--input", str(folder), "--input-fps", "24",
                "--json", str(out), "--no-progress", "MODEL.WEIGHT", str(weights)], repo_root)
    _, records = demo_run
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


def _expect_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        demo_main(argv)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, message


def test_bad_inputs_fail_clearly_and_write_nothing(trained, odd_video, tmp_path, capsys):
    config, weights = trained
    outputs = ["--output", str(tmp_path / "out.mp4"), "--json", str(tmp_path / "out.jsonl"), "--no-progress"]
    common = ["--config-file", str(config), *outputs]
    _expect_error(capsys, [*common, "--input", str(tmp_path / "missing.mp4"), "MODEL.WEIGHT", str(weights)],
                  "input not found", "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 64)
    _expect_error(capsys, [*common, "--input", str(garbage), "MODEL.WEIGHT", str(weights)], "garbage.mp4")
    short = tmp_path / "short.mp4"
    write_synthetic_video(str(short), seconds=0.5, size=(64, 112), fps=24)
    _expect_error(capsys, [*common, "--input", str(short), "MODEL.WEIGHT", str(weights)],
                  "short.mp4 has", "one clip spans 32 frames")
    _expect_error(capsys, [*common, "--input", str(odd_video), "MODEL.WEIGHT", str(weights),
                           "MODEL.STM.HIDDEN_DIM", "48"], "model_final.pth", "does not fit the model")
    _expect_error(capsys, [*common, "--input", str(odd_video)], "needs weights", "MODEL.WEIGHT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.mp4", "short.ground_truth.jsonl", "short.mp4"]


def test_keyframe_record_keeps_people_and_actions_above_their_thresholds():
    detections = {
        "boxes": torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]]),
        "scores": torch.tensor([[0.9, 0.2, 0.7, 0.6], [0.1, 0.95, 0.3, 0.2], [0.9, 0.9, 0.9, 0.9]]),
        "person_scores": torch.tensor([0.6, 0.8, 0.3]),
    }
    names = {1: "a", 2: "b", 3: "c", 4: "d"}
    record = keyframe_record({"time": 2.5}, detections, names, threshold=0.5, topk=2, person_threshold=0.5,
                             input_fps=24)
    assert record["time"] == 2.5 and record["frame"] == 60
    assert [p["score"] for p in record["persons"]] == pytest.approx([0.8, 0.6])
    assert record["persons"][0]["actions"] == [{"id": 2, "name": "b", "score": pytest.approx(0.95)}]
    assert [a["name"] for a in record["persons"][1]["actions"]] == ["a", "c"]
    mirrored = keyframe_record({"time": 0.0}, detections, names, 0.5, 2, 0.5, 24, mirrored=True)
    assert mirrored["persons"][1]["box"] == pytest.approx([0.7, 0.2, 0.9, 0.4])


def test_drawing_marks_the_box_and_label_inside_the_frame():
    frame = np.full((120, 200, 3), 128, dtype=np.uint8)
    draw_detections(frame, [{"box": [0.0, 0.0, 0.5, 0.5], "actions": [{"name": "stand", "score": 0.9}]},
                            {"box": [0.6, 0.6, 0.9, 0.9], "actions": []}])
    assert tuple(frame[30, 0]) == PALETTE[0]  # left edge of the first box
    assert tuple(frame[90, 120]) == PALETTE[1]  # left edge of the second, unlabelled box
    label_area = frame[1:12, 1:60]  # label drawn inside the box: no room above it
    assert (label_area != 128).all(axis=2).mean() > 0.5
    assert (frame[100:119, 0:100] == 128).all()


# Output checks: they run before the config is loaded or any frame decoded, so no model is needed.


def _refused(capsys, monkeypatch, argv, *fragments):
    """demo.py refuses ``argv`` with one error line holding ``fragments``, without opening the input."""
    import stmixer.engine.demo as demo

    def no_decoding(*args, **kwargs):
        raise AssertionError("the input was opened before the outputs were checked")

    monkeypatch.setattr(demo, "VideoSource", no_decoding)
    with pytest.raises(SystemExit) as exit_info:
        demo_main(["--config-file", TINY_CONFIG, "--no-progress", *argv])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_outputs_that_resolve_to_the_input_are_refused(tmp_path, capsys, monkeypatch):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"precious")
    link = tmp_path / "link.mp4"
    link.symlink_to(video)
    _refused(capsys, monkeypatch, ["--input", str(video), "--output", str(video)],
             f"--output {video} is the input {video}")
    _refused(capsys, monkeypatch, ["--input", str(video), "--json", str(link)],
             f"--json {link} is the input {video}")
    _refused(capsys, monkeypatch, ["--input", str(tmp_path / "." / "in.mp4"), "--output", str(video)],
             "is the input")
    out = tmp_path / "out.mp4"
    _refused(capsys, monkeypatch, ["--input", str(video), "--output", str(out), "--json", str(out)],
             f"--json {out} is also the --output")
    frames = tmp_path / "frames"
    frames.mkdir()
    _refused(capsys, monkeypatch, ["--input", str(frames), "--json", str(frames / "dets.jsonl")],
             f"--json {frames / 'dets.jsonl'} is inside the input frame folder {frames}")
    assert video.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "in.mp4", "link.mp4"]


def test_unwritable_output_folder_fails_before_any_work(tmp_path, capsys, monkeypatch):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, not a folder")
    _refused(capsys, monkeypatch, ["--input", str(video), "--output", str(blocker / "out.mp4")],
             f"--output {blocker / 'out.mp4'}: folder {blocker}: not writable")
    _refused(capsys, monkeypatch, ["--input", str(video), "--output", str(tmp_path / "ok.mp4"),
                                   "--json", str(blocker / "sub" / "out.jsonl")],
             f"--json {blocker / 'sub' / 'out.jsonl'}: folder {blocker / 'sub'}: not writable")


def test_truncated_video_is_used_with_a_visible_warning_and_exit_0(tmp_path, capsys):
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    opts = micro_opts(tmp_path / "data", tmp_path / "run")
    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save({"model": build_detector(load_config(TINY_CONFIG, opts)).state_dict()}, weights)
    video = tmp_path / "cut.ts"
    write_synthetic_video(str(video), seconds=3, size=(64, 112), fps=30, seed=1)
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "dets.jsonl"
    demo_main(["--config-file", TINY_CONFIG, "--input", str(video), "--json", str(out), "--no-progress",
               *opts, "MODEL.WEIGHT", str(weights)])
    printed = capsys.readouterr()
    warnings = [line for line in printed.out.splitlines() + printed.err.splitlines() if "looks truncated" in line]
    assert len(warnings) == 1 and f"{video}: the video looks truncated or damaged (" in warnings[0], warnings
    assert out.exists() and len(out.read_text().splitlines()) >= 1


# Two-stage detectors (FastRCNN): person boxes come from --proposals.

FASTRCNN_CONFIG = "config_files/synthetic/tiny-fastrcnn.yaml"


@pytest.mark.parametrize("fmt", ["csv", "pkl"])
def test_fastrcnn_demo_labels_the_given_proposals(tmp_path, capsys, fmt):
    import pickle

    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    opts = micro_opts(tmp_path / "data", tmp_path / "run")
    torch.manual_seed(0)
    weights = tmp_path / "random.pth"
    torch.save({"model": build_detector(load_config(FASTRCNN_CONFIG, opts)).state_dict()}, weights)
    # The video id is the input's file stem (csv) or --proposals-video-id (pkl, a video named otherwise).
    video = tmp_path / ("street.mp4" if fmt == "csv" else "cam.mp4")
    write_synthetic_video(str(video), seconds=3, size=(64, 112), fps=30, seed=2)  # keyframes at 0, 1, 2 s
    rows = [
        "street,0,0.1,0.2,0.4,0.9,0.95",
        "street,0,0.5,0.1,0.8,0.7,0.3",  # below PROPOSALS.DET_SCORE_THR 0.7 of the config: dropped
        "street,0,0.55,0.25,0.9,0.95,0.85",
        "other,1,0.2,0.2,0.3,0.3,0.99",  # another video: second 1 of street has none -> the whole frame
        "street,2,0.3,0.3,0.6,0.8,0.75",
    ]
    proposals = tmp_path / f"people.{fmt}"
    if fmt == "csv":
        proposals.write_text("".join(row + "\n" for row in rows))
    else:
        table = {}
        for row in rows:
            video_id, second, *values = row.split(",")
            table.setdefault(f"{video_id},{int(second):04d}", []).append([float(v) for v in values])
        proposals.write_bytes(pickle.dumps({key: np.asarray(v) for key, v in table.items()}))
    out = tmp_path / "out"
    demo_main(["--config-file", FASTRCNN_CONFIG, "--input", str(video), "--proposals", str(proposals),
               *([] if fmt == "csv" else ["--proposals-video-id", "street"]),
               "--output", str(out / "labelled.mp4"), "--json", str(out / "dets.jsonl"), "--threshold", "0",
               "--no-progress", *opts, "MODEL.WEIGHT", str(weights)])
    records = [json.loads(line) for line in (out / "dets.jsonl").read_text().splitlines()]
    assert [r["time"] for r in records] == [0.0, 1.0, 2.0]
    expected = [
        [([0.1, 0.2, 0.4, 0.9], 0.95), ([0.55, 0.25, 0.9, 0.95], 0.85)],
        [([0.0, 0.0, 1.0, 1.0], 1.0)],
        [([0.3, 0.3, 0.6, 0.8], 0.75)],
    ]
    for record, persons in zip(records, expected):
        assert [p["score"] for p in record["persons"]] == pytest.approx([score for _, score in persons])
        # The boxes made the round trip through the clip's pixels (64 x 112 here; the whole frame is clipped
        # to the last pixel, (W - 1) / W): equal within a pixel.
        for person, (box, _) in zip(record["persons"], persons):
            assert person["box"] == pytest.approx(box, abs=1 / 64)
            assert len(person["actions"]) == 3 and all(0.0 <= a["score"] <= 1.0 for a in person["actions"])
    labelled = VideoSource(str(out / "labelled.mp4"))
    assert (labelled.width, labelled.height) == (112, 64) and sum(1 for _ in labelled.frames()) == 90
    log = capsys.readouterr()
    assert "2 of 3 keyframes (1 get the whole-frame fallback)" in log.out + log.err


def test_fastrcnn_demo_without_proposals_says_what_to_pass(tmp_path, capsys, monkeypatch):
    video = tmp_path / "in.mp4"
    video.write_bytes(b"x")
    _refused(capsys, monkeypatch, ["--config-file", FASTRCNN_CONFIG, "--input", str(video),
                                   "--json", str(tmp_path / "out.jsonl")],
             "MODEL.META_ARCHITECTURE FastRCNN classifies given person boxes: pass --proposals FILE")
    _refused(capsys, monkeypatch, ["--input", str(video), "--json", str(tmp_path / "out.jsonl"),
                                   "--proposals", str(tmp_path / "p.csv")],
             "STMDetector detects people itself")
    _refused(capsys, monkeypatch, ["--config-file", FASTRCNN_CONFIG, "--input", str(video),
                                   "--json", str(tmp_path / "out.jsonl"), "--proposals", str(tmp_path / "p.csv")],
             f"--proposals {tmp_path / 'p.csv'}: file not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
