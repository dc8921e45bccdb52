"""Training and inference speed of stmixer, alone or side by side with the official STMixer code.

    python benchmarks/speed.py --config slowfast_r50                                   # stmixer alone
    python benchmarks/speed.py --config slowfast_r50 --official-dir ../STMixer          # both, and the ratio
    python benchmarks/speed.py --config slowfast_r50 --precisions bf16 \
        --baseline "MODEL.BACKBONE.SPATIAL_CONV_2D False"                              # one lever, on / off
    python benchmarks/speed.py --config config_files/X.yaml --device cpu --H 64 --W 96 --steps 1 --warmup 0
    python benchmarks/speed.py --config slowfast_r50 --precisions bf16 --modes train --sync-bn \
        --baseline "MODEL.BACKBONE.SYNC_BN False" MODEL.CUDA_GRAPH.SYNC_BN True        # multi-GPU BatchNorm

Both models are built from the same official yaml (a key below or a path; stmixer reads it
with ``load_config``, the official code with its own ``cfg``), randomly initialized with the
same seed, and fed the same synthetic batches (clip shape from the config: SlowOnly 4
frames, SlowFast 8 slow + 32 fast, ViT 16; H x W = 256 x 448 by default; 1 to 3 person boxes
per clip with random multi-hot actions). Per case, in one process, one model after the other:

* train: forward + loss + backward + optimizer step (each implementation's own AdamW and
  parameter groups; the loss is the mean of the loss terms, as both trainers backpropagate;
  no logging syncs);
* infer: eval mode, ``torch.no_grad``, forward, then each clip's boxes and scores copied to
  the host;
* fp32 (PyTorch defaults, as the official code runs) and bf16 (``torch.autocast`` around the
  forward and the loss, as ``SOLVER.AMP bf16`` does).

Printed per case: median milliseconds per step (CUDA events on a GPU, ``perf_counter`` on the
CPU), clips/s, peak GPU memory (``max_memory_allocated`` since the case started, model,
optimizer state and the resident input batches included) and, with ``--official-dir``, the
ratios stmixer / official (speed: > 1 is faster; memory: < 1 is smaller). Config overrides
(``KEY VALUE`` pairs after the options) apply to stmixer only, so use them alone. ``--baseline
"KEY VALUE ..."`` measures one lever: the baseline is stmixer again with these overrides on top, in
the official code's place (columns ``baseline ...``, ratios ours / baseline), in the same process on
the same batches.

``--sync-bn`` (CUDA): the stmixer models whose config has ``MODEL.BACKBONE.SYNC_BN`` get their
BatchNorm layers converted to SyncBatchNorm as ``train_net.py`` converts them on several processes
(``stmixer.modeling.sync_bn.convert_sync_batchnorm``: PyTorch's module, or with
``MODEL.CUDA_GRAPH.SYNC_BN`` the Triton kernels on a process group of their own), in a one-process
NCCL group where the kernels still run their collectives (``bn_act.SYNC_ONE_PROCESS``; PyTorch's
module skips its collectives on one process, so its time is a lower bound). What several GPUs add
(waiting for the other processes, the transfers) is not in it; no DistributedDataParallel either.

Run-time shims for the official code (its files are never edited): ``STMDetector.device`` and
``STMDecoder.device`` (hard-coded ``'cuda'``) are set to the benchmark device;
``torch.utils.checkpoint.checkpoint`` defaults to ``use_reentrant=True`` (the official ViT
calls it without the argument; that was its behaviour); the deprecated
``timm.models.layers`` / ``timm.models.registry`` are aliased to ``timm.layers`` /
``timm.models`` if the installed timm lacks them. The official code needs yacs, fvcore,
iopath, termcolor and timm (a checkout of MCG-NJU/STMixer: ``--official-dir`` is its root,
holding ``alphaction/``).
"""

import argparse
import contextlib
import functools
import gc
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CONFIGS = {
    "slowonly_r50": "config_files/PySlowonly-R50-K400-4x16.yaml",
    "slowfast_r50": "config_files/PySlowfast-R50-K400-8x8.yaml",
    "slowfast_r101_nl": "config_files/PySlowfast-R101-NL-K600-8x8.yaml",
    "vitb": "config_files/VMAE-ViTB-16x4.yaml",
}
COLUMNS = ["mode", "batch", "precision", "ours ms", "ours clips/s", "ours peak GiB", "official ms",
           "official clips/s", "official peak GiB", "speed ours/official", "memory ours/official"]


