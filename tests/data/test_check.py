import shutil

import pytest

from stmixer.data.check import main, run_checks
from stmixer.data.formats import second_to_frame_index


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset[0], root)
    return root


def check(cfg, **kwargs):
    return run_checks(cfg, ("train", "test"), **kwargs)


def test_clean_dataset_has_no_errors(tiny_cfg, tiny_dataset, capsys):
    report = check(tiny_cfg)
    assert report.num_errors == 0 and not report.categories("warning")
    root = str(tiny_dataset[0])
    assert main(["--workers", "1", "DATA.PATH_TO_DATA_DIR", root, "MODEL.STM.ACTION_CLASSES", "9"]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 0 warnings" in out and "train: 3 videos" in out


def test_checker_finds_each_planted_fault(dataset_copy, make_cfg, capsys):
    root = dataset_copy
    center = second_to_frame_index(902)
    # Missing frame and truncated JPEG, both read by the clip of keyframe 902 (8 frames at rate 4).
    missing = root / "frames" / "syn_train_0000" / f"syn_train_0000_{center - 16 + 1:06d}.jpg"
    missing.unlink()
    truncated = root / "frames" / "syn_train_0001" / f"syn_train_0001_{center + 4 + 1:06d}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    gt = root / "annotations_v2.2" / "ava_train_v2.2.csv"
    lines = gt.read_text().splitlines()
    video = lines[0].split(",")[0]
    lines += [
        f"{video},902,0.1,0.2,1.3,0.6,1,7",  # outside [0, 1]
        f"{video},902,0.4,0.2,0.4,0.6,1,8",  # zero width
        f"{video},902,0.1,0.2,0.3,0.6,42,9",  # unknown label
        f"{video},902,0.1,0.2",  # malformed
    ]
    gt.write_text("\n".join(lines) + "\n")
    n = len(lines)
    report = check(make_cfg(root))
    errors = report.counts["error"]
    assert errors["missing frame"] == 1 and str(missing) in report.examples["error"]["missing frame"][0]
    assert errors["unreadable frame"] == 1 and str(truncated) in report.examples["error"]["unreadable frame"][0]
    assert errors["box outside [0, 1]"] == 1 and f"ava_train_v2.2.csv:{n - 3}" in report.render()
    assert errors["degenerate box"] == 1 and f"ava_train_v2.2.csv:{n - 2}" in report.render()
    assert errors["unknown label"] == 1 and f"ava_train_v2.2.csv:{n - 1}: action_id 42" in report.render()
    assert errors["malformed row"] == 1 and f"ava_train_v2.2.csv:{n}: expected 7 comma-separated" in report.render()
    assert main(["--workers", "1", "DATA.PATH_TO_DATA_DIR", str(root), "MODEL.STM.ACTION_CLASSES", "9"]) == 1
    assert "ERROR missing frame: 1" in capsys.readouterr().out


def test_checker_warnings_and_frame_counts(dataset_copy, make_cfg):
    root = dataset_copy
    gt = root / "annotations_v2.2" / "ava_train_v2.2.csv"
    gt.write_text(gt.read_text() + "syn_train_0000,900,0.1,0.2,0.3,0.6,1,0\nghost,902,0.1,0.2,0.3,0.6,1,0\n"
                  "syn_train_0000,902,0.1,0.2,0.3,0.6,8,5\n")
    report = check(make_cfg(root, ["MODEL.STM.ACTION_CLASSES", 10]), frames_per_video=999)
    assert report.counts["warning"]["keyframe outside 902..1798 s"] == 1
    assert report.counts["warning"]["keyframe of a video without frames"] == 1
    assert report.counts["error"]["frame count"] == 4  # every video: 122 frames, not 999
    label_map = root / "annotations_v2.2" / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
    label_map.write_text(label_map.read_text().replace("id: 8\n", "id: 10\n"))
    report = check(make_cfg(root, ["MODEL.STM.ACTION_CLASSES", 10]))
    assert report.counts["warning"]["label not in label map"] >= 1


def test_checker_reports_short_videos_and_missing_files(dataset_copy, make_cfg):
    root = dataset_copy
    frame_list = root / "frame_lists" / "val.csv"
    lines = frame_list.read_text().splitlines()
    frame_list.write_text("\n".join(lines[:70]) + "\n")  # val video cut after 69 frames
    report = check(make_cfg(root, ["AVA.TRAIN_LISTS", ["missing.csv"]]))
    assert report.counts["error"]["missing file"] == 1 and "AVA.TRAIN_LISTS" in report.render()
    assert report.counts["error"]["keyframe beyond the video"] + report.counts["warning"]["clip clamped at the video's ends"] >= 1


def test_decode_all_reaches_frames_outside_the_clips(dataset_copy, make_cfg):
    corrupt = dataset_copy / "frames" / "syn_train_0002" / "syn_train_0002_000001.jpg"  # read by no clip
    corrupt.write_bytes(b"\xff\xd8garbage\xff\xd9")
    cfg = make_cfg(dataset_copy)
    assert check(cfg).num_errors == 0
    report = run_checks(cfg, ("train",), decode="all", workers=2)  # > 256 frames: a process pool
    assert report.counts["error"] == {"unreadable frame": 1}
    assert str(corrupt) in report.examples["error"]["unreadable frame"][0]


def cli_args(root, *options):
    """Command line of the checker on ``root``: overrides first, options after them (either order is valid)."""
    return ["DATA.PATH_TO_DATA_DIR", str(root), "MODEL.STM.ACTION_CLASSES", "9", *options]


def test_corrupt_middle_of_a_clip_frame_is_an_error_naming_it(dataset_copy, make_cfg, corrupt_jpeg):
    frame = dataset_copy / "frames" / "syn_train_0000" / f"syn_train_0000_{second_to_frame_index(902) + 1:06d}.jpg"
    corrupt_jpeg(frame)  # the keyframe itself: read by the clip of second 902
    report = check(make_cfg(dataset_copy))
    assert report.counts["error"] == {"corrupt frame": 1}
    assert f"corrupt JPEG data in {frame}: " in report.examples["error"]["corrupt frame"][0]


def test_default_run_names_the_frames_it_decoded_all_frames_decodes_the_rest(dataset_copy, capsys, corrupt_jpeg):
    unused = corrupt_jpeg(dataset_copy / "frames" / "syn_train_0001" / "syn_train_0001_000002.jpg")  # no clip reads it
    assert main(cli_args(dataset_copy, "--workers", "1")) == 0
    captured = capsys.readouterr()
    assert "train: decoded 24 of 366 listed frames: those the 6 keyframe clips read" in captured.out
    assert "--all-frames decodes every listed frame" in captured.out
    assert main(cli_args(dataset_copy, "--all-frames", "--split", "train", "--workers", "2")) == 1
    captured = capsys.readouterr()
    assert "train: decoded all 366 listed frames" in captured.out
    assert "ERROR corrupt frame: 1" in captured.out and str(unused) in captured.out
    progress = captured.err.replace("\r", "\n").splitlines()
    assert any("train frames" in line and "366/366" in line for line in progress)


@pytest.mark.parametrize("empty, key", [
    ("annotations_v2.2/ava_train_v2.2.csv", "AVA.TRAIN_GT_BOX_LISTS"),
    ("frame_lists/val.csv", "AVA.TEST_LISTS"),  # the header line only
])
def test_empty_annotation_or_frame_list_is_an_error(dataset_copy, make_cfg, empty, key):
    path = dataset_copy / empty
    path.write_text(path.read_text().splitlines()[0] + "\n" if empty.startswith("frame_lists") else "")
    report = check(make_cfg(dataset_copy))
    assert report.counts["error"]["empty file"] == 1
    assert f"{path} ({key}) has no rows" in report.examples["error"]["empty file"][0]
    split = "train" if "TRAIN" in key else "test"
    assert report.counts["error"]["no usable keyframe"] == 1
    assert f"{split}: no annotated keyframe" in report.examples["error"]["no usable keyframe"][0]


def test_options_may_follow_config_overrides(tiny_dataset, capsys):
    assert main(cli_args(tiny_dataset[0], "--split", "test", "--workers", "1")) == 0
    out = capsys.readouterr().out
    assert "test: 1 videos" in out and "train:" not in out


def test_wrong_data_root_is_one_line_naming_the_key(tmp_path, capsys):
    missing = tmp_path / "no_such_root"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(missing, "--workers", "1"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: DATA.PATH_TO_DATA_DIR = {str(missing)!r} does not exist: set it to the dataset root " \
                  "(see data/README.md)\n"


def test_checker_accepts_a_one_line_label_map_as_the_evaluator_does(dataset_copy, make_cfg):
    from stmixer.evaluation import read_labelmap

    cfg = make_cfg(dataset_copy, ["MODEL.STM.ACTION_CLASSES", 9])
    path = dataset_copy / cfg.AVA.ANNOTATION_DIR / cfg.AVA.LABEL_MAP_FILE
    names = read_labelmap(path).names
    path.write_text(" ".join(f'item {{ name: "{name}" id: {i} }}' for i, name in names.items()) + "\n")
    report = check(cfg)
    assert report.num_errors == 0, report.categories("error")
    assert read_labelmap(path).names == names


@pytest.mark.parametrize("key", ["LABEL_MAP_FILE", "EXCLUSION_FILE"])
def test_checker_reports_non_utf8_annotation_files_with_file_and_line(dataset_copy, make_cfg, key):
    cfg = make_cfg(dataset_copy, ["MODEL.STM.ACTION_CLASSES", 9])
    path = dataset_copy / cfg.AVA.ANNOTATION_DIR / cfg.AVA[key]
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    report = check(cfg)
    assert any(f"{path}:" in line and "not UTF-8 text (byte 0xe9" in line for line in report.render().splitlines())
