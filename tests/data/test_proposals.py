"""Person proposals from a file (``stmixer.data.proposals``): mmaction2's selection rules, the two file
formats and their errors, the samples and batches that carry them, and mmaction2's own answers
(``tests/reference/mmaction2/data``, made by ``tests/reference/make_mmaction2_data_fixtures.py``)."""

import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.config.validate import validate_config
from stmixer.data.build import build_data_loader, build_dataset
from stmixer.data.proposals import (
    KeyframeProposals,
    ProposalFormatError,
    proposal_key,
    read_proposals,
    select_proposals,
)
from stmixer.data.synthetic import PROPOSAL_FILE, main as synthetic_main
from stmixer.data.transforms import ClipTransform

FIXTURE = Path(__file__).resolve().parents[1] / "reference" / "mmaction2" / "data"
TRAIN_PKL = PROPOSAL_FILE.format(split="train", ext="pkl")
VAL_PKL = PROPOSAL_FILE.format(split="val", ext="pkl")


# ----------------------------------------------------------------------------- selection rules
def test_threshold_is_inclusive_keeps_file_order_and_caps():
    p = np.array([[0, 0, 1, 1, 0.95], [0, 0, 0.5, 0.5, 0.3], [0.1, 0, 1, 1, 0.9], [0.2, 0, 1, 1, 0.99]])
    boxes, scores = select_proposals(p, 0.9, 1000)
    np.testing.assert_array_equal(scores, [0.95, 0.9, 0.99])  # >= 0.9, not sorted
    np.testing.assert_array_equal(boxes, p[[0, 2, 3], :4])
    boxes, scores = select_proposals(p, 0.9, 2)
    np.testing.assert_array_equal(scores, [0.95, 0.9])  # the first 2 kept, not the best 2


def test_nothing_above_threshold_keeps_the_best_with_ties():
    p = np.array([[0, 0, 1, 1, 0.7], [0, 0, 0.5, 0.5, 0.85], [0.1, 0, 1, 1, 0.85]])
    boxes, scores = select_proposals(p, 0.9, 1000)
    np.testing.assert_array_equal(scores, [0.85, 0.85])
    np.testing.assert_array_equal(boxes, p[1:, :4])


def test_four_columns_only_capped_with_unit_scores():
    p = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.1, 0, 1, 1]])
    boxes, scores = select_proposals(p, 0.9, 2)
    np.testing.assert_array_equal(boxes, p[:2])
    np.testing.assert_array_equal(scores, [1.0, 1.0])


def test_missing_and_empty_keys_get_the_fallback():
    gt = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.6]], dtype=np.float32)
    proposals = {"v,0902": np.array([[0.1, 0.1, 0.2, 0.2, 0.95]]), "v,0903": np.zeros((0, 5)), "w,0902": np.ones((1, 5))}
    table = KeyframeProposals.build(proposals, ["v,0902", "v,0903", "v,0904"], 0.9, 10)
    assert table.missing.tolist() == [False, True, True] and table.unused_keys == 1
    boxes, scores = table.of(1, gt)
    np.testing.assert_array_equal(boxes, [[0, 0, 1, 1]])
    assert scores.dtype == np.float32 and scores.tolist() == [1.0]
    table = KeyframeProposals.build(proposals, ["v,0902", "v,0903"], 0.9, 10, fallback="gt")
    boxes, scores = table.of(1, gt)
    np.testing.assert_array_equal(boxes, gt)
    assert scores.tolist() == [1.0, 1.0]


def test_kept_boxes_must_be_normalized():
    proposals = {"v,0902": np.array([[0.1, 0.1, 1.5, 0.2, 0.95], [0, 0, 9, 9, 0.1]])}
    with pytest.raises(ProposalFormatError, match=r"f\.pkl: key 'v,0902'.*\[0, 1\]"):
        KeyframeProposals.build(proposals, ["v,0902"], 0.9, 10, source="f.pkl")
    # a box outside [0, 1] that the threshold drops is fine (mmaction2 checks the kept ones)
    proposals = {"v,0902": np.array([[0.1, 0.1, 0.5, 0.2, 0.95], [0, 0, 9, 9, 0.1]])}
    assert not KeyframeProposals.build(proposals, ["v,0902"], 0.9, 10).missing[0]


