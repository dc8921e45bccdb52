"""SGD, the mmengine-style schedules and --auto-scale-lr against mmaction2's own configs.

``tests/reference/mmaction2/schedule/schedules.json`` holds the learning rate of every iteration
of every AVA training config of mmaction2 as mmengine schedules it (epochs of 7 iterations;
``tests/reference/make_mmaction2_schedule_fixtures.py``), and the SGD param groups mmengine builds.
Our schedule for the yaml of the same name (``config_files/mmaction2/<name>.yaml``) must give the
same numbers.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from stmixer.config import get_cfg
from stmixer.config.config import ConfigError
from stmixer.config.validate import validate_config
from stmixer.engine.launch import build_parser
from stmixer.solver import auto_scale_lr, build_lr_scheduler, build_optimizer
from stmixer.solver.lr_scheduler import Warmup

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "reference" / "mmaction2" / "schedule" / "schedules.json"
CONFIGS = ROOT / "config_files" / "mmaction2"
SCHEDULES = json.loads(FIXTURE.read_text())


def solver_cfg(name, *overrides):
    """get_cfg() with only the SOLVER section of config_files/mmaction2/<name>.yaml merged (other
    sections may name keys of other branches' nodes) and the fixture's epoch length."""
    with open(CONFIGS / f"{name}.yaml") as f:
        loaded = yaml.safe_load(f)
    cfg = get_cfg()
    cfg.merge_from_other_cfg({"SOLVER": loaded["SOLVER"]})
    cfg.merge_from_list(["SOLVER.ITER_PER_EPOCH", SCHEDULES["epoch_length"], *overrides])
    return cfg


def run_schedule(cfg):
    """lr of every iteration of a run of ``cfg`` (optimizer and scheduler stepped as the trainer does)."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(cfg, _single_param_model(param))
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.ITER_PER_EPOCH * cfg.SOLVER.MAX_EPOCH):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _single_param_model(param):
    model = nn.Module()
    model.weight = param
    return model


def assert_same_lrs(ours, theirs, what):
    assert len(ours) == len(theirs), what
    for it, (a, b) in enumerate(zip(ours, theirs)):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-18), f"{what}: iteration {it}: ours {a!r}, mmengine {b!r}"


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", sorted(SCHEDULES["configs"]))
def test_schedule_equals_mmengine(name):
    entry = SCHEDULES["configs"][name]
    cfg = solver_cfg(name)
    assert cfg.SOLVER.MAX_EPOCH == entry["max_epochs"]
    assert_same_lrs(run_schedule(cfg), entry["lr"], name)


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", sorted(n for n, e in SCHEDULES["configs"].items() if "lr_scaled" in e))
def test_auto_scale_lr_equals_mmengine(name):
    entry = SCHEDULES["configs"][name]
    cfg = solver_cfg(name, "SOLVER.VIDEOS_PER_BATCH", SCHEDULES["scaled_batch"])
    assert cfg.SOLVER.BASE_BATCH_SIZE == entry["auto_scale_lr"]["base_batch_size"]
    scaled, message = auto_scale_lr(cfg)
    assert "BASE_BATCH_SIZE" in message and f"{scaled.SOLVER.BASE_LR:g}" in message
    assert_same_lrs(run_schedule(scaled), entry["lr_scaled"], name)


@pytest.mark.mmaction2
@pytest.mark.parametrize("name", sorted(SCHEDULES["configs"]))
def test_sgd_and_clip_equal_mmengine(name):
    """One param group, every parameter (BatchNorm and biases too) decayed, torch SGD's settings."""
    entry = SCHEDULES["configs"][name]
    cfg = solver_cfg(name, "MODEL.BACKBONE.CONV_BODY", "PySlowonly")
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.conv = nn.Conv3d(3, 4, 1)
    model.backbone.bn = nn.BatchNorm3d(4)
    model.head = nn.Linear(4, 2)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer).__name__ == entry["optimizer"] == "SGD"
    (theirs,) = entry["param_groups"]
    assert {g["weight_decay"] for g in optimizer.param_groups} == {theirs["weight_decay"]}
    for key in ("momentum", "nesterov", "dampening", "lr"):
        assert all(g[key] == pytest.approx(cfg.SOLVER.BASE_LR if key == "lr" else theirs[key], rel=1e-12)
                   for g in optimizer.param_groups), key
    assert cfg.SOLVER.CLIP_GRAD_NORM == entry["clip_grad"]["max_norm"] and entry["clip_grad"]["norm_type"] == 2


def test_mmengine_linear_warmup_reaches_one_a_step_early():
    warm = Warmup(5, 0.1, "mmengine_linear")
    assert [warm(s) for s in range(7)] == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 1.0], rel=1e-15)
    linear = Warmup(5, 0.1, "linear")
    assert linear(4) == pytest.approx(0.82) and linear(5) == 1.0
    by_epoch = Warmup(3, 0.1, "mmengine_linear", iters_per_step=4)
    assert [by_epoch(i) for i in range(13)] == pytest.approx([0.1] * 4 + [0.55] * 4 + [1.0] * 5)
    with pytest.raises(ValueError, match="at least 2 steps"):
        Warmup(1, 0.1, "mmengine_linear")


