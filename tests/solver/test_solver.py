import math
from bisect import bisect_right

import pytest
import torch
from torch import nn

from stmixer.config import get_cfg
from stmixer.solver import build_lr_scheduler, build_optimizer, build_param_groups


def _official_lr(base, it, milestones, gamma, warmup_iters, factor, method):
    warm = 1.0
    if it < warmup_iters:
        alpha = it / warmup_iters
        warm = factor if method == "constant" else factor * (1 - alpha) + alpha
    return base * warm * gamma ** bisect_right(milestones, it)


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_schedule_matches_official_formula(method):
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.ITER_PER_EPOCH", "7", "SOLVER.MAX_EPOCH", "12", "SOLVER.STEPS", "(5, 8)",
                         "SOLVER.WARMUP_EPOCH", "2", "SOLVER.WARMUP_METHOD", method, "SOLVER.BASE_LR", "2e-5"])
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2e-5)
    sched = build_lr_scheduler(cfg, opt)
    for it in range(7 * 12):
        expected = _official_lr(2e-5, it, [35, 56], 0.1, 14, 0.1, method)
        assert math.isclose(opt.param_groups[0]["lr"], expected, rel_tol=1e-12), it
        opt.step()
        sched.step()


def test_schedule_state_resumes():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.ITER_PER_EPOCH", "5", "SOLVER.MAX_EPOCH", "4", "SOLVER.STEPS", "(1, 3)"])
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(8):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_lr_scheduler(cfg, opt2)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    for _ in range(5):
        opt.step(); sched.step(); opt2.step(); sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv = nn.Conv3d(3, 4, 1)
        self.backbone.bn = nn.BatchNorm3d(4)
        self.stm_head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def test_resnet_groups_follow_official_rule():
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.CONV_BODY", "PySlowonly", "SOLVER.WEIGHT_DECAY", "1e-4"])
    groups = {g["weight_decay"]: set(g["names"]) for g in build_param_groups(_Toy(), cfg)}
    assert groups[0.0] == {"backbone.bn.weight", "backbone.bn.bias"}
    assert groups[1e-4] == {"backbone.conv.weight", "backbone.conv.bias", "stm_head.0.weight", "stm_head.0.bias",
                            "stm_head.1.weight", "stm_head.1.bias"}
    cfg.merge_from_list(["SOLVER.DECAY_NORM_AND_BIAS", "False"])
    groups = {g["weight_decay"]: set(g["names"]) for g in build_param_groups(_Toy(), cfg)}
    assert groups[1e-4] == {"backbone.conv.weight", "backbone.conv.bias", "stm_head.0.weight"}


def test_vit_groups_and_layer_decay():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.patch_embed = nn.Linear(2, 2)
    model.backbone.blocks = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    model.backbone.norm = nn.LayerNorm(2)
    model.stm_head = nn.Linear(2, 2)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.CONV_BODY", "MAE-ViT-B", "ViT.DEPTH", "2", "ViT.LAYER_DECAY", "0.5",
                         "ViT.WEIGHT_DECAY", "0.05", "SOLVER.WEIGHT_DECAY", "1e-4", "SOLVER.BASE_LR", "1.0"])

    def layer_id(name):
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 3

    opt = build_optimizer(cfg, model, vit_layer_id=layer_id)
    by_name = {}
    for group in opt.param_groups:
        for name in group["names"]:
            by_name[name] = (group["weight_decay"], group["lr"])
    assert by_name["backbone.patch_embed.weight"] == (0.05, 0.5**3)
    assert by_name["backbone.patch_embed.bias"] == (0.0, 0.5**3)
    assert by_name["backbone.blocks.1.weight"] == (0.05, 0.5**1)
    assert by_name["backbone.norm.weight"] == (0.0, 1.0)
    assert by_name["stm_head.weight"] == (1e-4, 1.0)
    assert by_name["stm_head.bias"] == (1e-4, 1.0)
