"""Learning-rate schedules counted in iterations, built on fvcore's param schedulers.

A ``ParamScheduler`` maps training progress ``where`` in [0, 1] to a multiplier;
``ParamSchedulerLR`` turns it into a torch LR scheduler stepped once per iteration,
so its state (``last_epoch`` = iterations done) is saved and resumed with the optimizer.

Two schedules (``SOLVER.SCHEDULER``), each a warm-up factor times a main factor:
- "warmup_multi_step": ``gamma ** (milestones passed)`` (official STMixer; also mmengine's
  ``MultiStepLR``, whose factor mmengine multiplies with a ``LinearLR`` warm-up's while both run).
- "warmup_cosine": mmengine's ``CosineAnnealingLR`` from the end of the warm-up to the end of
  training, down to ``eta_min`` (mmaction2's ``cosine`` configs).

Warm-up shapes (``SOLVER.WARMUP_METHOD``), at warm-up step ``s`` of ``L`` (iterations, or whole
epochs with ``SOLVER.WARMUP_BY_EPOCH``; factor 1 from step ``L`` on):
- "constant": ``factor``;
- "linear" (official STMixer): ``factor + (1 - factor) * s / L``;
- "mmengine_linear" (mmengine's ``LinearLR(start_factor=factor, begin=0, end=L)``):
  ``factor + (1 - factor) * min(s, L - 1) / (L - 1)``: the factor reaches 1 at the warm-up's last
  step ``L - 1``, one step earlier than "linear".
"""

import math

import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler, ParamScheduler

WARMUP_METHODS = ("linear", "constant", "mmengine_linear")


class Warmup:
    """Warm-up factor of iteration ``it`` (0-based: finished iterations).

    Args:
        length: warm-up length in steps (0: none).
        factor: multiplier at step 0.
        method: one of ``WARMUP_METHODS``.
        iters_per_step: iterations per warm-up step: 1 (the factor changes every iteration) or
            the epoch length (it changes at epoch starts only: mmengine's by-epoch ``LinearLR``).
    """

    def __init__(self, length, factor, method, iters_per_step=1):
        if method not in WARMUP_METHODS:
            raise ValueError(f"SOLVER.WARMUP_METHOD must be one of {WARMUP_METHODS}, got {method!r}")
        if method == "mmengine_linear" and 0 < length <= 1:
            # mmengine's LinearLR over one step never leaves start_factor (total_iters = 0): the
            # rate would stay at factor x BASE_LR for the whole run.
            raise ValueError(f"SOLVER.WARMUP_METHOD 'mmengine_linear' needs a warm-up of at least 2 steps, got {length} "
                             "(mmengine's one-step LinearLR keeps the rate at WARMUP_FACTOR x BASE_LR forever)")
        self.length = length
        self.factor = factor
        self.method = method
        self.iters_per_step = max(1, int(iters_per_step))

    def __call__(self, it):
        step = it // self.iters_per_step
        if step >= self.length:
            return 1.0
        if self.method == "constant":
            return self.factor
        if self.method == "linear":
            return self.factor + (1.0 - self.factor) * step / self.length
        return self.factor + (1.0 - self.factor) * min(step, self.length - 1) / (self.length - 1)

    @property
    def end_iter(self):
        """First iteration with factor 1."""
        return int(math.ceil(self.length)) * self.iters_per_step if self.iters_per_step > 1 else self.length


class WarmupMultiStepMultiplier(ParamScheduler):
    """Warm-up factor times ``gamma ** (steps passed)`` (official STMixer; mmengine's LinearLR x MultiStepLR).

    At iteration ``it`` (0-based, the number of finished iterations):
    ``warmup(it) * gamma ** #{s in milestones: s <= it}``, with the warm-up of ``Warmup``.

    Args:
        max_iter: total iterations (``where`` = it / max_iter).
        milestones: iterations at which the rate is multiplied by ``gamma`` (increasing).
        gamma: step factor.
        warmup_iters: warm-up length in iterations, or in epochs when ``warmup_step_iters`` > 1 (0: none).
        warmup_factor: multiplier at iteration 0.
        warmup_method: one of ``WARMUP_METHODS``.
        warmup_step_iters: iterations per warm-up step (1, or the epoch length for a by-epoch warm-up).
    """

    def __init__(self, max_iter, milestones, gamma, warmup_iters, warmup_factor, warmup_method, warmup_step_iters=1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {list(milestones)}")
        self.max_iter = max_iter
        self._warmup = Warmup(warmup_iters, warmup_factor, warmup_method, warmup_step_iters)
        # Steps at or beyond the end never apply; fvcore wants milestones inside the run.
        inside = [m for m in milestones if 0 < m < max_iter]
        self._steps = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(inside) + 1)], milestones=inside, num_updates=max_iter
        )
        self._step_at_zero = sum(1 for m in milestones if m <= 0)
        self._gamma = gamma

    def __call__(self, where):
        iteration = int(round(where * self.max_iter))
        return self._warmup(iteration) * self._steps(min(where, 1.0)) * self._gamma**self._step_at_zero


