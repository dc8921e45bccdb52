"""The UCF101-24 / JHMDB-21 layout: synthetic writer, dataset samples, descriptions, checker, epoch length."""

import filecmp
import json
import os
import pickle

import numpy as np
import pytest

from stmixer.config import get_cfg
from stmixer.data.build import build_dataset, resolve_epoch_length
from stmixer.data.check import main as check_main
from stmixer.data.descriptions import DESCRIPTIONS, describe
from stmixer.data.synthetic import TUBE_CLASSES, TUBE_FORMATS, generate_tube_dataset
from stmixer.data.synthetic import main as synthetic_main
from stmixer.errors import UserError

SMALL = dict(num_videos=5, seconds=1.0, size=(64, 80), seed=4, workers=1)


@pytest.fixture(scope="module", params=["ucf24", "jhmdb"])
def tube_dataset(request, tmp_path_factory):
    """(format, root) of a generated 5-video, 1-second dataset in that layout."""
    root = tmp_path_factory.mktemp(request.param)
    generate_tube_dataset(str(root), request.param, **SMALL)
    return request.param, root


def tube_cfg(fmt, root, opts=()):
    form = TUBE_FORMATS[fmt]
    cfg = get_cfg()
    cfg.merge_from_list([
        "DATA.DATASETS", [fmt], "DATA.PATH_TO_DATA_DIR", str(root), "DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 2,
        "DATA.TRAIN_MIN_SCALES", [64], "DATA.TEST_MIN_SCALES", [64], "MODEL.STM.ACTION_CLASSES", len(TUBE_CLASSES),
        "DATALOADER.NUM_WORKERS", 0, "SOLVER.VIDEOS_PER_BATCH", 2, "TEST.VIDEOS_PER_BATCH", 2,
        "TUBES.GT_FILE", form["gt_file"], "TUBES.FRAME_DIR", form["frame_dir"],
        "TUBES.FRAME_TEMPLATE", "{video}/{frame:05d}." + form["ext"],
    ])
    cfg.merge_from_list(list(opts))
    return cfg


def read_gt(fmt, root):
    with open(root / TUBE_FORMATS[fmt]["gt_file"], "rb") as f:
        return pickle.load(f)


def test_writer_produces_the_community_pickle_and_frames(tube_dataset):
    fmt, root = tube_dataset
    gt = read_gt(fmt, root)
    assert set(gt) == {"labels", "gttubes", "nframes", "train_videos", "test_videos", "resolution"}
    assert gt["labels"] == list(TUBE_CLASSES)
    assert len(gt["train_videos"]) == len(gt["test_videos"]) == TUBE_FORMATS[fmt]["splits"]
    fps = TUBE_FORMATS[fmt]["fps"]
    for video, n in gt["nframes"].items():
        assert n == fps  # 1 second
        assert gt["resolution"][video] == (64, 80)
        frames = sorted(os.listdir(root / TUBE_FORMATS[fmt]["frame_dir"] / video))
        assert frames[0] == "00001." + TUBE_FORMATS[fmt]["ext"] and len(frames) == n
        for tubes in gt["gttubes"][video].values():
            for tube in tubes:
                assert tube.shape == (n, 5) and tube.dtype == np.float32
                assert (tube[:, 0] == np.arange(1, n + 1)).all()
    for k in range(len(gt["test_videos"])):
        assert set(gt["train_videos"][k]).isdisjoint(gt["test_videos"][k])
        assert set(gt["train_videos"][k]) | set(gt["test_videos"][k]) == set(gt["nframes"])
    if fmt == "jhmdb":
        assert gt["test_videos"][0] != gt["test_videos"][1]


