"""Reference answers of mmaction2's own dataset code for person proposals (``AVADataset`` /
``AVAKineticsDataset`` + the pipeline transforms that move proposals).

    python tests/reference/make_mmaction2_data_fixtures.py --mmaction2 PATH --out tests/reference/mmaction2

``PATH`` is a checkout (or ``git archive``) of open-mmlab/mmaction2 1.x; nothing of it is copied. Its
``mmaction/datasets/base.py``, ``ava_dataset.py``, ``transforms/loading.py`` (``RawFrameDecode``) and
``transforms/processing.py`` (``Resize``, ``Flip``) are loaded by path and run with mmengine 0.10 and
mmcv-lite 2.1 installed (the throwaway venv of issue #15). Shims (none changes a number):

* the packages ``mmaction``, ``mmaction.datasets``, ``mmaction.datasets.transforms`` are bare packages
  (their ``__init__`` imports every dataset and model); ``mmaction.registry`` holds registries whose
  ``register_module`` returns the class unchanged; ``mmaction.utils`` gives ``ConfigType`` and the
  three helpers ``loading.py`` imports (unused here); ``mmaction.evaluation.read_labelmap`` is only
  used with ``custom_classes`` (not set).
* the pipeline is applied by hand, transform by transform, to ``get_data_info(i)`` plus the keys
  ``SampleAVAFrames`` would add (``frame_inds`` = the keyframe's frame, ``modality`` "RGB").

The case (``CASE`` below): two AVA videos and one AVA-Kinetics clip, frames 45 x 80 (H x W), a proposal
pickle whose keyframes exercise the score threshold (``>=``, ties, nothing above it), the cap, 4-column
rows, a missing key (whole-frame fallback), an empty key is NOT included (mmaction2 crashes on it) and
a key of no keyframe. ``person_det_score_thr`` 0.9, ``num_max_proposals`` 3.

Writes ``<out>/data/proposals.npz``: ``input/<key>`` (the pickle's arrays, float64),
``<split>/<img_key>/{proposals,scores}`` after ``get_data_info`` (float64, as mmaction2 keeps them; split
``train`` = test_mode False, ``test`` = test_mode True, ``avak`` = AVAKineticsDataset test mode) and
``<split>/<img_key>/{pix_proposals,pix_gt}`` after RawFrameDecode -> Resize(scale=(-1, 32)) ->
Flip(flip_ratio=1.0) (float32), plus ``<out>/data/case.json`` (the annotation rows, frame size, arguments,
versions).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from official_code import stub_module as _module, load_by_path as _load  # noqa: E402  (sibling helper)

FRAME_SIZE = (45, 80)  # (h, w) of every frame
SHORT_SIDE = 32
SCORE_THR = 0.9
NUM_MAX = 3

# Annotation rows: video, second, x1, y1, x2, y2, action, person (normalized, AVA CSV layout).
ANNOTATIONS = [
    ("vidAAAAAAAA", 902, 0.100, 0.200, 0.500, 0.900, 1, 0),
    ("vidAAAAAAAA", 902, 0.100, 0.200, 0.500, 0.900, 3, 0),
    ("vidAAAAAAAA", 902, 0.550, 0.150, 0.950, 0.950, 2, 1),
    ("vidAAAAAAAA", 903, 0.123, 0.234, 0.456, 0.789, 1, 0),
    ("vidAAAAAAAA", 904, 0.300, 0.100, 0.700, 0.990, 4, 0),
    ("vidAAAAAAAA", 905, 0.010, 0.020, 0.333, 0.999, 2, 0),
    ("vidBBBBBBBB", 902, 0.250, 0.250, 0.750, 0.750, 1, 0),
    ("vidBBBBBBBB", 903, 0.050, 0.100, 0.400, 0.800, 5, 0),
]
KINETICS_ROWS = [("kinClipAAAA_000010_000014", 12, 0.200, 0.100, 0.600, 0.950, 1, 0)]


def proposals_case():
    """The proposal pickle's dict: {img_key: array [N, 5] or [N, 4]}."""
    f = np.float64
    return {
        # several above 0.9 in file order (no sorting), one exactly at the threshold (>= keeps it)
        "vidAAAAAAAA,0902": np.array([[0.09, 0.21, 0.51, 0.88, 0.95], [0.5, 0.1, 0.9, 0.9, 0.30],
                                      [0.56, 0.16, 0.94, 0.96, 0.90], [0.0, 0.0, 0.3, 0.4, 0.99]], f),
        # nothing reaches 0.9: the best score is kept, with its tie
        "vidAAAAAAAA,0903": np.array([[0.1, 0.2, 0.4, 0.8, 0.70], [0.12, 0.23, 0.46, 0.79, 0.85],
                                      [0.2, 0.3, 0.5, 0.7, 0.85], [0.6, 0.6, 0.9, 0.9, 0.10]], f),
        # more above the threshold than num_max: the first 3 of the kept ones
        "vidAAAAAAAA,0904": np.array([[0.30, 0.10, 0.70, 0.99, 0.91], [0.31, 0.11, 0.69, 0.98, 0.50],
                                      [0.29, 0.09, 0.71, 1.00, 0.97], [0.0, 0.5, 0.2, 1.0, 0.93],
                                      [0.7, 0.0, 1.0, 0.3, 0.99]], f),
        # vidAAAAAAAA,0905: missing -> the whole frame
        # 4 columns: no scores, only the cap
        "vidBBBBBBBB,0902": np.array([[0.24, 0.26, 0.74, 0.76], [0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.9, 0.9],
                                      [0.0, 0.0, 1.0, 1.0]], f),
        "vidBBBBBBBB,0903": np.array([[0.05, 0.1, 0.4, 0.8, 0.999]], f),
        # a key of no keyframe
        "vidCCCCCCCC,0902": np.array([[0.1, 0.1, 0.2, 0.2, 0.95]], f),
        # the AVA-Kinetics clip's proposals, stored under its YouTube id
        "kinClipAAAA,0012": np.array([[0.21, 0.11, 0.59, 0.94, 0.96], [0.0, 0.0, 0.5, 0.5, 0.2]], f),
    }


