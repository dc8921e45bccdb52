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
from ..modeling.losses import AccumulatedBatch, BoxCount, accumulate, prefetched_box_count, reduce_losses
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


# Per-clip tensor lists only some datasets' batches carry (two-stage detectors: person proposals).
OPTIONAL_BATCH_KEYS = ("proposals", "proposal_scores")


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
    for key in OPTIONAL_BATCH_KEYS:
        if key in batch:
            moved[key] = [p.to(device, non_blocking=True) for p in batch[key]]
    return moved


def split_batch(batch, parts):
    """Split a collated batch into ``parts`` micro-batches of equal size (clip order kept, padding kept)."""
    size = batch["whwh"].size(0)
    if parts == 1:
        return [batch]
    if size % parts:
        raise ValueError(f"a batch of {size} clips does not split into SOLVER.GRAD_ACCUM_STEPS = {parts} equal parts")
    step = size // parts
    parts_of = lambda seq, j: seq[j * step:(j + 1) * step]  # noqa: E731
    return [
        {
            "videos": [parts_of(v, j) for v in batch["videos"]],
            "whwh": parts_of(batch["whwh"], j),
            "boxes": parts_of(batch["boxes"], j),
            "labels": parts_of(batch["labels"], j),
            "metadata": parts_of(batch["metadata"], j),
            "indices": parts_of(batch["indices"], j),
            **{key: parts_of(batch[key], j) for key in OPTIONAL_BATCH_KEYS if key in batch},
        }
        for j in range(parts)
    ]


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