def test_samples_carry_normalized_boxes_one_label_and_frame_numbers(tube_dataset):
    fmt, root = tube_dataset
    gt = read_gt(fmt, root)
    cfg = tube_cfg(fmt, root)
    train, test = build_dataset(cfg, True), build_dataset(cfg, False)
    assert describe(cfg).evaluator == "tubes" and describe(cfg).timeline == "frame"
    fps = TUBE_FORMATS[fmt]["fps"]
    assert len(train) == fps * len(gt["train_videos"][0])  # every frame has boxes here
    assert len(test) == fps * len(gt["test_videos"][0])  # every frame of the test videos
    index = 7
    video = train.keyframe_info(index)["video_id"]
    frame = train.keyframe_info(index)["timestamp"]
    assert video == gt["train_videos"][0][0] and frame == index + 1
    expected = sorted(
        (label, tuple(float(v) for v in t[frame - 1, 1:] / [80, 64, 80, 64]))
        for label, tubes in gt["gttubes"][video].items() for t in tubes
    )
    got = sorted(
        (int(np.flatnonzero(lab)[0]), tuple(float(v) for v in b))
        for b, lab in zip(train.keyframes.boxes_of(index), train.keyframes.multi_hot(index, len(TUBE_CLASSES)))
    )
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-6)
    assert (train.keyframes.multi_hot(index, len(TUBE_CLASSES)).sum(axis=1) == 1).all()
    ext = TUBE_FORMATS[fmt]["ext"]
    # 4 frames at rate 2 around frame 8 (index 7): frames 4, 6, 8, 10 (1-based)
    assert [os.path.basename(p) for p in train.clip_frame_paths(index)] == [f"{f:05d}.{ext}" for f in (4, 6, 8, 10)]
    # clamped at the start: frame 1 reads frames 1, 1, 1, 3
    assert [os.path.basename(p) for p in train.clip_frame_paths(0)] == [f"{f:05d}.{ext}" for f in (1, 1, 1, 3)]
    sample = train[(index, (1, 2))]
    assert sample["metadata"]["timestamp"] == frame and sample["labels"].shape[1] == len(TUBE_CLASSES)
    assert sample["boxes"].shape == (len(expected), 4)