def test_cosine_follows_mmengine_chained_recursion():
    """Closed form vs mmengine's chained update (its CosineAnnealingLR._get_value), with eta_min > 0."""
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.SCHEDULER", "warmup_cosine", "SOLVER.ITER_PER_EPOCH", 3, "SOLVER.MAX_EPOCH", 6,
                         "SOLVER.WARMUP_EPOCH", 2, "SOLVER.WARMUP_METHOD", "mmengine_linear", "SOLVER.BASE_LR", 0.5,
                         "SOLVER.COSINE_ETA_MIN", 0.01, "SOLVER.OPTIMIZING_METHOD", "sgd"])
    validate_config(cfg)
    ours = run_schedule(cfg)
    begin, span, eta = 6, 12, 0.01
    expected, value = [], None
    for it in range(18):
        if it < begin:
            value = 0.5 * (0.1 + 0.9 * min(it, 5) / 5)
        elif it > begin:
            t = it - begin
            value = (1 + math.cos(math.pi * t / span)) / (1 + math.cos(math.pi * (t - 1) / span)) * (value - eta) + eta
        expected.append(value)
    assert_same_lrs(ours, expected, "cosine")
    assert ours[-1] > eta


def test_auto_scale_lr_needs_base_batch_size():
    cfg = get_cfg()
    with pytest.raises(ConfigError, match="SOLVER.BASE_BATCH_SIZE"):
        auto_scale_lr(cfg)
    cfg.merge_from_list(["SOLVER.BASE_BATCH_SIZE", 64, "SOLVER.VIDEOS_PER_BATCH", 16, "SOLVER.BASE_LR", 0.1])
    cfg.freeze()
    scaled, message = auto_scale_lr(cfg)
    assert scaled.SOLVER.BASE_LR == pytest.approx(0.025) and scaled.is_frozen() and cfg.SOLVER.BASE_LR == 0.1
    assert "0.1 x (VIDEOS_PER_BATCH 16 / BASE_BATCH_SIZE 64) = 0.025" in message
    assert build_parser("train").parse_args(["--config-file", "x.yaml", "--auto-scale-lr"]).auto_scale_lr
    assert not hasattr(build_parser("test").parse_args(["--config-file", "x.yaml"]), "auto_scale_lr")


@pytest.mark.parametrize("overrides, key", [
    (["SOLVER.NESTEROV", True, "SOLVER.MOMENTUM", 0.0], "SOLVER.NESTEROV"),
    (["SOLVER.WARMUP_METHOD", "mmengine_linear", "SOLVER.WARMUP_BY_EPOCH", True, "SOLVER.WARMUP_EPOCH", 1],
     "SOLVER.WARMUP_EPOCH"),
    (["SOLVER.WARMUP_METHOD", "mmengine_linear", "SOLVER.ITER_PER_EPOCH", 1, "SOLVER.WARMUP_EPOCH", 1],
     "SOLVER.WARMUP_EPOCH"),
    (["SOLVER.OPTIMIZING_METHOD", "rmsprop"], "SOLVER.OPTIMIZING_METHOD"),
    (["SOLVER.SCHEDULER", "cosine"], "SOLVER.SCHEDULER"),
    (["SOLVER.MOMENTUM", 1.5], "SOLVER.MOMENTUM"),
    (["DATA.TRAIN_CROP_SIZE", 300, "DATA.TRAIN_MIN_SCALES", [256, 320]], "DATA.TRAIN_CROP_SIZE"),
])
def test_validate_names_impossible_solver_settings(overrides, key):
    cfg = get_cfg()
    cfg.merge_from_list(overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_sgd_nesterov_step():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.OPTIMIZING_METHOD", "SGD", "SOLVER.NESTEROV", True, "SOLVER.MOMENTUM", 0.5,
                         "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.BASE_LR", 0.1])
    param = nn.Parameter(torch.ones(1))
    optimizer = build_optimizer(cfg, _single_param_model(param))
    for _ in range(2):
        optimizer.zero_grad()
        (param * 2.0).sum().backward()
        optimizer.step()
    # Nesterov: buf1 = 2, step 0.1 * (2 + 0.5 * 2) = 0.3; buf2 = 0.5 * 2 + 2 = 3, step 0.1 * (2 + 1.5) = 0.35.
    assert param.item() == pytest.approx(1.0 - 0.3 - 0.35)


def test_train_entry_point_scales_logs_and_saves_the_rate(tmp_path):
    """train_net.py --auto-scale-lr: the body gets the scaled config; the log and config.yaml say so."""
    from stmixer.engine.launch import run_entry_point

    config = tmp_path / "c.yaml"
    config.write_text("SOLVER:\n  BASE_LR: 0.2\n  BASE_BATCH_SIZE: 128\n  VIDEOS_PER_BATCH: 32\n")
    seen = {}

    def body(args, cfg, dist_info):
        seen["lr"] = cfg.SOLVER.BASE_LR

    out = tmp_path / "run"
    run_entry_point("train", body, ["--config-file", str(config), "--auto-scale-lr", "OUTPUT_DIR", str(out),
                                    "DATALOADER.NUM_WORKERS", "0", "NUM_THREADS", "1"])
    assert seen["lr"] == pytest.approx(0.05)
    assert "--auto-scale-lr: SOLVER.BASE_LR 0.2 x (VIDEOS_PER_BATCH 32 / BASE_BATCH_SIZE 128) = 0.05" in \
        (out / "log.txt").read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["SOLVER"]["BASE_LR"] == pytest.approx(0.05)
    run_entry_point("train", body, ["--config-file", str(config), "OUTPUT_DIR", str(tmp_path / "plain"),
                                    "DATALOADER.NUM_WORKERS", "0", "NUM_THREADS", "1"])
    assert seen["lr"] == 0.2