# ------------------------------------------------------------------------------ inputs
def clip_spec(cfg):
    """Frames per pathway: SlowFast feeds all DATA.NUM_FRAMES to the fast pathway, every ALPHA-th to the slow."""
    frames = cfg.DATA.NUM_FRAMES
    if cfg.MODEL.BACKBONE.PATHWAYS == 1:
        return frames, None
    return frames // cfg.SLOWFAST.ALPHA, frames


def make_batch(spec, batch, H, W, num_actions, seed, device):
    """A synthetic batch: videos on ``device``; boxes (absolute xyxy pixels) and multi-hot labels as numpy."""
    gen = torch.Generator().manual_seed(seed)
    slow_frames, fast_frames = spec
    slow = torch.randn(batch, 3, slow_frames, H, W, generator=gen).to(device)
    fast = torch.randn(batch, 3, fast_frames, H, W, generator=gen).to(device) if fast_frames else None
    whwh = torch.tensor([W, H, W, H], dtype=torch.float32).repeat(batch, 1).to(device)
    rs = np.random.RandomState(seed)
    boxes, labels = [], []
    for _ in range(batch):
        n = rs.randint(1, 4)
        w, h = rs.uniform(0.1, 0.6, n) * W, rs.uniform(0.2, 0.9, n) * H
        x1, y1 = rs.uniform(0, 1, n) * (W - w), rs.uniform(0, 1, n) * (H - h)
        boxes.append(np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32))
        lab = np.zeros((n, num_actions), dtype=np.int32)
        for i in range(n):
            lab[i, rs.choice(num_actions, rs.randint(1, 4), replace=False)] = 1
        labels.append(lab)
    return {"slow": slow, "fast": fast, "whwh": whwh, "boxes": boxes, "labels": labels}


# ------------------------------------------------------------------------------ implementations
class Ours:
    """stmixer through its public API, as ``train_net.py`` builds it (``name`` "baseline" for ``--baseline``)."""

    def __init__(self, config_file, opts, device, name="ours", sync_bn=False):
        from stmixer.config import load_config

        self.cfg = load_config(config_file, opts)
        self.device = device
        self.name = name
        self.sync_bn = sync_bn and self.cfg.MODEL.BACKBONE.SYNC_BN

    def build(self, seed):
        from stmixer.modeling import build_detector
        from stmixer.modeling.sync_bn import convert_sync_batchnorm

        torch.manual_seed(seed)
        model = build_detector(self.cfg).to(self.device)
        return convert_sync_batchnorm(self.cfg, model) if self.sync_bn else model

    def optimizer(self, model):
        from stmixer.solver import build_optimizer

        return build_optimizer(self.cfg, model, vit_layer_id=getattr(model.backbone, "layer_id", None))

    def set_train(self, model):
        model.train()  # keeps BatchNorm frozen under MODEL.BACKBONE.FROZEN_BN by itself

    def loss(self, model, b):
        from stmixer.modeling.losses import reduce_losses

        # the collate's float32 tensors copied to the device inside the step, as the trainer does
        boxes = [torch.as_tensor(x, dtype=torch.float32).to(self.device, non_blocking=True) for x in b["boxes"]]
        labels = [torch.as_tensor(x, dtype=torch.float32).to(self.device, non_blocking=True) for x in b["labels"]]
        loss_dict = model(b["slow"], b["fast"], b["whwh"], boxes, labels)
        return reduce_losses(loss_dict, self.cfg.MODEL.STM.LOSS_REDUCTION)

    def infer(self, model, b):
        return [(d["boxes"].float().cpu(), d["scores"].float().cpu()) for d in model(b["slow"], b["fast"], b["whwh"])]


