"""Section ``tuber`` of ``make_query_detector_fixtures.py``: the official TubeR (``models/tuber_ava.py``) in float64.

Imported by the driver (``--sections tuber``); ``--tuber`` is a checkout of
amazon-science/tubelet-transformer, put first on ``sys.path`` so its own ``models.*`` / ``utils.*``
imports resolve (nothing is copied). Per case (``CASES``):

1. the official config (``configuration/TubeR_CSN50_AVA21.yaml`` merged onto the official
   ``get_cfg_defaults()``) with the case's overrides (2 + 2 layers, few queries, a short clip), built by the
   official ``build_model(cfg)`` -> ``(DETR, SetCriterionAVA, PostProcessAVA)``;
2. every state-dict entry set from ``tuber/recipe.py`` (``tuber_state``), the model and the criterion in
   float64 and eval mode (no dropout; BatchNorm on its running statistics);
3. a batch of two clips of different heights (the official ``nested_tensor_from_tensor_list`` pads the
   second one and masks the padding) -> hooks record the CSN output, the pooled map, the 3-D positions,
   the encoder memory, the decoder outputs of every layer and the action-context tokens; the outputs of
   every layer (switch logits, boxes, action logits);
4. ground truth from the recipe (normalized cxcywh, multi-hot) -> the official matcher's indices for
   every layer, the official criterion's loss dict, the weighted sum's gradients of a few parameters;
   then the same with the focal action loss, and the official ``PostProcessAVA`` detections;
5. training mode with every dropout probability set to 0 (BatchNorm on batch statistics): the last
   layer's outputs, the loss dict, 5 gradients and two BatchNorm running statistics after the step.

Shims (the official code as is does not run in float64, and has no focal switch):

* ``torch.full(..., dtype=float32)`` inside ``models/criterion.py`` (BCE targets and weights) makes
  float64 tensors: a float32 target with float64 predictions raises in ``F.binary_cross_entropy``.
  The values (0, 1, 10) are exact in both. ``num_boxes`` stays float32 (the quirk being measured).
* focal: ``F.binary_cross_entropy`` inside ``models/criterion.py`` is replaced by the focal expression
  of the seed branch (jinsingsangsung/tuber ``models/criterion.py``, the line commented out under the
  BCE call): ``-(((1-p)^2 t log(p+1e-8) + p^2 (1-t) log(1-p+1e-8)) * w).sum()``.
"""

import contextlib
import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import numpy as np

CASES = {
    # name: seed, overrides of the official config, clip sizes (T, H, W) per clip, gt boxes per clip
    "tuber_csn50": (3, {"ENC_LAYERS": 2, "DEC_LAYERS": 2, "QUERY_NUM": 4, "TEMP_LEN": 16}, [(16, 64, 64), (16, 48, 64)],
                    [2, 3]),
}
GRAD_PARAMS = ("query_embed.weight", "class_fc.bias", "class_embed_b.weight", "bbox_embed.layers.2.weight",
               "transformer.decoder.layers.1.linear2.bias", "transformer.encoder.layers.0.self_attn.out_proj.bias",
               "encoder.layers.0.norm2.weight", "cross_attn.in_proj_bias", "backbone.pool_decoder.norm.weight",
               "backbone.body.layer4.2.bn4.bias")
# BatchNorm statistics recorded after the training-mode forward.
TRAIN_BUFFERS = ("backbone.body.bn1.running_mean", "backbone.body.layer4.2.bn4.running_var")
SLICE = 8  # channel step of the large maps stored as slices


def stats(value):
    value = np.asarray(value, dtype=np.float64)
    return {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value * value).sum())}


class _Float64Full:
    """``torch`` seen by the official criterion, whose ``full(dtype=float32)`` gives float64 (see module docstring)."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def full(self, *args, dtype=None, **kwargs):
        if dtype is self._torch.float32:
            dtype = self._torch.float64
        return self._torch.full(*args, dtype=dtype, **kwargs)


class _FocalF:
    """``torch.nn.functional`` seen by the official criterion, with the seed branch's focal loss in place of BCE."""

    def __init__(self, F):
        self._F = F

    def __getattr__(self, name):
        return getattr(self._F, name)

    @staticmethod
    def binary_cross_entropy(p, t, weight=None):
        import torch

        eps, g = 1e-8, 2.0
        return -(((1 - p) ** g * t * torch.log(p + eps) + p ** g * (1 - t) * torch.log(1 - p + eps)) * weight).sum()


