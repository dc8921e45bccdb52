"""Build the recognition fixtures by running mmaction2's own frame sampling, crops and accuracy metrics.

    python tests/reference/make_mmaction2_recognition_fixtures.py --mmaction2 /path/to/mmaction2 \\
        --out tests/reference/mmaction2/recognition

``--mmaction2`` is a checkout (or ``git archive``) of open-mmlab/mmaction2 1.x. Three of its files are
loaded by path: ``mmaction/datasets/transforms/loading.py`` (``SampleFrames``),
``mmaction/datasets/transforms/processing.py`` (``CenterCrop``, ``ThreeCrop``) and
``mmaction/evaluation/functional/accuracy.py`` (``top_k_accuracy``, ``mean_class_accuracy``). They need
mmcv (``mmcv.transforms.BaseTransform``) and mmengine importable (mmcv-lite 2.1 + mmengine 0.10 do);
``mmaction.registry.TRANSFORMS`` and ``mmaction.utils`` are shimmed (a no-op registry, unused helpers),
so nothing else of mmaction2 is imported.

Writes ``<out>/cases.json``:

* ``sample_frames``: per case (total frames, clip_len, frame_interval, num_clips, test_mode,
  out_of_bound_opt, seed) mmaction2's ``frame_inds`` (0-based: ``start_index`` 0) after
  ``np.random.seed(seed)`` -- training cases are reproduced by drawing from the same legacy
  ``np.random`` stream;
* ``crops``: ``crop_bbox`` of ``CenterCrop`` / ``ThreeCrop`` for an image size and crop size;
* ``accuracy``: seeded scores / labels and mmaction2's top-1 / top-5 / mean-class accuracy.
"""

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


def _shim_mmaction():
    class _Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    package = types.ModuleType("mmaction")
    package.__path__ = []
    registry = types.ModuleType("mmaction.registry")
    registry.TRANSFORMS = _Registry()
    utils = types.ModuleType("mmaction.utils")
    for name in ("get_random_string", "get_shm_dir", "get_thread_id"):
        setattr(utils, name, lambda *a, **k: None)
    sys.modules.update({"mmaction": package, "mmaction.registry": registry, "mmaction.utils": utils})


def _load(root, relative, name):
    spec = importlib.util.spec_from_file_location(name, Path(root) / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLE_CASES = [
    # (total_frames, clip_len, frame_interval, num_clips, test_mode, out_of_bound_opt)
    (300, 8, 8, 1, False, "loop"), (300, 8, 8, 10, True, "loop"), (300, 8, 8, 1, True, "loop"),
    (40, 8, 8, 1, False, "loop"), (40, 8, 8, 10, True, "loop"), (40, 8, 8, 3, True, "repeat_last"),
    (40, 8, 8, 1, False, "repeat_last"), (37, 1, 1, 8, False, "loop"), (37, 1, 1, 8, True, "loop"),
    (5, 1, 1, 8, False, "loop"), (8, 1, 1, 8, False, "loop"), (6, 1, 1, 8, True, "loop"),
    (100, 4, 2, 8, False, "loop"), (20, 4, 2, 8, False, "loop"), (60, 32, 2, 1, False, "loop"),
    (60, 32, 2, 4, True, "loop"), (61, 16, 4, 2, True, "loop"), (9, 2, 3, 4, False, "loop"),
]
CROP_CASES = [  # (height, width, crop)
    (256, 340, 256), (340, 256, 256), (256, 340, 224), (57, 80, 56), (56, 75, 56),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmaction2", required=True, help="mmaction2 checkout")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    _shim_mmaction()
    loading = _load(args.mmaction2, "mmaction/datasets/transforms/loading.py", "mm_loading")
    processing = _load(args.mmaction2, "mmaction/datasets/transforms/processing.py", "mm_processing")
    accuracy = _load(args.mmaction2, "mmaction/evaluation/functional/accuracy.py", "mm_accuracy")

    samples = []
    for seed, (total, clip_len, interval, num_clips, test_mode, oob) in enumerate(SAMPLE_CASES):
        np.random.seed(seed)
        sampler = loading.SampleFrames(clip_len, interval, num_clips, test_mode=test_mode, out_of_bound_opt=oob)
        result = sampler.transform({"total_frames": total, "start_index": 0})
        samples.append({"total_frames": total, "clip_len": clip_len, "frame_interval": interval,
                        "num_clips": num_clips, "test_mode": test_mode, "out_of_bound_opt": oob, "seed": seed,
                        "frame_inds": result["frame_inds"].astype(int).tolist()})
    crops = []
    for height, width, size in CROP_CASES:
        image = [np.zeros((height, width, 3), np.uint8)]
        centre = processing.CenterCrop(size).transform({"imgs": list(image)})
        entry = {"height": height, "width": width, "crop": size,
                 "center_crop_bbox": np.asarray(centre["crop_bbox"]).astype(int).tolist()}
        if size == min(height, width):
            three = processing.ThreeCrop(size).transform({"imgs": list(image)})
            entry["three_crop_bboxes"] = np.asarray(three["crop_bbox"]).astype(int).tolist()
        crops.append(entry)
    metrics = []
    for seed, (n, k) in enumerate([(50, 10), (7, 4), (30, 174), (12, 3)]):
        rng = np.random.default_rng(seed)
        scores = rng.random((n, k)).round(3)  # ties possible: argsort order is part of the definition
        labels = rng.integers(0, k, size=n)
        top1, top5 = accuracy.top_k_accuracy(scores, labels, (1, 5))
        mean_class = float(accuracy.mean_class_accuracy(scores, labels))
        metrics.append({"scores": scores.tolist(), "labels": labels.tolist(), "top1": float(top1),
                        "top5": float(top5), "mean_class_accuracy": mean_class})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cases.json", "w") as f:
        json.dump({"sample_frames": samples, "crops": crops, "accuracy": metrics}, f, indent=1)
    print(f"wrote {out / 'cases.json'}: {len(samples)} sampling, {len(crops)} crop, {len(metrics)} accuracy cases")


if __name__ == "__main__":
    main()
