"""SOLVER.GRAD_ACCUM_STEPS: N micro-batches per optimizer step equal one step on the whole batch."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmixer.config import get_cfg
from stmixer.engine.runner import check_micro_batches
from stmixer.engine.trainer import Trainer, split_batch
from stmixer.errors import UserError
from stmixer.modeling.stmixer import build_stm_decoder


def tiny_cfg():
    cfg = get_cfg()
    cfg.MODEL.STM.merge_from_other_cfg(dict(
        NUM_QUERIES=4, HIDDEN_DIM=16, NUM_STAGES=2, NUM_HEADS=2, DIM_FEEDFORWARD=32, SPATIAL_POINTS=4,
        TEMPORAL_POINTS=2, OUT_MULTIPLIER=2, N_GROUPS=2, ACTION_CLASSES=5, DROPOUT=0.0,
    ))
    return cfg


class TinyDetector(nn.Module):
    """A 1x1x1 convolution as backbone, average pooling as pyramid, the real STMixer decoder and set loss."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Conv3d(3, cfg.MODEL.STM.HIDDEN_DIM, 1)
        self.stm_head = build_stm_decoder(cfg)

    def forward(self, slow, fast, whwh, boxes=None, labels=None):
        x = self.backbone(slow)
        features = [F.avg_pool3d(x, (1, s, s)) for s in (4, 8, 16, 32)]
        return self.stm_head(features, whwh, boxes, labels)


def batches(num, counts=(1, 3, 0, 2), actions=5):
    """``num`` batches of 4 clips (64 x 96 canvas) holding ``counts`` ground-truth boxes, float64."""
    out = []
    for i in range(num):
        g = torch.Generator().manual_seed(i)
        whwh = torch.tensor([[96.0, 64.0] * 2, [90.0, 60.0] * 2, [96.0, 50.0] * 2, [80.0, 64.0] * 2],
                            dtype=torch.float64)
        boxes, labels = [], []
        for n, size in zip(counts, whwh):
            xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size[:2] * 0.5
            boxes.append(torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], -1))
            labels.append((torch.rand(n, actions, generator=g) > 0.5).double())
        out.append({
            "videos": [torch.randn(4, 3, 2, 64, 96, generator=g, dtype=torch.float64)],
            "whwh": whwh, "boxes": boxes, "labels": labels,
            "metadata": [{} for _ in counts], "indices": torch.arange(4 * i, 4 * i + 4),
        })
    return out


def train(accum, steps=2, wrap=lambda m: m, clip_grad_norm=0.0, counts=(1, 3, 0, 2)):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = TinyDetector(cfg).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = Trainer(wrap(model), batches(steps, counts), optimizer, torch.device("cpu"), grad_accum_steps=accum,
                      clip_grad_norm=clip_grad_norm)
    logged = []
    run_step = trainer.run_step

    def logging_step():
        run_step()
        logged.append(dict(trainer.metrics.current()))

    trainer.run_step = logging_step
    trainer.train(0, steps)
    return model, trainer, logged