def _package(name, path):
    mod = _module(name)
    mod.__path__ = [path]
    return mod


class _Registry:
    def register_module(self, *args, **kwargs):
        return lambda cls: cls


def install_shims(root):
    """Bare mmaction packages and the few names the loaded files import (see the module docstring)."""
    pkg = os.path.join(root, "mmaction")
    _package("mmaction", pkg)
    _package("mmaction.datasets", os.path.join(pkg, "datasets"))
    _package("mmaction.datasets.transforms", os.path.join(pkg, "datasets", "transforms"))
    _module("mmaction.registry", DATASETS=_Registry(), TRANSFORMS=_Registry())
    _module("mmaction.utils", ConfigType=dict, get_random_string=None, get_shm_dir=None, get_thread_id=None)
    _module("mmaction.evaluation", read_labelmap=None)
    base = _load("mmaction.datasets.base", os.path.join(pkg, "datasets", "base.py"))
    ava = _load("mmaction.datasets.ava_dataset", os.path.join(pkg, "datasets", "ava_dataset.py"))
    loading = _load("mmaction.datasets.transforms.loading", os.path.join(pkg, "datasets", "transforms", "loading.py"))
    processing = _load("mmaction.datasets.transforms.processing",
                       os.path.join(pkg, "datasets", "transforms", "processing.py"))
    return base, ava, loading, processing


def _write_frames(folder, videos):
    import cv2

    for video in videos:
        os.makedirs(os.path.join(folder, video), exist_ok=True)
        image = np.full(FRAME_SIZE + (3,), 128, dtype=np.uint8)
        cv2.imwrite(os.path.join(folder, video, "img_00001.jpg"), image)


