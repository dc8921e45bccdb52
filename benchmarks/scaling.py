"""Multi-GPU scaling of ``train_net.py`` on one host: clips/s on 1 and N GPUs, and the efficiency.

    python benchmarks/scaling.py --config-file config_files/PySlowfast-R50-K400-8x8.yaml --gpus 1,2,4 \
        --variant "sync-kernels=MODEL.CUDA_GRAPH.SYNC_BN True" SOLVER.AMP bf16
    python benchmarks/scaling.py --config-file config_files/PySlowfast-R50-K400-8x8.yaml --gpus 1 \
        --predict 2,4,8 SOLVER.AMP bf16                                  # one GPU: the step-time spread
    python benchmarks/scaling.py --config-file config_files/synthetic/tiny-slowonly.yaml --device cpu \
        --gpus 1,2 --iters 6 --skip-first 2 --clips-per-gpu 2 --synthetic-size 64 96

Each run is ``train_net.py`` as a user starts it: ``python train_net.py`` on one GPU,
``torchrun --standalone --nproc_per_node N train_net.py`` on N (``CUDA_VISIBLE_DEVICES`` picks the
first N GPUs), the same per-GPU batch (``--clips-per-gpu``, so ``SOLVER.VIDEOS_PER_BATCH`` is N times
it), ``--iters`` iterations from random weights (``MODEL.WEIGHT ''``), no validation, on
``--data`` or on a synthetic AVA-layout dataset written first (``--synthetic-size``). Time per
iteration is the median over the iterations after ``--skip-first`` (captures, compilations and
cuDNN's search fall in those) of what ``metrics.json`` records (rank 0's wall-clock per step;
DistributedDataParallel makes every rank wait for the slowest in each step).

Printed per variant and GPU count (variant ``defaults``: the config and the common ``KEY VALUE``
overrides; each ``--variant "NAME=KEY VALUE ..."`` adds these keys on top): s/iter, clips/s, the
scaling efficiency (clips/s on N GPUs / N times clips/s on one, of the same variant) against the
95 % target, and the ratio to ``defaults`` at the same GPU count.

``--predict N,...`` adds, from each variant's one-GPU step times, the efficiency that waiting for the
slowest of N processes alone would leave: the mean step time over the expected maximum of N
steps drawn from the measured ones (no communication, no host contention), measurable on one
GPU. The step times are the GPU's (``gpu_time`` in ``metrics.json``: CUDA events at the start of
each iteration, so a host delay that the GPU's queued work hides counts nowhere), else the
wall-clock ones. Twice: with the steps drawn independently (as if every process drifted on its own), and
with the step-to-step jitter alone (each step less the mean of the 9 around it: a slow drift
that all processes share costs no waiting). Steps over 5 times the median (a capture of a new
input shape) are left out and counted. Where the steps had several padded input shapes (multi-scale
training; ``input_height`` / ``input_width`` in ``metrics.json``), a third figure: each step's shape
shared by all processes, as ``DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES True`` gives for frames of one
size, so a process waits only for the jitter among steps of its own shape.

Runs' output goes to ``--out`` (``<variant>-<N>gpu/``, emptied first: ``stdout.txt``, ``log.txt``,
``metrics.json``, ``exit_status.txt``); the checkpoints they write at the end are deleted. ``--reuse``
keeps a run that finished there before with the same command line (its ``exit_status.txt`` says 0):
repeated after a call was cut short, the same command runs only what is missing (and keeps the synthetic
dataset it wrote there). A run that fails is
reported in one line naming its output file; the others still run and are printed, and the exit
status is 1.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stmixer.engine.events import MetricsFile

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95  # scaling efficiency asked for at 4 GPUs (issue #19)
OUTLIER = 5.0  # steps over this many times the median are one-off (a capture) for --predict
DETREND_WINDOW = 9  # steps of the running mean that --predict's detrended bound takes as the drift


def parse_variant(text):
    """``"NAME=KEY VALUE ..."`` -> (name, [KEY, VALUE, ...]); ``"KEY VALUE ..."`` alone is named by its pairs."""
    name, sep, rest = text.partition("=")
    if not sep or " " in name.strip() or not name.strip():
        name, rest = "", text
    opts = rest.split()
    if not opts or len(opts) % 2:
        raise ValueError(f"--variant {text!r}: expected KEY VALUE pairs (after NAME=)")
    return name.strip() or "+".join(f"{k}={v}" for k, v in zip(opts[::2], opts[1::2])), opts


def parse_counts(text, option):
    """``"1,2,4"`` -> [1, 2, 4] (positive, unique, sorted)."""
    try:
        counts = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ValueError(f"{option} {text!r}: expected a comma list of positive integers")
    return counts


def expected_max(times, n):
    """Expected maximum of ``n`` independent draws from the empirical distribution of ``times``."""
    ordered = sorted(times)
    m = len(ordered)
    return sum(t * ((i / m) ** n - ((i - 1) / m) ** n) for i, t in enumerate(ordered, start=1))


def straggler_bound(times, n):
    """(efficiency left by waiting for the slowest of ``n`` processes, number of one-off steps left out)."""
    median = statistics.median(times)
    kept = [t for t in times if t <= OUTLIER * median]
    return statistics.fmean(kept) / expected_max(kept, n), len(times) - len(kept)


def detrended(times, window=DETREND_WINDOW):
    """``times`` less their slow drift: each step's difference from the mean of the ``window`` steps centred
    on it, plus the overall mean. A drift that every process shares (the host's load, the clocks) costs no
    waiting; what is left is the step-to-step jitter (the batch's content, the host's per-step work)."""
    half = window // 2
    mean = statistics.fmean(times)
    return [mean + t - statistics.fmean(times[max(0, i - half):i + half + 1]) for i, t in enumerate(times)]


def shared_shape_bound(times, shapes, n):
    """Efficiency left by waiting for the slowest of ``n`` processes whose inputs share each step's shape
    (``DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES``): a step's shape is drawn as in the one-GPU run, and each
    process's time from that shape's steps. ``shapes``: one hashable per entry of ``times``."""
    groups = {}
    for t, shape in zip(times, shapes):
        groups.setdefault(shape, []).append(t)
    waited = sum(len(group) / len(times) * expected_max(group, n) for group in groups.values())
    return statistics.fmean(times) / waited


def step_times(metrics_file, skip_first, key="time"):
    """Per-iteration seconds (``key``: "time", the wall-clock, or "gpu_time") after iteration ``skip_first``
    from a run's ``metrics.json``."""
    return [t for t, _ in timed_shapes(metrics_file, skip_first, key)]


def timed_shapes(metrics_file, skip_first, key="time"):
    """``[(seconds, (height, width) or None)]`` of ``step_times``, each with the padded input shape of its
    iteration (``input_height`` / ``input_width``; ``gpu_time`` is the iteration before its record's)."""
    records = MetricsFile(os.path.dirname(metrics_file)).records()
    shapes = {r["iteration"]: (r["input_height"], r["input_width"]) for r in records if "input_height" in r}
    late = 1 if key == "gpu_time" else 0
    return [(float(r[key]), shapes.get(r["iteration"] - late)) for r in records
            if key in r and r["iteration"] > skip_first]


def summarize(runs, clips_per_gpu):
    """Rows of the table from ``runs`` [{variant, gpus, times | error}], in order."""
    first_variant = runs[0]["variant"] if runs else None
    rows = []
    for run in runs:
        row = {"variant": run["variant"], "gpus": run["gpus"]}
        if run.get("error") or not run.get("times"):
            row["error"] = run.get("error") or "no timed iterations"
            rows.append(row)
            continue
        s_iter = statistics.median(run["times"])
        row.update(s_per_iter=s_iter, clips_per_s=clips_per_gpu * run["gpus"] / s_iter, iterations=len(run["times"]))
        if run["gpus"] == 1:  # for --predict: the GPU's step times where every timed iteration has one
            gpu = run.get("gpu_times") or []
            use_gpu = len(gpu) == len(run["times"])
            row["step_times"], row["step_clock"] = (gpu, "GPU") if use_gpu else (run["times"], "wall-clock")
            shapes = run.get("gpu_shapes" if use_gpu else "shapes") or []
            if len(shapes) == len(row["step_times"]) and None not in shapes:
                row["step_shapes"] = [tuple(shape) for shape in shapes]
        rows.append(row)
    for row in rows:
        if "error" in row:
            continue
        one = next((r for r in rows if r["variant"] == row["variant"] and r["gpus"] == 1 and "error" not in r), None)
        if one is not None:
            row["efficiency"] = row["clips_per_s"] / (row["gpus"] * one["clips_per_s"])
        base = next((r for r in rows if r["variant"] == first_variant and r["gpus"] == row["gpus"]
                     and "error" not in r), None)
        if base is not None and row["variant"] != first_variant:
            row["vs_first"] = row["clips_per_s"] / base["clips_per_s"]
    return rows


def table(rows, first_variant):
    """The markdown table of ``rows``."""
    lines = [f"| variant | GPUs | s/iter | clips/s | scaling efficiency (target >= {TARGET:.0%}) | "
             f"clips/s / {first_variant} |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['gpus']} | {row['error']} | - | - | - |")
            continue
        eff = row.get("efficiency")
        eff_text = "-" if eff is None else f"{eff:.1%}" + ("" if row["gpus"] == 1 else
                                                            (" (met)" if eff >= TARGET else " (missed)"))
        vs = row.get("vs_first")
        lines.append(f"| {row['variant']} | {row['gpus']} | {row['s_per_iter']:.4f} | {row['clips_per_s']:.2f} | "
                     f"{eff_text} | {'-' if vs is None else f'{vs:.2f}x'} |")
    return "\n".join(lines)


def predictions(rows, counts):
    """Lines giving, per variant, the straggler bound at each of ``counts`` from its one-GPU step times."""
    lines = []
    for row in rows:
        times = row.get("step_times")
        if not counts or row["gpus"] != 1 or not times or len(times) < 2:
            continue
        median = statistics.median(times)
        kept = [t for t in times if t <= OUTLIER * median]
        left_out = len(times) - len(kept)
        jitter = detrended(kept)
        spread = (f"{min(kept):.4f}-{max(kept):.4f} s, mean {statistics.fmean(kept):.4f} s, step-to-step jitter "
                  f"{statistics.pstdev(jitter) * 1000:.1f} ms (sd)")
        lines.append(f"{row['variant']}: one-GPU step times ({row.get('step_clock', 'wall-clock')}) {spread} over {len(kept)} steps"
                     + (f" ({left_out} one-off step(s) over {OUTLIER:g}x the median left out)" if left_out else "")
                     + "; waiting for the slowest process alone leaves "
                     + ", ".join(f"{straggler_bound(kept, n)[0]:.1%} at {n} GPUs" for n in counts)
                     + " (steps drawn independently), "
                     + ", ".join(f"{straggler_bound(jitter, n)[0]:.1%}" for n in counts)
                     + f" (the jitter alone: drift over {DETREND_WINDOW} steps shared by all processes)")
        shapes = row.get("step_shapes")
        kept_shapes = [shape for t, shape in zip(times, shapes) if t <= OUTLIER * median] if shapes else []
        if len(set(kept_shapes)) > 1:
            counts_text = ", ".join(f"{h:g}x{w:g} {kept_shapes.count((h, w))}" for h, w in sorted(set(kept_shapes)))
            lines.append(f"{row['variant']}: {len(set(kept_shapes))} padded input shapes ({counts_text} steps); "
                         "with each step's shape shared by all processes (DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES "
                         "True, frames of one size): "
                         + ", ".join(f"{shared_shape_bound(kept, kept_shapes, n):.1%} at {n} GPUs" for n in counts))
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="the config train_net.py trains")
    parser.add_argument("--gpus", default="1,2,4", help="comma list of GPU (process) counts; 1 is always run")
    parser.add_argument("--clips-per-gpu", type=int, default=8, help="clips per GPU per step")
    parser.add_argument("--iters", type=int, default=100, help="training iterations per run")
    parser.add_argument("--skip-first", type=int, default=20,
                        help="iterations left out of the timing (captures, compilation, cuDNN's search)")
    parser.add_argument("--data", default=None, help="DATA.PATH_TO_DATA_DIR (default: a synthetic dataset, written)")
    parser.add_argument("--synthetic-size", type=int, nargs=2, default=[256, 352], metavar=("H", "W"),
                        help="frame size of the synthetic dataset written when --data is not given")
    parser.add_argument("--synthetic-videos", type=int, default=48, help="videos of that dataset")
    parser.add_argument("--variant", action="append", default=[], metavar='"NAME=KEY VALUE ..."',
                        help="a variant besides 'defaults': config overrides on top of the common ones (repeatable)")
    parser.add_argument("--predict", default=None, metavar="N,...",
                        help="GPU counts for the straggler bound from the one-GPU step times")
    parser.add_argument("--device", default=None, choices=["cuda", "cpu"],
                        help="default: cuda where available (cpu: N processes on gloo)")
    parser.add_argument("--workers", type=int, default=6, help="DATALOADER.NUM_WORKERS per process")
    parser.add_argument("--out", default=None, help="folder of the runs' output (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs in --out that finished with the same command line instead of rerunning")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides of every run")
    args = parser.parse_args(argv)
    try:
        args.gpus = sorted({1, *parse_counts(args.gpus, "--gpus")})
        args.predict = parse_counts(args.predict, "--predict") if args.predict else []
        args.variants = [("defaults", []), *(parse_variant(v) for v in args.variant)]
    except ValueError as e:
        parser.error(str(e))
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs: {args.opts}")
    if len({name for name, _ in args.variants}) != len(args.variants):
        parser.error("two variants share a name ('defaults' is the run without --variant keys)")
    if args.skip_first >= args.iters:
        parser.error(f"--skip-first {args.skip_first} leaves none of the --iters {args.iters} iterations")
    return args


