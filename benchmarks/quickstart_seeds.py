"""Frame-mAP of the quickstart over several seeds: one full training + evaluation per seed, one after another.

    python benchmarks/quickstart_seeds.py --seeds 1 2 3 [--data data/synthetic] [--out data/output/seeds]
    python benchmarks/quickstart_seeds.py --seeds 1 2 3 --summary-only   # read finished runs

Each seed trains ``config_files/synthetic/tiny-slowonly.yaml`` into ``OUT/seed<S>`` (a run that
was interrupted resumes from its last checkpoint) and the final evaluation's frame-mAP is read
from ``OUT/seed<S>/inference/<dataset>/frame_map.json``. Printed: one line per seed (frame-mAP,
wall time of this invocation), then mean and sample standard deviation. The config pins
``NUM_THREADS`` and the loader seeds every sample, so a seed gives the same number on any
machine with the same torch build, whatever its core count.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "config_files/synthetic/tiny-slowonly.yaml"


def frame_map(out_dir):
    """The frame-mAP of the final evaluation of a finished run in ``out_dir``, or None."""
    if not (out_dir / "model_final.pth").is_file():
        return None
    found = sorted(out_dir.glob("inference/*/frame_map.json"))
    return json.loads(found[0].read_text())["mAP"] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--data", default="data/synthetic", help="synthetic dataset (made with --size 96 128 if absent)")
    parser.add_argument("--out", default="data/output/quickstart-seeds", help="one OUT/seed<S> folder per seed")
    parser.add_argument("--summary-only", action="store_true", help="train nothing; summarize finished runs")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not args.summary_only and not (data / "synthetic_dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "stmixer.data.synthetic", "--out", str(data), "--size", "96", "128"],
                       cwd=ROOT, check=True)
    results = []
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        start = time.perf_counter()
        if not args.summary_only and frame_map(run_dir) is None:
            subprocess.run([sys.executable, "train_net.py", "--config-file", CONFIG, "--seed", str(seed),
                            "DATA.PATH_TO_DATA_DIR", str(data.resolve()), "OUTPUT_DIR", str(run_dir.resolve())],
                           cwd=ROOT, check=True)
        value = frame_map(run_dir)
        seconds = time.perf_counter() - start
        timing = "" if args.summary_only else f" ({seconds:.0f} s)"
        print(f"seed {seed}: frame-mAP {'unfinished' if value is None else f'{value:.4f}'}{timing}", flush=True)
        if value is not None:
            results.append(value)
    if results:
        spread = statistics.stdev(results) if len(results) > 1 else 0.0
        print(f"frame-mAP over {len(results)} seeds: {statistics.mean(results):.4f} ± {spread:.4f} (sample std); "
              f"min {min(results):.4f}, max {max(results):.4f}")
    return 0 if len(results) == len(args.seeds) else 1


if __name__ == "__main__":
    sys.exit(main())