def run_split(ava, loading, processing, cls, ann_file, proposal_file, frame_dir, test_mode):
    """{img_key: arrays} of one dataset run (see the module docstring)."""
    dataset = cls(ann_file=ann_file, pipeline=[], proposal_file=proposal_file, person_det_score_thr=SCORE_THR,
                  num_max_proposals=NUM_MAX, data_prefix=dict(img=frame_dir), test_mode=test_mode,
                  **({"exclude_file": None, "label_file": None} if cls is ava.AVAKineticsDataset else {}))
    decode = loading.RawFrameDecode()
    resize = processing.Resize(scale=(-1, SHORT_SIDE))
    flip = processing.Flip(flip_ratio=1.0)
    out = {}
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        key = info["img_key"]
        out[f"{key}/proposals"] = np.asarray(info["proposals"])
        if "scores" in info:
            out[f"{key}/scores"] = np.asarray(info["scores"])
        results = dict(info, frame_inds=np.array([1]), modality="RGB", filename_tmpl="img_{:05}.jpg")
        results = flip(resize(decode(results)))
        out[f"{key}/pix_proposals"] = results["proposals"]
        out[f"{key}/pix_gt"] = results["gt_bboxes"]
        assert tuple(results["img_shape"]) == tuple(results["imgs"][0].shape[:2])
        out[f"{key}/img_shape"] = np.asarray(results["img_shape"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmaction2", required=True, help="mmaction2 1.x checkout")
    parser.add_argument("--out", required=True, help="fixture root (tests/reference/mmaction2)")
    parser.add_argument("--commit", default="", help="mmaction2 commit, recorded in case.json")
    args = parser.parse_args(argv)
    _, ava, loading, processing = install_shims(os.path.abspath(args.mmaction2))
    import mmcv
    import mmengine

    arrays = {}
    proposals = proposals_case()
    for key, value in proposals.items():
        arrays[f"input/{key}"] = value
    with tempfile.TemporaryDirectory(prefix="mmdata_fixture_") as tmp:
        frame_dir = os.path.join(tmp, "frames")
        _write_frames(frame_dir, sorted({r[0] for r in ANNOTATIONS + KINETICS_ROWS}))
        ann_file = os.path.join(tmp, "ann.csv")
        with open(ann_file, "w") as f:
            f.writelines(",".join(str(v) for v in r) + "\n" for r in ANNOTATIONS)
        ann_avak = os.path.join(tmp, "ann_avak.csv")
        with open(ann_avak, "w") as f:
            f.writelines(",".join(str(v) for v in r) + "\n" for r in ANNOTATIONS + KINETICS_ROWS)
        proposal_file = os.path.join(tmp, "proposals.pkl")
        import pickle

        with open(proposal_file, "wb") as f:
            pickle.dump(proposals, f)
        runs = {"train": (ava.AVADataset, ann_file, False), "test": (ava.AVADataset, ann_file, True),
                "avak": (ava.AVAKineticsDataset, ann_avak, True)}
        for split, (cls, ann, test_mode) in runs.items():
            for name, value in run_split(ava, loading, processing, cls, ann, proposal_file, frame_dir,
                                         test_mode).items():
                arrays[f"{split}/{name}"] = value
    folder = os.path.join(args.out, "data")
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "proposals.npz"), **arrays)
    case = {
        "annotations": [list(r) for r in ANNOTATIONS],
        "kinetics_annotations": [list(r) for r in KINETICS_ROWS],
        "frame_size": list(FRAME_SIZE),
        "short_side": SHORT_SIDE,
        "person_det_score_thr": SCORE_THR,
        "num_max_proposals": NUM_MAX,
        "pipeline": ["RawFrameDecode", f"Resize(scale=(-1, {SHORT_SIDE}))", "Flip(flip_ratio=1.0)"],
        "mmaction2_commit": args.commit or _git_commit(args.mmaction2),
        "versions": {"numpy": np.__version__, "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
                     "python": sys.version.split()[0]},
    }
    with open(os.path.join(folder, "case.json"), "w") as f:
        json.dump(case, f, indent=1)
        f.write("\n")
    print(f"wrote {len(arrays)} arrays to {folder}")


def _git_commit(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    main()