class Official:
    """The official code (``alphaction``) imported from ``--official-dir`` with the run-time shims above."""

    name = "official"

    def __init__(self, official_dir, config_file, device):
        root = Path(official_dir).resolve()
        if not (root / "alphaction").is_dir():
            raise SystemExit(f"error: --official-dir {root} holds no alphaction/ (a checkout of MCG-NJU/STMixer)")
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        _official_shims()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from alphaction.config import cfg as base

        cfg = base.clone()
        cfg.merge_from_file(str(config_file))
        cfg.freeze()
        self.cfg = cfg
        self.device = device
        body = cfg.MODEL.BACKBONE.CONV_BODY.lower()
        self.frozen_bn = "vit" not in body and cfg.MODEL.BACKBONE.FROZEN_BN  # as its train_net.py

    def build(self, seed):
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from alphaction.modeling.detector import build_detection_model

            model = build_detection_model(self.cfg).to(self.device)
        model.device = self.device  # shim: hard-coded 'cuda'
        model.stm_head.device = self.device
        return model

    def optimizer(self, model):
        from alphaction.solver import make_optimizer

        with contextlib.redirect_stdout(io.StringIO()):  # it prints its parameter-group table
            return make_optimizer(self.cfg, model)

    def set_train(self, model):
        model.train()
        if self.frozen_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm3d):
                    m.eval()

    def loss(self, model, b):
        loss_dict = model(b["slow"], b["fast"], b["whwh"], b["boxes"], b["labels"])
        return sum(loss_dict.values()) / len(loss_dict)

    def infer(self, model, b):
        scores, boxes = model(b["slow"], b["fast"], b["whwh"], b["boxes"], b["labels"])
        return [(x.cpu(), s.cpu()) for x, s in zip(boxes, scores)]


def _official_shims():
    import torch.utils.checkpoint as ckpt

    if not getattr(ckpt.checkpoint, "_speed_shim", False):
        original = ckpt.checkpoint

        @functools.wraps(original)
        def checkpoint(function, *args, **kwargs):
            kwargs.setdefault("use_reentrant", True)
            return original(function, *args, **kwargs)

        checkpoint._speed_shim = True
        ckpt.checkpoint = checkpoint
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import timm.models.layers  # noqa: F401
            import timm.models.registry  # noqa: F401
    except ImportError:
        import timm.layers
        import timm.models

        sys.modules.setdefault("timm.models.layers", timm.layers)
        sys.modules.setdefault("timm.models.registry", timm.models)


