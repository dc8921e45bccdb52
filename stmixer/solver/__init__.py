"""Optimizer and learning-rate schedule built from SOLVER.*."""

from .lr_scheduler import ParamSchedulerLR, WarmupMultiStepMultiplier, build_lr_scheduler
from .optimizer import build_optimizer, build_param_groups

__all__ = ["ParamSchedulerLR", "WarmupMultiStepMultiplier", "build_lr_scheduler", "build_optimizer", "build_param_groups"]
