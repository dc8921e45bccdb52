"""Trainer loop, hooks and checkpoint/resume on a toy model (the real model is tested end to end elsewhere)."""

import os

import pytest
import torch
from torch import nn

from stmixer.engine.checkpointer import Checkpointer
from stmixer.engine.hooks import LRSchedulerHook, MetricsWriterHook, PeriodicCheckpointHook
from stmixer.engine.trainer import NonFiniteLossError, Trainer
from stmixer.solver.lr_scheduler import ParamSchedulerLR, WarmupMultiStepMultiplier
from stmixer.utils.io import is_temporary_name


class ToyDetector(nn.Module):
    """Accepts the detector's call signature; losses depend on a dropout so RNG state matters."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Conv3d(3, 4, 1)
        self.stm_head = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)
        self.poison_at = None

    def forward(self, slow, fast, whwh, boxes, labels):
        feat = self.drop(self.backbone(slow).mean(dim=(2, 3, 4)))
        out = self.stm_head(feat)
        loss_a = (out[:, 0] - whwh[:, 0] / 100).pow(2).mean()
        loss_b = (out[:, 1] - torch.stack([b.sum() for b in boxes])).abs().mean()
        if self.poison_at is not None and torch.is_grad_enabled() and self.poison_at == int(whwh[0, 1]):
            loss_b = loss_b * float("nan")
        return {"loss_a": loss_a, "loss_b": loss_b}


class ToyLoader:
    """Batch i is a deterministic function of i; iteration starts at ``start``."""

    def __init__(self, start=0):
        self.start = start

    def __iter__(self):
        i = self.start
        while True:
            g = torch.Generator().manual_seed(i)
            yield {
                "videos": [torch.randn(2, 3, 2, 4, 4, generator=g)],
                "whwh": torch.tensor([[float(i), float(i), 1.0, 1.0]] * 2),
                "boxes": [torch.rand(1, 4, generator=g) for _ in range(2)],
                "labels": [torch.ones(1, 3) for _ in range(2)],
                "metadata": [{}, {}],
                "indices": torch.tensor([2 * i, 2 * i + 1]),
            }
            i += 1


def _make(output_dir, start=0, keep_last=3):
    torch.manual_seed(0)
    model = ToyDetector()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = ParamSchedulerLR(opt, WarmupMultiStepMultiplier(10, [6], 0.1, 3, 0.1, "linear"), 10)
    trainer = Trainer(model, ToyLoader(start), opt, torch.device("cpu"))
    ckpt = Checkpointer(str(output_dir), model, opt, sched, keep_last=keep_last)
    trainer.register_hooks([LRSchedulerHook(sched), PeriodicCheckpointHook(ckpt, 2),
                            MetricsWriterHook(str(output_dir), 2, False, torch.device("cpu"))])
    return model, trainer, ckpt


def test_resume_continues_exactly(tmp_path):
    straight, trainer, _ = _make(tmp_path / "a")
    trainer.train(0, 10)

    _, trainer, _ = _make(tmp_path / "b")
    trainer.train(0, 4)  # stops after the iteration-4 checkpoint, like a killed run
    torch.manual_seed(123)  # a new process would start with other random states
    resumed, trainer, ckpt = _make(tmp_path / "b", start=4)
    start = ckpt.resume_latest(max_iter=10)  # model_final.pth (weights) -> model_0000004.pth (full state)
    assert start == 4
    trainer.data_loader = ToyLoader(start)
    trainer.train(start, 10)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_files_pointer_and_pruning(tmp_path):
    _, trainer, ckpt = _make(tmp_path, keep_last=2)
    trainer.train(0, 10)
    files = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert files == ["model_0000008.pth", "model_0000010.pth", "model_final.pth"]
    assert ckpt.last_checkpoint().endswith("model_final.pth")
    assert not [f for f in os.listdir(tmp_path) if is_temporary_name(f)]
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert state["format"] == "stmixer" and state["iteration"] == 10 and "optimizer" not in state
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    assert len(lines) == 5 and '"loss_a"' in lines[0]


def test_nonfinite_loss_names_term_and_iteration(tmp_path):
    model, trainer, _ = _make(tmp_path)
    model.poison_at = 3
    with pytest.raises(NonFiniteLossError, match=r"iteration 4: loss_b=nan"):
        trainer.train(0, 10)


def test_nonfinite_loss_skip_leaves_parameters(tmp_path):
    model, trainer, _ = _make(tmp_path)
    model.poison_at = 0
    trainer.nonfinite_loss = "skip"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train(0, 1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert trainer.metrics.latest("skipped_steps") == 1.0


def test_bf16_autocast_on_cpu_trains(tmp_path):
    model, trainer, _ = _make(tmp_path)
    trainer.amp = "bf16"
    trainer.train(0, 3)
    assert torch.isfinite(torch.tensor(trainer.metrics.latest("total_loss")))
