"""AVA-Kinetics: the synthetic ``--format ava_kinetics`` data builds into one dataset whose
Kinetics clips live on their own timeline, and the evaluator scores each part and the whole."""

import os

import numpy as np
import pytest

from stmixer.ava_files import AVA_SPAN, ava_kinetics_span, kinetics_clip_span
from stmixer.data.build import build_dataset, dataset_path
from stmixer.data.synthetic import CLASS_NAMES, generate_dataset, keyframe_boxes, main, plan_kinetics_clips
from stmixer.evaluation.evaluator import AVAEvaluator


@pytest.fixture(scope="module")
def avak_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("avak")
    summary = generate_dataset(str(root), num_videos=2, seconds=2, size=(64, 80), seed=5, workers=1,
                               kinetics_clips=3)
    return root, summary


def test_clip_names_and_spans():
    assert kinetics_clip_span("abcdefghijk") is None  # an AVA id (11 characters), even with digits
    assert kinetics_clip_span("ab_0001_002") is None
    assert kinetics_clip_span("o3lCwWyyc_s_000012_000022") == (12, 22)
    assert kinetics_clip_span("syn_train_0000") is None
    assert ava_kinetics_span("syn_val_0001") == AVA_SPAN
    span = ava_kinetics_span("o3lCwWyyc_s_000012_000022")
    assert (span.start, span.first, span.last) == (12, 12, 22)
    assert span.frame_index(14) == 60 and AVA_SPAN.frame_index(902) == 60


def test_synthetic_layout(avak_root):
    root, summary = avak_root
    clips = summary["kinetics_clips"]
    assert len(clips) == 3 and all(kinetics_clip_span(c) for c in clips)
    start, end = kinetics_clip_span(clips[0])
    assert end - start == 4
    frames = sorted(os.listdir(root / "frames" / clips[0]))
    assert len(frames) == 120 and frames[0] == f"{clips[0]}_000001.jpg"
    rows = (root / "annotations_v2.2" / "ava_train_v2.2.csv").read_text().splitlines()
    kinetics_rows = [r for r in rows if kinetics_clip_span(r.split(",")[0])]
    assert kinetics_rows and {int(r.split(",")[1]) for r in kinetics_rows} <= {start + 2 for start in
                                                                              [kinetics_clip_span(c)[0] for c in clips]}


