"""Run the ACT evaluation of MOC-Detector (``src/ACT.py``, ``src/ACT_utils/``) on in-memory cases.

The reference code is never part of this repository: pass the path of a MOC-Detector checkout (or of
its ``src`` folder). Its files are copied to a temporary folder and run there with these shims:

* ``datasets.init_dataset.get_dataset``: returns an in-memory dataset class (labels, ``_test_videos``,
  ``_gttubes`` (a deep copy per instance: the reference's videoAP deletes matched tubes from it),
  ``_nframes``, ``_resolution``) instead of MOC's dataset classes (which need torch and cv2).
* ``opts``: an empty stand-in (ACT.py imports it at the top; the options are passed directly).
* ``progress.bar.Bar``: a silent progress bar.
* numpy >= 2.3 refuses ``int()`` of a one-element 1-d array, which ``iou3dt`` does four times
  (``int(np.where(b[:, 0] == t)[0])``); those four expressions are rewritten to ``int(...[0][0])``,
  the same value whenever the original runs.

Detections are written as the reference's per-frame files ``<video>/<frame:05d>.pkl`` holding
``{label + 1: float32 array (N, 5): x1, y1, x2, y2, score}`` (tubelets of length K = 1), for every
frame and every label (the reference needs them all), rows in input order.
"""

import atexit
import copy
import importlib
import os
import pickle
import re
import shutil
import sys
import tempfile
import types

import numpy as np

_SHIMS = {
    "datasets/__init__.py": "",
    "datasets/init_dataset.py": (
        "DATASET = None\n\n\ndef get_dataset(name):\n    return DATASET\n"
    ),
    "opts.py": "class opts:\n    def parse(self):\n        raise SystemExit('not used')\n",
    "progress/__init__.py": "",
    "progress/bar.py": (
        "import datetime\n\n\nclass Bar:\n    suffix = ''\n\n    def __init__(self, *a, **k):\n"
        "        self.elapsed_td = self.eta_td = datetime.timedelta(0)\n\n"
        "    def next(self):\n        pass\n\n    def finish(self):\n        pass\n"
    ),
}
_INT_WHERE = re.compile(r"int\(np\.where\((b[12]\[:, 0\] == t(?:min|max))\)\[0\]\)")


def find_act_source(path):
    """The folder holding ACT.py and ACT_utils/ under ``path`` (a MOC-Detector checkout or its src)."""
    for cand in (path, os.path.join(path, "src")):
        if os.path.isfile(os.path.join(cand, "ACT.py")) and os.path.isdir(os.path.join(cand, "ACT_utils")):
            return cand
    raise SystemExit(f"{path}: no ACT.py and ACT_utils/ here or in src/ (a MOC-Detector checkout is expected)")


def load_reference(path, workdir=None):
    """Import the reference (with the shims) from ``path``; returns (ACT module, ACT_build, datasets shim)."""
    src = find_act_source(path)
    root = tempfile.mkdtemp(prefix="act_ref_", dir=workdir)
    atexit.register(shutil.rmtree, root, True)
    shutil.copy(os.path.join(src, "ACT.py"), root)
    os.makedirs(os.path.join(root, "ACT_utils"))
    for name in ("ACT_utils.py", "ACT_build.py"):
        shutil.copy(os.path.join(src, "ACT_utils", name), os.path.join(root, "ACT_utils", name))
    utils = os.path.join(root, "ACT_utils", "ACT_utils.py")
    text = open(utils).read()
    patched, count = _INT_WHERE.subn(r"int(np.where(\1)[0][0])", text)
    if count != 4:
        raise SystemExit(f"{utils}: expected 4 int(np.where(...)[0]) expressions to shim, found {count}")
    open(utils, "w").write(patched)
    for rel, content in _SHIMS.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(content)
    for mod in [m for m in sys.modules if m.split(".")[0] in ("ACT", "ACT_utils", "datasets", "opts", "progress")]:
        del sys.modules[mod]
    sys.path.insert(0, root)
    act = importlib.import_module("ACT")
    build = importlib.import_module("ACT_utils.ACT_build")
    datasets = importlib.import_module("datasets.init_dataset")
    return act, build, datasets


