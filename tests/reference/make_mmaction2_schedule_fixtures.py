"""Reference learning rates of mmaction2's AVA detector configs, as mmengine schedules them.

    /tmp/mmbb/venv/bin/python tests/reference/make_mmaction2_schedule_fixtures.py --mmaction2 /tmp/mm/src \\
        --out tests/reference/mmaction2/schedule --commit <sha>

``--mmaction2`` is a folder holding mmaction2's ``configs/`` (e.g. ``git archive`` of
open-mmlab/mmaction2); the script needs mmengine (run it in a throwaway environment, see
``tests/reference/mmaction2/README.md``) and nothing of mmaction2's Python package. For every
training config under ``configs/detection/{acrn,lfb,slowfast,slowonly}`` it reads the config with
mmengine's ``Config``, builds the optimizer from its ``optim_wrapper`` with mmengine's
``build_optim_wrapper`` on a toy model (a convolution, a BatchNorm and a linear layer: the param
groups show whether anything is exempt from weight decay), applies ``auto_scale_lr`` the way
``Runner.scale_lr`` does for a batch of ``SCALED_BATCH`` clips when asked, builds the
``param_scheduler`` list the way ``Runner.build_param_scheduler`` does (``convert_to_iter_based``
with an epoch of ``EPOCH_LENGTH`` iterations) and steps it as ``ParamSchedulerHook`` does
(iteration-based schedulers after every iteration, epoch-based ones after every epoch), recording
the learning rate every iteration trains with. Writes ``schedules.json``.
"""

import argparse
import json
import sys
from pathlib import Path

EPOCH_LENGTH = 7  # iterations per epoch of the simulated run (small, not a divisor of anything special)
SCALED_BATCH = 24  # total batch of the auto_scale_lr check (8 GPUs x 3 clips)
FAMILIES = ("acrn", "lfb", "slowfast", "slowonly")


def toy_model():
    import torch.nn as nn

    return nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Flatten(), nn.Linear(4, 2))


def learning_rates(cfg, epoch_length, auto_scale_batch=None):
    """Per-iteration lr of ``cfg``'s schedule over ``max_epochs`` epochs (mmengine's own classes)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    wrapper = build_optim_wrapper(toy_model(), cfg.optim_wrapper)
    optimizer = wrapper.optimizer
    if auto_scale_batch is not None:
        # Runner.scale_lr: lr *= real batch / base_batch_size, before the schedulers exist.
        ratio = float(auto_scale_batch) / float(cfg.auto_scale_lr["base_batch_size"])
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * ratio
    schedulers = []
    for spec in cfg.param_scheduler:
        spec = dict(spec)
        convert = spec.pop("convert_to_iter_based", False)
        cls = PARAM_SCHEDULERS.get(spec.pop("type"))
        if convert:
            schedulers.append(cls.build_iter_from_epoch(optimizer, epoch_length=epoch_length, **spec))
        else:
            schedulers.append(cls(optimizer, **spec))
    lrs = []
    for _ in range(cfg.train_cfg["max_epochs"]):
        for _ in range(epoch_length):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()
    groups = [{k: v for k, v in group.items() if k not in ("params",) and not k.startswith("initial_")}
              for group in optimizer.param_groups]
    return lrs, type(optimizer).__name__, groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmaction2", required=True, help="folder with mmaction2's configs/")
    parser.add_argument("--out", required=True)
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args(argv)

    import mmengine
    import torch
    from mmengine.config import Config

    torch.manual_seed(0)
    root = Path(args.mmaction2)
    out = {"epoch_length": EPOCH_LENGTH, "scaled_batch": SCALED_BATCH, "configs": {},
           "versions": {"mmaction2_commit": args.commit, "mmengine": mmengine.__version__,
                        "torch": torch.__version__, "python": sys.version.split()[0]}}
    for family in FAMILIES:
        for path in sorted((root / "configs" / "detection" / family).glob("*.py")):
            cfg = Config.fromfile(str(path))
            if "param_scheduler" not in cfg or "train_dataloader" not in cfg or "ava" not in path.stem:
                continue  # the LFB bank-inference configs do not train; multisports is not AVA
            lrs, optimizer, groups = learning_rates(cfg, EPOCH_LENGTH)
            entry = {
                "optimizer": optimizer,
                "param_groups": groups,
                "clip_grad": dict(cfg.optim_wrapper.get("clip_grad") or {}),
                "max_epochs": cfg.train_cfg["max_epochs"],
                "batch_per_gpu": cfg.train_dataloader["batch_size"],
                "auto_scale_lr": dict(cfg.get("auto_scale_lr") or {}),
                "lr": lrs,
            }
            if cfg.get("auto_scale_lr"):
                entry["lr_scaled"] = learning_rates(cfg, EPOCH_LENGTH, auto_scale_batch=SCALED_BATCH)[0]
            out["configs"][path.stem] = entry
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / "schedules.json", "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(out['configs'])} schedules to {dest / 'schedules.json'}")


if __name__ == "__main__":
    main()
