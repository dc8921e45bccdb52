"""Section ``seqformer`` of make_query_detector_fixtures.py: the TubeR fork's SeqFormer detector.

    python tests/reference/make_query_detector_fixtures.py --fork /tmp/seqformer/src --sections seqformer \\
        --out tests/reference/tuber --fork-commit <sha>

``--fork`` is a checkout of jinsingsangsung/tuber at the parent of 50cd09b ("old files"), where
``models/seqformer_ava.py`` (the detector, ``build_model``), ``models/seqformer/`` (its transformer, matcher,
positions and deformable attention), ``models/backbone_3d_builder.py`` with ``models/backbones/ir_CSN_50_variant.py``
(the CSN-50 without temporal strides) and ``models/criterion.py`` (``SetCriterionAVA``, ``PostProcessAVA``)
live. They are imported as the fork's own packages (checkout root on ``sys.path``) with three shims:

1. an empty stand-in module ``MultiScaleDeformableAttention`` so that ``ops/functions`` imports (the compiled
   CUDA op; its CPU path raises);
2. ``MSDeformAttnFunction`` as seen by ``models/seqformer/ops/modules/ms_deform_attn.py`` replaced by a wrapper
   whose ``apply(value, shapes, level_start, locations, weights, im2col_step)`` returns the fork's own
   pure-PyTorch ``ms_deform_attn_core_pytorch(value, shapes, locations, weights)``;
3. config: ``build_deformable_transformer`` reads ``CONFIG.MODEL.{NUM_FEATURE_LEVELS, NUM_DEC_N_POINTS,
   NUM_ENC_N_POINTS}`` while the fork's yaml (and defaults) put them under ``CONFIG.MODEL.SeqFormer`` (an
   AttributeError: the fork's SeqFormer cannot be built as shipped); they are copied up.

and, as the Deformable TubeR section, ``torch.full(dtype=float32)`` of the fork's criterion gives float64 (its BCE
would otherwise refuse float64 probabilities against float32 targets).

Cases (float64; the fork's ``build_model(cfg)`` from ``configuration/old_models/SeqFormer_CSN50_AVA21.yaml`` with
the case's overrides; every weight from tests/reference/tuber/recipe.py by its fork name; two clips of
``TEMP_LEN`` frames): eval mode: every decoder layer's ``pred_logits`` / ``pred_boxes``, the Hungarian matches of
every layer, the losses (``criterion(outputs, targets)``), gradients of ``sum(loss * weight_dict)`` for a few
parameters, ``PostProcessAVA`` detections; ``seqformer_refine`` also one training-mode forward (BatchNorm batch
statistics, every dropout 0) with two running statistics after it.
"""

import contextlib
import io
import sys
import types
from pathlib import Path

import numpy as np

_GRADS = ("backbone.0.body.bn1.weight", "backbone.0.body.layer2.0.conv3.weight", "input_proj.0.0.weight",
          "input_proj.3.1.bias", "transformer.level_embed", "transformer.reference_points.weight",
          "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
          "transformer.decoder.layers.0.cross_attn.output_proj_box.weight",
          "transformer.decoder.layers.1.cross_attn.attention_weights.weight",
          "transformer.decoder.layers.1.time_attention_weights.weight",
          "transformer.decoder.layers.1.self_attn_box.in_proj_weight", "transformer.decoder.layers.0.linear2.weight",
          "query_embed.weight", "class_embed.1.weight", "bbox_embed.0.layers.0.weight", "bbox_embed.1.layers.2.bias")
_TINY = {"ENC_LAYERS": 1, "DEC_LAYERS": 2, "QUERY_NUM": 5, "D_MODEL": 32, "NHEAD": 4, "DIM_FEEDFORWARD": 64}
CASES = {
    # name: seed, overrides of CONFIG.MODEL, of CONFIG.MODEL.SeqFormer, TRAIN.AUX_LOSS, clip sizes [T, H, W], boxes
    "seqformer_refine": {"seed": 30, "model": _TINY, "seqformer": {"BOX_REFINE": True, "NUM_ENC_N_POINTS": 3,
                                                                    "NUM_DEC_N_POINTS": 2},
                         "aux_loss": True, "clip_sizes": [[4, 32, 48], [4, 32, 48]], "gt_counts": [2, 1],
                         "train_buffers": ("backbone.0.body.bn1.running_mean",
                                           "backbone.0.body.layer4.2.bn4.running_var")},
    "seqformer_shared": {"seed": 31, "model": _TINY, "seqformer": {"BOX_REFINE": False}, "aux_loss": False,
                         "clip_sizes": [[4, 32, 48], [4, 24, 40]], "gt_counts": [1, 2]},
}
# the fork's matcher and loss settings (CONFIG.MATCHER / CONFIG.LOSS_COFS) recorded with each case
OFFICIAL_COSTS = {"MATCHER": ("COST_CLASS", "COST_BBOX", "COST_GIOU"),
                  "LOSS_COFS": ("DICE_COF", "BBOX_COF", "GIOU_COF", "WEIGHT")}