def _environment(device, gpus):
    """The run's environment: no inherited launcher variables; on CUDA, the first ``gpus`` visible GPUs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if device == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:gpus])
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def finished_before(run_dir, command_line):
    """Whether ``run_dir`` holds a run of ``command_line`` that exited with status 0 (``--reuse``)."""
    try:
        first = (run_dir / "stdout.txt").read_text().split("\n", 1)[0]
        status = (run_dir / "exit_status.txt").read_text().strip()
    except OSError:
        return False
    return first == command_line and status == "0" and (run_dir / "metrics.json").is_file()


def run_one(args, device, data, name, opts, gpus, out_dir):
    """One train_net.py run; returns {variant, gpus, times[, reused]} or {variant, gpus, error}."""
    run_dir = out_dir / f"{name}-{gpus}gpu"
    launcher = [sys.executable] if gpus == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(gpus)]
    command = [*launcher, str(REPO_ROOT / "train_net.py"), "--config-file", args.config_file, "--skip-val",
               "--skip-final-test", "DATA.PATH_TO_DATA_DIR", str(data), "OUTPUT_DIR", str(run_dir),
               "MODEL.WEIGHT", "", "MODEL.DEVICE", device, "SOLVER.VIDEOS_PER_BATCH", str(args.clips_per_gpu * gpus),
               "SOLVER.ITER_PER_EPOCH", str(args.iters), "SOLVER.MAX_EPOCH", "1", "SOLVER.LOG_PERIOD", "1",
               "DATALOADER.NUM_WORKERS", str(args.workers), *args.opts, *opts]
    stdout = run_dir / "stdout.txt"
    result = {"variant": name, "gpus": gpus}
    if args.reuse and finished_before(run_dir, " ".join(command)):
        code, result["reused"] = 0, True
    else:
        if run_dir.exists():  # an earlier run's checkpoint would be resumed (and its metrics trimmed): start afresh
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        with stdout.open("w") as f:
            f.write(" ".join(command) + "\n\n")
            f.flush()
            code = subprocess.call(command, cwd=REPO_ROOT, env=_environment(device, gpus), stdout=f,
                                   stderr=subprocess.STDOUT)
        for checkpoint in run_dir.glob("*.pth"):
            checkpoint.unlink()
        (run_dir / "exit_status.txt").write_text(f"{code}\n")
    metrics = run_dir / "metrics.json"
    if code != 0:
        result["error"] = f"failed (exit status {code}): see {stdout}"
    elif not metrics.is_file():
        result["error"] = f"wrote no {metrics}: see {stdout}"
    else:
        for times, shapes, key in (("times", "shapes", "time"), ("gpu_times", "gpu_shapes", "gpu_time")):
            pairs = timed_shapes(metrics, args.skip_first, key)
            result[times], result[shapes] = [t for t, _ in pairs], [shape for _, shape in pairs]
        if not result["times"]:
            result["error"] = f"no iteration after --skip-first {args.skip_first} in {metrics}"
    return result


def write_synthetic(args, out_dir):
    """A synthetic AVA-layout dataset for the runs (``--synthetic-size``, ``--synthetic-videos``)."""
    data = out_dir / "data"
    h, w = args.synthetic_size
    if args.reuse and (data / "synthetic_dataset.json").is_file():  # written whole by an earlier call
        print(f"using the synthetic dataset written before in {data} (--reuse)", flush=True)
        return data
    command = [sys.executable, "-m", "stmixer.data.synthetic", "--out", str(data), "--videos",
               str(args.synthetic_videos), "--size", str(h), str(w), "--workers", str(max(1, os.cpu_count() // 2))]
    print(f"writing a synthetic dataset ({args.synthetic_videos} videos, {h}x{w}) to {data}", flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT, env=_environment("cpu", 1), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: the synthetic dataset could not be written to {data}: "
                         + (result.stderr.strip().splitlines() or ["(no output)"])[-1])
    return data


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch  # after the argument check: --help answers without it

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        available = torch.cuda.device_count()
        if available < args.gpus[-1]:
            raise SystemExit(f"error: --gpus {','.join(map(str, args.gpus))} needs {args.gpus[-1]} GPUs; "
                             f"{available} visible")
    if not Path(args.config_file).is_file() and not (REPO_ROOT / args.config_file).is_file():
        raise SystemExit(f"error: --config-file {args.config_file}: no such file")
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stmixer-scaling-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else write_synthetic(args, out_dir)
    plan = [(name, opts, gpus) for name, opts in args.variants for gpus in args.gpus]
    runs, spent, ran = [], 0.0, 0
    for k, (name, opts, gpus) in enumerate(plan, start=1):
        t0 = time.perf_counter()
        print(f"[{k}/{len(plan)}] {name}, {gpus} {'GPU(s)' if device == 'cuda' else 'process(es)'} ...", end=" ",
              flush=True)
        run = run_one(args, device, data, name, opts, gpus, out_dir)
        runs.append(run)
        took = time.perf_counter() - t0
        if not run.get("reused"):
            spent, ran = spent + took, ran + 1
        eta = spent / max(ran, 1) * (len(plan) - k)
        done = "kept from an earlier call (--reuse)" if run.get("reused") else "done"
        print((done if "error" not in run else run["error"]) + f" in {took:.0f} s; about {eta:.0f} s left",
              flush=True)
    rows = summarize(runs, args.clips_per_gpu)
    print(f"\n{args.config_file}, {args.clips_per_gpu} clips per GPU, {args.iters} iterations (median s/iter after "
          f"iteration {args.skip_first}), {device}" + (f", {torch.cuda.get_device_name(0)}" if device == "cuda" else "")
          + (f"; common keys: {' '.join(args.opts)}" if args.opts else ""))
    for name, opts in args.variants:
        if opts:
            print(f"variant {name}: {' '.join(opts)}")
    print(table(rows, args.variants[0][0]))
    for line in predictions(rows, args.predict):
        print(line)
    print(f"runs' output: {out_dir}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
