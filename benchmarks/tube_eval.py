"""Benchmark: frame-mAP + video-mAP at UCF101-24 test scale, ours vs the ACT evaluation (MOC-Detector).

    python benchmarks/tube_eval.py [--videos 910] [--reference /path/to/MOC-Detector [--reference-videos N]]

Builds a synthetic UCF101-24-test-sized case (910 videos, ~180 frames each on average, 24 classes,
1-3 ground-truth tubes per video) with detector-like output: per frame, candidate boxes around each
actor (jittered, with near-duplicates) and a few background boxes, each with a score per class, of
which the 10 best (box, class) pairs per frame are kept. It times ``stmixer.evaluation.tubes`` and,
with ``--reference``, the reference on the same detections in the same run (its linking
``BuildTubes``, ``frameAP``, and ``videoAP`` at 0.2, 0.5, 0.75 and the ten thresholds of 0.5:0.95, as
its ``videoAP_all`` task does), prints both and the ratio, and checks that the numbers agree (1e-6).
``--reference-videos N`` runs the reference on the first N videos only (ours is then timed on the
same subset too, and the full-scale reference time is extrapolated linearly, said so in the output).
Timings are wall-clock and CPU seconds of this one process (set OMP_NUM_THREADS=1);
writing the reference's per-frame input files is timed separately and not counted.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

from stmixer.evaluation.tubes import Detections, evaluate, groundtruth_from_dict  # noqa: E402


def make_case(n_videos=910, n_labels=24, mean_frames=180, seed=0, top_k=10, width=320, height=240):
    """(ground-truth dict, detection columns) of a UCF101-24-test-sized synthetic case."""
    rng = np.random.default_rng(seed)
    labels = [f"action_{i:02d}" for i in range(n_labels)]
    videos = [f"{labels[i % n_labels]}/v_{i:04d}" for i in range(n_videos)]
    gt = {"labels": labels, "gttubes": {}, "nframes": {}, "resolution": {}, "train_videos": [[]],
          "test_videos": [videos]}
    cols = {k: [] for k in ("video", "frame", "boxes", "label", "score")}
    for iv, v in enumerate(videos):
        n = int(np.clip(rng.normal(mean_frames, 60), 40, 600))
        cls = iv % n_labels
        gt["nframes"][v], gt["resolution"][v] = n, (height, width)
        n_tubes = int(rng.choice([1, 1, 2, 3]))
        tubes, tube_boxes = [], []
        for _ in range(n_tubes):
            if rng.random() < 0.6:
                s, e = 1, n
            else:
                s = int(rng.integers(1, n // 3 + 1))
                e = int(rng.integers(min(n, s + 20), n + 1))
            bw, bh = rng.uniform(30, 100), rng.uniform(60, 180)
            x = np.clip(rng.uniform(0, width - bw) + np.cumsum(rng.normal(0, 1.5, e - s + 1)), 0, width - bw)
            y = np.clip(rng.uniform(0, height - bh) + np.cumsum(rng.normal(0, 1.0, e - s + 1)), 0, height - bh)
            boxes = np.stack([x, y, x + bw, y + bh], axis=1)
            tubes.append(np.concatenate([np.arange(s, e + 1)[:, None], boxes], axis=1).astype(np.float32))
            full = np.full((n, 4), np.nan)
            full[s - 1 : e] = boxes
            tube_boxes.append(full)
        gt["gttubes"][v] = {cls: tubes}
        # candidates per frame: 3 around each actor (when present), 3 background boxes
        cand = []
        for full in tube_boxes:
            for _ in range(3):
                cand.append(full + rng.normal(0, 4, full.shape))
        for _ in range(3):
            bx, by = rng.uniform(0, width - 60, (n, 1)), rng.uniform(0, height - 100, (n, 1))
            bw, bh = rng.uniform(20, 60, (n, 1)), rng.uniform(40, 100, (n, 1))
            cand.append(np.concatenate([bx, by, bx + bw, by + bh], axis=1))
        cand = np.stack(cand, axis=1)  # (n, C, 4)
        n_cand = cand.shape[1]
        is_actor = np.arange(n_cand) < 3 * n_tubes
        logits = rng.normal(0, 1, (n, n_cand, n_labels))
        logits[:, is_actor, cls] += rng.normal(4.0, 1.5, (1, is_actor.sum())) + rng.normal(0, 0.7, (n, is_actor.sum()))
        logits[:, ~is_actor, :] -= 2.0
        prob = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
        prob[np.isnan(cand[..., 0])] = -1  # actor absent in that frame
        flat = prob.reshape(n, -1)
        top = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
        f_idx = np.repeat(np.arange(n), top_k)
        sel = top.ravel()
        ok = flat[f_idx, sel] > 0
        f_idx, sel = f_idx[ok], sel[ok]
        c_idx, l_idx = sel // n_labels, sel % n_labels
        cols["video"].append(np.full(f_idx.size, iv))
        cols["frame"].append(f_idx + 1)
        cols["boxes"].append(np.round(cand[f_idx, c_idx], 2))
        cols["label"].append(l_idx)
        cols["score"].append(np.round(flat[f_idx, sel], 6))
    det = {k: np.concatenate(v) for k, v in cols.items()}
    det["video_names"] = videos
    return gt, det


def subset(gt, det, n):
    videos = gt["test_videos"][0][:n]
    g = dict(gt)
    g["test_videos"] = [videos]
    keep = det["video"] < n
    d = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in det.items()}
    return g, d


def ours(gt, det):
    names = np.array(det["video_names"], dtype=object)
    t0, c0 = time.perf_counter(), time.process_time()
    d = Detections.from_arrays(names[det["video"]], det["frame"], det["boxes"], det["label"], det["score"])
    res = evaluate(groundtruth_from_dict(gt, "synthetic"), d)
    return res, time.perf_counter() - t0, time.process_time() - c0


def reference(path, gt, det):
    from act_harness import load_reference, run_reference

    ref = load_reference(path)
    names = det["video_names"]
    rows = list(zip([names[i] for i in det["video"]], det["frame"].tolist(), *det["boxes"].T.tolist(),
                    det["label"].tolist(), det["score"].tolist()))
    timings = {}
    with tempfile.TemporaryDirectory() as work:
        out = run_reference(ref, gt, rows, work, timings=timings)
    return out, timings


def agree(res, ref):
    diffs = [abs(res.frame_map - ref["frame_mAP"])]
    diffs += [abs(a - b) for a, b in zip(res.frame_ap, ref["frame_AP"])]
    for k, v in ref["video_mAP"].items():
        diffs.append(abs(res.video_map[k] - v))
        diffs += [abs(res.video_ap[c][k] - ref["video_AP"][k][c]) for c in range(len(res.labels))]
    return max(diffs)


def show(name, frame_map, video_map, seconds, cpu):
    print(f"{name:10s} frame-mAP {frame_map:.6f}  video-mAP "
          + "  ".join(f"@{k} {v:.6f}" for k, v in video_map.items()) + f"   {seconds:8.2f} s wall {cpu:8.2f} s CPU")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=910)
    parser.add_argument("--reference", default=None, help="MOC-Detector checkout (or its src folder)")
    parser.add_argument("--reference-videos", type=int, default=None,
                        help="run the reference on the first N videos only and extrapolate")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    gt, det = make_case(args.videos)
    nframes = sum(gt["nframes"].values())
    ntubes = sum(len(t) for v in gt["gttubes"].values() for t in v.values())
    print(f"case: {args.videos} videos, {nframes} frames (mean {nframes / args.videos:.0f}), {ntubes} ground-truth "
          f"tubes, 24 classes, {det['frame'].size} detections (top 10 per frame); built in "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    res, t_ours, c_ours = ours(gt, det)
    show("ours", res.frame_map, res.video_map, t_ours, c_ours)
    if not args.reference:
        return 0
    n_ref = args.reference_videos or args.videos
    if n_ref < args.videos:
        g_sub, d_sub = subset(gt, det, n_ref)
        res_sub, t_ours_sub, c_ours_sub = ours(g_sub, d_sub)
        show(f"ours[:{n_ref}]", res_sub.frame_map, res_sub.video_map, t_ours_sub, c_ours_sub)
    else:
        g_sub, d_sub, res_sub, t_ours_sub, c_ours_sub = gt, det, res, t_ours, c_ours
    ref, timings = reference(args.reference, g_sub, d_sub)
    t_ref = timings["build_tubes"] + timings["frame_ap"] + timings["video_ap"]
    show("reference" if n_ref == args.videos else f"ref[:{n_ref}]", ref["frame_mAP"], ref["video_mAP"], t_ref,
         timings["cpu"])
    print("reference steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + " (write_inputs: its per-frame .pkl files, not counted)")
    diff = agree(res_sub, ref)
    print(f"max |ours - reference| over mAPs and per-class APs: {diff:.2e} ({'agree' if diff <= 1e-6 else 'DIFFER'})")
    print(f"speed-up on the same {n_ref} videos: {t_ref / t_ours_sub:.1f}x wall, {timings['cpu'] / c_ours_sub:.1f}x CPU"
          f" (load average after: {os.getloadavg()[0]:.1f})")
    if n_ref < args.videos:
        scale = nframes / sum(g_sub["nframes"][v] for v in g_sub["test_videos"][0])
        print(f"reference at full scale, extrapolated linearly in frames (not measured): ~{t_ref * scale:.0f} s wall, "
              f"~{timings['cpu'] * scale:.0f} s CPU -> ~{t_ref * scale / t_ours:.0f}x wall, "
              f"~{timings['cpu'] * scale / c_ours:.0f}x CPU")
    return 0 if diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
