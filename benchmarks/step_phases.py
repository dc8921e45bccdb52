"""Where a training step's time goes: data, forward + loss, backward, gradient all-reduce, optimizer.

    python benchmarks/step_phases.py CONFIG [KEY VALUE ...]                              # one GPU
    torchrun --nproc_per_node N benchmarks/step_phases.py CONFIG [KEY VALUE ...]         # N GPUs (DDP)

Runs 30 training steps of the config's model on its training data (weights from
initialization; on several processes with SyncBatchNorm and DistributedDataParallel as
``train_net.py`` sets them up) with a device synchronization around each phase, and prints per phase
the median over steps 7-30 (the median over ranks, and the range of the ranks). With
several processes every other step runs backward under DDP's ``no_sync``; the
difference between the two backward times is the part of the gradient all-reduce that
backward's computation does not hide. The synchronizations make each step slightly
slower than in ``train_net.py``; compare with its ``metrics.json`` for the real speed.
"""

import statistics
import sys
import time

import torch

from stmixer.config import load_config
from stmixer.data.build import build_data_loader
from stmixer.engine.runner import build_model, wrap_distributed
from stmixer.engine.trainer import autocast_context, detector_inputs, move_batch
from stmixer.modeling.losses import BoxCount, prefetched_box_count, reduce_losses
from stmixer.solver import build_optimizer
from stmixer.utils import distributed as comm

STEPS = 30
WARMUP_STEPS = 6


def time_steps(cfg, ddp_model, optimizer, loader, device, world_size):
    """Per-phase durations in seconds of ``STEPS`` steps after ``WARMUP_STEPS``: dict name -> list."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    phases = {name: [] for name in ("data", "forward", "backward", "backward_no_sync", "step", "total")}
    for i in range(STEPS):
        skip_sync = world_size > 1 and i % 2 == 1
        sync()
        t0 = time.perf_counter()
        batch = next(loader)
        # as the trainer: the step's box-count all-reduce issued before the forward (a host count alone)
        box_count = BoxCount(sum(len(b) for b in batch["boxes"]), device)
        batch = move_batch(batch, device)
        sync()
        t1 = time.perf_counter()
        with ddp_model.no_sync() if skip_sync else torch.enable_grad():
            with autocast_context(device, cfg.SOLVER.AMP), prefetched_box_count(box_count):
                losses = ddp_model(*detector_inputs(batch), batch["boxes"], batch["labels"])
            total = reduce_losses(losses, cfg.MODEL.STM.LOSS_REDUCTION)
            sync()
            t2 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            sync()
            t3 = time.perf_counter()
        optimizer.step()
        sync()
        t4 = time.perf_counter()
        if i >= WARMUP_STEPS:
            phases["data"].append(t1 - t0)
            phases["forward"].append(t2 - t1)
            phases["backward_no_sync" if skip_sync else "backward"].append(t3 - t2)
            phases["step"].append(t4 - t3)
            phases["total"].append(t4 - t0)
    return {name: values for name, values in phases.items() if values}


def main(argv):
    cfg = load_config(argv[0], argv[1:])
    info = comm.init_distributed(None)
    device = comm.resolve_device(cfg.MODEL.DEVICE, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model, vit_layer_id=getattr(model.backbone, "layer_id", None))
    ddp_model = wrap_distributed(cfg, model, device)  # SyncBatchNorm and DDP as train_net.py has them
    ddp_model.train()
    loader = iter(build_data_loader(cfg, is_train=True, max_iter=STEPS, seed=0, pin_memory=device.type == "cuda"))
    medians = {name: statistics.median(v) for name, v in time_steps(cfg, ddp_model, optimizer, loader, device,
                                                                    info.world_size).items()}
    per_rank = comm.all_gather_object(medians)
    if comm.is_main_process():
        print(f"{info.world_size} process(es), AMP {cfg.SOLVER.AMP}, {cfg.SOLVER.VIDEOS_PER_BATCH} clips per step:")
        for name in medians:
            values = [m[name] * 1000 for m in per_rank]
            print(f"  {name:17s} {statistics.median(values):7.1f} ms  (ranks {min(values):.1f}-{max(values):.1f})")
        if "backward_no_sync" in medians:
            hidden = [(m["backward"] - m["backward_no_sync"]) * 1000 for m in per_rank]
            print(f"  gradient all-reduce not hidden by backward: {statistics.median(hidden):.1f} ms")
    comm.cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
