"""The training loop: one optimization step per iteration; everything else is a hook.

The loop only fetches a batch, computes the losses (under autocast when asked),
checks them, back-propagates and steps the optimizer. Checkpointing, LR
stepping, evaluation, logging, TensorBoard and the progress bar are hooks
(``stmixer.engine.hooks``) called before/after training and each step.
"""

import contextlib
import logging
import math
import time

import torch

from ..modeling.errors import NonFiniteCostError, NonFiniteLossError
from ..modeling.losses import reduce_losses
from ..utils import distributed as comm
from .events import MetricHistory

logger = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device, amp):
    """Autocast for ``SOLVER.AMP`` ("off" | "bf16" | "fp16") on ``device``; a null context for "off"."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"SOLVER.AMP must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def move_batch(batch, device):
    """Copy a batch's tensors (videos, whwh, boxes, labels, and proposals / proposal_scores when the
    batch has them) to ``device``; metadata stays."""
    moved = {
        "videos": [v.to(device, non_blocking=True) for v in batch["videos"]],
        "whwh": batch["whwh"].to(device, non_blocking=True),
        "boxes": [b.to(device, non_blocking=True) for b in batch["boxes"]],
        "labels": [lab.to(device, non_blocking=True) for lab in batch["labels"]],
        "metadata": batch["metadata"],
        "indices": batch["indices"],
    }
    for key in ("proposals", "proposal_scores"):
        if key in batch:
            moved[key] = [p.to(device, non_blocking=True) for p in batch[key]]
    return moved


def detector_inputs(batch):
    """Positional inputs of the detector: (slow video, fast video or None, whwh)."""
    videos = batch["videos"]
    return videos[0], (videos[1] if len(videos) > 1 else None), batch["whwh"]


def detector_kwargs(batch):
    """Keyword inputs of the two-stage detectors: ``proposals`` and ``img_keys`` (``"video_id,SSSS"``)
    when the batch has proposals; nothing otherwise (STMDetector takes none)."""
    if "proposals" not in batch:
        return {}
    from ..modeling.fast_rcnn import img_key

    return {"proposals": batch["proposals"],
            "img_keys": [img_key(m["video_id"], m["timestamp"]) for m in batch["metadata"]]}


class HookBase:
    """A side-job of the trainer. ``self.trainer`` is set when registered."""

    trainer = None

    def before_train(self):
        """Called once before the first iteration."""

    def after_train(self):
        """Called once after the last iteration (also when training stops with an error)."""

    def before_step(self):
        """Called before each iteration."""

    def after_step(self):
        """Called after each iteration."""


class Trainer:
    """Runs iterations ``start_iter .. max_iter - 1`` of ``model`` on ``data_loader``.

    Args:
        model: the (possibly DDP-wrapped) detector; in train mode
            ``model(slow, fast, whwh, boxes, labels)`` returns a dict of weighted loss terms.
        data_loader: iterable yielding batch dicts (see ``stmixer.data``), already
            positioned at ``start_iter``.
        optimizer: the optimizer.
        device: torch.device of the model.
        amp: "off" | "bf16" | "fp16" (fp16 uses a gradient scaler).
        grad_scaler: ``torch.amp.GradScaler`` for fp16 (disabled otherwise).
        loss_reduction: "mean" (the official trainer's: sum of terms / number of terms) or "sum".
        clip_grad_norm: max total gradient norm; 0 disables clipping.
        nonfinite_loss: "error" stops with a message naming the term and iteration; "skip" skips the step.
            The decision is taken on the loss terms averaged over all processes, so every
            process takes the same branch (no hang in DDP).
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        device,
        amp="off",
        grad_scaler=None,
        loss_reduction="mean",
        clip_grad_norm=0.0,
        nonfinite_loss="error",
    ):
        if nonfinite_loss not in ("error", "skip"):
            raise ValueError(f"SOLVER.NONFINITE_LOSS must be 'error' or 'skip', got {nonfinite_loss!r}")
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.device = device
        self.amp = amp
        self.grad_scaler = grad_scaler
        self.loss_reduction = loss_reduction
        self.clip_grad_norm = clip_grad_norm
        self.nonfinite_loss = nonfinite_loss
        self.hooks = []
        self.metrics = MetricHistory()
        self.iter = 0
        self.start_iter = 0
        self.max_iter = 0

    def register_hooks(self, hooks):
        """Append hooks (None entries are ignored); they run in the given order."""
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self.hooks.append(hook)

    def train(self, start_iter, max_iter):
        """Run iterations ``start_iter .. max_iter - 1``; ``self.iter`` is the current one (0-based)."""
        self.start_iter, self.max_iter = start_iter, max_iter
        self.iter = start_iter
        logger.info("Starting training from iteration %d of %d", start_iter, max_iter)
        self.model.train()
        self._data_iter = iter(self.data_loader)
        try:
            for hook in self.hooks:
                hook.before_train()
            for self.iter in range(start_iter, max_iter):
                for hook in self.hooks:
                    hook.before_step()
                self.run_step()
                for hook in self.hooks:
                    hook.after_step()
            self.iter += 1
        finally:
            for hook in self.hooks:
                hook.after_train()

    def run_step(self):
        """One iteration: batch -> losses -> checks -> backward -> optimizer step; records metrics."""
        start = time.perf_counter()
        self.metrics.iteration = self.iter + 1
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start
        batch = move_batch(batch, self.device)
        cost_error = None
        try:
            with autocast_context(self.device, self.amp):
                loss_dict = self.model(*detector_inputs(batch), batch["boxes"], batch["labels"],
                                       **detector_kwargs(batch))
        except NonFiniteCostError as e:  # diverged before any loss term exists
            loss_dict, cost_error = {}, e
        if self._any_process(cost_error is not None):
            detail = str(cost_error) if cost_error is not None else "on another process"
            self._nonfinite(f"non-finite matching cost at iteration {self.iter + 1}: {detail}")
            self.metrics.put(data_time=data_time, time=time.perf_counter() - start,
                             lr=self.optimizer.param_groups[0]["lr"])
            return
        # Averaged over processes: for logging, and so that all processes agree on non-finite terms.
        names = list(loss_dict)
        averaged = comm.all_reduce_mean(torch.stack([loss_dict[n].detach().float() for n in names]))
        loss_values = dict(zip(names, averaged.tolist()))
        bad = [name for name, value in loss_values.items() if not math.isfinite(value)]
        total = reduce_losses(loss_dict, self.loss_reduction)
        self.optimizer.zero_grad(set_to_none=True)
        if bad:
            self._nonfinite(
                f"non-finite loss at iteration {self.iter + 1}: "
                + ", ".join(f"{name}={loss_values[name]}" for name in bad)
            )
        else:
            self._backward_and_step(total)
        good = [value for name, value in loss_values.items() if name not in bad]
        self.metrics.put(
            total_loss=(sum(good) / len(good) if self.loss_reduction == "mean" else sum(good)) if good else float("nan"),
            data_time=data_time,
            time=time.perf_counter() - start,
            lr=self.optimizer.param_groups[0]["lr"],
            **{name: value for name, value in loss_values.items() if name not in bad},
        )
        # metrics a model leaves beside its losses (FastRCNN: recall / precision), logged, never summed
        extra = getattr(getattr(self.model, "module", self.model), "train_metrics", None)
        if extra:
            self.metrics.put(**{name: value for name, value in extra.items() if math.isfinite(value)})

    def _any_process(self, flag):
        """Whether ``flag`` holds on any process (all must agree before the loss all-reduce); no
        collective and no device synchronization in a single process."""
        if not comm.is_distributed():
            return flag
        return comm.all_reduce_mean(torch.tensor([float(flag)], device=self.device)).item() > 0

    def _nonfinite(self, message):
        """``SOLVER.NONFINITE_LOSS``: raise NonFiniteLossError ("error") or log and count a skipped step ("skip")."""
        if self.nonfinite_loss == "error":
            raise NonFiniteLossError(message + " (set SOLVER.NONFINITE_LOSS skip to skip such steps)")
        logger.warning("%s; step skipped", message)
        self.metrics.put(skipped_steps=1.0)

    def _backward_and_step(self, total):
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            scaler.scale(total).backward()
            if self.clip_grad_norm > 0:
                scaler.unscale_(self.optimizer)
                self.metrics.put(grad_norm=self._clip())
            scaler.step(self.optimizer)
            scaler.update()
            return
        total.backward()
        if self.clip_grad_norm > 0:
            self.metrics.put(grad_norm=self._clip())
        self.optimizer.step()

    def _clip(self):
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
