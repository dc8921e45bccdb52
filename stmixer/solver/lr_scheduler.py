"""Learning-rate schedules counted in iterations, built on fvcore's param schedulers.

A ``ParamScheduler`` maps training progress ``where`` in [0, 1] to a multiplier;
``ParamSchedulerLR`` turns it into a torch LR scheduler stepped once per iteration,
so its state (``last_epoch`` = iterations done) is saved and resumed with the optimizer.
"""

import torch
from fvcore.common.param_scheduler import LinearParamScheduler, MultiStepParamScheduler, ParamScheduler


class WarmupMultiStepMultiplier(ParamScheduler):
    """Official STMixer schedule: warm-up factor times ``gamma ** (steps passed)``.

    At iteration ``it`` (0-based, the number of finished iterations):
    ``warmup(it) * gamma ** #{s in milestones: s <= it}``, where the warm-up is
    ``factor`` ("constant") or ``factor * (1 - it / warmup_iters) + it / warmup_iters``
    ("linear") while ``it < warmup_iters``, then 1.

    Args:
        max_iter: total iterations (``where`` = it / max_iter).
        milestones: iterations at which the rate is multiplied by ``gamma`` (increasing).
        gamma: step factor.
        warmup_iters: warm-up length in iterations (0: none).
        warmup_factor: multiplier at iteration 0.
        warmup_method: "linear" or "constant".
    """

    def __init__(self, max_iter, milestones, gamma, warmup_iters, warmup_factor, warmup_method):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {list(milestones)}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
        self.max_iter = max_iter
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.warmup_method = warmup_method
        self._warmup = LinearParamScheduler(start_value=warmup_factor, end_value=1.0)
        # Steps at or beyond the end never apply; fvcore wants milestones inside the run.
        inside = [m for m in milestones if 0 < m < max_iter]
        self._steps = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(inside) + 1)], milestones=inside, num_updates=max_iter
        )
        self._step_at_zero = sum(1 for m in milestones if m <= 0)
        self._gamma = gamma

    def __call__(self, where):
        iteration = where * self.max_iter
        factor = 1.0
        if iteration < self.warmup_iters:
            factor = (
                self.warmup_factor
                if self.warmup_method == "constant"
                else self._warmup(iteration / self.warmup_iters)
            )
        return factor * self._steps(min(where, 1.0)) * self._gamma**self._step_at_zero


class ParamSchedulerLR(torch.optim.lr_scheduler.LRScheduler):
    """Torch LR scheduler: lr of group g at iteration i = base_lr_g * multiplier(i / max_iter)."""

    def __init__(self, optimizer, multiplier, max_iter, last_epoch=-1):
        self.multiplier = multiplier
        self.max_iter = max_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        scale = self.multiplier(min(self.last_epoch, self.max_iter) / self.max_iter)
        return [base_lr * scale for base_lr in self.base_lrs]

    def state_dict(self):
        # The multiplier is rebuilt from the config; only the counters are state.
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "multiplier")}


def build_lr_scheduler(cfg, optimizer):
    """The ``SOLVER.SCHEDULER`` schedule over ``ITER_PER_EPOCH * MAX_EPOCH`` iterations (epochs in SOLVER.*)."""
    if cfg.SOLVER.SCHEDULER != "warmup_multi_step":
        raise ValueError(f"SOLVER.SCHEDULER: only 'warmup_multi_step' is supported, got {cfg.SOLVER.SCHEDULER!r}")
    per_epoch = cfg.SOLVER.ITER_PER_EPOCH
    if per_epoch == 0:
        raise ValueError("SOLVER.ITER_PER_EPOCH 0 (the training split's size) must be resolved first: "
                         "stmixer.data.build.resolve_epoch_length(cfg)")
    max_iter = per_epoch * cfg.SOLVER.MAX_EPOCH
    multiplier = WarmupMultiStepMultiplier(
        max_iter=max_iter,
        milestones=[int(round(step * per_epoch)) for step in cfg.SOLVER.STEPS],
        gamma=cfg.SOLVER.GAMMA,
        warmup_iters=int(round(cfg.SOLVER.WARMUP_EPOCH * per_epoch)) if cfg.SOLVER.WARMUP_ON else 0,
        warmup_factor=cfg.SOLVER.WARMUP_FACTOR,
        warmup_method=cfg.SOLVER.WARMUP_METHOD,
    )
    return ParamSchedulerLR(optimizer, multiplier, max_iter)