def test_proposal_keys():
    assert proposal_key("abcdefghijk", 902) == "abcdefghijk,0902"
    assert proposal_key("syn_train_0001", 903, kinetics=True) == "syn_train_0001,0903"
    assert proposal_key("o3lCwWyyc_s_000012_000022", 14) == "o3lCwWyyc_s_000012_000022,0014"
    assert proposal_key("o3lCwWyyc_s_000012_000022", 14, kinetics=True) == "o3lCwWyyc_s,0014"
    assert proposal_key("abc_000012_000022", 14, kinetics=True) == "abc,0014"


# ----------------------------------------------------------------------------- files
def test_pickle_and_csv_read_alike(tmp_path):
    data = {"v,0902": np.array([[0.1, 0.2, 0.3, 0.4, 0.9], [0.0, 0.0, 1.0, 1.0, 0.5]]),
            "w_x,0903": np.array([[0.5, 0.5, 0.6, 0.7, 0.25]], dtype=np.float32)}
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(data))
    (tmp_path / "p.csv").write_text("v,902,0.1,0.2,0.3,0.4,0.9\nv,0902,0,0,1,1,0.5\n\nw_x,903,0.5,0.5,0.6,0.7,0.25\n")
    from_pkl, from_csv = read_proposals(tmp_path / "p.pkl"), read_proposals(tmp_path / "p.csv")
    assert list(from_pkl) == list(from_csv) == ["v,0902", "w_x,0903"]
    for key in data:
        np.testing.assert_allclose(from_pkl[key], from_csv[key], rtol=1e-7)
        assert from_pkl[key].dtype == np.float64
    (tmp_path / "q.csv").write_text("v,902,0.1,0.2,0.3,0.4\n")
    assert read_proposals(tmp_path / "q.csv")["v,0902"].shape == (1, 4)


@pytest.mark.parametrize("text, line, expected", [
    ("v,902,0.1,0.2,0.3,0.4,0.9\nv,903,0.1,0.2,0.3\n", 2, "expected 7 comma-separated fields"),
    ("v,902.5,0.1,0.2,0.3,0.4,0.9\n", 1, "timestamp"),
    ("v,902,0.1,a,0.3,0.4,0.9\n", 1, "must be numbers"),
    ("v,902,0.5,0.2,0.3,0.4,0.9\n", 1, "inverted box"),
    ("v,902,0.1,0.2,0.3,0.4,nan\n", 1, "finite"),
    ("v,902,0.1,0.2,0.3,0.4,0.9\nv,903,0.1,0.2,0.3,0.4\n", 2, "a score on every line or on none"),
])
def test_bad_csv_rows_are_named(tmp_path, text, line, expected):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ProposalFormatError, match=rf"p\.csv:{line}: .*{expected}"):
        read_proposals(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content, expected", [
    ([1, 2], "expected a dict"),
    ({"v,0902": np.zeros((2, 3))}, r"key 'v,0902': expected a numeric array \[N, 5\]"),
    ({"v,0902": "boxes"}, "key 'v,0902': expected a numeric array"),
    ({"v0902": np.zeros((1, 5))}, "key 'v0902': expected '<video_id>,<second:04d>'"),
    ({"v,0902": np.array([[0, 0, 1, np.inf, 1]])}, "finite"),
    ({"v,0902": _Evil()}, "not a readable proposal pickle"),
])
def test_bad_pickles_are_named(tmp_path, content, expected):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ProposalFormatError, match=rf"p\.pkl: .*{expected}"):
        read_proposals(path)


def test_other_extensions_are_refused(tmp_path):
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(ProposalFormatError, match=r"p\.json: expected .*\.pkl.*\.csv"):
        read_proposals(tmp_path / "p.json")


def test_config_keys_are_checked():
    cfg = get_cfg()
    cfg.PROPOSALS.TRAIN_FALLBACK = "gt_boxes"
    cfg.PROPOSALS.DET_SCORE_THR = 1.5
    cfg.DATA.BOX_TRANSFORM = "detectron2"
    with pytest.raises(Exception) as info:
        validate_config(cfg)
    for key in ("PROPOSALS.TRAIN_FALLBACK", "PROPOSALS.DET_SCORE_THR", "DATA.BOX_TRANSFORM"):
        assert key in str(info.value)


