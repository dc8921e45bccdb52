import collections
import dataclasses
import filecmp
import json

import cv2
import numpy as np
import pytest

from stmixer.data.formats import read_box_csv, read_frame_lists, read_label_map, second_to_frame_index
from stmixer.data.synthetic import (
    CLASS_NAMES,
    MOTIONS,
    SHAPES,
    displacement,
    generate_dataset,
    main,
    plan_dataset,
    render_sprite,
)

ANNOTATIONS = [
    "ava_action_list_v2.2_for_activitynet_2019.pbtxt",
    "ava_train_v2.2.csv",
    "ava_val_v2.2.csv",
    "ava_val_excluded_timestamps_v2.2.csv",
    "ava_train_predicted_boxes.csv",
    "ava_val_predicted_boxes.csv",
]


def test_layout_uses_the_default_file_names(tiny_dataset):
    root, summary = tiny_dataset
    ann = root / "annotations_v2.2"
    assert all((ann / name).is_file() for name in ANNOTATIONS)
    assert read_label_map(str(ann / ANNOTATIONS[0])) == {i + 1: n for i, n in enumerate(CLASS_NAMES)}
    assert json.loads((root / "synthetic_dataset.json").read_text()) == summary
    for split in ("train", "val"):
        videos = read_frame_lists([str(root / "frame_lists" / f"{split}.csv")])
        assert len(videos) == summary["splits"][split]["videos"]
        for video in videos:
            assert video.paths is None and video.num_frames == summary["frames_per_video"]
            files = sorted(p.name for p in (root / "frames" / video.name).iterdir())
            assert files[0] == f"{video.name}_000001.jpg" and len(files) == video.num_frames
        rows = read_box_csv(str(ann / f"ava_{split}_v2.2.csv"))
        assert set(rows.videos) <= {v.name for v in videos}
        assert sum(summary["splits"][split]["labels_per_class"].values()) == len(rows)
        assert rows.boxes.min() >= 0 and rows.boxes.max() <= 1
    data = (root / "frames" / "syn_val_0000" / "syn_val_0000_000061.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8"
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (64, 80, 3)


def test_predicted_boxes_have_scores_and_cover_ground_truth(tiny_dataset):
    root, _ = tiny_dataset
    predicted = read_box_csv(str(root / "annotations_v2.2" / "ava_train_predicted_boxes.csv"), has_score=True)
    truth = read_box_csv(str(root / "annotations_v2.2" / "ava_train_v2.2.csv"))
    assert np.all((predicted.scores > 0) & (predicted.scores <= 1)) and np.all(predicted.actions == -1)
    assert (predicted.scores >= 0.8).sum() == len(set(zip(truth.videos, truth.seconds.tolist(), truth.box_keys)))


def test_generation_is_deterministic(tiny_dataset, tmp_path):
    root, summary = tiny_dataset
    args = summary["arguments"]
    generate_dataset(str(tmp_path), args["videos"], args["seconds"], tuple(args["size"]), args["seed"], workers=2)
    for name in ANNOTATIONS:
        assert filecmp.cmp(root / "annotations_v2.2" / name, tmp_path / "annotations_v2.2" / name, shallow=False)
    for frame in ("syn_train_0001/syn_train_0001_000001.jpg", "syn_val_0000/syn_val_0000_000090.jpg"):
        assert filecmp.cmp(root / "frames" / frame, tmp_path / "frames" / frame, shallow=False)
    assert plan_dataset(4, 2, 64, 80, seed=args["seed"] + 1) != plan_dataset(4, 2, 64, 80, seed=args["seed"])


def test_classes_are_balanced_and_actors_carry_one_to_three_actions():
    specs = plan_dataset(40, 2, 128, 160, seed=0)
    for split in ("train", "val"):
        actors = [a for s in specs if s.split == split for a in s.actors]
        counts = collections.Counter(n for a in actors for n in (a.shape, a.marking, a.motion) if n)
        for group, options in ((SHAPES, 4), (MOTIONS, 4), (("striped", "spot"), 4)):
            expected = len(actors) / options
            assert all(abs(counts[name] - expected) <= 1 for name in group), counts
        assert all(1 <= len(a.actions) <= 3 for a in actors)
    assert all(2 <= len(s.actors) <= 4 for s in specs)


def test_motion_classes_look_identical_in_a_single_frame_and_move_within_a_clip():
    actors = [a for s in plan_dataset(60, 2, 128, 160, seed=1) for a in s.actors]
    base = actors[0]
    looks = {render_sprite(dataclasses.replace(base, motion=m))[0].tobytes() for m in (None,) + MOTIONS}
    assert len(looks) == 1
    for actor in actors:
        for frames, rate in ((8, 4), (4, 16)):
            center = second_to_frame_index(903)
            times = [(center - frames * rate // 2 + i * rate) / 30 for i in range(frames)]
            dx, dy = np.array([displacement(actor, t) for t in times]).T
            span_x, span_y = np.ptp(dx), np.ptp(dy)
            if actor.motion is None:
                assert span_x == span_y == 0
            else:
                moving = {"sway": span_x, "bob": span_y, "circle": max(span_x, span_y)}[actor.motion]
                assert moving >= 0.5 * actor.amplitude, (actor.motion, frames, rate, moving)
                if actor.motion == "sway":
                    assert span_y == 0
                if actor.motion == "bob":
                    assert span_x == 0


def test_ground_truth_boxes_hug_the_actors(tiny_dataset):
    root, _ = tiny_dataset
    rows = read_box_csv(str(root / "annotations_v2.2" / "ava_train_v2.2.csv"))
    keyframes = collections.defaultdict(dict)
    for video, second, key, box in zip(rows.videos, rows.seconds.tolist(), rows.box_keys, rows.boxes):
        keyframes[(video, second)][key] = box * np.array([80, 64, 80, 64])
    checked = 0
    for (video, second), boxes in keyframes.items():
        image = cv2.imread(str(root / "frames" / video / f"{video}_{second_to_frame_index(second) + 1:06d}.jpg"))
        dark = (image.max(axis=2) < 60)
        for key, (x1, y1, x2, y2) in boxes.items():
            others = [b for k, b in boxes.items() if k != key]
            if any(min(x2, b[2]) > max(x1, b[0]) - 2 and min(y2, b[3]) > max(y1, b[1]) - 2 for b in others):
                continue  # touching or overlapping actors: edges may be hidden
            x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
            region = dark[y1:y2, x1:x2]
            # The dark outline reaches every side of the box (within a pixel): the box is tight.
            assert region[:2].any() and region[-2:].any() and region[:, :2].any() and region[:, -2:].any()
            checked += 1
    assert checked >= 5


def test_command_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--videos", "2", "--seconds", "1", "--size", "40", "56", "--workers", "1"]) == 0
    assert "set MODEL.STM.ACTION_CLASSES 9" in capsys.readouterr().out
    assert main(["--out", str(tmp_path), "--videos", "1"]) == 2
    with pytest.raises(ValueError, match="too small"):
        plan_dataset(2, 1, 16, 16, seed=0)


def test_frame_list_tool_rebuilds_the_generated_list(tiny_dataset, tmp_path):
    from stmixer.data.frame_lists import main as frame_lists_main

    root, _ = tiny_dataset
    videos = tmp_path / "videos.txt"
    videos.write_text("syn_train_0000\nsyn_train_0001\nsyn_train_0002\n")
    out = tmp_path / "train.csv"
    assert frame_lists_main(["--frame-dir", str(root / "frames"), "--out", str(out), "--videos", str(videos)]) == 0
    assert out.read_text() == (root / "frame_lists" / "train.csv").read_text()
    gap = tmp_path / "frames" / "v"
    gap.mkdir(parents=True)
    for number in (1, 2, 4):
        (gap / f"v_{number:06d}.jpg").write_bytes(b"")
    assert frame_lists_main(["--frame-dir", str(tmp_path / "frames"), "--out", str(tmp_path / "x.csv")]) == 1
