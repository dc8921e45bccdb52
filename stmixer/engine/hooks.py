"""The trainer's side-jobs: LR stepping, checkpoints, evaluation, metric writers, progress bar."""

import datetime
import logging
import os

import torch

from ..utils import distributed as comm
from .events import MetricsFile
from .trainer import HookBase

logger = logging.getLogger(__name__)


class LRSchedulerHook(HookBase):
    """Steps a per-iteration LR scheduler after every optimizer step."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_step(self):
        self.scheduler.step()


class PeriodicCheckpointHook(HookBase):
    """Saves ``model_<iteration>.pth`` every ``period`` iterations and, at the end, the full state
    as ``model_<max_iter>.pth`` and the weights as ``model_final.pth`` (``Checkpointer.save_final``).

    Args:
        checkpointer: ``stmixer.engine.checkpointer.Checkpointer``.
        period: iterations between checkpoints (``SOLVER.CHECKPOINT_PERIOD`` epochs).
    """

    def __init__(self, checkpointer, period):
        self.checkpointer = checkpointer
        self.period = period

    def after_step(self):
        done = self.trainer.iter + 1
        if done == self.trainer.max_iter:
            self.checkpointer.save_final(done)
        elif self.period > 0 and done % self.period == 0:
            self.checkpointer.save(f"model_{done:07d}", done)


class EvalHook(HookBase):
    """Runs ``eval_function()`` every ``period`` iterations once ``after`` iterations are done.

    ``eval_function`` returns a flat dict of scalars (e.g. {"mAP": ...}) on rank 0;
    they are recorded in the trainer's metrics as ``eval/<name>``.
    """

    def __init__(self, period, after, eval_function):
        self.period = period
        self.after = after
        self.eval_function = eval_function

    def after_step(self):
        done = self.trainer.iter + 1
        if self.period > 0 and done > self.after and done % self.period == 0 and done != self.trainer.max_iter:
            results = self.eval_function() or {}
            self.trainer.metrics.put(**{f"eval/{k}": v for k, v in results.items()})
            self.trainer.model.train()


class MetricsWriterHook(HookBase):
    """Writes the run's history: log lines, ``metrics.json`` records, TensorBoard scalars (rank 0).

    Every ``period`` iterations (and at the last): one log line and a training record with
    this iteration's values only. After an evaluation (``eval/*`` scalars put during the
    iteration, by ``EvalHook``, registered before this hook): an evaluation record, whatever
    the period. See ``stmixer.engine.events`` for the file format.

    Args:
        output_dir: folder of ``metrics.json`` (and ``tb/`` for TensorBoard).
        period: iterations between training records.
        use_tensorboard: also write TensorBoard event files (tensorboardX).
        device: training device (for the peak-memory figure on CUDA).
    """

    def __init__(self, output_dir, period, use_tensorboard, device):
        self.output_dir = output_dir
        self.period = period
        self.use_tensorboard = use_tensorboard
        self.device = device
        self.file = MetricsFile(output_dir)
        self._tb = None

    def before_train(self):
        if comm.is_main_process() and self.use_tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.output_dir, "tb"))

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self.period == 0 or done == self.trainer.max_iter:
            self.write(done)
        self.write_evaluation(done)

    def write(self, done):
        """Log and store this iteration's training metrics at iteration ``done`` (rank 0 only)."""
        if not comm.is_main_process():
            return
        metrics = self.trainer.metrics
        current = {k: v for k, v in metrics.current().items() if not k.startswith("eval/")}
        if "time" not in current:
            return
        # The log line shows medians of the recent window; metrics.json and TensorBoard get this iteration's values.
        smooth = {name: metrics.median(name) for name in metrics.names() if not name.startswith("eval/")}
        if self.device.type == "cuda":
            current["max_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        remaining = (self.trainer.max_iter - done) * smooth["time"]
        losses = "  ".join(f"{k}: {v:.4f}" for k, v in smooth.items() if k.startswith("loss") or k == "total_loss")
        logger.info(
            "eta: %s  iter: %d/%d  %s  time: %.3f  data_time: %.3f  lr: %.3g%s",
            datetime.timedelta(seconds=int(remaining)), done, self.trainer.max_iter, losses,
            smooth["time"], smooth["data_time"], current["lr"],
            f"  max_mem: {current['max_mem_mb']:.0f}M" if "max_mem_mb" in current else "",
        )
        self.file.append({"iteration": done, **current})
        self._add_scalars(current, done)

    def write_evaluation(self, done):
        """Store the evaluation results put during iteration ``done``, if any (rank 0 only)."""
        if not comm.is_main_process():
            return
        results = {k: v for k, v in self.trainer.metrics.current().items() if k.startswith("eval/")}
        if results:
            self.file.add_evaluation(done, results)
            self._add_scalars(results, done)

    def _add_scalars(self, scalars, step):
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def after_train(self):
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ProgressBarHook(HookBase):
    """A tqdm bar with ETA and the current loss on rank 0."""

    def __init__(self):
        self._bar = None

    def before_train(self):
        if comm.is_main_process():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.trainer.max_iter, initial=self.trainer.start_iter, desc="train", unit="it", dynamic_ncols=True
            )

    def after_step(self):
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{self.trainer.metrics.latest('total_loss'):.4f}", refresh=False)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
