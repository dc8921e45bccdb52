import pytest
import torch

from stmixer.data import build_data_loader, build_dataset
from stmixer.data.build import DatasetConfigError
from stmixer.data.collate import BatchCollator
from stmixer.data.samplers import TrainingBatchSampler
from stmixer.data.transforms import slow_pathway_indices


def test_training_batches_follow_the_contract(tiny_cfg):
    loader = build_data_loader(tiny_cfg, is_train=True, max_iter=3, seed=0)
    batches = list(loader)
    assert len(batches) == 3
    batch = batches[0]
    assert set(batch) == {"videos", "whwh", "boxes", "labels", "metadata", "indices"}
    (video,) = batch["videos"]
    # 64x80 frames at short side 64: unchanged size, padded to multiples of 32.
    assert video.shape == (2, 3, 8, 64, 96) and video.dtype == torch.float32
    assert torch.count_nonzero(video[..., 80:]) == 0
    assert batch["whwh"].dtype == torch.float32 and batch["whwh"].tolist() == [[80, 64, 80, 64]] * 2
    assert batch["indices"].dtype == torch.int64 and batch["indices"].shape == (2,)
    for boxes, labels, meta in zip(batch["boxes"], batch["labels"], batch["metadata"]):
        assert boxes.dtype == labels.dtype == torch.float32
        assert boxes.shape[1] == 4 and labels.shape == (len(boxes), 9) and len(boxes) >= 2
        assert boxes[:, [0, 2]].max() <= 79 and boxes[:, [1, 3]].max() <= 63 and boxes.min() >= 0
        assert (labels.sum(1) >= 1).all() and (labels.sum(1) <= 3).all()
        assert set(meta) == {"video_id", "timestamp", "orig_size"} and meta["orig_size"] == (64, 80)
        assert meta["video_id"].startswith("syn_train_") and meta["timestamp"] in (902, 903)


def test_resumed_loader_with_workers_sees_the_same_batches(tiny_cfg):
    tiny_cfg.merge_from_list(["DATA.TRAIN_MIN_SCALES", [48, 64], "DATA.TRAIN_SCALE_SAMPLING", "range"])
    full = list(build_data_loader(tiny_cfg, True, max_iter=5, seed=3))
    tiny_cfg.merge_from_list(["DATALOADER.NUM_WORKERS", 2])
    resumed = list(build_data_loader(tiny_cfg, True, start_iter=2, max_iter=5, seed=3))
    assert len(resumed) == 3
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a["indices"], b["indices"])
        assert torch.equal(a["videos"][0], b["videos"][0])
        assert all(torch.equal(x, y) for x, y in zip(a["boxes"], b["boxes"]))
    sizes = {tuple(b["whwh"][0].tolist()) for b in full}
    assert len(sizes) > 1  # the scale jitter is active, so equal batches are not trivially equal


def test_test_loader_visits_every_keyframe_in_order_and_shards(tiny_cfg):
    dataset = build_dataset(tiny_cfg, is_train=False)
    batches = list(build_data_loader(tiny_cfg, False, dataset=dataset))
    assert torch.cat([b["indices"] for b in batches]).tolist() == list(range(len(dataset)))
    tiny_cfg.merge_from_list(["TEST.VIDEOS_PER_BATCH", 4])
    shards = [
        torch.cat([b["indices"] for b in build_data_loader(tiny_cfg, False, dataset=dataset, rank=r, world_size=4)])
        for r in range(4)
    ]
    assert sorted(set(torch.cat(shards).tolist())) == list(range(len(dataset)))


def test_slowfast_pathways_in_batches(tiny_cfg):
    tiny_cfg.merge_from_list(["MODEL.BACKBONE.PATHWAYS", 2, "DATA.INPUT_CHANNEL_NUM", [3, 3], "SLOWFAST.ALPHA", 4])
    batch = next(iter(build_data_loader(tiny_cfg, True, max_iter=1)))
    slow, fast = batch["videos"]
    assert slow.shape == (2, 3, 2, 64, 96) and fast.shape == (2, 3, 8, 64, 96)
    assert torch.equal(slow, fast[:, :, slow_pathway_indices(8, 4)])