def test_resolve_epoch_length_zero_is_the_split_size(tube_dataset):
    fmt, root = tube_dataset
    cfg = tube_cfg(fmt, root, ["SOLVER.ITER_PER_EPOCH", 0, "SOLVER.VIDEOS_PER_BATCH", 4])
    resolved, dataset = resolve_epoch_length(cfg)
    assert resolved.SOLVER.ITER_PER_EPOCH == -(-len(dataset) // 4) > 0
    assert cfg.SOLVER.ITER_PER_EPOCH == 0  # the given config is untouched
    assert resolve_epoch_length(tube_cfg(fmt, root, ["SOLVER.ITER_PER_EPOCH", 7])) [0].SOLVER.ITER_PER_EPOCH == 7


def test_checker_accepts_the_synthetic_dataset_and_names_a_missing_frame(tube_dataset, tmp_path, capsys):
    fmt, root = tube_dataset
    form = TUBE_FORMATS[fmt]
    opts = ["DATA.DATASETS", f"['{fmt}']", "DATA.PATH_TO_DATA_DIR", str(root), "MODEL.STM.ACTION_CLASSES", "4",
            "TUBES.GT_FILE", form["gt_file"], "TUBES.FRAME_DIR", form["frame_dir"],
            "TUBES.FRAME_TEMPLATE", "{video}/{frame:05d}." + form["ext"]]
    assert check_main(opts + ["--workers", "1"]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out
    gt = read_gt(fmt, root)
    broken = tmp_path / "broken"
    os.makedirs(broken)
    video = gt["test_videos"][0][0]
    os.symlink(root / form["frame_dir"], broken / form["frame_dir"])
    del gt["nframes"][video]
    with open(broken / form["gt_file"], "wb") as f:
        pickle.dump(gt, f)
    opts[opts.index("DATA.PATH_TO_DATA_DIR") + 1] = str(broken)
    assert check_main(opts + ["--decode", "none"]) == 1
    out = capsys.readouterr().out
    assert f"'nframes' has no entry for video '{video}'" in out
    assert out.count("'nframes' has no entry") == 1  # one line, not one per split


def test_checker_reports_missing_frames(tmp_path, capsys):
    generate_tube_dataset(str(tmp_path), "ucf24", **SMALL)
    gt = read_gt("ucf24", tmp_path)
    video = gt["test_videos"][0][0]
    missing = tmp_path / "rgb-images" / video / "00003.jpg"
    os.remove(missing)
    opts = ["DATA.DATASETS", "['ucf24']", "DATA.PATH_TO_DATA_DIR", str(tmp_path), "MODEL.STM.ACTION_CLASSES", "4"]
    assert check_main(opts + ["--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "ERROR missing frame: 1" in out and str(missing) in out


def test_missing_pickle_key_and_bad_template_are_one_clear_error(tmp_path):
    generate_tube_dataset(str(tmp_path), "ucf24", **SMALL)
    gt = read_gt("ucf24", tmp_path)
    del gt["resolution"]
    with open(tmp_path / "UCF101v2-GT.pkl", "wb") as f:
        pickle.dump(gt, f)
    cfg = tube_cfg("ucf24", tmp_path)
    with pytest.raises(UserError, match=r"UCF101v2-GT.pkl: key 'resolution' missing"):
        build_dataset(cfg, True)
    with pytest.raises(UserError, match=r"TUBES.FRAME_TEMPLATE = '\{video\}/x.jpg' gives every frame the same path"):
        build_dataset(tube_cfg("ucf24", tmp_path, ["TUBES.FRAME_TEMPLATE", "{video}/x.jpg"]), True)


def test_format_ava_is_the_default_and_writes_the_same_files(tmp_path, capsys):
    args = ["--videos", "3", "--seconds", "1", "--size", "48", "64", "--workers", "1", "--seed", "5"]
    assert synthetic_main(["--out", str(tmp_path / "a")] + args) == 0
    assert synthetic_main(["--out", str(tmp_path / "b"), "--format", "ava"] + args) == 0
    comparison = filecmp.dircmp(tmp_path / "a", tmp_path / "b", ignore=["synthetic_dataset.json"])
    assert not comparison.diff_files and not comparison.left_only and not comparison.right_only
    frames = filecmp.dircmp(tmp_path / "a" / "frames", tmp_path / "b" / "frames")
    assert frames.common_dirs and not frames.left_only and not frames.right_only
    for name in frames.common_dirs:
        _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a" / "frames" / name, tmp_path / "b" / "frames" / name,
                                               os.listdir(tmp_path / "a" / "frames" / name), shallow=False)
        assert not mismatch and not errors
    summary = json.loads((tmp_path / "b" / "synthetic_dataset.json").read_text())
    assert summary["action_classes"] == 9


def test_command_line_writes_each_tube_format(tmp_path, capsys):
    for fmt in ("ucf24", "jhmdb"):
        assert synthetic_main(["--format", fmt, "--out", str(tmp_path / fmt), "--videos", "3", "--seconds", "0.4",
                               "--size", "48", "64", "--workers", "1"]) == 0
        assert (tmp_path / fmt / TUBE_FORMATS[fmt]["gt_file"]).is_file()
    assert "tiny-jhmdb.yaml" in capsys.readouterr().out


def test_every_registered_name_has_a_description():
    from stmixer.data.build import DATASET_REGISTRY

    assert set(DATASET_REGISTRY.names()) == set(DESCRIPTIONS)
    ava = DESCRIPTIONS["ava_v2.2"]
    assert ava.evaluator == "ava" and ava.frame_index(902) == 60 and ava.frame_index(900) == 0
    assert DESCRIPTIONS["ucf24"].frame_index(1) == 0


def test_demo_names_actions_from_the_pickle_labels(tube_dataset):
    from stmixer.engine.demo import action_names

    fmt, root = tube_dataset
    names = action_names(tube_cfg(fmt, root, ["MODEL.STM.ACTION_CLASSES", 5]))
    assert names == {1: "still", 2: "sway", 3: "bob", 4: "circle", 5: "action 5"}
