"""Benchmark: AVA frame-mAP on an AVA-val-sized synthetic case, ours vs the official evaluator.

Generates (deterministic seed) 64 videos x 897 keyframes, ~90k ground-truth person
boxes and ~165k detected boxes x 80 classes (~13M detection rows, official STMixer
CSV format), then times ``python -m stmixer.evaluation.ava`` for both protocols in
child processes (wall clock, CPU time and peak resident memory of the child, from
``os.wait4``'s rusage ``ru_maxrss``).

With ``--official-dir DIR`` (a checkout of github.com/activitynet/ActivityNet at
the 2018 or the 2019 revision of ``Evaluation/get_ava_performance.py``) the
official evaluator runs on the same files, and the script prints both times, the
ratio, and checks that the mAPs agree (2019 revision: ``activitynet`` protocol;
2018 revision, identical to the copy in the official STMixer: ``stmixer``).

It also times the engine path: ``AVAEvaluator.process`` on the model outputs (8
keyframes a call) and ``evaluate()`` (CSV written, metric computed in memory).

    python benchmarks/ava_eval.py [--workdir DIR] [--repeat 3] [--videos 64] [--official-dir ActivityNet]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from stmixer.evaluation.ava_csv import AVATable, round5, write_detections_csv  # noqa: E402

NUM_VIDEOS = 64
KEYFRAMES = range(902, 1799)  # 897 per video
NUM_ACTIONS = 80
NUM_EVALUATED = 60
PERSONS_PER_KEYFRAME = 1.57
FALSE_BOXES_PER_KEYFRAME = 1.38
NUM_EXCLUDED = 200


def _boxes(rng, n):
    """Random normalized x1, y1, x2, y2 person-like boxes ``[n, 4]``."""
    w = rng.uniform(0.08, 0.5, n)
    h = np.clip(w * rng.uniform(1.2, 3.0, n), 0.1, 0.98)
    x1 = rng.uniform(0, 1 - w)
    y1 = rng.uniform(0, 1 - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def generate_case(folder, seed=0, num_videos=NUM_VIDEOS):
    """Write labelmap.pbtxt, groundtruth.csv, exclusions.csv and detections.csv into ``folder``.

    Returns:
        dict of counts (keyframes, gt boxes, gt rows, detected boxes, detection rows).
    """
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    videos = ["".join(rng.choice(alphabet, 11)) for _ in range(num_videos)]
    evaluated = np.sort(rng.choice(np.arange(1, NUM_ACTIONS + 1), NUM_EVALUATED, replace=False))
    with open(os.path.join(folder, "labelmap.pbtxt"), "w") as f:
        for action in evaluated.tolist():
            f.write(f'label {{\n  name: "action {action}"\n  label_id: {action}\n  label_type: PERSON_MOVEMENT\n}}\n')

    frequency = 1.0 / np.arange(1, NUM_ACTIONS + 1) ** 1.1  # long-tailed classes, as in AVA
    frequency = rng.permutation(frequency / frequency.sum())
    keyframes = [(v, t) for v in range(num_videos) for t in KEYFRAMES]
    persons = rng.poisson(PERSONS_PER_KEYFRAME, len(keyframes))
    gt_lines, det_video, det_time, det_boxes, det_logits = [], [], [], [], []
    num_gt_boxes = 0
    for (v, t), n in zip(keyframes, persons.tolist()):
        gt_boxes = _boxes(rng, n)
        labels = [rng.choice(NUM_ACTIONS, 1 + rng.poisson(1.2), replace=False, p=frequency) + 1 for _ in range(n)]
        for person, (box, actions) in enumerate(zip(gt_boxes, labels)):
            text = ",".join(format(c, ".3f") for c in box)
            gt_lines += [f"{videos[v]},{t:04d},{text},{a},{person}\n" for a in sorted(actions.tolist())]
        num_gt_boxes += n
        found = rng.random(n) < 0.95
        jitter = rng.normal(0, 0.025, (n, 4))
        boxes = np.concatenate([np.clip(gt_boxes + jitter, 0, 1)[found], _boxes(rng, rng.poisson(FALSE_BOXES_PER_KEYFRAME))])
        logits = rng.normal(-4.0, 1.6, (len(boxes), NUM_ACTIONS))
        for row, person in enumerate(np.flatnonzero(found).tolist()):
            logits[row, labels[person] - 1] = rng.normal(0.5, 1.8, len(labels[person]))
        det_video.append(np.full(len(boxes), v, np.int32))
        det_time.append(np.full(len(boxes), t, np.int32))
        det_boxes.append(boxes)
        det_logits.append(logits)
    with open(os.path.join(folder, "groundtruth.csv"), "w") as f:
        f.writelines(gt_lines)
    excluded = rng.choice(len(keyframes), NUM_EXCLUDED * num_videos // NUM_VIDEOS, replace=False)
    with open(os.path.join(folder, "exclusions.csv"), "w") as f:
        f.writelines(f"{videos[keyframes[k][0]]},{keyframes[k][1]:04d}\n" for k in sorted(excluded.tolist()))

    scores = (1 / (1 + np.exp(-np.concatenate(det_logits)))).astype(np.float32)
    box_index, column = np.nonzero(scores >= 0)
    detections = AVATable(
        videos=videos,
        box_video=np.concatenate(det_video),
        box_timestamp=np.concatenate(det_time),
        boxes=round5(np.concatenate(det_boxes).astype(np.float32)),
        box_index=box_index.astype(np.int32),
        action=(column + 1).astype(np.int32),
        score=round5(scores[box_index, column]),
    )
    with open(os.path.join(folder, "detections.csv"), "wb") as f:
        write_detections_csv(f, detections)
    np.savez(
        os.path.join(folder, "model_outputs.npz"),
        videos=np.array(videos),
        box_video=detections.box_video,
        box_timestamp=detections.box_timestamp,
        boxes=np.concatenate(det_boxes).astype(np.float32),
        scores=scores,
    )
    return {
        "keyframes": len(keyframes),
        "gt_boxes": num_gt_boxes,
        "gt_rows": len(gt_lines),
        "detected_boxes": len(detections.boxes),
        "detection_rows": len(box_index),
    }


def run_measured(cmd, cwd=None):
    """Run a child process; returns (exit status, output, wall s, CPU s, peak RSS MiB)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return proc.returncode, text, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run_ours(folder, protocol):
    """Time the command line on the case; returns a dict with mAP and the measurements."""
    out_json = os.path.join(folder, f"ours_{protocol}.json")
    cmd = [
        sys.executable, "-m", "stmixer.evaluation.ava",
        "--groundtruth", os.path.join(folder, "groundtruth.csv"),
        "--detections", os.path.join(folder, "detections.csv"),
        "--labelmap", os.path.join(folder, "labelmap.pbtxt"),
        "--exclusions", os.path.join(folder, "exclusions.csv"),
        "--json", out_json, "--protocol", protocol,
    ]
    status, text, wall, cpu, rss = run_measured(cmd, cwd=REPO_ROOT)
    if status != 0:
        raise RuntimeError(f"our evaluator failed:\n{text}")
    with open(out_json) as f:
        return {"mAP": json.load(f)["mAP"], "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}


def engine_child(folder, protocol):
    """(Child process) time AVAEvaluator.process over the model outputs, 8 keyframes a call, then evaluate()."""
    import resource

    from stmixer.evaluation import AVAEvaluator
    from stmixer.utils import distributed  # noqa: F401  (imports torch, as the engine has)

    outputs = np.load(os.path.join(folder, "model_outputs.npz"))
    videos = outputs["videos"].tolist()
    box_video, box_timestamp = outputs["box_video"], outputs["box_timestamp"]
    boxes, scores = outputs["boxes"], outputs["scores"]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    evaluator = AVAEvaluator(
        os.path.join(folder, "groundtruth.csv"), os.path.join(folder, "labelmap.pbtxt"),
        os.path.join(folder, "exclusions.csv"), protocol, os.path.join(folder, f"engine_{protocol}"),
    )
    change = np.flatnonzero(np.diff(box_video) | np.diff(box_timestamp)) + 1
    bounds = np.concatenate(([0], change, [len(box_video)]))
    for first in range(0, len(bounds) - 1, 8):
        frames = range(first, min(first + 8, len(bounds) - 1))
        spans = [slice(bounds[k], bounds[k + 1]) for k in frames]
        evaluator.process(
            [videos[box_video[s.start]] for s in spans], [int(box_timestamp[s.start]) for s in spans],
            [boxes[s] for s in spans], [scores[s] for s in spans],
            indices=list(frames),  # dataset order = the order of detections.csv
        )
    processed = time.perf_counter()
    metrics = evaluator.evaluate()
    done = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mAP": metrics["mAP"], "process_s": processed - start, "evaluate_s": done - processed,
                      "baseline_rss_mib": baseline, "peak_rss_mib": peak}))


