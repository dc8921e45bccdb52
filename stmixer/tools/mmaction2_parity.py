"""mmaction2 two-stage detector fixtures (``FastRCNN``) for ``python -m stmixer.tools.reference_parity``.

A fixture folder (``tests/reference/mmaction2/detector/<case>``, written by
``tests/reference/make_mmaction2_fixtures.py --part detector``) holds

* ``config.yaml``: our config of the model (merged onto the defaults);
* ``mmaction2.json``: the seed, the clip shape, the key manifest of mmaction2's detector state dict
  (``backbone.*``, ``roi_head.bbox_head.*``; the weights are not stored), the clips' ``img_keys``,
  which gradient slices and RoI-feature channels were kept;
* ``inputs.npz``: per clip ``gt_boxes_b{i}`` ``[k, 4]`` absolute pixels, ``gt_labels_b{i}``
  ``[k, A + 1]`` (mmaction2's columns, background 0), ``proposals_b{i}`` ``[m, 4]``;
* ``expected.npz``: mmaction2's answers (read only by the comparing side).

``recipe.py`` beside the case folders (``DIR/../recipe.py``) regenerates the weights
(``fake_state_dict(manifest, seed)``) and the clip (``fake_input(seed, shape)``) bit for bit.

``run_mmaction2_fixture`` builds our detector from ``config.yaml``, loads the weights through the
checkpoint loader as an mmaction2 checkpoint (``{"meta", "state_dict"}``: every key must load), runs
one training forward and backward (batch statistics, as mmaction2's training) and then, from the
same weights, the test forward, and returns the arrays under ``expected.npz``'s names:
``sample/*`` (assignment and sampling per clip), ``out/rois``, ``out/roi_feats`` and
``grad/roi_feats`` (the stored channel slice), ``out/cls_score``, ``grad/<mmaction2 parameter>``
(stored slices), ``loss/loss_action_cls``, ``metric/<name>``, ``pred/boxes_b{i}``,
``pred/scores_b{i}`` (every column) and ``det/b{i}`` (the AVA metric's per-class detections,
``action_thr`` 0.002: rows ``class, x1, y1, x2, y2, score``).
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, checkpoint_from_object, load_weights
from ..checkpoint.mmaction2 import backbone_key
from ..config import load_config
from ..errors import UserError

MARKER = "mmaction2.json"


class MMAction2FixtureError(UserError):
    """An mmaction2 detector fixture folder that is incomplete or does not fit the model."""


def is_mmaction2_fixture(fixture) -> bool:
    return (Path(fixture) / MARKER).is_file()


def load_recipe(fixture):
    """``fixture/../recipe.py`` (``fake_state_dict``, ``fake_input``)."""
    path = Path(fixture).parent / "recipe.py"
    if not path.is_file():
        raise MMAction2FixtureError(f"{fixture}: no {path} to regenerate the weights and the clip")
    spec = importlib.util.spec_from_file_location("mmaction2_fixture_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def our_name(mm_name: str) -> str:
    """Our parameter name of an mmaction2 detector parameter (the checkpoint mapping's)."""
    if mm_name.startswith("backbone."):
        mapped = backbone_key(mm_name[len("backbone."):])
        return "backbone." + (mapped or mm_name[len("backbone."):])
    return mm_name


def run_mmaction2_fixture(fixture, precision_dtype=torch.float64, device="cpu"):
    """Our outputs on one fixture as ``{name: numpy array}`` (see the module doc)."""
    from ..modeling import build_detector
    from ..modeling.roi_heads import class_detections

    fixture = Path(fixture)
    for name in ("config.yaml", MARKER, "inputs.npz"):
        if not (fixture / name).is_file():
            raise MMAction2FixtureError(f"{fixture}: missing {name}")
    dtype, device = precision_dtype, torch.device(device)
    meta = json.loads((fixture / MARKER).read_text())
    recipe = load_recipe(fixture)
    # the reference path: no CUDA channels_last_3d layout (a fast path, not bit-close) in parity runs
    cfg = load_config(str(fixture / "config.yaml"), ["MODEL.BACKBONE.CHANNELS_LAST", "False",
                                                       "MODEL.BACKBONE.FUSED_INFERENCE", "False",
                                                       "MODEL.BACKBONE.FUSED_TRAINING_BN", "False",
                                                       "ViT.COMPILE", "False"])
    model = build_detector(cfg).to(device=device, dtype=dtype)  # before loading: weights cast to its dtype
    state = {k: torch.from_numpy(v) for k, v in recipe.fake_state_dict(meta["manifest"], meta["seed"]).items()}
    contents = checkpoint_from_object({"meta": {}, "state_dict": state}, f"{fixture} weights")
    try:
        report = load_weights(model, contents, log=None)
    except CheckpointError as e:
        raise MMAction2FixtureError(f"{fixture}: the weights do not fit the model built from config.yaml: {e}") \
            from None
    if len(report.loaded) != len(state) or set(model.state_dict()) - set(report.loaded):
        raise MMAction2FixtureError(f"{fixture}: not every weight was loaded\n{report.table()}")
    fresh = {k: v.clone() for k, v in model.state_dict().items()}

    clip = torch.from_numpy(recipe.fake_input(meta["seed"], meta["clip_shape"])).to(device=device, dtype=dtype)
    if meta.get("slow_stride"):  # SlowFast: slow = every slow_stride-th frame, fast = every frame (as mmaction2)
        slow, fast = clip[:, :, ::meta["slow_stride"]], clip
    else:
        slow, fast = clip, None
    batch_size, (h, w) = clip.shape[0], meta["img_shape"]
    whwh = torch.tensor([[w, h, w, h]] * batch_size, dtype=dtype, device=device)
    with np.load(fixture / "inputs.npz") as arrays:
        def per_clip(name):
            return [torch.from_numpy(arrays[f"{name}_b{i}"]).to(device=device, dtype=dtype) for i in range(batch_size)]
        gt_boxes, gt_labels, proposals = per_clip("gt_boxes"), per_clip("gt_labels"), per_clip("proposals")
    img_keys = meta["img_keys"]

    captured = {}

    def hook(module, inputs, output):
        inputs[0].retain_grad()
        captured["roi_feats"] = inputs[0]

    handle = model.roi_head.bbox_head.register_forward_hook(hook)
    model.train()
    trace = {}
    losses = model(slow, fast, whwh, gt_boxes, gt_labels, proposals=proposals, img_keys=img_keys, trace=trace)
    handle.remove()
    losses["loss_action_cls"].backward()
    params = dict(model.named_parameters())
    step = meta["roi_channel_step"]
    out = {"out/rois": trace["rois"][0], "out/cls_score": trace["cls_score"][0],
           "out/roi_feats": captured["roi_feats"].detach()[:, ::step],
           "grad/roi_feats": captured["roi_feats"].grad[:, ::step],
           "loss/loss_action_cls": losses["loss_action_cls"].detach()}
    out.update({f"metric/{k}": torch.tensor(v, dtype=torch.float64) for k, v in model.train_metrics.items()})
    for i in range(batch_size):
        for key in ("pos_inds", "neg_inds", "pos_gt_labels", "pos_is_gt"):
            out[f"sample/{key}_b{i}"] = trace[key][i]
    for mm_name, index in meta["grads"].items():
        out[f"grad/{mm_name}"] = params[our_name(mm_name)].grad[tuple(slice(a, b) for a, b in index)]

    model.load_state_dict(fresh)
    model.eval()
    trace = {}
    with torch.no_grad():
        detections = model(slow, fast, whwh, proposals=proposals, img_keys=img_keys, trace=trace)
    for i, det in enumerate(detections):
        scores = trace["scores"][i]
        out[f"pred/boxes_b{i}"] = det["boxes"]
        out[f"pred/scores_b{i}"] = scores
        out[f"final/scores_b{i}"] = det["scores"]
        rows = [torch.cat([torch.full((len(d), 1), c + 1.0, dtype=d.dtype, device=d.device), d], 1)
                for c, d in enumerate(class_detections(det["boxes"], scores, meta["action_thr"]))]
        out[f"det/b{i}"] = torch.cat(rows)
    result = {}
    for name, value in out.items():
        value = value.detach().cpu()
        result[name] = (value.to(dtype) if value.is_floating_point() else value).numpy()
    return result