# ----------------------------------------------------------------------------- dataset and batches
def test_samples_and_batches_carry_proposals(tiny_dataset, make_cfg):
    root, _ = tiny_dataset
    cfg = make_cfg(root, ["PROPOSALS.TRAIN_FILE", TRAIN_PKL, "PROPOSALS.TEST_FILE", VAL_PKL])
    for is_train in (True, False):
        dataset = build_dataset(cfg, is_train)
        assert not dataset.proposals.missing.any()  # the generator wrote every keyframe
        sample = dataset[0]
        n = len(dataset.proposals.of(0, None)[0])
        assert sample["proposals"].shape == (n, 4) and sample["proposals"].dtype == torch.float32
        assert sample["proposal_scores"].shape == (n,) and sample["proposal_scores"].dtype == torch.float32
        assert (sample["proposal_scores"] >= 0.9).all() or n == 1
    batch = next(iter(build_data_loader(cfg, is_train=False)))
    assert isinstance(batch["proposals"], list) and len(batch["proposals"]) == len(batch["boxes"])
    assert all(p.shape[0] == s.shape[0] for p, s in zip(batch["proposals"], batch["proposal_scores"]))
    plain = build_dataset(make_cfg(root), is_train=False)
    assert "proposals" not in plain[0]
    assert "proposals" not in next(iter(build_data_loader(make_cfg(root), is_train=False)))


@pytest.mark.parametrize("box_transform", ["stmixer", "mmaction2"])
def test_proposals_take_the_boxes_transform(tiny_dataset, make_cfg, tmp_path, box_transform):
    """With the "gt" fallback and a file that matches no keyframe, every training sample's proposals
    are its ground-truth boxes: after random scaling and flipping they must still equal "boxes"."""
    root, _ = tiny_dataset
    (tmp_path / "none.csv").write_text("elsewhere,902,0.1,0.1,0.2,0.2,0.99\n")
    cfg = make_cfg(root, ["PROPOSALS.TRAIN_FILE", str(tmp_path / "none.csv"), "PROPOSALS.TRAIN_FALLBACK", "gt",
                          "DATA.TRAIN_MIN_SCALES", [48, 64, 80], "DATA.BOX_TRANSFORM", box_transform])
    dataset = build_dataset(cfg, is_train=True)
    assert dataset.proposals.missing.all() and dataset.proposals.unused_keys == 1
    widths = set()
    for seed in range(6):
        sample = dataset[(seed % len(dataset), (seed,))]
        torch.testing.assert_close(sample["proposals"], sample["boxes"], rtol=0, atol=0)
        assert (sample["proposal_scores"] == 1).all()
        widths.add(int(sample["whwh"][0]))
    assert len(widths) > 1


def test_mmaction2_box_transform_matches_hand_arithmetic():
    frames = [np.zeros((45, 80, 3), dtype=np.uint8)]
    boxes = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]])
    ours = ClipTransform([32], 1333, [0.45] * 3, [0.225] * 3, train=False, flip_prob=1.0, box_style="mmaction2")
    pixels, out = ours(frames, boxes, np.random.default_rng(0))
    assert pixels.shape[-2:] == (32, 57)  # int(80 * 32 / 45 + 0.5)
    scaled = (boxes * [80, 45, 80, 45]).astype(np.float32) * np.array([57 / 80, 32 / 45] * 2, dtype=np.float32)
    expected = scaled.copy()
    expected[:, 0], expected[:, 2] = 57 - scaled[:, 2], 57 - scaled[:, 0]
    np.testing.assert_array_equal(out, expected)
    assert out[1].tolist() == [0.0, 0.0, 57.0, 32.0]  # no clipping to W - 1
    stm = ClipTransform([32], 1333, [0.45] * 3, [0.225] * 3, train=False, flip_prob=1.0)
    assert stm(frames, boxes, np.random.default_rng(0))[1][1].tolist() == [0.0, 0.0, 56.0, 31.0]


def test_synthetic_proposal_files(tmp_path):
    out = tmp_path / "syn"
    assert synthetic_main(["--out", str(out), "--videos", "2", "--seconds", "2", "--size", "48", "64",
                           "--workers", "1", "--proposals-format", "csv", "--format", "ava_kinetics",
                           "--kinetics-clips", "2"]) == 0
    ann = out / "annotations_v2.2"
    summary = json.loads((out / "synthetic_dataset.json").read_text())
    for split in ("train", "val"):
        proposals = read_proposals(ann / PROPOSAL_FILE.format(split=split, ext="csv"))
        gt = {}
        for line in (ann / f"ava_{split}_v2.2.csv").read_text().splitlines():
            video, second = line.split(",")[:2]
            gt.setdefault(proposal_key(video, int(second), kinetics=True), set()).add(line.split(",")[-1])
        assert set(gt) <= set(proposals)  # every annotated keyframe has proposals (Kinetics ones by YouTube id)
        for key, persons in gt.items():
            high = proposals[key][proposals[key][:, 4] >= 0.8]
            assert len(high) <= len(persons)  # jittered ground truth scores 0.8-1.0, false positives < 0.6
            assert (proposals[key][:, 4] < 0.6).sum() == len(proposals[key]) - len(high)
    assert any(k.split(",")[0] + "_" in c for c in summary["kinetics_clips"] for k in proposals)