def official_cfg(root, overrides):
    from pipelines.video_action_recognition_config import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(root / "configuration" / "TubeR_CSN50_AVA21.yaml"))
    for key, value in overrides.items():
        setattr(cfg.CONFIG.MODEL, key, value)
    cfg.CONFIG.MODEL.PRETRAINED = False
    return cfg


def run_case(root, name, seed, overrides, sizes, counts, out_dir, versions):
    import torch
    from recipe import GEN_VERSION, fake_input, tuber_state, tuber_targets

    cfg = official_cfg(root, overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        import models.criterion as official_criterion
        from models.tuber_ava import build_model

        model, criterion, postprocess = build_model(cfg)
    state = model.state_dict()
    entries = [[k, list(v.shape)] for k, v in state.items() if not k.endswith("num_batches_tracked")]
    values = tuber_state(seed, entries)
    model.load_state_dict({k: torch.from_numpy(values[k]).to(v.dtype) if k in values else v
                           for k, v in state.items()})
    model.double().eval()
    criterion.double()
    clips = [torch.from_numpy(fake_input(seed, (3,) + tuple(s)) if i == 0 else
                              fake_value_input(seed, i, (3,) + tuple(s))) for i, s in enumerate(sizes)]
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.update(
        pooled=o[0][0].tensors, mask=o[0][0].mask, pos=o[1][0], backbone=o[2]))
    model.transformer.register_forward_hook(lambda m, i, o: captured.update(hs=o[0], memory=o[1]))
    model.encoder.register_forward_hook(lambda m, i, o: captured.update(context=o[0]))
    num_classes = cfg.CONFIG.DATA.NUM_CLASSES
    gts = tuber_targets(seed, counts, num_classes)
    targets = []
    for i, (boxes, labels) in enumerate(gts):
        b = torch.from_numpy(np.concatenate([np.full((len(boxes), 1), float(i)), boxes], axis=1))
        targets.append({"boxes": b, "labels": torch.from_numpy(labels)})

    arrays, out_stats, losses = {}, {}, {}
    official_criterion.torch = _Float64Full(torch)
    outputs = model(clips)
    for key in ("backbone", "pooled", "context"):
        value = captured[key].detach().numpy()
        out_stats[f"trace/{key}"] = stats(value)
        arrays[f"trace/{key}"] = value[:, ::SLICE] if key != "context" else value[..., ::SLICE]
    for key in ("pos", "memory", "hs"):
        value = captured[key].detach().numpy()
        out_stats[f"trace/{key}"] = stats(value)
        arrays[f"trace/{key}"] = value
    arrays["trace/mask"] = captured["mask"].numpy()
    layers = [*outputs.get("aux_outputs", []), {k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_logits_b")}]
    for k, layer in enumerate(layers):
        for key, ours in (("pred_logits_b", "logits_b"), ("pred_boxes", "boxes"), ("pred_logits", "logits")):
            arrays[f"out/{ours}/layer{k}"] = layer[key].detach().numpy()
    matches = {}
    for k, layer in enumerate(layers):
        idx = criterion.matcher(layer, targets)
        matches[f"layer{k}"] = [[i.tolist(), j.tolist()] for i, j in idx]
    loss_dict = criterion(outputs, targets)
    weight_dict = criterion.weight_dict
    for key, value in loss_dict.items():
        if not torch.is_tensor(value):  # class_error (logging only)
            losses[key] = {"value": float(value)}
            continue
        losses[key] = {"value": float(value.detach()), "dtype": str(value.dtype).replace("torch.", ""),
                       "shape": list(value.shape)}
    total = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
    model.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    for p in GRAD_PARAMS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    losses["total"] = {"value": float(total.detach()), "dtype": str(total.dtype).replace("torch.", "")}
    # focal
    official_criterion.F = _FocalF(official_criterion.F)
    try:
        focal = criterion(model(clips), targets)
    finally:
        official_criterion.F = official_criterion.F._F
        official_criterion.torch = torch
    focal_losses = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in focal.items()}
    focal_total = sum(focal[k] * weight_dict[k] for k in focal if k in weight_dict)
    model.zero_grad()
    focal_total.backward()
    for p in GRAD_PARAMS[:3]:
        arrays[f"grad_focal/{p}"] = params[p].grad.numpy()
    focal_losses["total"] = float(focal_total.detach())
    with torch.no_grad():
        sizes_hw = torch.tensor([[s[1], s[2]] for s in sizes], dtype=torch.float64)
        scores, boxes, output_b = postprocess["bbox"](model(clips), sizes_hw)
    arrays["det/scores"] = scores
    arrays["det/boxes_normalized"] = boxes / np.stack([sizes_hw[:, 1], sizes_hw[:, 0]] * 2, axis=1)[:, None]
    arrays["det/switch"] = output_b
    # training mode (BatchNorm on batch statistics, running statistics updated) with every dropout at 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
        elif hasattr(m, "dropout") and isinstance(m.dropout, float):  # the pool decoder's DotProductAttention
            m.dropout = 0.0
    model.train()
    official_criterion.torch = _Float64Full(torch)
    try:
        train_out = model(clips)
        train_losses = criterion(train_out, targets)
    finally:
        official_criterion.torch = torch
    train_total = sum(train_losses[k] * weight_dict[k] for k in train_losses if k in weight_dict)
    model.zero_grad()
    train_total.backward()
    for key, ours in (("pred_logits_b", "logits_b"), ("pred_boxes", "boxes"), ("pred_logits", "logits")):
        arrays[f"train/out/{ours}"] = train_out[key].detach().numpy()
    for p in GRAD_PARAMS[:5]:
        arrays[f"train/grad/{p}"] = params[p].grad.numpy()
    buffers = model.state_dict()
    for b in TRAIN_BUFFERS:
        arrays[f"train/{b}"] = buffers[b].numpy()
    train_loss_values = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in train_losses.items()}
    model.eval()
    for i, (b, lab) in enumerate(gts):
        arrays[f"target/boxes_cxcywh_{i}"] = b
        arrays[f"target/labels_{i}"] = lab
    meta = {
        "case": name, "seed": seed, "gen_version": GEN_VERSION, "model": "TubeR",
        "clip_sizes": [list(s) for s in sizes],
        "gt_counts": counts, "overrides": overrides, "slice": SLICE,
        "official_config": "configuration/TubeR_CSN50_AVA21.yaml",
        "official_call": "models.tuber_ava.build_model(cfg) -> model(list of clips), criterion(outputs, targets), "
                         "PostProcessAVA(outputs, sizes)",
        "official_state_dict": entries, "weight_dict": {k: float(v) for k, v in weight_dict.items()},
        "losses": losses, "focal_losses": focal_losses, "train_losses": train_loss_values,
        "train_buffers": list(TRAIN_BUFFERS), "matches": matches, "stats": out_stats,
        "grad_params": list(GRAD_PARAMS), "mode": "eval (no dropout, BatchNorm running statistics), float64",
        "versions": versions,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=0) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    print(name, {k: v["value"] for k, v in losses.items()}, matches[f"layer{len(layers) - 1}"])


def fake_value_input(seed, i, shape):
    from recipe import fake_value

    return fake_value(seed, f"input_{i}", shape, "input")


def run(tuber_root, out_root, versions):
    """Write ``<out_root>/tuber/<case>.{json,npz}`` for every case."""
    root = Path(tuber_root).resolve()
    sys.path.insert(0, str(root))
    if "cv2" not in sys.modules:  # models/transformer/position_encoding.py imports cv2 and never uses it
        if importlib.util.find_spec("cv2") is None:
            sys.modules["cv2"] = types.ModuleType("cv2")
    out = Path(out_root) / "tuber"
    out.mkdir(parents=True, exist_ok=True)
    for name, (seed, overrides, sizes, counts) in CASES.items():
        run_case(root, name, seed, overrides, sizes, counts, out, versions)