def test_kinetics_keyframe_reads_its_own_frames(avak_root, make_cfg):
    dataset_cfg = make_cfg
    root, summary = avak_root
    cfg = dataset_cfg(root, ["DATA.DATASETS", ["ava_kinetics"], "DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 1])
    dataset = build_dataset(cfg, is_train=True)
    infos = [dataset.keyframe_info(i) for i in range(len(dataset))]
    kinetics = [i for i, info in enumerate(infos) if kinetics_clip_span(info["video_id"])]
    assert kinetics and len(kinetics) < len(dataset)
    i = kinetics[0]
    video = infos[i]["video_id"]
    start = kinetics_clip_span(video)[0]
    assert infos[i]["timestamp"] == start + 2
    # keyframe second start + 2 is frame index 60 = file 61; 4 frames at rate 1 start 2 before it
    assert [os.path.basename(p) for p in dataset.clip_frame_paths(i)] == [
        f"{video}_{n:06d}.jpg" for n in (59, 60, 61, 62)
    ]
    # the same config as plain AVA drops the Kinetics rows (outside seconds 902..1798)
    ava_only = build_dataset(dataset_cfg(root, ["DATA.NUM_FRAMES", 4, "DATA.SAMPLING_RATE", 1]), is_train=True)
    assert len(ava_only) == len(dataset) - len(kinetics)


def _perfect_evaluator(dataset_cfg, root, tmp_path, drop_kinetics=False):
    cfg = dataset_cfg(root, ["DATA.DATASETS", ["ava_kinetics"]])
    dataset = build_dataset(cfg, is_train=False)
    evaluator = AVAEvaluator(
        groundtruth=dataset_path(cfg, "ANNOTATION_DIR", cfg.AVA.GROUNDTRUTH_FILE, "AVA.GROUNDTRUTH_FILE"),
        labelmap=dataset_path(cfg, "ANNOTATION_DIR", cfg.AVA.LABEL_MAP_FILE, "AVA.LABEL_MAP_FILE"),
        exclusions=dataset_path(cfg, "ANNOTATION_DIR", cfg.AVA.EXCLUSION_FILE, "AVA.EXCLUSION_FILE"),
        output_folder=str(tmp_path), num_keyframes=len(dataset), parts="ava_kinetics",
    )
    ids, stamps, boxes, scores = [], [], [], []
    for i in range(len(dataset)):
        info = dataset.keyframe_info(i)
        n = len(dataset.keyframes.boxes_of(i))
        hot = dataset.keyframes.multi_hot(i, len(CLASS_NAMES))
        if drop_kinetics and kinetics_clip_span(info["video_id"]):
            hot = 1.0 - hot  # wrong classes on every Kinetics box
        ids.append(info["video_id"])
        stamps.append(info["timestamp"])
        boxes.append(dataset.keyframes.boxes_of(i).astype(np.float64))
        scores.append(hot * 0.9 + 0.05)
        assert n == len(hot)
    evaluator.process(ids, stamps, boxes, scores, indices=list(range(len(dataset))))
    return evaluator.evaluate(), dataset


def test_perfect_detections_score_one_per_part(avak_root, tmp_path, make_cfg):
    metrics, _ = _perfect_evaluator(make_cfg, avak_root[0], tmp_path)
    assert set(metrics["parts"]) == {"ava", "kinetics"}
    assert metrics["mAP"] == pytest.approx(1.0)
    for part in metrics["parts"].values():
        assert part["mAP"] == pytest.approx(1.0)
        assert sum(part["num_gt"].values()) > 0
    total = {k: metrics["parts"]["ava"]["num_gt"][k] + metrics["parts"]["kinetics"]["num_gt"][k]
             for k in metrics["num_gt"]}
    assert total == metrics["num_gt"]


def test_parts_are_scored_separately(avak_root, tmp_path, make_cfg):
    metrics, _ = _perfect_evaluator(make_cfg, avak_root[0], tmp_path, drop_kinetics=True)
    assert metrics["parts"]["ava"]["mAP"] == pytest.approx(1.0)
    assert metrics["parts"]["kinetics"]["mAP"] < 0.9
    assert metrics["parts"]["kinetics"]["mAP"] < metrics["mAP"] < 1.0


def test_unknown_parts_refused():
    with pytest.raises(ValueError, match="parts"):
        AVAEvaluator("gt.csv", "labels.pbtxt", parts="kinetics_only")


def test_kinetics_boxes_follow_the_clip_timeline():
    # the keyframe of a clip starting at second s is drawn at time 2 s into the clip
    spec = plan_kinetics_clips(2, 64, 80, seed=1)[0]
    boxes = keyframe_boxes(spec)
    assert list(boxes) == [spec.start_second + 2]


def test_cli_format(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--format", "ava_kinetics", "--videos", "2", "--kinetics-clips", "2",
                 "--seconds", "1", "--size", "64", "80", "--workers", "1"]) == 0
    val = (tmp_path / "frame_lists" / "val.csv").read_text()
    assert "kva00000001_000017_000021" in val


def test_cli_parts_match_the_evaluator(avak_root, tmp_path, make_cfg):
    import json

    from stmixer.evaluation.ava import main as evaluate_main

    metrics, _ = _perfect_evaluator(make_cfg, avak_root[0], tmp_path, drop_kinetics=True)
    ann = avak_root[0] / "annotations_v2.2"
    out = tmp_path / "cli.json"
    assert evaluate_main([
        "--groundtruth", str(ann / "ava_val_v2.2.csv"), "--detections", metrics["detections_csv"],
        "--labelmap", str(ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
        "--exclusions", str(ann / "ava_val_excluded_timestamps_v2.2.csv"), "--json", str(out),
        "--parts", "ava_kinetics",
    ]) == 0
    written = json.loads(out.read_text())
    assert written["mAP"] == pytest.approx(metrics["mAP"])
    for part in ("ava", "kinetics"):
        assert written["parts"][part]["mAP"] == pytest.approx(metrics["parts"][part]["mAP"])


def test_check_accepts_the_clips_and_flags_a_keyframe_outside_its_clip(tmp_path, capsys, repo_root):
    from stmixer.data.check import main as check_main

    assert main(["--out", str(tmp_path), "--format", "ava_kinetics", "--videos", "2", "--kinetics-clips", "2",
                 "--seconds", "1", "--size", "64", "80", "--workers", "1"]) == 0
    args = ["--config-file", str(repo_root / "config_files" / "ava_kinetics" / "PySlowonly-R50-K400-4x16.yaml"),
            "DATA.PATH_TO_DATA_DIR", str(tmp_path), "MODEL.STM.ACTION_CLASSES", str(len(CLASS_NAMES))]
    capsys.readouterr()
    check_main(args)
    out = capsys.readouterr()
    assert "0 errors, 0 warnings" in out.out + out.err
    gt = tmp_path / "annotations_v2.2" / "ava_train_v2.2.csv"
    rows = gt.read_text().splitlines()
    clip = next(r for r in rows if kinetics_clip_span(r.split(",")[0])).split(",")[0]
    start, end = kinetics_clip_span(clip)
    rows = [f"{clip},{end + 1}," + ",".join(r.split(",")[2:]) if r.startswith(clip + ",") else r for r in rows]
    gt.write_text("\n".join(rows) + "\n")
    check_main(args)
    out = capsys.readouterr()
    assert "keyframe outside its Kinetics clip" in out.out + out.err