# ----------------------------------------------------------------------------- mmaction2's answers
def _fixture_layout(root, case):
    """An AVA layout of the fixture's videos (frames of case["frame_size"], every frame the same file)."""
    height, width = case["frame_size"]
    rows = case["annotations"] + case["kinetics_annotations"]
    lists = ["original_vido_id video_idx frame_idx path labels"]
    for v, video in enumerate(sorted({r[0] for r in rows})):
        os.makedirs(root / "frames" / video)
        cv2.imwrite(str(root / "frames" / video / "f.png"), np.full((height, width, 3), 128, dtype=np.uint8))
        lists += [f"{video} {v} {f} {video}/f.png \"\"" for f in range(200)]
    os.makedirs(root / "frame_lists")
    (root / "frame_lists" / "val.csv").write_text("\n".join(lists) + "\n")
    (root / "frame_lists" / "train.csv").write_text("\n".join(lists) + "\n")
    ann = root / "annotations_v2.2"
    os.makedirs(ann)
    for name, part in (("ava.csv", case["annotations"]), ("avak.csv", rows)):
        (ann / name).write_text("".join(",".join(str(v) for v in r) + "\n" for r in part))
    return ann


@pytest.mark.mmaction2
def test_matches_mmaction2_dataset(tmp_path):
    case = json.loads((FIXTURE / "case.json").read_text())
    ref = np.load(FIXTURE / "proposals.npz")
    ann = _fixture_layout(tmp_path, case)
    with open(ann / "p.pkl", "wb") as f:
        pickle.dump({k[len("input/"):]: ref[k] for k in ref.files if k.startswith("input/")}, f)
    checked = 0
    for split, dataset_name, gt_file in (("train", "ava", "ava.csv"), ("test", "ava", "ava.csv"),
                                         ("avak", "ava_kinetics", "avak.csv")):
        is_train = split == "train"
        cfg = get_cfg()
        cfg.merge_from_list([
            "DATA.PATH_TO_DATA_DIR", str(tmp_path), "DATA.DATASETS", [dataset_name], "DATA.NUM_FRAMES", 2,
            "DATA.SAMPLING_RATE", 1, "DATA.TEST_MIN_SCALES", [case["short_side"]], "AVA.TEST_FORCE_FLIP", True,
            "DATA.BOX_TRANSFORM", "mmaction2", "AVA.EXCLUSION_FILE", "",
            "AVA.TRAIN_GT_BOX_LISTS", [gt_file], "AVA.TEST_GT_BOX_LISTS", [gt_file],
            "PROPOSALS.TRAIN_FILE", "p.pkl", "PROPOSALS.TEST_FILE", "p.pkl",
            "PROPOSALS.DET_SCORE_THR", case["person_det_score_thr"], "PROPOSALS.NUM_MAX", case["num_max_proposals"],
        ])
        dataset = build_dataset(cfg, is_train)
        keys = {f"{split}/{k.split('/')[1]}" for k in ref.files if k.startswith(f"{split}/")}
        assert len(dataset) == len(keys)
        for k in range(len(dataset)):
            info = dataset.keyframe_info(k)
            prefix = f"{split}/{info['video_id']},{info['timestamp']:04d}"
            boxes, scores = dataset.proposals.of(k, dataset.keyframes.boxes_of(k))
            np.testing.assert_array_equal(boxes, ref[f"{prefix}/proposals"])  # float64, exact
            expected_scores = ref[f"{prefix}/scores"] if f"{prefix}/scores" in ref.files else np.ones(len(boxes))
            np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
            if is_train:
                continue
            sample = dataset[k]
            assert tuple(sample["videos"][0].shape[-2:]) == tuple(ref[f"{prefix}/img_shape"])
            np.testing.assert_array_equal(sample["proposals"].numpy(), ref[f"{prefix}/pix_proposals"])  # float32, exact
            # ground truth: ours is read as float32 (mmaction2: float64), so within 1 float32 ulp
            np.testing.assert_array_max_ulp(sample["boxes"].numpy(), ref[f"{prefix}/pix_gt"], maxulp=1)
            checked += 1
    assert checked == 13  # 6 AVA test keyframes + 7 AVA-Kinetics ones


