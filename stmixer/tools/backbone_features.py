"""Backbone and neck features of a clip, for checking a model and its weights against reference outputs.

    python -m stmixer.tools.backbone_features --config-file CFG --weights FILE \\
        --inputs INPUTS.npz --out OUT.npz [--device cpu] [KEY VALUE ...]

Builds the detector from CFG (an official config file, plus optional KEY
VALUE overrides), loads FILE with ``stmixer.checkpoint.load_weights`` (the code
path of ``train_net.py --transfer``; any supported format; the load table is
printed, and the parts the file lacks — e.g. neck and decoder for a pretrained
backbone — are reported as "left at init"), runs its backbone and neck
(``STMDetector.features``) in eval mode on the arrays of INPUTS.npz (``slow``
[+ ``fast``] or ``video``, each ``[B, 3, T, H, W]``) and writes ``feat0``..``feat3``
(backbone levels, strides 4..32) and ``lateral0``..``lateral3`` (neck outputs,
``MODEL.STM.HIDDEN_DIM`` channels) as float32 to OUT.npz (atomically).
"""

import argparse
import sys

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_weights
from ..config import ConfigError
from ..config import load_config
from ..modeling import build_detector
from ..utils.io import atomic_open
from ..utils.logging import setup_logger


def build_model(config_file, opts=()):
    """The detector of ``config_file`` merged onto the defaults, plus ``[KEY, VALUE, ...]`` overrides."""
    return build_detector(load_config(str(config_file), list(opts)))


def pathway_inputs(arrays, num_pathways, source="inputs"):
    """The clip tensors from named arrays, as ``STMDetector.features`` takes them: ``[video or slow]``
    (one pathway) or ``[slow, fast]`` (two), each ``[B, 3, T, H, W]`` float32."""
    if num_pathways == 2:
        names = ["slow", "fast"]
    else:
        names = ["video"] if "video" in arrays else ["slow"]
    absent = [n for n in names if n not in arrays]
    if absent:
        raise KeyError(f"{source}: arrays {absent} are required for a {num_pathways}-pathway backbone; "
                       f"found {sorted(arrays)}")
    return [torch.as_tensor(np.asarray(arrays[n], dtype=np.float32)) for n in names]


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 1 error)."""
    parser = argparse.ArgumentParser(prog="python -m stmixer.tools.backbone_features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="CFG", help="config file (e.g. an official one)")
    parser.add_argument("--weights", required=True, metavar="FILE", help="weight file, any supported format")
    parser.add_argument("--inputs", required=True, metavar="NPZ", help="npz with slow [+ fast] or video arrays")
    parser.add_argument("--out", required=True, metavar="NPZ", help="output npz (feat0..3, lateral0..3)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    setup_logger("", 0)
    try:
        model = build_model(args.config_file, args.opts)
        load_weights(model, args.weights)
        with np.load(args.inputs) as arrays:
            videos = pathway_inputs(dict(arrays), model.backbone.num_pathways, args.inputs)
    except (ConfigError, CheckpointError, KeyError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    model.to(device).eval()
    with torch.inference_mode():
        features, laterals = model.features(*[v.to(device) for v in videos])
    out = {f"feat{i}": f.float().cpu().numpy() for i, f in enumerate(features)}
    out.update({f"lateral{i}": f.float().cpu().numpy() for i, f in enumerate(laterals)})
    with atomic_open(args.out, "wb") as f:
        np.savez(f, **out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
