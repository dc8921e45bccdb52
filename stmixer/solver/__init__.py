"""Optimizer and learning-rate schedule built from SOLVER.*."""

from .auto_scale import auto_scale_lr
from .lr_scheduler import ParamSchedulerLR, WarmupCosineMultiplier, WarmupMultiStepMultiplier, build_lr_scheduler
from .optimizer import build_optimizer, build_param_groups

__all__ = [
    "ParamSchedulerLR", "WarmupCosineMultiplier", "WarmupMultiStepMultiplier", "auto_scale_lr", "build_lr_scheduler",
    "build_optimizer", "build_param_groups",
]