class HostValues:
    """A tensor's values on their way to the host: the copy is issued now (CUDA: into pinned memory, behind the
    work queued so far), read by ``tolist`` later, which waits for that copy only, not for work queued after it."""

    def __init__(self, tensor):
        self._event = None
        if tensor.is_cuda:
            self._host = tensor.detach().to("cpu", non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.detach()

    def tolist(self):
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()


class GpuStepClock:
    """The GPU's seconds per iteration, from a CUDA event recorded as each iteration starts.

    The interval between two iterations' events covers the first one's kernels and any time the
    GPU waited for the host to issue them (data loading, matching on the host, launches) -- what
    a process's iteration costs the others under DistributedDataParallel, which the host's
    wall-clock blurs: a host delay the GPU's queued work hides shows in one iteration's
    wall-clock and is paid back by the next. Read without a synchronization: at iteration k,
    once the loss values have reached the host, the interval of iteration k - 1 is complete.
    Does nothing off CUDA.

    Args:
        device: torch.device of the model.
    """

    def __init__(self, device):
        self.enabled = device.type == "cuda"
        self._previous = None
        self._current = None

    def start(self):
        """Mark the start of an iteration (on the current CUDA stream)."""
        if not self.enabled:
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._previous, self._current = self._current, event

    def previous_seconds(self):
        """Seconds of the previous iteration on the GPU; None off CUDA, on the first iteration, or
        while the current iteration's start has not been reached on the GPU (never waits)."""
        if self._previous is None or not self._current.query():
            return None
        return self._previous.elapsed_time(self._current) / 1000.0


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
        grad_accum_steps: micro-batches per optimizer step (``SOLVER.GRAD_ACCUM_STEPS``): each
            loader batch is split into this many equal parts, run one after the other (DDP
            synchronizes the gradients on the last only) and normalized as shares of the whole
            batch's loss (``losses.AccumulatedBatch``), so the step equals one on the whole
            batch. One iteration is one optimizer step.
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
        grad_accum_steps=1,
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
        if int(grad_accum_steps) < 1:
            raise ValueError(f"SOLVER.GRAD_ACCUM_STEPS must be >= 1, got {grad_accum_steps!r}")
        self.grad_accum_steps = int(grad_accum_steps)
        self.hooks = []
        self.metrics = MetricHistory()
        self.gpu_clock = GpuStepClock(device)
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
        """One iteration: batch -> losses -> checks -> backward -> optimizer step; records metrics.

        With ``grad_accum_steps`` N > 1 the batch is run as N micro-batches; the loss terms
        logged and checked are their sums (the whole batch's terms). The non-finite check
        reads the loss terms after the last micro-batch's backward has been issued and before
        the optimizer step: a skipped step drops the gradients and changes no weight.
        """
        start = time.perf_counter()
        self.gpu_clock.start()
        self.metrics.iteration = self.iter + 1
        batch = next(self._data_iter)
        data_time = time.perf_counter() - start
        parts = split_batch(batch, self.grad_accum_steps)
        counts = [len(b) for b in batch["boxes"]]
        # The step's box-count all-reduce is issued now, before the forward pass, and runs beside it: in
        # the loss it would stall every process until the slowest one's forward got there. A single
        # process counts on the host.
        totals = AccumulatedBatch.from_counts(counts, self.device) if len(parts) > 1 else None
        box_count = BoxCount(sum(counts), self.device) if totals is None and comm.is_distributed() else None
        self.optimizer.zero_grad(set_to_none=True)
        summed, names = None, None
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            part = move_batch(part, self.device)
            with self._sync_gradients(last), self._normalizers(totals, box_count):
                cost_error = None
                try:
                    with autocast_context(self.device, self.amp):
                        loss_dict = self.model(*detector_inputs(part), part["boxes"], part["labels"],
                                               **detector_kwargs(part))
                except NonFiniteCostError as e:  # diverged before any loss term exists
                    loss_dict, cost_error = {}, e
                if self._any_process(cost_error is not None):
                    detail = str(cost_error) if cost_error is not None else "on another process"
                    self.optimizer.zero_grad(set_to_none=True)
                    self._nonfinite(f"non-finite matching cost at iteration {self.iter + 1}: {detail}")
                    self.metrics.put(data_time=data_time, time=time.perf_counter() - start,
                                     lr=self.optimizer.param_groups[0]["lr"])
                    return
                names = names or list(loss_dict)
                terms = torch.stack([loss_dict[n].detach().float() for n in names])
                summed = terms if summed is None else summed + terms
                total = reduce_losses(loss_dict, self.loss_reduction)
                if not last:
                    self._backward(total)
                    continue
                # Averaged over processes: for logging, and so that all processes agree on non-finite terms. The
                # backward is issued before the values reach the host, so the GPU goes on with it meanwhile; every
                # process runs it, and its gradients are dropped below where a term is not finite.
                values = HostValues(comm.all_reduce_mean(summed))
                self._backward(total)
                loss_values = dict(zip(names, values.tolist()))
                bad = [name for name, value in loss_values.items() if not math.isfinite(value)]
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    self._nonfinite(
                        f"non-finite loss at iteration {self.iter + 1}: "
                        + ", ".join(f"{name}={loss_values[name]}" for name in bad)
                    )
        if not bad:
            self._step()
        good = [value for name, value in loss_values.items() if name not in bad]
        self.metrics.put(
            total_loss=(sum(good) / len(good) if self.loss_reduction == "mean" else sum(good)) if good else float("nan"),
            data_time=data_time,
            time=time.perf_counter() - start,
            lr=self.optimizer.param_groups[0]["lr"],
            **{name: value for name, value in loss_values.items() if name not in bad},
        )
        gpu_time = self.gpu_clock.previous_seconds()
        if gpu_time is not None:  # the previous iteration's (see GpuStepClock)
            self.metrics.put(gpu_time=gpu_time)
        height, width = batch["videos"][0].shape[-2:]  # the padded batch: step times depend on it
        self.metrics.put(input_height=float(height), input_width=float(width))
        # metrics a model leaves beside its losses (FastRCNN: recall / precision), logged, never summed
        extra = getattr(getattr(self.model, "module", self.model), "train_metrics", None)
        if extra:
            self.metrics.put(**{name: value for name, value in extra.items() if math.isfinite(value)})

    def _sync_gradients(self, last):
        """DDP's ``no_sync()`` on every micro-batch but the last (gradients are all-reduced once per step)."""
        if last or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    @staticmethod
    def _normalizers(totals, box_count):
        """The loss normalizers of this step: ``accumulate(totals)`` for micro-batches, else the
        prefetched ``box_count`` (distributed), else nothing."""
        if totals is not None:
            return accumulate(totals)
        return prefetched_box_count(box_count) if box_count is not None else contextlib.nullcontext()

    def _any_process(self, flag):
        """Whether ``flag`` holds on any process (all must agree before the loss all-reduce); no
        collective and no device synchronization in a single process."""
        if not comm.is_distributed():
            return flag
        return comm.all_reduce_mean(torch.full((1,), float(flag), device=self.device)).item() > 0

    def _nonfinite(self, message):
        """``SOLVER.NONFINITE_LOSS``: raise NonFiniteLossError ("error") or log and count a skipped step ("skip")."""
        if self.nonfinite_loss == "error":
            raise NonFiniteLossError(message + " (set SOLVER.NONFINITE_LOSS skip to skip such steps)")
        logger.warning("%s; step skipped", message)
        self.metrics.put(skipped_steps=1.0)

    def _backward(self, total):
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            scaler.scale(total).backward()
        else:
            total.backward()

    def _step(self):
        scaler = self.grad_scaler
        if scaler is not None and scaler.is_enabled():
            if self.clip_grad_norm > 0:
                scaler.unscale_(self.optimizer)
                self.metrics.put(grad_norm=self._clip())
            scaler.step(self.optimizer)
            scaler.update()
            return
        if self.clip_grad_norm > 0:
            self.metrics.put(grad_norm=self._clip())
        self.optimizer.step()

    def _clip(self):
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm))
