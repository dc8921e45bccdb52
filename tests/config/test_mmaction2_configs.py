"""config_files/mmaction2/: one yaml per row of mmaction2's AVA model zoo (the seed page), and the LFB bank inference.

Each yaml merges onto get_cfg() and validates; the numbers its file name spells (``8xb16``, ``20e``,
``4x16x1``, ``ava21`` ...) and the variants it names (``context``, ``temporal-max``, ``nl-head``,
``focal``, ``acrn``, ``lfb-nl`` ...) are what its keys say; its header names the mmaction2 config and
the published mAP. The keys of the nodes that other branches of issue #15 add (PROPOSALS,
MODEL.ROI_HEAD, its ACRN node, MODEL.LFB, DATA.BOX_TRANSFORM) are checked once those nodes exist.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from stmixer.config import get_cfg, load_config
from stmixer.config.validate import validate_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "config_files" / "mmaction2"

# The seed page's AVA tables: config -> published mAP (the "baseline" row of the tricks table is the
# last AVA-Kinetics row, one config).
SEED_ROWS = {
    "slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava21-rgb": "27.65",
    "slowfast-acrn_kinetics400-pretrained-r50_8xb8-8x8x1-cosine-10e_ava22-rgb": "27.71",
    "slowonly-lfb-nl_kinetics400-pretrained-r50_8xb12-4x16x1-20e_ava21-rgb": "24.05",
    "slowonly-lfb-max_kinetics400-pretrained-r50_8xb12-4x16x1-20e_ava21-rgb": "22.15",
    "slowfast_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb": "24.32",
    "slowfast_kinetics400-pretrained-r50-context_8xb16-4x16x1-20e_ava21-rgb": "25.34",
    "slowfast_kinetics400-pretrained-r50_8xb8-8x8x1-20e_ava21-rgb": "25.80",
    "slowfast_kinetics400-pretrained-r50_8xb6-8x8x1-cosine-10e_ava22-rgb": "25.90",
    "slowfast_kinetics400-pretrained-r50-temporal-max_8xb6-8x8x1-cosine-10e_ava22-rgb": "26.41",
    "slowfast_r50-k400-pre-temporal-max-focal-alpha3-gamma1_8xb6-8x8x1-cosine-10e_ava22-rgb": "26.65",
    "slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb": "20.72",
    "slowonly_kinetics700-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb": "22.77",
    "slowonly_kinetics400-pretrained-r50-nl_8xb16-4x16x1-20e_ava21-rgb": "21.55",
    "slowonly_kinetics400-pretrained-r50-nl_8xb16-8x8x1-20e_ava21-rgb": "23.77",
    "slowonly_kinetics400-pretrained-r101_8xb16-8x8x1-20e_ava21-rgb": "24.83",
    "slowonly_k400-pre-r50_8xb8-4x16x1-10e_ava-kinetics-rgb": "24.53",
    "slowonly_k700-pre-r50_8xb8-4x16x1-10e_ava-kinetics-rgb": "25.87",
    "slowonly_k400-pre-r50_8xb8-8x8x1-10e_ava-kinetics-rgb": "26.10",
    "slowonly_k700-pre-r50_8xb8-8x8x1-10e_ava-kinetics-rgb": "27.82",
    "slowonly_k700-pre-r50-context_8xb8-8x8x1-10e_ava-kinetics-rgb": "28.31",
    "slowonly_k700-pre-r50-context-temporal-max_8xb8-8x8x1-10e_ava-kinetics-rgb": "28.48",
    "slowonly_k700-pre-r50-context-temporal-max-nl-head_8xb8-8x8x1-10e_ava-kinetics-rgb": "29.83",
    "slowonly_k700-pre-r50-context-temporal-max-nl-head_8xb8-8x8x1-focal-10e_ava-kinetics-rgb": "30.33",
    "slowonly_k700-pre-r50_8xb8-16x4x1-10e-tricks_ava-kinetics-rgb": "31.29",
}
LFB_INFER = "slowonly-lfb_ava-pretrained-r50_infer-4x16x1_ava21-rgb"
NAMES = sorted(SEED_ROWS) + [LFB_INFER]
TRAINED = sorted(SEED_ROWS)

# Config nodes / keys other branches of issue #15 add (mm-data, mm-core, mm-acrn, mm-lfb); while one of
# them does not exist in the tree, the yamls' entry for it is set aside (never a key inside an existing node).
OTHER_BRANCH_KEYS = ("PROPOSALS", "DATA.BOX_TRANSFORM", "MODEL.ROI_HEAD", "MODEL.ROI_HEAD.ACRN", "MODEL.LFB")


def _has(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if part not in node:
            return False
        node = node[part]
    return True


def _set_aside(loaded, cfg, prefix=""):
    """Remove from ``loaded`` (in place) the entries OTHER_BRANCH_KEYS names that ``cfg`` lacks; returns them."""
    removed = []
    for key in list(loaded):
        dotted = f"{prefix}{key}"
        if dotted in OTHER_BRANCH_KEYS and not _has(cfg, dotted):
            removed.append(dotted)
            del loaded[key]
        elif isinstance(loaded[key], dict) and any(k.startswith(dotted + ".") for k in OTHER_BRANCH_KEYS):
            removed += _set_aside(loaded[key], cfg, dotted + ".")
    return removed


def mm_config(name, *overrides):
    """(cfg, keys set aside): the yaml merged onto get_cfg() (load_config when every key exists)."""
    path = CONFIGS / f"{name}.yaml"
    with open(path) as f:
        loaded = yaml.safe_load(f)
    removed = _set_aside(loaded, get_cfg())
    if not removed:
        cfg = load_config(str(path), list(overrides))
        cfg.defrost()
        return cfg, removed
    cfg = get_cfg()
    cfg.merge_from_other_cfg(loaded)
    cfg.merge_from_list(list(overrides))
    validate_config(cfg)
    return cfg, removed


def header(name):
    return [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]


def test_one_yaml_per_seed_row():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_merges_and_validates(name):
    cfg, removed = mm_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == "FastRCNN"
    assert cfg.TEST.EVAL_PROTOCOL == "mmaction2" and cfg.MODEL.WEIGHT == ""
    # Only whole entries of other branches' nodes that do not exist yet are set aside.
    for key in removed:
        assert key in OTHER_BRANCH_KEYS and not _has(get_cfg(), key), key


@pytest.mark.parametrize("name", NAMES)
def test_header_names_the_mmaction2_config_and_map(name):
    lines = header(name)
    family = {"acrn": "acrn", "lfb": "lfb", "slowfast": "slowfast", "slowonly": "slowonly"}
    folder = "acrn" if "acrn" in name else "lfb" if "lfb" in name else name.split("_")[0].split("-")[0]
    assert folder in family
    assert lines[0] == f"# mmaction2 (commit 4d6c934) configs/detection/{folder}/{name}.py"
    text = "\n".join(lines)
    if name in SEED_ROWS:
        assert f"published mAP {SEED_ROWS[name]} " in text
        assert f"https://download.openmmlab.com/mmaction/v1.0/detection/{folder}/{name}/{name}_" in text
    # The pretrained (or, for the bank inference, trained) checkpoint's URL is given next to MODEL.WEIGHT.
    assert re.search(r"#   https://download\.openmmlab\.com/\S+\.pth", text)


def _numbers(name):
    gpus, per_gpu = map(int, re.search(r"_(\d+)xb(\d+)-", name).groups())
    epochs = int(re.search(r"-(\d+)e[-_]", name).group(1))
    frames, interval = map(int, re.search(r"(\d+)x(\d+)x1", name).groups())
    return gpus, per_gpu, epochs, frames, interval


@pytest.mark.parametrize("name", TRAINED)
def test_schedule_and_batch_follow_the_file_name(name):
    cfg, _ = mm_config(name)
    gpus, per_gpu, epochs, frames, interval = _numbers(name)
    s = cfg.SOLVER
    assert (s.VIDEOS_PER_BATCH, s.MAX_EPOCH, s.ITER_PER_EPOCH) == (gpus * per_gpu, epochs, 0)
    assert s.BASE_BATCH_SIZE == gpus * per_gpu  # every seed row was trained with its BASE_LR at this batch
    assert s.OPTIMIZING_METHOD == "sgd" and s.MOMENTUM == 0.9 and not s.NESTEROV
    assert s.WEIGHT_DECAY == s.WEIGHT_DECAY_BN == 1e-5
    assert s.WARMUP_ON and s.WARMUP_METHOD == "mmengine_linear" and s.WARMUP_FACTOR == 0.1
    assert s.CLIP_GRAD_NORM == (20.0 if "lfb" in name else 40.0)
    if "cosine" in name or epochs == 10:
        assert s.SCHEDULER == "warmup_cosine" and s.WARMUP_EPOCH == 2 and s.COSINE_ETA_MIN == 0.0
    else:
        assert s.SCHEDULER == "warmup_multi_step" and tuple(s.STEPS) == (10, 15) and s.WARMUP_EPOCH == 5
    # mmaction2's LinearLR is per epoch in the 20-epoch configs except LFB's (convert_to_iter_based).
    assert s.WARMUP_BY_EPOCH == (epochs == 20 and "lfb" not in name)
    assert cfg.TEST.VIDEOS_PER_BATCH == gpus


@pytest.mark.parametrize("name", NAMES)
def test_model_and_data_follow_the_file_name(name):
    cfg, _ = mm_config(name)
    frames, interval = map(int, re.search(r"(\d+)x(\d+)x1", name).groups())
    slowfast = name.startswith("slowfast")
    if slowfast:
        # mmaction2's SlowFast clip is 32 frames at interval 2; "8x8x1": slow 8 frames, every 8th.
        assert (cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE) == (32, 2)
        assert cfg.DATA.NUM_FRAMES // cfg.SLOWFAST.ALPHA == frames
        assert cfg.DATA.SAMPLING_RATE * cfg.SLOWFAST.ALPHA == interval
        assert cfg.SLOWFAST.FUSION_KERNEL_SZ == {4: 7, 8: 5}[cfg.SLOWFAST.ALPHA]
        assert cfg.SLOWFAST.BETA_INV == 8 and cfg.SLOWFAST.FUSION_BN_RELU is False
        assert cfg.MODEL.BACKBONE.CONV_BODY == "PySlowfast-R50" and cfg.MODEL.BACKBONE.PATHWAYS == 2
        assert cfg.DATA.SLOW_PATHWAY_FRAMES == "stride"
    else:
        assert (cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE) == (frames, interval)
        assert cfg.MODEL.BACKBONE.CONV_BODY == "PySlowonly" and cfg.MODEL.BACKBONE.PATHWAYS == 1
    stages = [s[0] for s in cfg.RESNET.SPATIAL_STRIDES]
    assert stages == [1, 2, 2, 1]
    assert cfg.RESNET.DEPTH == (101 if "-r101" in name else 50)
    blocks = [b[0] for b in cfg.RESNET.NUM_BLOCK_TEMP_KERNEL]
    assert blocks == ([3, 4, 23, 3] if "-r101" in name else [3, 4, 6, 3])
    nonlocal_ = "-r50-nl_" in name  # not "lfb-nl", the non-local feature-bank operator
    assert (cfg.NONLOCAL.STYLE == "mmaction2") == nonlocal_
    located = [idx for stage in cfg.NONLOCAL.LOCATION for pathway in stage for idx in pathway]
    assert located == ([0, 2, 0, 2, 4] if nonlocal_ else [])
    assert cfg.MODEL.BACKBONE.FROZEN_BN is False and cfg.MODEL.BACKBONE.SYNC_BN is False
    # data: RGB ImageNet statistics, 256-320 random short side, 256 crop, flip; test short side 256
    assert cfg.DATA.MEAN == pytest.approx([123.675 / 255, 116.28 / 255, 103.53 / 255], abs=1e-12)
    assert cfg.DATA.STD == pytest.approx([58.395 / 255, 57.12 / 255, 57.375 / 255], abs=1e-12)
    assert cfg.AVA.BGR is False and cfg.DATA.REVERSE_INPUT_CHANNEL is False
    assert (list(cfg.DATA.TRAIN_MIN_SCALES), cfg.DATA.TRAIN_SCALE_SAMPLING) == ([256, 320], "range")
    assert cfg.DATA.TRAIN_CROP_SIZE == 256 and cfg.DATA.RANDOM_FLIP and list(cfg.DATA.TEST_MIN_SCALES) == [256]
    dataset = "ava_kinetics" if "ava-kinetics" in name else "ava_v2.1" if "ava21" in name else "ava_v2.2"
    assert list(cfg.DATA.DATASETS) == [dataset]
    version = "v2.1" if "ava21" in name else "v2.2"
    assert list(cfg.AVA.TEST_GT_BOX_LISTS) == [f"ava_val_{version}.csv"] == [cfg.AVA.GROUNDTRUTH_FILE]
    assert list(cfg.AVA.TRAIN_GT_BOX_LISTS) == [f"ava_train_{version}.csv"]
    assert version in cfg.AVA.LABEL_MAP_FILE and version in cfg.AVA.EXCLUSION_FILE


@pytest.mark.parametrize("name", NAMES)
def test_roi_head_and_proposals_follow_the_file_name(name):
    """The keys of MODEL.ROI_HEAD / PROPOSALS / the shared heads, read from the yaml as written."""
    with open(CONFIGS / f"{name}.yaml") as f:
        loaded = yaml.safe_load(f)
    rh = loaded["MODEL"]["ROI_HEAD"]
    tricks = "tricks" in name  # "+ more frames": every trick of the rows above it, 16x4x1
    assert rh["WITH_GLOBAL"] == ("context" in name or tricks)
    assert rh["TEMPORAL_POOL_MODE"] == ("max" if "temporal-max" in name or tricks else "avg")
    assert rh["MLP_HEAD"] == ("nl-head" in name or tricks)
    assert rh["FOCAL_GAMMA"] == (1.0 if "focal" in name or tricks else 0.0)
    assert rh["FOCAL_ALPHA"] == (3.0 if "alpha3" in name else 1.0)
    shared = {"acrn": "ACRN", "lfb-nl": "FBONonLocal", "lfb-max": "FBOMax", "lfb_ava-pretrained": "LFBInfer"}
    expected = next((v for k, v in shared.items() if k in name), "")
    assert rh["SHARED_HEAD"] == expected
    assert (rh["OUTPUT_SIZE"], rh["FEATMAP_STRIDE"], rh["NUM_CLASSES"], rh["DROPOUT"]) == (8, 16, 81, 0.5)
    assert rh["ACTION_THR"] == (0.0 if "lfb-" in name else 0.002)
    assert ("ACRN" in rh) == (expected == "ACRN")
    assert ("LFB" in loaded["MODEL"]) == expected.startswith(("FBO", "LFB"))
    proposals = loaded["PROPOSALS"]
    assert proposals["TEST_FILE"] == "ava_dense_proposals_val.FAIR.recall_93.9.pkl"
    assert proposals["TRAIN_FILE"] == "ava_dense_proposals_train.FAIR.recall_93.9.pkl"
    assert (proposals["DET_SCORE_THR"], proposals["NUM_MAX"]) == (0.9, 1000)
    assert loaded["DATA"]["BOX_TRANSFORM"] == "mmaction2"


# --------------------------------------------------------------------------- the models they build
LAYOUTS = json.loads((ROOT / "tests" / "reference" / "mmaction2" / "configs" / "layouts.json").read_text())
TINY_WIDTH = ["RESNET.WIDTH_PER_GROUP", 8]  # every channel count / 8: res5 256 (SlowOnly), 256 + 32 (SlowFast)


def buildable(name, tmp_path, *overrides, bank_channels=2048):
    """The yaml's config (+ ``overrides``) ready for build_detector; skips while its shared head is on
    another branch. LFB heads get a tiny bank file (one feature per second of two videos) with
    ``bank_channels``."""
    cfg, removed = mm_config(name, "MODEL.DEVICE", "cpu")
    from stmixer.modeling.roi_heads.shared_heads import SHARED_HEAD_REGISTRY

    shared = cfg.MODEL.ROI_HEAD.SHARED_HEAD
    if shared and shared not in SHARED_HEAD_REGISTRY:
        pytest.skip(f"shared head {shared!r} is on another branch of issue #15 (mm-acrn / mm-lfb)")
    cfg.merge_from_list(list(overrides))
    if shared.startswith("FBO"):
        from stmixer.modeling.roi_heads.lfb_bank import LongTermFeatureBank, save_bank

        gen = torch.Generator().manual_seed(0)
        videos = {v: {s: torch.randn(1, bank_channels, generator=gen) for s in (901, 902, 903)} for v in ("a", "b")}
        save_bank(LongTermFeatureBank(videos), tmp_path / "lfb_tiny.npz")
        cfg.merge_from_list(["MODEL.LFB.PREFIX_PATH", str(tmp_path), "MODEL.LFB.FILES", ["lfb_tiny.npz"],
                             "MODEL.LFB.CHANNELS", bank_channels])
    return cfg


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", NAMES)
def test_mmaction2_checkpoint_layout_loads(name, tmp_path):
    """Our model built from the yaml (full size, on the meta device where it can: shapes only) holds exactly the
    tensors of mmaction2's model built from its config: every key of mmaction2's state dict maps to
    one of ours with the same shape through the ``mmaction2`` checkpoint format and none is left over."""
    from stmixer.checkpoint.formats import checkpoint_from_object
    from stmixer.checkpoint.loader import match_state_dict
    from stmixer.modeling import build_detector

    entry = LAYOUTS["configs"][name]
    cfg = buildable(name, tmp_path)
    # The FBO heads read their bank file while they are built: those two models are built for real.
    with torch.device("cpu" if cfg.MODEL.ROI_HEAD.SHARED_HEAD.startswith("FBO") else "meta"):
        model = build_detector(cfg)
    state = {f"backbone.{k}": torch.empty(shape, device="meta") for k, shape in LAYOUTS["backbones"][entry["backbone"]]}
    state.update({k: torch.empty(shape, device="meta") for k, shape in entry["roi_head"]})
    assert len(state) == entry["num_tensors"]
    report = match_state_dict(model, checkpoint_from_object({"meta": {}, "state_dict": state}, f"mmaction2 {name}"))
    assert report.ok, report.table()
    assert len(report.loaded) == len(state) and not (report.not_stored or report.left_at_init or report.dropped
                                                      or report.skipped), report.table()
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    assert model.roi_head.bbox_head.in_channels == entry["bbox_head_in_channels"]
    noted = re.search(r"# bbox head in_channels in mmaction2: (\d+)", (CONFIGS / f"{name}.yaml").read_text())
    assert int(noted.group(1)) == entry["bbox_head_in_channels"]


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_a_training_step_and_inference(name, tmp_path):
    """Every config at 1/8 width: a loss with gradients on two tiny clips (GT + proposals), then detections."""
    from stmixer.modeling import build_detector

    overrides = list(TINY_WIDTH)
    if "acrn" in name:
        overrides += ["MODEL.ROI_HEAD.ACRN.OUT_CHANNELS", 0]  # 2304 at full width: the RoI channels
    if "lfb-nl" in name:
        overrides += ["MODEL.LFB.LATENT_CHANNELS", 16]
    torch.manual_seed(0)
    cfg = buildable(name, tmp_path, *overrides, bank_channels=256)
    model = build_detector(cfg)
    frames = cfg.DATA.NUM_FRAMES
    clip = torch.randn(2, 3, frames, 64, 64)
    if cfg.MODEL.BACKBONE.PATHWAYS == 2:
        slow, fast = clip[:, :, ::cfg.SLOWFAST.ALPHA], clip
    else:
        slow, fast = clip, None
    whwh = torch.tensor([[64.0, 64.0, 64.0, 64.0]] * 2)
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 60.0]]), torch.tensor([[10.0, 2.0, 50.0, 50.0], [0.0, 0.0, 20.0, 30.0]])]
    labels = [torch.zeros(1, 80), torch.zeros(2, 80)]
    labels[0][0, 3] = labels[1][0, 5] = labels[1][1, 11] = 1.0
    proposals = [torch.tensor([[5.0, 5.0, 41.0, 59.0], [30.0, 30.0, 60.0, 60.0]]), torch.tensor([[11.0, 3.0, 49.0, 51.0]])]
    keys = ["a,0902", "b,0902"]
    model.train()
    losses = model(slow, fast, whwh, boxes, labels, proposals=proposals, img_keys=keys)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.roi_head.bbox_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model(slow, fast, whwh, proposals=proposals, img_keys=keys)
    assert [tuple(o["scores"].shape) for o in out] == [(2, 80), (1, 80)]
    assert all(((o["boxes"] >= 0) & (o["boxes"] <= 1)).all() for o in out)