def run_engine(folder, protocol):
    """Time the engine path (process + evaluate, CSV written) in a child process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--engine-child", folder, "--protocol", protocol]
    status, text, wall, cpu, rss = run_measured(cmd, cwd=REPO_ROOT)
    if status != 0:
        raise RuntimeError(f"the engine path failed:\n{text}")
    return json.loads(text.strip().splitlines()[-1])


_COMPAT = (
    "import numpy as np, runpy, sys\n"
    "np.float = float; np.NAN = np.nan  # aliases the official code uses, removed from numpy 2\n"
    "sys.path[:0] = ['.', 'ava']\n"
    "sys.argv = ['get_ava_performance.py'] + sys.argv[1:]\n"
    "runpy.run_path('get_ava_performance.py', run_name='__main__')\n"
)


def run_official(official_dir, folder):
    """Run the official ActivityNet evaluator from a checkout; returns (protocol, result dict)."""
    evaluation = os.path.join(official_dir, "Evaluation")
    with open(os.path.join(evaluation, "get_ava_performance.py")) as f:
        protocol = "activitynet" if "capacity" in f.read() else "stmixer"
    cmd = [
        sys.executable, "-c", _COMPAT,
        "-l", os.path.join(folder, "labelmap.pbtxt"),
        "-g", os.path.join(folder, "groundtruth.csv"),
        "-d", os.path.join(folder, "detections.csv"),
        "-e", os.path.join(folder, "exclusions.csv"),
    ]
    status, text, wall, cpu, rss = run_measured(cmd, cwd=evaluation)
    match = re.search(r"mAP@0\.5IOU'\s*:\s*(?:np\.float64\()?([-+0-9.eE]+|nan)", text)
    if status != 0 or match is None:
        raise RuntimeError(f"the official evaluator failed (status {status}):\n{text[-3000:]}")
    return protocol, {"mAP": float(match.group(1)), "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="generate (or reuse) the case here instead of a temporary folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=int, default=NUM_VIDEOS, help="number of videos (64: AVA-val size)")
    parser.add_argument("--repeat", type=int, default=1, help="time our evaluator this many times per protocol")
    parser.add_argument("--official-dir", help="an ActivityNet checkout (2018 or 2019 revision) to compare with")
    parser.add_argument("--engine-child", help=argparse.SUPPRESS)
    parser.add_argument("--generate-child", help=argparse.SUPPRESS)
    parser.add_argument("--protocol", default="stmixer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_child:
        engine_child(args.engine_child, args.protocol)
        return 0
    if args.generate_child:
        print(generate_case(args.generate_child, args.seed, args.videos))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or tmp
        os.makedirs(folder, exist_ok=True)
        if not os.path.exists(os.path.join(folder, "model_outputs.npz")):
            # In a child: a forked child's ru_maxrss starts from its parent's, so the parent stays small.
            cmd = [sys.executable, os.path.abspath(__file__), "--generate-child", folder,
                   "--seed", str(args.seed), "--videos", str(args.videos)]
            status, text, wall, _, _ = run_measured(cmd, cwd=REPO_ROOT)
            if status != 0:
                raise RuntimeError(f"generating the case failed:\n{text}")
            print(f"generated case in {wall:.1f} s: {text.strip()}")
        size = os.path.getsize(os.path.join(folder, "detections.csv")) / 2**20
        print(f"case: {folder} (detections.csv {size:.0f} MiB); load average {os.getloadavg()[0]:.2f}; "
              f"{os.cpu_count()} CPUs")
        ours = {}
        for protocol in ("stmixer", "activitynet"):
            runs = [run_ours(folder, protocol) for _ in range(args.repeat)]
            walls = [r["wall_s"] for r in runs]
            ours[protocol] = min(runs, key=lambda r: r["wall_s"])
            print(f"ours  {protocol:<11}  mAP {ours[protocol]['mAP']:.10f}  wall {min(walls):6.1f} s "
                  f"(runs: {', '.join(f'{w:.1f}' for w in walls)})  CPU {ours[protocol]['cpu_s']:6.1f} s  "
                  f"peak RSS {max(r['peak_rss_mib'] for r in runs):6.0f} MiB")
            engine = run_engine(folder, protocol)
            print(f"      engine path: AVAEvaluator.process {engine['process_s']:.1f} s + evaluate {engine['evaluate_s']:.1f} s "
                  f"(CSV written), peak RSS {engine['peak_rss_mib'] - engine['baseline_rss_mib']:.0f} MiB above the "
                  f"{engine['baseline_rss_mib']:.0f} MiB of torch + model outputs; "
                  f"mAP {'equal' if engine['mAP'] == ours[protocol]['mAP'] else 'DIFFERENT'} to the command line's")
        if args.official_dir:
            protocol, official = run_official(args.official_dir, folder)
            mine = ours[protocol]
            diff = abs(official["mAP"] - mine["mAP"])
            print(f"official ({protocol} protocol)  mAP {official['mAP']:.10f}  wall {official['wall_s']:6.1f} s  "
                  f"CPU {official['cpu_s']:6.1f} s  peak RSS {official['peak_rss_mib']:6.0f} MiB")
            print(f"speed-up: {official['wall_s'] / mine['wall_s']:.1f}x wall, {official['cpu_s'] / mine['cpu_s']:.1f}x CPU; "
                  f"memory {official['peak_rss_mib'] / mine['peak_rss_mib']:.1f}x less; |mAP difference| = {diff:.2e}")
            if diff > 1e-6:
                print("MISMATCH: the mAPs differ by more than 1e-6")
                return 1
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