# ------------------------------------------------------------------------------ timing
class Clock:
    """CUDA events on a GPU, ``perf_counter`` elsewhere."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, a, b):
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def autocast(precision, device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def reset_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_case(impl, mode, precision, batches, args, device):
    """Median ms per step, clips/s and peak GiB of ``impl`` on ``batches``; {"error": ...} when it fails."""
    reset_memory(device)
    model = optimizer = None
    try:
        model = impl.build(args.seed)
        if mode == "train":
            optimizer = impl.optimizer(model)
            impl.set_train(model)

            def step(b):
                with autocast(precision, device):
                    loss = impl.loss(model, b)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        else:
            model.eval()

            def step(b):
                with torch.no_grad(), autocast(precision, device):
                    impl.infer(model, b)

        clock = Clock(device)
        for i in range(args.warmup):
            step(batches[i % len(batches)])
        clock.sync()
        marks = []
        for i in range(args.steps):
            a = clock.mark()
            step(batches[i % len(batches)])
            marks.append((a, clock.mark()))
        clock.sync()
        ms = statistics.median(clock.ms(a, b) for a, b in marks)
        result = {"ms": ms, "clips_per_s": batches[0]["slow"].size(0) * 1e3 / ms}
        if device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return result
    except Exception as e:  # noqa: BLE001  (an OOM or a failure of one implementation: report it, go on)
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        return {"error": "OOM" if oom else f"{type(e).__name__}: {e}"[:300]}
    finally:
        model = optimizer = None  # noqa: F841  (free the memory before the next case)
        reset_memory(device)


# ------------------------------------------------------------------------------ report
def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows, other="official"):
    """Markdown table of the cases (``COLUMNS``; ``other``: "official", or "baseline" for ``--baseline``)."""
    columns = [c.replace("official", other) for c in COLUMNS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        ours, official = row["ours"], row.get(other) or {}
        cells = [row["mode"], str(row["batch"]), row["precision"]]
        for result in (ours, official):
            if "error" in result:
                cells += [result["error"], "-", "-"]
            else:
                cells += [_fmt(result.get("ms"), 1), _fmt(result.get("clips_per_s"), 2),
                          _fmt(result.get("peak_gib"), 2)]
        both = "clips_per_s" in ours and "clips_per_s" in official
        cells.append(_fmt(ours["clips_per_s"] / official["clips_per_s"], 2) if both else "-")
        mem = "peak_gib" in ours and "peak_gib" in official
        cells.append(_fmt(ours["peak_gib"] / official["peak_gib"], 2) if mem else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", default="slowfast_r50",
                        help=f"an official yaml path or one of {', '.join(CONFIGS)} (default slowfast_r50)")
    parser.add_argument("--official-dir", default=None, help="root of a MCG-NJU/STMixer checkout (holds alphaction/)")
    parser.add_argument("--modes", default="train,infer", help="comma list of train, infer")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--train-batches", default="2,8", help="clips per training step (comma list)")
    parser.add_argument("--infer-batches", default="8", help="clips per inference step (comma list)")
    parser.add_argument("--H", type=int, default=256, help="clip height in pixels")
    parser.add_argument("--W", type=int, default=448, help="clip width in pixels")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--baseline", default=None, metavar='"KEY VALUE ..."',
                        help="compare with stmixer under these further overrides instead of the official code")
    parser.add_argument("--sync-bn", action="store_true",
                        help="stmixer with SyncBatchNorm as on several GPUs (CUDA; see the notes below)")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides for stmixer (alone only)")
    args = parser.parse_args(argv)
    for name, allowed in (("modes", {"train", "infer"}), ("precisions", {"fp32", "bf16"})):
        values = [v for v in getattr(args, name).split(",") if v]
        if not values or set(values) - allowed:
            parser.error(f"--{name} {getattr(args, name)!r}: expected a comma list of {sorted(allowed)}")
        setattr(args, name, values)
    for name in ("train_batches", "infer_batches"):
        try:
            sizes = [int(v) for v in getattr(args, name).split(",") if v]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a comma list of positive integers")
        setattr(args, name, sizes)
    if args.sync_bn and not args.device.startswith("cuda"):
        parser.error("--sync-bn needs a CUDA device (SyncBatchNorm's collectives run on NCCL)")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.official_dir and args.opts:
        parser.error("config overrides apply to stmixer only; leave them out to compare with --official-dir")
    if args.baseline is not None:
        args.baseline = args.baseline.split()
        if args.official_dir:
            parser.error("--baseline compares stmixer with itself; leave out --official-dir")
        if not args.baseline or len(args.baseline) % 2:
            parser.error(f"--baseline: expected KEY VALUE pairs, got {' '.join(args.baseline)!r}")
    return args


def _one_process_group(device):
    """``--sync-bn``: a one-process NCCL group in which the SyncBatchNorm kernels run their collectives."""
    import tempfile

    import torch.distributed as dist

    from stmixer.modeling.backbones import bn_act

    if device.index is not None:
        torch.cuda.set_device(device)
    rendezvous = Path(tempfile.mkdtemp(prefix="stmixer-speed-")) / "rendezvous"
    dist.init_process_group("nccl", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    bn_act.SYNC_ONE_PROCESS = True


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    config_file = Path(CONFIGS.get(args.config, args.config))
    if not config_file.is_absolute() and not config_file.exists():
        config_file = REPO_ROOT / config_file
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from stmixer.errors import exit_on_user_error

    if args.sync_bn:
        _one_process_group(device)
    with exit_on_user_error():
        ours = Ours(str(config_file), args.opts, device, sync_bn=args.sync_bn)
        baseline = (Ours(str(config_file), args.opts + args.baseline, device, "baseline", sync_bn=args.sync_bn)
                    if args.baseline else None)
    impls = [ours] + ([Official(args.official_dir, config_file, device)] if args.official_dir else [])
    impls += [baseline] if baseline else []
    spec = clip_spec(ours.cfg)
    num_actions = ours.cfg.MODEL.STM.ACTION_CLASSES
    print(f"config {config_file.name} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
          f", torch {torch.__version__}, clips {args.H}x{args.W}, frames {spec}; median of {args.steps} steps "
          f"after {args.warmup}", flush=True)
    rows = []
    for mode in args.modes:
        for batch in (args.train_batches if mode == "train" else args.infer_batches):
            batches = [make_batch(spec, batch, args.H, args.W, num_actions, args.seed + 1000 * i + batch, device)
                       for i in range(2)]
            for precision in args.precisions:
                row = {"mode": mode, "batch": batch, "precision": precision}
                for impl in impls:
                    row[impl.name] = run_case(impl, mode, precision, batches, args, device)
                rows.append(row)
                print(f"  {mode} batch {batch} {precision}: "
                      + ", ".join(f"{impl.name} {row[impl.name]}" for impl in impls), file=sys.stderr, flush=True)
            del batches
    if args.sync_bn:
        print("SyncBatchNorm as on several GPUs (--sync-bn), one process")
    if baseline:
        print("baseline: ours with " + " ".join(args.baseline))
    print(table(rows, "baseline" if baseline else "official"))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": str(config_file), "device": str(device), "H": args.H,
                                               "W": args.W, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