@pytest.mark.parametrize("opts", [[], ["AVA.TRAIN_USE_COLOR_AUGMENTATION", True, "AVA.TRAIN_PCA_JITTER_ONLY", False]])
def test_deferred_pixels_batch_equals_the_reference_path(tiny_cfg, opts):
    """Loader batches (pixels written into the batch by lookup tables) against float tensors of the
    plain-PyTorch reference path, padded by the same collator."""
    tiny_cfg.merge_from_list(opts + ["MODEL.BACKBONE.PATHWAYS", 2, "DATA.INPUT_CHANNEL_NUM", [3, 3],
                                     "SLOWFAST.ALPHA", 4, "DATA.TRAIN_MIN_SCALES", [40, 56]])
    batch = next(iter(build_data_loader(tiny_cfg, True, max_iter=1, seed=9)))
    reference = build_dataset(tiny_cfg, True, reference=True)
    keys = next(iter(TrainingBatchSampler(len(reference), 2, seed=9, num_iters=1)))
    expected = BatchCollator(32)([reference[key] for key in keys])
    for got, want in zip(batch["videos"], expected["videos"]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(batch["boxes"], expected["boxes"]))


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.BACKBONE.PATHWAYS", 2], "DATA.INPUT_CHANNEL_NUM"),
        (["AVA.TRAIN_LISTS", ["nope.csv"]], "AVA.TRAIN_LISTS = 'nope.csv'"),
        (["AVA.LABEL_MAP_FILE", "x"], None),
        (["AVA.EXCLUSION_FILE", "gone.csv"], "AVA.EXCLUSION_FILE"),
        (["DATA.PATH_TO_DATA_DIR", ""], "DATA.PATH_TO_DATA_DIR is empty"),
        (["DATA.PATH_TO_DATA_DIR", "/no/such/root"], "^DATA.PATH_TO_DATA_DIR = '/no/such/root' does not exist: "),
        (["DATA.TRAIN_SCALE_SAMPLING", "uniform"], "DATA.TRAIN_SCALE_SAMPLING"),
        (["DATA.TRAIN_MIN_SCALES", []], "DATA.TRAIN_MIN_SCALES"),
        (["SOLVER.VIDEOS_PER_BATCH", 3], None),
    ],
)
def test_config_errors_name_the_key(tiny_cfg, opts, words):
    tiny_cfg.merge_from_list(opts)
    if words is None:  # not needed to build the training loader of one process
        build_data_loader(tiny_cfg, True, max_iter=1)
        return
    with pytest.raises(DatasetConfigError, match=words):
        build_data_loader(tiny_cfg, True, max_iter=1)


def test_batch_not_divisible_by_world_size(tiny_cfg):
    with pytest.raises(DatasetConfigError, match=r"SOLVER.VIDEOS_PER_BATCH = 2 must be a positive multiple .* \(3\)"):
        build_data_loader(tiny_cfg, True, rank=0, world_size=3)
    with pytest.raises(DatasetConfigError, match=r"TEST.VIDEOS_PER_BATCH"):
        build_data_loader(tiny_cfg, False, rank=0, world_size=3)


def test_unknown_dataset_name(tiny_cfg):
    tiny_cfg.merge_from_list(["DATA.DATASETS", ["kinetics"]])
    with pytest.raises(KeyError, match="DATA.DATASETS"):
        build_dataset(tiny_cfg, True)


def test_aspect_ratio_grouping_builds(tiny_cfg):
    tiny_cfg.merge_from_list(["DATALOADER.ASPECT_RATIO_GROUPING", True])
    assert len(list(build_data_loader(tiny_cfg, True, max_iter=2))) == 2


def test_worker_seeding_is_deterministic_per_rank_and_worker():
    import random

    import numpy as np

    from stmixer.data.build import seed_worker

    draws = []
    for rank, worker in ((0, 0), (0, 0), (0, 1), (1, 0)):
        seed_worker(worker, seed=5, rank=rank)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    assert draws[0] == draws[1]
    assert len({draws[0], draws[2], draws[3]}) == 3


def test_test_split_evaluation_reads_a_malformed_label_map_at_setup(layout, make_cfg):
    from stmixer.engine.runner import Evaluation
    from stmixer.errors import UserError

    root = layout()
    cfg = make_cfg(root, ["MODEL.STM.ACTION_CLASSES", 3])
    assert Evaluation(cfg, torch.device("cpu")).evaluator.annotations()[0].ids == (1,)
    (root / "annotations_v2.2" / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text('item { name: "x" }\n')
    with pytest.raises(UserError, match=r"pbtxt:1: item block without id"):
        Evaluation(cfg, torch.device("cpu"))  # before any inference, not after it


@pytest.mark.parametrize("shared", [False, True])
def test_shared_scale_draws_pad_every_process_batch_alike(tiny_cfg, shared):
    # two processes of 2 clips; frames of one size (64x80), two short sides: the padded shape follows the draws
    tiny_cfg.merge_from_list(["SOLVER.VIDEOS_PER_BATCH", 4, "DATA.TRAIN_MIN_SCALES", [48, 64],
                              "DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES", shared])
    dataset = build_dataset(tiny_cfg, True, defer_pixels=True)
    ranks = [list(build_data_loader(tiny_cfg, True, max_iter=8, seed=5, dataset=dataset, rank=r, world_size=2))
             for r in range(2)]
    sides = [[b["whwh"][:, 1].tolist() for b in batches] for batches in ranks]  # clip heights = short sides
    assert {h for rank in sides for batch in rank for h in batch} == {48.0, 64.0}
    if shared:
        assert sides[0] == sides[1]  # clip j of batch k: one draw on both processes
        assert all(a["videos"][0].shape == b["videos"][0].shape for a, b in zip(*ranks))
        assert any(a["indices"].tolist() != b["indices"].tolist() for a, b in zip(*ranks))  # other clips
    else:
        assert sides[0] != sides[1]
    resumed = list(build_data_loader(tiny_cfg, True, start_iter=5, max_iter=8, seed=5, dataset=dataset, rank=1,
                                     world_size=2))
    assert [b["whwh"][:, 1].tolist() for b in resumed] == sides[1][5:]
    assert all(torch.equal(a["videos"][0], b["videos"][0]) for a, b in zip(resumed, ranks[1][5:]))