def _dataset_class(gt, split, videos):
    """A dataset class as the reference's get_dataset returns (fresh ground truth per instance)."""

    class Dataset:
        def __init__(self, opt, mode):
            self.labels = list(gt["labels"])
            self._test_videos = [list(videos)] * 3
            self._train_videos = [list(videos)] * 3
            self._gttubes = copy.deepcopy(gt["gttubes"])
            self._nframes = dict(gt["nframes"])
            self._resolution = dict(gt.get("resolution") or {v: (240, 320) for v in gt["nframes"]})

    return Dataset


def write_frame_detections(inference_dir, gt, videos, det_rows):
    """The reference's per-frame detection files from rows (video, frame, x1, y1, x2, y2, label, score)."""
    nlabels = len(gt["labels"])
    per_frame = {}
    for v, f, x1, y1, x2, y2, lab, s in det_rows:
        per_frame.setdefault((v, int(f)), {}).setdefault(int(lab), []).append((x1, y1, x2, y2, s))
    for v in videos:
        os.makedirs(os.path.join(inference_dir, v), exist_ok=True)
        for f in range(1, gt["nframes"][v] + 1):
            rows = per_frame.get((v, f), {})
            dets = {lab + 1: np.array(rows.get(lab, []), dtype=np.float32).reshape(-1, 5) for lab in range(nlabels)}
            with open(os.path.join(inference_dir, v, f"{f:05d}.pkl"), "wb") as fh:
                pickle.dump(dets, fh)


def run_reference(ref, gt, det_rows, workdir, split="test", fold=1, thresholds=(0.2, 0.5, 0.75), coco=True,
                  timings=None):
    """Frame-mAP@0.5 and video-mAPs by the reference, on [0, 1] (the reference prints percent).

    Returns {"frame_mAP", "frame_AP": [per class], "video_mAP": {name: value}, "video_AP": {name: [per class]}}.
    ``timings``, when a dict, gets the wall-clock seconds of each reference step, and their total CPU
    seconds (``cpu``, without writing the input files).
    """
    import time

    act, build, datasets = ref
    videos = gt[f"{split}_videos"][fold - 1]
    inference_dir = os.path.join(workdir, "inference")
    os.makedirs(os.path.join(workdir, "result"), exist_ok=True)
    t0 = time.perf_counter()
    write_frame_detections(inference_dir, gt, videos, det_rows)
    t1 = time.perf_counter()
    datasets.DATASET = _dataset_class(gt, split, videos)
    opt = types.SimpleNamespace(redo=True, th=0.5, model_name="ref", dataset="shim", inference_dir=inference_dir,
                                split=1, K=1, root_dir=workdir, exp_id="log")
    captured = []
    real_pr_to_ap = act.pr_to_ap

    def recording_pr_to_ap(pr):
        ap = real_pr_to_ap(pr)
        captured.append(float(ap))
        return ap

    act.pr_to_ap = recording_pr_to_ap
    try:
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                c1 = time.process_time()
                build.BuildTubes(opt)
                t2 = time.perf_counter()
                captured.clear()
                frame_map = float(act.frameAP(opt, print_info=False))
                frame_ap = list(captured)
                t3 = time.perf_counter()
                video_map, video_ap = {}, {}
                ths = [(str(t), (t,)) for t in thresholds]
                if coco:
                    ths.append(("0.5:0.95", tuple(0.5 + 0.05 * i for i in range(10))))
                for name, values in ths:
                    total, per_class = 0.0, None
                    for t in values:
                        opt.th = t
                        captured.clear()
                        total += float(act.videoAP(opt, print_info=False))
                        arr = np.array(captured)
                        per_class = arr if per_class is None else per_class + arr
                    video_map[name] = total / len(values) / 100
                    video_ap[name] = (per_class / len(values)).tolist()
                t4 = time.perf_counter()
                c4 = time.process_time()
            finally:
                sys.stdout = stdout
    finally:
        act.pr_to_ap = real_pr_to_ap
    if timings is not None:
        timings.update(write_inputs=t1 - t0, build_tubes=t2 - t1, frame_ap=t3 - t2, video_ap=t4 - t3, cpu=c4 - c1)
    return {"frame_mAP": frame_map / 100, "frame_AP": frame_ap, "video_mAP": video_map, "video_AP": video_ap}


def reference_tubes(workdir, video):
    """The reference's linked tubes of one video ({label: [(array (n, 6), score)]}), after run_reference."""
    with open(os.path.join(workdir, "inference", video + "_tubes.pkl"), "rb") as f:
        return pickle.load(f)