@pytest.mark.parametrize("accum,clip", [(2, 0.0), (4, 0.0), (2, 0.5)])
def test_accumulated_micro_batches_equal_the_whole_batch(accum, clip):
    """float64: the micro-batches' gradients sum to the whole batch's (the loss shares use the whole
    batch's box count, class-weight sum and matched count), so after 2 SGD-momentum steps the
    weights agree to float64 rounding of the reordered sums (observed <= 2e-15 relative); gradient
    clipping acts on the accumulated gradient, so it clips the same total norm."""
    whole, whole_trainer, whole_log = train(1, clip_grad_norm=clip)
    micro, micro_trainer, micro_log = train(accum, clip_grad_norm=clip)
    assert micro_trainer.iter == whole_trainer.iter == 2  # iterations count optimizer steps
    for a, b in zip(whole_log, micro_log):  # the logged terms (float32 sums of the parts) are the whole batch's
        losses = [k for k in a if k.startswith("loss_")] + ["total_loss"] + (["grad_norm"] if clip else [])
        assert len(losses) == 9 + bool(clip)
        for name in losses:
            assert b[name] == pytest.approx(a[name], rel=1e-6), name
    moved = 0
    for (name, a), (_, b) in zip(whole.named_parameters(), micro.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
        moved += int(not torch.equal(a, TinyDetector(tiny_cfg()).double().state_dict()[name]))
    assert moved > 10


def test_accumulation_is_needed_for_equality():
    """Guard of the test above: micro-batches normalized on their own (no ``AccumulatedBatch``) differ."""
    import stmixer.engine.trainer as trainer_module

    whole, _, _ = train(1)
    original = trainer_module.accumulate
    trainer_module.accumulate = lambda totals: contextlib.nullcontext()
    try:
        naive, _, _ = train(2)
    finally:
        trainer_module.accumulate = original
    assert not torch.allclose(naive.backbone.weight, whole.backbone.weight, rtol=1e-6, atol=0)


def test_split_batch_keeps_clip_order():
    batch = batches(1)[0]
    parts = split_batch(batch, 2)
    assert [p["indices"].tolist() for p in parts] == [[0, 1], [2, 3]]
    assert [len(b) for p in parts for b in p["boxes"]] == [1, 3, 0, 2]
    assert torch.equal(torch.cat([p["videos"][0] for p in parts]), batch["videos"][0])
    with pytest.raises(ValueError, match="GRAD_ACCUM_STEPS = 3"):
        split_batch(batch, 3)


def test_micro_batch_size_must_divide():
    cfg = get_cfg()
    cfg.SOLVER.VIDEOS_PER_BATCH, cfg.SOLVER.GRAD_ACCUM_STEPS = 16, 4
    check_micro_batches(cfg, 4)
    with pytest.raises(UserError, match=r"VIDEOS_PER_BATCH = 16 must be a multiple of the number of processes \(4\) "
                                        r"times SOLVER.GRAD_ACCUM_STEPS = 8"):
        cfg.SOLVER.GRAD_ACCUM_STEPS = 8
        check_micro_batches(cfg, 4)


def test_ddp_synchronizes_only_the_last_micro_batch(tmp_path, monkeypatch):
    """With DDP, every micro-batch but the last runs under ``no_sync()`` (one gradient all-reduce per step)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    entered = []
    no_sync = DDP.no_sync

    @contextlib.contextmanager
    def counting_no_sync(self):
        entered.append(1)
        with no_sync(self):
            yield

    monkeypatch.setattr(DDP, "no_sync", counting_no_sync)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp, _, _ = train(4, steps=1, wrap=DDP)
    finally:
        dist.destroy_process_group()
    assert len(entered) == 3
    whole, _, _ = train(1, steps=1)
    torch.testing.assert_close(ddp.backbone.weight, whole.backbone.weight, rtol=1e-12, atol=1e-14)


def test_config_check_of_grad_accum_steps():
    from stmixer.config import ConfigError, validate_config

    cfg = get_cfg()
    assert cfg.SOLVER.GRAD_ACCUM_STEPS == 1
    cfg.SOLVER.VIDEOS_PER_BATCH, cfg.SOLVER.GRAD_ACCUM_STEPS = 16, 4
    validate_config(cfg)
    for bad, expected in ((3, "a divisor of SOLVER.VIDEOS_PER_BATCH = 16"), (0, "a number > 0")):
        cfg.SOLVER.GRAD_ACCUM_STEPS = bad
        with pytest.raises(ConfigError, match=rf"SOLVER.GRAD_ACCUM_STEPS = {bad}: expected {expected}"):
            validate_config(cfg)


def _box_count_worker(rank, init_file, results_dir):
    """One of 2 gloo processes training the tiny DDP detector with and without the prefetched box count;
    writes the weights and the order of its all-reduces and forward passes."""
    import datetime
    import gc
    import json

    import types

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import stmixer.engine.trainer as trainer_module

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(minutes=5))
    events = []
    real_all_reduce = dist.all_reduce

    def logging_all_reduce(tensor, *args, async_op=False, **kwargs):
        events.append("async all_reduce" if async_op else "all_reduce")
        return real_all_reduce(tensor, *args, async_op=async_op, **kwargs)

    def logging_ddp(model):
        model.register_forward_pre_hook(lambda *_: events.append("forward"))
        model.register_forward_hook(lambda *_: events.append("forward end"))
        return DDP(model)

    dist.all_reduce = logging_all_reduce
    real_box_count = trainer_module.BoxCount
    try:
        outcome = {}
        for mode in ("prefetched", "in the loss", "not reduced"):
            if mode == "in the loss":  # the earlier trainer: no box count made before the forward
                trainer_module.BoxCount = lambda count, device: None
            if mode == "not reduced":  # guard: this process's own count instead of the average
                trainer_module.BoxCount = lambda count, device: types.SimpleNamespace(
                    count=count, value=lambda: float(count))
            events.clear()
            # different box counts on the two processes: the average differs from either one's count
            model, trainer, _ = train(1, wrap=logging_ddp, counts=(1, 3, 0, 2) if rank == 0 else (4, 0, 0, 1))
            outcome[mode] = {"weights": [p.detach().flatten().tolist() for p in model.parameters()],
                             "events": list(events)}
            del model, trainer
            gc.collect()
            dist.barrier()
        (results_dir / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        trainer_module.BoxCount = real_box_count
        dist.all_reduce = real_all_reduce
        dist.destroy_process_group()


def test_box_count_all_reduce_runs_beside_the_forward(tmp_path):
    """Distributed: the step's box-count all-reduce is issued asynchronously before the forward pass (not
    inside it, where it held every process until the slowest one's forward reached the loss), and the
    trained weights are the same as with the count reduced inside the loss."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_box_count_worker, args=(str(tmp_path / "init"), tmp_path), nprocs=2)
    for rank in range(2):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        step = ["async all_reduce", "forward", "forward end", "all_reduce", "all_reduce"]  # flag, loss terms
        assert outcome["prefetched"]["events"] == step * 2
        # guard: the earlier order, the all-reduce issued and waited for inside the forward
        assert outcome["in the loss"]["events"] == ["forward", "async all_reduce", "forward end", "all_reduce",
                                                    "all_reduce"] * 2
        assert outcome["prefetched"]["weights"] == outcome["in the loss"]["weights"]
        assert outcome["not reduced"]["weights"] != outcome["prefetched"]["weights"]  # the average mattered