def load_fork(fork):
    """The fork's SeqFormer modules with the attention shims (module docstring)."""
    import torch

    sys.path.insert(0, str(fork))
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    import models.seqformer.ops.functions.ms_deform_attn_func as func
    import models.seqformer.ops.modules.ms_deform_attn as mod

    class PyTorchPath:
        @staticmethod
        def apply(value, shapes, level_start_index, locations, weights, im2col_step):
            return func.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    mod.MSDeformAttnFunction = PyTorchPath
    import models.seqformer.deformable_transformer as dt

    assert dt.MSDeformAttn is mod.MSDeformAttn
    torch.set_default_dtype(torch.float32)


def fork_config(fork, case):
    from pipelines.video_action_recognition_config import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(Path(fork) / "configuration" / "old_models" / "SeqFormer_CSN50_AVA21.yaml"))
    model = cfg.CONFIG.MODEL
    for key, value in case["model"].items():
        setattr(model, key, value)
    for key, value in case["seqformer"].items():
        setattr(model.SeqFormer, key, value)
    frames = case["clip_sizes"][0][0]
    cfg.CONFIG.DATA.TEMP_LEN = model.TEMP_LEN = frames
    cfg.CONFIG.TRAIN.AUX_LOSS = case["aux_loss"]
    model.PRETRAINED = False
    model.set_new_allowed(True)  # shim 3
    for key in ("NUM_FEATURE_LEVELS", "NUM_DEC_N_POINTS", "NUM_ENC_N_POINTS"):
        setattr(model, key, getattr(model.SeqFormer, key))
    return cfg


