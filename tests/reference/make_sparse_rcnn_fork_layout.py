"""Record the state-dict layout (key -> shape) of the TubeR fork's Sparse R-CNN action detector.

    PYTHONPATH=/path/to/detectron2-source python tests/reference/make_sparse_rcnn_fork_layout.py \
        --fork /path/to/tuber-fork --out tests/reference/sparse_rcnn/fork_key_layout.json

``--fork``: a checkout (or ``git archive``) of jinsingsangsung/tuber at 50cd09b^ (6e12945): its
``configuration/old_models/Sparse_CSN50_AVA21.yaml`` is read and the model of ``models/sparse_ava.py``'s
``build_model`` is built as it builds it (``build_3d_backbone(cfg)`` then ``SparseRCNN(backbone, cfg)``;
the criterion holds no state), on the meta device. The layout is that of ``model.state_dict()``, the
``"model"`` entry of its checkpoints without DDP's ``module.`` (``utils/model_utils.py``'s
``save_checkpoint`` writes ``{"model": model.state_dict(), "optimizer", "lr_scheduler", "max_accuracy",
"epoch", "config"}`` of the DDP-wrapped model; ``tests/checkpoint/test_sparse_rcnn_fork.py`` adds the prefix).

Shims (none changes a key or a shape): ``detectron2.modeling`` as a bare package (its ``__init__`` imports
the config system) with ``META_ARCH_REGISTRY`` / ``detector_postprocess`` / ``roi_heads.build_roi_heads``
stand-ins (a registry decorator and two unused names); ``pycocotools`` (masks, unused); ``CONFIG.MODEL.PRETRAINED`` is set False (no ``.mat``
backbone file is read: loading it copies values, it adds no key); the yaml's duplicated ``ROI_HEADS`` key
reads as its last value (``p2 .. p5``), as yacs does.
"""

import argparse
import json
import sys
import types
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_code import checkout_commit, stub_module  # noqa: E402

YAML = "configuration/old_models/Sparse_CSN50_AVA21.yaml"


def namespace(value):
    """A yaml mapping as nested attribute namespaces (the fork reads ``cfg.CONFIG.MODEL.X``)."""
    if isinstance(value, dict):
        return types.SimpleNamespace(**{k: namespace(v) for k, v in value.items()})
    if isinstance(value, str):  # PyYAML reads 1e-5 as a string (the fork's defaults are floats)
        try:
            return float(value)
        except ValueError:
            return value
    return value


def install_shims():
    import detectron2
    from fvcore.common.registry import Registry

    modeling = stub_module("detectron2.modeling", META_ARCH_REGISTRY=Registry("META_ARCH"),
                           detector_postprocess=None)
    modeling.__path__ = [str(Path(detectron2.__file__).parent / "modeling")]
    stub_module("detectron2.modeling.roi_heads", build_roi_heads=None)
    stub_module("pycocotools").__path__ = []
    stub_module("pycocotools.mask")


def build_fork_model(fork):
    fork = Path(fork).resolve()
    sys.path.insert(0, str(fork))
    cfg = namespace(yaml.safe_load((fork / YAML).read_text()))
    cfg.CONFIG.MODEL.PRETRAINED = False
    install_shims()
    from models.backbone_3d_builder import build_3d_backbone
    from models.sparsercnn.detector import SparseRCNN

    with torch.device("meta"):
        return SparseRCNN(build_3d_backbone(cfg), cfg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", required=True, help="checkout of jinsingsangsung/tuber at 50cd09b^")
    parser.add_argument("--fork-commit", default=None, help="commit of --fork (when it is an archive)")
    parser.add_argument("--out", required=True, help="output JSON file")
    args = parser.parse_args()
    model = build_fork_model(args.fork)
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    meta = {"source": "jinsingsangsung/tuber", "commit": checkout_commit(args.fork, args.fork_commit),
            "config": YAML, "model": "models/sparse_ava.py build_model (SparseRCNN)"}
    Path(args.out).write_text(json.dumps({"meta": meta, "layout": layout}, indent=0) + "\n")
    print(f"{len(layout)} keys -> {args.out}")


if __name__ == "__main__":
    main()