# ----------------------------------------------------------------------------- the dataset checker
def test_checker_reports_proposal_files(tiny_dataset, make_cfg, tmp_path):
    from stmixer.data.check import run_checks

    root, _ = tiny_dataset
    ann = root / "annotations_v2.2"
    clean = make_cfg(root, ["PROPOSALS.TRAIN_FILE", TRAIN_PKL, "PROPOSALS.TEST_FILE", VAL_PKL])
    report = run_checks(clean, ("train", "test"), decode="none")
    assert report.num_errors == 0 and not report.categories("warning")
    assert "keyframes have proposals, 0 keys match no keyframe" in report.render()
    rows = []
    for line in (ann / "ava_val_v2.2.csv").read_text().splitlines()[:1]:
        video, second = line.split(",")[:2]
        rows.append(f"{video},{second},0.1,0.1,1.5,0.5,0.95")  # kept and outside [0, 1]
    rows += ["nowhere,902,0.1,0.1,0.2,0.2,0.95", "nowhere,903,0.1,0.1", "nowhere,904,a,0.1,0.2,0.2,0.9"]
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    report = run_checks(make_cfg(root, ["PROPOSALS.TEST_FILE", str(tmp_path / "bad.csv")]), ("test",), decode="none")
    text = report.render()
    assert report.counts["error"]["malformed proposal"] == 2
    assert "bad.csv:3: expected 7 comma-separated fields" in text and "bad.csv:4: x1,y1,x2,y2" in text
    assert report.counts["error"]["proposal outside [0, 1]"] == 1
    assert report.counts["warning"]["proposal key of no keyframe"] == 1 and "'nowhere,0902'" in text
    test_keyframes = len(build_dataset(make_cfg(root), is_train=False))
    assert report.counts["warning"]["keyframe without proposals"] == test_keyframes - 1
    missing = run_checks(make_cfg(root, ["PROPOSALS.TRAIN_FILE", "nope.pkl"]), ("train",), decode="none")
    assert "PROPOSALS.TRAIN_FILE = 'nope.pkl'" in missing.render()


def test_tube_datasets_refuse_proposal_files(tmp_path):
    from stmixer.data.build import DatasetConfigError

    cfg = get_cfg()
    cfg.merge_from_list(["DATA.DATASETS", ["ucf24"], "DATA.PATH_TO_DATA_DIR", str(tmp_path),
                         "PROPOSALS.TEST_FILE", "p.pkl"])
    with pytest.raises(DatasetConfigError, match="PROPOSALS.TEST_FILE = 'p.pkl'.*AVA-layout datasets only"):
        build_dataset(cfg, is_train=False)


def test_video_proposals_select_per_second_and_warn_when_the_video_id_matches_nothing(caplog):
    from stmixer.data.proposals import VideoProposals

    table = {"cam,0003": np.array([[0.1, 0.1, 0.5, 0.5, 0.95], [0.2, 0.2, 0.4, 0.4, 0.2], [0.6, 0.1, 0.9, 0.9, 0.91]])}
    lookup = VideoProposals(table, "cam", score_thr=0.9, num_max=1, source="p.pkl")
    boxes, scores = lookup(3)  # the selection of a test split: >= 0.9, then the first NUM_MAX
    np.testing.assert_array_equal(boxes, [[0.1, 0.1, 0.5, 0.5]])
    np.testing.assert_array_equal(scores, np.float32([0.95]))
    boxes, scores = lookup(4)  # no proposals: the whole frame, score 1
    np.testing.assert_array_equal(boxes, [[0.0, 0.0, 1.0, 1.0]])
    np.testing.assert_array_equal(scores, [1.0])
    caplog.set_level("INFO", logger="stmixer.data.proposals")
    lookup.summary()
    assert "1 boxes for 1 of 2 keyframes (1 get the whole-frame fallback)" in caplog.text
    assert "has no proposals for video id" not in caplog.text
    other = VideoProposals(table, "street", 0.9, 1, source="p.pkl")
    other(0)
    other.summary()
    assert "p.pkl has no proposals for video id 'street'" in caplog.text and "'cam,0003'" in caplog.text