def run_case(fork, name, versions):
    import torch
    from query_fixtures_deformable import _Float64Full, stats
    from recipe import GEN_VERSION, fake_input, fake_value, tuber_state, tuber_targets

    case = CASES[name]
    seed = case["seed"]
    cfg = fork_config(fork, case)
    with contextlib.redirect_stdout(io.StringIO()):
        import models.criterion as official_criterion
        from models.seqformer_ava import build_model

        torch.manual_seed(seed)
        model, criterion, postprocess = build_model(cfg)
    state = model.state_dict()
    entries = [[k, list(v.shape)] for k, v in state.items() if not k.endswith("num_batches_tracked")]
    values = tuber_state(seed, entries)
    for k in values:  # one value for the box heads the decoder shares
        if k.startswith("transformer.decoder.bbox_embed."):
            values[k] = values["bbox_embed." + k[len("transformer.decoder.bbox_embed."):]]
    if not case["seqformer"]["BOX_REFINE"]:  # one head shared by every layer: one value
        for k in values:
            for head in ("class_embed.", "bbox_embed."):
                if k.startswith(head):
                    values[k] = values[head + "0." + k[len(head):].split(".", 1)[1]]
    model.load_state_dict({k: torch.from_numpy(values[k]).to(v.dtype) if k in values else v for k, v in state.items()})
    model.double().eval()
    criterion.double()
    clips = [torch.from_numpy(fake_input(seed, (3,) + tuple(s)) if i == 0 else
                              fake_value(seed, f"input_{i}", (3,) + tuple(s), "input"))
             for i, s in enumerate(case["clip_sizes"])]
    num_classes = cfg.CONFIG.DATA.NUM_CLASSES
    gts = tuber_targets(seed, case["gt_counts"], num_classes)
    targets = [{"boxes": torch.from_numpy(np.concatenate([np.full((len(b), 1), float(i)), b], axis=1)),
                "labels": torch.from_numpy(lab)} for i, (b, lab) in enumerate(gts)]
    official_criterion.torch = _Float64Full(torch)
    try:
        outputs = model(clips)
        layers = [*outputs.get("aux_outputs", []), {k: outputs[k] for k in ("pred_logits", "pred_boxes")}]
        if not case["aux_loss"]:  # the fork returns only the last layer: the earlier ones from a forward hook
            layers = _all_layers(model, clips)
        arrays = {}
        for k, layer in enumerate(layers):
            arrays[f"out/logits/layer{k}"] = layer["pred_logits"].detach().numpy()
            arrays[f"out/boxes/layer{k}"] = layer["pred_boxes"].detach().numpy()
        matches = {f"layer{k}": [[i.tolist(), j.tolist()] for i, j in criterion.matcher(layer, targets)]
                   for k, layer in enumerate(layers)}
        loss_dict = criterion(outputs, targets)
    finally:
        official_criterion.torch = torch
    weight_dict = criterion.weight_dict
    losses = {k: float(v.detach()) for k, v in loss_dict.items() if torch.is_tensor(v) and k in weight_dict}
    loss_dtypes = {k: str(loss_dict[k].dtype) for k in losses}
    total = sum(loss_dict[k] * weight_dict[k] for k in losses)
    model.zero_grad()
    total.backward()
    params = model.state_dict(keep_vars=True)
    for p in _GRADS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    with torch.no_grad():
        sizes_hw = torch.tensor([[s[1], s[2]] for s in case["clip_sizes"]], dtype=torch.float64)
        scores, boxes = postprocess["bbox"](model(clips), sizes_hw)
    arrays["det/scores"] = scores
    arrays["det/boxes_normalized"] = boxes / np.stack([sizes_hw[:, 1], sizes_hw[:, 0]] * 2, axis=1)[:, None]
    for i, (b, lab) in enumerate(gts):
        arrays[f"target/boxes_cxcywh_{i}"] = b
        arrays[f"target/labels_{i}"] = lab
    if case.get("train_buffers"):  # training mode (BatchNorm batch statistics) with every dropout at 0
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if isinstance(getattr(m, "dropout", None), float):
                m.dropout = 0.0
        model.train()
        with torch.no_grad():
            outputs = model(clips)
        layers = [*outputs.get("aux_outputs", []), {k: outputs[k] for k in ("pred_logits", "pred_boxes")}]
        for k, layer in enumerate(layers):
            arrays[f"train/out/logits/layer{k}"] = layer["pred_logits"].numpy()
            arrays[f"train/out/boxes/layer{k}"] = layer["pred_boxes"].numpy()
        buffers = model.state_dict()
        for key in case["train_buffers"]:
            arrays[f"train/{key}"] = buffers[key].numpy()
    meta = {"case": name, "model": "SeqFormer", "seed": seed, "gen_version": GEN_VERSION,
            "clip_sizes": case["clip_sizes"], "gt_counts": case["gt_counts"], "model_overrides": case["model"],
            "seqformer_overrides": case["seqformer"], "aux_loss": case["aux_loss"],
            "official_config": "configuration/old_models/SeqFormer_CSN50_AVA21.yaml",
            "official_costs": {f"{node}.{k}": float(getattr(getattr(cfg.CONFIG, node), k))
                               for node, keys in OFFICIAL_COSTS.items() for k in keys},
            "official_call": "models.seqformer_ava.build_model(cfg) -> model(list of clips), criterion(outputs, "
                             "targets), PostProcessAVA(outputs, sizes)",
            "official_state_dict": entries, "weight_dict": {k: float(v) for k, v in weight_dict.items()},
            "losses": losses, "loss_dtypes": loss_dtypes, "total_loss": float(total.detach()), "matches": matches,
            "grad_params": list(_GRADS), "train_buffers": list(case.get("train_buffers", ())),
            "mode": "eval (no dropout, BatchNorm running statistics), float64; train/*: one training-mode forward "
                    "(dropout 0) after everything else", "versions": versions,
            "stats": {k: stats(v) for k, v in arrays.items()}}
    return meta, arrays


def _all_layers(model, clips):
    """Every decoder layer's predictions of a model built without ``aux_loss``: the same forward with the fork's
    ``aux_loss`` flag switched on (it only decides what the forward returns)."""
    import torch

    model.aux_loss = True
    try:
        with torch.no_grad():
            outputs = model(clips)
    finally:
        model.aux_loss = False
    return [*outputs["aux_outputs"], {k: outputs[k] for k in ("pred_logits", "pred_boxes")}]


def run_seqformer_section(fork, out, versions):
    """Write ``<out>/seqformer/<case>.{json,npz}`` for every case."""
    from query_fixtures_deformable import write

    fork = Path(fork).resolve()
    load_fork(fork)
    out_dir = Path(out) / "seqformer"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CASES:
        write(out_dir, name, *run_case(fork, name, versions))