class WarmupCosineMultiplier(ParamScheduler):
    """Warm-up, then mmengine's ``CosineAnnealingLR`` until the end of training.

    At iteration ``it``: ``warmup(it)`` before ``begin`` (the warm-up's first iteration with
    factor 1); from ``begin`` on, with ``t = it - begin`` and ``T = max_iter - begin``:
    ``r + (1 - r) * (1 + cos(pi * t / T)) / 2``, ``r = eta_min / BASE_LR``. This is the closed
    form of mmengine's chained cosine with ``T_max = end - begin`` (mmaction2: ``begin`` = the
    warm-up's end, ``end`` = ``max_epochs``, ``convert_to_iter_based``); the last iteration's
    rate is ``(1 + cos(pi (T - 1) / T)) / 2`` of the base, not ``eta_min``.

    Args:
        max_iter: total iterations.
        warmup_iters, warmup_factor, warmup_method, warmup_step_iters: as ``WarmupMultiStepMultiplier``.
        eta_min_ratio: the floor of the cosine as a fraction of the base rate.
    """

    def __init__(self, max_iter, warmup_iters, warmup_factor, warmup_method, eta_min_ratio=0.0, warmup_step_iters=1):
        self.max_iter = max_iter
        self._warmup = Warmup(warmup_iters, warmup_factor, warmup_method, warmup_step_iters)
        self.begin = min(self._warmup.end_iter, max_iter)
        self.eta_min_ratio = eta_min_ratio

    def __call__(self, where):
        # The rate after the last iteration (where = 1) trains nothing; it repeats the last one's.
        iteration = min(int(round(where * self.max_iter)), self.max_iter - 1)
        if iteration < self.begin:
            return self._warmup(iteration)
        t, span = iteration - self.begin, self.max_iter - self.begin
        r = self.eta_min_ratio
        return r + (1.0 - r) * (1.0 + math.cos(math.pi * t / span)) / 2.0


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
    solver = cfg.SOLVER
    if solver.SCHEDULER not in ("warmup_multi_step", "warmup_cosine"):
        raise ValueError(f"SOLVER.SCHEDULER: expected 'warmup_multi_step' or 'warmup_cosine', got {solver.SCHEDULER!r}")
    per_epoch = solver.ITER_PER_EPOCH
    if per_epoch == 0:
        raise ValueError("SOLVER.ITER_PER_EPOCH 0 (the training split's size) must be resolved first: "
                         "stmixer.data.build.resolve_epoch_length(cfg)")
    max_iter = per_epoch * solver.MAX_EPOCH
    if not solver.WARMUP_ON:
        warmup = dict(warmup_iters=0, warmup_step_iters=1)
    elif solver.WARMUP_BY_EPOCH:
        warmup = dict(warmup_iters=solver.WARMUP_EPOCH, warmup_step_iters=per_epoch)
    else:
        warmup = dict(warmup_iters=int(round(solver.WARMUP_EPOCH * per_epoch)), warmup_step_iters=1)
    warmup.update(warmup_factor=solver.WARMUP_FACTOR, warmup_method=solver.WARMUP_METHOD)
    if solver.SCHEDULER == "warmup_cosine":
        multiplier = WarmupCosineMultiplier(max_iter=max_iter, eta_min_ratio=solver.COSINE_ETA_MIN / solver.BASE_LR,
                                            **warmup)
    else:
        multiplier = WarmupMultiStepMultiplier(
            max_iter=max_iter,
            milestones=[int(round(step * per_epoch)) for step in solver.STEPS],
            gamma=solver.GAMMA,
            **warmup,
        )
    return ParamSchedulerLR(optimizer, multiplier, max_iter)
