"""Time and memory of the two feature samplers, forward + backward, at the official decoder sizes.

    python benchmarks/sampler.py [--device cpu|cuda] [--batch-sizes 2 4 8] [--frames 4 8] [--repeats 5]
    python benchmarks/sampler.py --device cuda --impl triton     # the Triton kernels against the reference

One call = ``--stages`` samplings of one pyramid (as the decoder stages do,
sharing one ``PyramidSampler``), each followed by the frame and point means the
mixing consumes, then the backward to the features and the points. Sizes: Q=100 queries, D=256 channels,
G=4 groups, P=32 points, T frames, a 256x340 clip on a 256x352 canvas
(levels 64x88, 32x44, 16x22, 8x11). Printed per configuration: median and
min time over the repeats; "saved" = bytes the autograd graph keeps for the
backward (beyond the inputs); "peak" = peak memory above the inputs during
forward + backward (CUDA: allocator peak; CPU: peak resident set size of the
process, Linux only, measured with glibc returning large blocks to the OS: the
script restarts itself with ``MALLOC_MMAP_THRESHOLD_=131072``, which also makes
CPU timings slower than usual); and folded/reference ratios (< 1 is better; ``--impl triton``
puts the Triton sampler in the "fold" columns).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stmixer.modeling.stmixer.sampling import PyramidSampler  # noqa: E402

STRIDES = (4, 8, 16, 32)
CANVAS = (256, 352)  # a 256x340 clip padded to a multiple of 32


def make_inputs(batch, frames, device, dtype, queries=100, dim=256, groups=4, points=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(batch, dim, frames, CANVAS[0] // s, CANVAS[1] // s, generator=gen, dtype=dtype).to(device)
        for s in STRIDES
    ]
    xy = torch.rand(batch, queries, groups * points, 2, generator=gen, dtype=dtype) * torch.tensor(
        [CANVAS[1], CANVAS[0]], dtype=dtype)
    z = 3.0 + 3.0 * torch.rand(batch, queries, groups * points, 1, generator=gen, dtype=dtype)
    pts = torch.cat([xy, z], dim=-1).to(device)
    return [f.requires_grad_() for f in feats], pts.requires_grad_(), groups


def step(impl, feats, pts, groups, stages):
    """One decoder forward's sampling (``stages`` calls on one pyramid) and its backward."""
    sampler = PyramidSampler(feats, STRIDES, groups, impl=impl)
    loss = 0.0
    for stage in range(stages):
        sampled = sampler(pts + stage)
        loss = loss + sampled.mean(3).square().sum() + sampled.mean(5).square().sum()
    loss.backward()


class SavedBytes:
    """Bytes of the distinct storages autograd saves for backward, excluding given input storages."""

    def __init__(self, exclude):
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.seen = {}

    def pack(self, t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.exclude:
            self.seen[ptr] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self):
        return sum(self.seen.values())


def _rss_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(device, fn):
    """Peak memory above the current level while ``fn()`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM)
        base = _rss_bytes("VmRSS:")
    except OSError:
        return float("nan")
    fn()
    return _rss_bytes("VmHWM:") - base


def measure(impl, feats, pts, groups, device, repeats, stages):
    def run():
        step(impl, feats, pts, groups, stages)
        for t in [pts, *feats]:
            t.grad = None

    run()  # warm-up
    saved = SavedBytes([pts, *feats])
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        run()
    peak = peak_bytes(device, run)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "saved": saved.total, "peak": peak}


def _reexec_with_returning_malloc():
    """On Linux CPUs, restart once with glibc returning large blocks to the OS, so that the
    resident-set peak follows the tensors alive (otherwise freed memory stays resident)."""
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", type=int, default=6, help="sampling calls per forward (decoder stages)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--impl", choices=["folded", "triton"], default="folded",
                        help="the sampler compared with the reference (triton: CUDA, or TRITON_INTERPRET=1)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        _reexec_with_returning_malloc()
    dtype = getattr(torch, args.dtype)
    probe = PyramidSampler([torch.zeros(1, 4, 1, 2, 2, device=device, dtype=dtype)], (4,), 1, impl=args.impl)
    if probe.impl != args.impl:
        parser.error(f"--impl {args.impl} cannot run on {device} with {args.dtype} (it would run {probe.impl})")
    mib = 2.0 ** 20
    print(f"device {device}, {args.dtype}, threads {torch.get_num_threads()}, pid {os.getpid()}, "
          f"repeats {args.repeats}, stages {args.stages}, Q=100 D=256 G=4 P=32, canvas {CANVAS[0]}x{CANVAS[1]}")
    header = (f"{'B':>2} {'T':>2} | {'ref ms (min)':>16} {'fold ms (min)':>16} {'time':>6} | "
              f"{'ref saved':>9} {'fold saved':>10} {'ratio':>6} | {'ref peak':>8} {'fold peak':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for frames in args.frames:
        for batch in args.batch_sizes:
            feats, pts, groups = make_inputs(batch, frames, device, dtype)
            ref = measure("reference", feats, pts, groups, device, args.repeats, args.stages)
            fold = measure(args.impl, feats, pts, groups, device, args.repeats, args.stages)
            print(f"{batch:>2} {frames:>2} | "
                  f"{ref['median'] * 1e3:>7.1f} ({ref['min'] * 1e3:>6.1f}) "
                  f"{fold['median'] * 1e3:>7.1f} ({fold['min'] * 1e3:>6.1f}) "
                  f"{fold['median'] / ref['median']:>6.2f} | "
                  f"{ref['saved'] / mib:>7.0f}Mi {fold['saved'] / mib:>8.0f}Mi "
                  f"{fold['saved'] / max(ref['saved'], 1):>6.3f} | "
                  f"{ref['peak'] / mib:>6.0f}Mi {fold['peak'] / mib:>7.0f}Mi {fold['peak'] / ref['peak']:>6.2f}",
                  flush=True)
            del feats, pts


if __name__ == "__main__":
    main()
