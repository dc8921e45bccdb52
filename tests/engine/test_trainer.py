"""Trainer loop, hooks and checkpoint/resume on a toy model (the real model is tested end to end elsewhere)."""

import json
import os

import pytest
import torch
from torch import nn

from stmixer.engine.checkpointer import Checkpointer
from stmixer.engine.events import MetricsFile
from stmixer.engine.hooks import EvalHook, LRSchedulerHook, MetricsWriterHook, PeriodicCheckpointHook
from stmixer.engine.trainer import HookBase, NonFiniteLossError, Trainer
from stmixer.modeling.matcher import HungarianMatcher
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


class ToyMatchingDetector(ToyDetector):
    """Matches its predictions like the set loss; at iteration ``poison_at`` they are NaN."""

    def forward(self, slow, fast, whwh, boxes, labels):
        losses = super().forward(slow, fast, whwh, boxes, labels)
        if self.poison_at is not None and torch.is_grad_enabled() and self.poison_at == int(whwh[0, 1]):
            predicted = torch.full((2, 3, 4), float("nan"))
            targets = [{"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "whwh": torch.ones(4)}] * 2
            HungarianMatcher()(torch.zeros(2, 3, 2), predicted, targets)
        return losses


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


def _make(output_dir, start=0, keep_last=3, model_class=ToyDetector, eval_hook=None):
    torch.manual_seed(0)
    model = model_class()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = ParamSchedulerLR(opt, WarmupMultiStepMultiplier(10, [6], 0.1, 3, 0.1, "linear"), 10)
    trainer = Trainer(model, ToyLoader(start), opt, torch.device("cpu"))
    ckpt = Checkpointer(str(output_dir), model, opt, sched, keep_last=keep_last)
    trainer.register_hooks([LRSchedulerHook(sched), PeriodicCheckpointHook(ckpt, 2), eval_hook,
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


def test_the_backward_is_issued_before_the_loss_values_are_read_and_a_skip_drops_its_gradients(tmp_path,
                                                                                                 monkeypatch):
    """The host reads the loss terms (a device synchronization on CUDA) only once the backward is queued, so the
    GPU never waits for that read; a non-finite term then drops the gradients before the optimizer step."""
    from stmixer.engine import trainer as trainer_module

    model, trainer, _ = _make(tmp_path)
    model.poison_at = 1
    trainer.nonfinite_loss = "skip"
    events = []
    real_backward, real_tolist = trainer._backward, trainer_module.HostValues.tolist
    monkeypatch.setattr(trainer, "_backward", lambda total: (events.append("backward"), real_backward(total)))

    def tolist(self):
        events.append("read" if all(p.grad is not None for p in model.parameters()) else "read before the gradients")
        return real_tolist(self)

    monkeypatch.setattr(trainer_module.HostValues, "tolist", tolist)
    stepped = []
    real_step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: (stepped.append(
        all(p.grad is not None for p in model.parameters())), real_step(*a, **k))[1])
    trainer.train(0, 3)
    assert events == ["backward", "read"] * 3
    assert stepped == [True, True]  # iteration 2 (whwh 1: poisoned) was skipped, its gradients dropped
    assert trainer.metrics.current().get("skipped_steps") is None


def test_bf16_autocast_on_cpu_trains(tmp_path):
    model, trainer, _ = _make(tmp_path)
    trainer.amp = "bf16"
    trainer.train(0, 3)
    assert torch.isfinite(torch.tensor(trainer.metrics.latest("total_loss")))


def test_nonfinite_matching_cost_names_the_iteration(tmp_path):
    model, trainer, _ = _make(tmp_path, model_class=ToyMatchingDetector)
    model.poison_at = 3
    with pytest.raises(NonFiniteLossError, match=r"^non-finite matching cost at iteration 4: clip 0 of the batch: "
                                                 r"the predicted boxes hold 12 NaN/inf values.*NONFINITE_LOSS skip"):
        trainer.train(0, 10)


def test_nonfinite_matching_cost_skip_skips_the_step_and_goes_on(tmp_path):
    model, trainer, _ = _make(tmp_path, model_class=ToyMatchingDetector)
    model.poison_at = 1
    trainer.nonfinite_loss = "skip"
    snapshots = []

    class Snapshot(HookBase):
        def after_step(self):
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    trainer.register_hooks([Snapshot()])
    trainer.train(0, 3)
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(snapshots, snapshots[1:])]
    assert same == [True, False]  # iteration 2 (poisoned) left the parameters, iteration 3 trained again
    assert trainer.metrics.latest("skipped_steps") == 1.0 and trainer.metrics.global_mean("skipped_steps") == 1.0


def _two_process_worker(rank, init_file, results_dir):
    """One of 2 gloo processes training a DDP toy model; only rank 0's predictions turn NaN (iteration 2)."""
    import datetime
    import gc
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    # The timeout only turns a bug (one process skipping alone) into an error instead of a hang.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(minutes=5))
    try:
        for mode in ("skip", "error"):
            torch.manual_seed(0)
            model = ToyMatchingDetector()
            model.poison_at = 1 if rank == 0 else None
            ddp = nn.parallel.DistributedDataParallel(model)
            trainer = Trainer(ddp, ToyLoader(), torch.optim.AdamW(ddp.parameters(), lr=0.01), torch.device("cpu"),
                              nonfinite_loss=mode)
            outcome = {"error": None}
            try:
                trainer.train(0, 3)
                outcome["skipped"] = trainer.metrics.global_mean("skipped_steps")
            except NonFiniteLossError as e:
                outcome["error"] = str(e)
            outcome["weights"] = [p.detach().sum().item() for p in model.parameters()]
            (results_dir / f"{mode}{rank}.json").write_text(json.dumps(outcome))
            # DDP's reducer must go before the process group does (a reducer destroyed after it, or
            # while the peer still tears down, aborts the process now and then: "terminate called ...")
            del trainer, ddp
            gc.collect()
            dist.barrier()
    finally:
        dist.destroy_process_group()


def test_nonfinite_matching_cost_on_one_process_all_processes_agree(tmp_path):
    import json

    import torch.multiprocessing as mp

    mp.spawn(_two_process_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2)
    zero, one = (json.loads((tmp_path / f"skip{r}.json").read_text()) for r in range(2))
    assert zero["error"] is None and one["error"] is None
    assert zero["skipped"] == one["skipped"] == 1.0
    assert zero["weights"] == pytest.approx(one["weights"])  # the same steps were taken everywhere
    zero, one = (json.loads((tmp_path / f"error{r}.json").read_text()) for r in range(2))
    assert zero["error"].startswith("non-finite matching cost at iteration 2: clip 0 of the batch: ")
    assert one["error"].startswith("non-finite matching cost at iteration 2: on another process")


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.json").read_text().splitlines()]


def test_metrics_json_holds_each_iteration_once_and_evaluations_as_own_records(tmp_path):
    """Training records carry their iteration's values only; an evaluation is a record of its own."""
    trainer = None
    evaluated = []

    def evaluate():
        evaluated.append(trainer.iter + 1)
        return {"mAP": 0.1 * len(evaluated)}

    model, trainer, _ = _make(tmp_path, eval_hook=EvalHook(3, 0, evaluate))
    trainer.train(0, 10)
    records = _records(tmp_path)
    training = [r for r in records if r.get("type") != "eval"]
    assert [r["iteration"] for r in training] == [2, 4, 6, 8, 10]
    assert not any(k.startswith("eval/") for r in training for k in r)
    assert not any("gpu_time" in r for r in training)  # CUDA only
    assert [r for r in records if r.get("type") == "eval"] == [
        {"iteration": 3, "type": "eval", "eval/mAP": pytest.approx(0.1)},
        {"iteration": 6, "type": "eval", "eval/mAP": pytest.approx(0.2)},
        {"iteration": 9, "type": "eval", "eval/mAP": pytest.approx(0.3)},
    ]
    assert [r["iteration"] for r in records] == sorted(r["iteration"] for r in records)


def test_metrics_json_records_no_stale_value_of_an_earlier_iteration(tmp_path):
    """A scalar put only now and then (grad_norm, skipped_steps) appears in the records of its iterations only."""
    model, trainer, _ = _make(tmp_path)
    model.poison_at = 1
    trainer.nonfinite_loss = "skip"
    trainer.train(0, 4)
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [2, 4]
    assert records[0]["skipped_steps"] == 1.0 and "skipped_steps" not in records[1]


def test_metrics_file_trim_keeps_iterations_up_to_the_resume_point(tmp_path):
    lines = [{"iteration": i, "total_loss": float(i)} for i in (1, 2, 3, 4, 5, 6)]
    lines.insert(4, {"iteration": 4, "type": "eval", "eval/mAP": 0.5})
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"iteration": 7, "total_lo'  # cut by a kill
    (tmp_path / "metrics.json").write_text(text)
    metrics_file = MetricsFile(str(tmp_path))
    metrics_file.trim(4)
    assert _records(tmp_path) == lines[:5]
    metrics_file.add_evaluation(4, {"eval/mAP": 0.75})  # an evaluation run again replaces the earlier record
    assert _records(tmp_path) == lines[:4] + [{"iteration": 4, "type": "eval", "eval/mAP": 0.75}]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_time_records_the_previous_iterations_gpu_seconds(tmp_path):
    """From iteration 2 on, each record carries the GPU's seconds of the iteration before it: positive, and in
    total no more than the wall-clock of the iterations it covers (a unit slip, milliseconds for seconds,
    would break that)."""
    import time

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = ToyDetector().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    trainer = Trainer(model, ToyLoader(), opt, device)
    trainer.register_hooks([MetricsWriterHook(str(tmp_path), 1, False, device)])
    torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train(0, 6)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert "gpu_time" not in records[0]
    gpu = [r["gpu_time"] for r in records[1:]]
    assert all(t > 0 for t in gpu)
    assert sum(gpu) <= wall
