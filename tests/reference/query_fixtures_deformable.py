"""Section ``deformable`` of make_query_detector_fixtures.py: the Deformable TubeR transformer of the TubeR fork.

    python tests/reference/make_query_detector_fixtures.py --fork /tmp/deform/src --sections deformable \\
        --out tests/reference/tuber --fork-commit <sha>

``--fork`` is a checkout of jinsingsangsung/tuber at the parent of 50cd09b ("old files"), where
``models/old_models/deformable_detr/`` (Deformable DETR's transformer and attention, used by the fork's
``deformable_tuber{2,3,4}.py``) and ``models/criterion.py`` (DETR's ``MLP``, the box-refinement heads)
live. They are imported as the fork's own packages (checkout root on ``sys.path``) with two shims, both
about the compiled CUDA op only:

1. an empty stand-in module ``MultiScaleDeformableAttention`` so that ``ops/functions`` imports;
2. ``MSDeformAttnFunction`` as seen by ``ops/modules/ms_deform_attn.py`` replaced by a wrapper whose
   ``apply(value, shapes, level_start, locations, weights, im2col_step)`` returns the fork's own
   pure-PyTorch ``ms_deform_attn_core_pytorch(value, shapes, locations, weights)`` (the function
   Deformable DETR tests its CUDA kernel against);

and one about a path: ``deformable_tuber{2,3,4}.py`` were moved to ``models/old_models/`` with their
imports left at ``models.deformable_detr.*``, so that name is pointed at the (shimmed) modules of
``models.old_models.deformable_detr``. The whole-head cases replace the CSN by given stage outputs inside
the fork's own ``Backbone.forward`` / ``Joiner`` (``fake_joiner``).

Cases (all float64, eval mode, every weight and input from tests/reference/tuber/recipe.py by name;
the json lists ``[name, shape, kind]`` of each):

* ``msda_function``: the pure-PyTorch core on random value maps / locations (some outside [0, 1]) /
  softmax weights; output and the gradients of ``sum(out * w)`` for all three inputs.
* ``msda_module``: ``MSDeformAttn``: outputs for 2-d reference points and 4-d reference boxes, with a
  padding mask; gradients of the four projections; the parameter statistics of its initialization
  under ``torch.manual_seed``.
* ``transformer_d2`` / ``transformer_d3`` / ``transformer_plain``: ``DeformableTransformer`` as
  ``build_deformable_transformer_og`` builds it (``return_intermediate_dec=True``) with the
  detector's box refinement (``decoder.bbox_embed`` = per-layer DETR ``MLP(C, C, 4, 3)``), on four
  levels shaped like CSN's (strides 8, 16, 16, 32 of a 64x48 clip); d2: queries ``[Q, 2C]`` shared by
  the batch and a padded second clip; d3: per-clip queries ``[B, Q, 2C]`` (D3 feeds its DETR
  transformer's output as the positional half), no padding; plain: no box refinement and
  ``return_intermediate_dec=False``. Written: encoder memory, every decoder layer's output, initial
  and per-layer reference points, gradients of ``sum(hs * w) + sum(init_reference * v)`` for a few
  parameters and the inputs, the official state-dict keys, and the initialization statistics.
"""

import json
import sys
import types
from pathlib import Path

import numpy as np

SEED = 17
# transformer cases: name -> (seed, options)
TRANSFORMER_CASES = {
    "transformer_d2": (0, {"query": "shared", "pad": True, "refine": True, "intermediate": True}),
    "transformer_d3": (1, {"query": "per_clip", "pad": False, "refine": True, "intermediate": True}),
    "transformer_plain": (2, {"query": "shared", "pad": True, "refine": False, "intermediate": False}),
}
# tiny DeformableTransformer (the fork's: d_model 256, 8 heads, 6+6 layers, FFN 2048, 4 levels, 4+4 points)
TRANSFORMER_ARGS = {"d_model": 32, "nhead": 4, "num_encoder_layers": 2, "num_decoder_layers": 2,
                    "dim_feedforward": 64, "dropout": 0.1, "activation": "relu", "num_feature_levels": 4,
                    "dec_n_points": 2, "enc_n_points": 3}
BATCH, QUERIES = 2, 5
LEVEL_SHAPES = [(8, 6), (4, 3), (4, 3), (2, 2)]
TRANSFORMER_GRADS = ("level_embed", "reference_points.weight", "encoder.layers.0.self_attn.sampling_offsets.weight",
                     "encoder.layers.1.self_attn.value_proj.weight", "encoder.layers.1.norm2.weight",
                     "decoder.layers.0.cross_attn.attention_weights.weight",
                     "decoder.layers.0.cross_attn.output_proj.bias",
                     "decoder.layers.1.self_attn.in_proj_weight", "decoder.layers.1.linear2.weight")
MODULE_ARGS = {"d_model": 16, "n_levels": 3, "n_heads": 4, "n_points": 2}
MODULE_SHAPES = [(4, 6), (2, 3), (1, 2)]
MODULE_GRADS = ("sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight", "value_proj.weight",
                "output_proj.weight", "output_proj.bias")


def param_kind(name, shape):
    """Recipe kind of a parameter or buffer: matrices fan-in uniform, norm scales (1-d weights) in [0.5, 1],
    BatchNorm running statistics, biases small, embeddings in [-1, 1]."""
    if name.endswith("level_embed") or name.endswith("query_embed"):
        return "input"
    if name.endswith("running_var"):
        return "bn_var"
    if name.endswith("running_mean"):
        return "bn_mean"
    if len(shape) >= 2:
        return "conv_weight"
    if name.endswith(".weight"):
        return "bn_weight"
    return "bias"


def canonical(name):
    """One value for the box heads a decoder shares with its detector (``[transformer.]decoder.bbox_embed.*``
    is ``bbox_embed.*``): the recipe keys them by the detector's name."""
    for prefix in ("transformer.decoder.bbox_embed.", "transformer2.decoder.bbox_embed."):
        if name.startswith(prefix):
            return "bbox_embed." + name[len(prefix):]
    return name


def manifest_of(module):
    """``[[state-dict key, shape, recipe kind, recipe name]]`` (BatchNorm counters left out)."""
    return [[k, list(v.shape), param_kind(k, tuple(v.shape)), canonical(k)] for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")]


def recipe_state(manifest, seed):
    import torch
    from recipe import fake_value

    return {name: torch.from_numpy(fake_value(seed, key, tuple(shape), kind)) for name, shape, kind, key in manifest}


def level_masks(batch, shapes, pad):
    """Bool masks ``[B, H_l, W_l]``: clip 1 padded on its last quarter of columns (rounded down, at least one)
    and its last row when ``pad``."""
    masks = []
    for h, w in shapes:
        m = np.zeros((batch, h, w), dtype=bool)
        if pad and batch > 1:
            m[1, :, w - max(1, w // 4):] = True
            if h > 1:
                m[1, h - 1:, :] = True
        masks.append(m)
    return masks


def stats(value):
    value = np.asarray(value, dtype=np.float64)
    return {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value * value).sum())}


def load_fork(fork):
    """The fork's deformable transformer module and DETR's MLP, with the two shims (module docstring)."""
    import torch

    sys.path.insert(0, str(fork))
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    import models.criterion as criterion
    import models.old_models.deformable_detr.deformable_transformer as dt
    import models.old_models.deformable_detr.ops.functions.ms_deform_attn_func as func
    import models.old_models.deformable_detr.ops.modules.ms_deform_attn as mod

    class PyTorchPath:
        @staticmethod
        def apply(value, shapes, level_start_index, locations, weights, im2col_step):
            return func.ms_deform_attn_core_pytorch(value, shapes, locations, weights)

    mod.MSDeformAttnFunction = PyTorchPath
    assert dt.MSDeformAttn is mod.MSDeformAttn
    # the variants (moved to models/old_models/ without their imports updated) import the transformer from its
    # old place models/deformable_detr/: point that name at the same (shimmed) modules
    for key in [k for k in sys.modules if k.startswith("models.old_models.deformable_detr")]:
        sys.modules[key.replace("models.old_models.", "models.", 1)] = sys.modules[key]
    torch.set_default_dtype(torch.float32)
    return dt, mod, func, criterion.MLP


def run_function_case(func, out_dir, versions):
    import torch
    from recipe import fake_value

    n, lq, m, d, p = 2, 5, 3, 4, 3
    shapes = MODULE_SHAPES
    s = sum(h * w for h, w in shapes)
    inputs = [["value", [n, s, m, d], "input"], ["locations_raw", [n, lq, m, len(shapes), p, 2], "input"],
              ["weight_logits", [n, lq, m, len(shapes) * p], "input"], ["grad_weight", [n, lq, m * d], "input"]]
    arr = {name: torch.from_numpy(fake_value(SEED, name, tuple(shape), kind)) for name, shape, kind in inputs}
    value = arr["value"].requires_grad_(True)
    # locations in [-0.1, 1.1]: a few fall outside the maps (zero padding)
    locations = (0.5 + 0.6 * arr["locations_raw"]).requires_grad_(True)
    weights = arr["weight_logits"].softmax(-1).view(n, lq, m, len(shapes), p).detach().requires_grad_(True)
    shapes_t = torch.as_tensor(shapes, dtype=torch.long)
    out = func.ms_deform_attn_core_pytorch(value, shapes_t, locations, weights)
    (out * arr["grad_weight"]).sum().backward()
    arrays = {"out": out.detach().numpy(), "grad/value": value.grad.numpy(), "grad/locations": locations.grad.numpy(),
              "grad/weights": weights.grad.numpy()}
    meta = {"case": "msda_function", "seed": SEED, "spatial_shapes": shapes, "inputs": inputs,
            "derived": {"locations": "0.5 + 0.6 * locations_raw", "weights": "softmax(weight_logits, -1) viewed "
                        "[N, Lq, M, L, P]"}, "loss": "sum(out * grad_weight)",
            "official": "models/old_models/deformable_detr/ops/functions/ms_deform_attn_func.py:"
                        "ms_deform_attn_core_pytorch", "stats": {k: stats(v) for k, v in arrays.items()},
            "versions": versions}
    return meta, arrays


def run_module_case(mod, out_dir, versions):
    import torch
    from recipe import fake_value

    torch.manual_seed(SEED)
    init = mod.MSDeformAttn(**MODULE_ARGS)
    init_stats = {k: stats(v.detach().double().numpy()) for k, v in init.state_dict().items()}
    module = mod.MSDeformAttn(**MODULE_ARGS).double().eval()
    manifest = manifest_of(module)
    module.load_state_dict(recipe_state(manifest, SEED))
    n, lq, c = 2, 5, MODULE_ARGS["d_model"]
    shapes = MODULE_SHAPES
    s = sum(h * w for h, w in shapes)
    nl = len(shapes)
    inputs = [["query", [n, lq, c], "input"], ["input_flatten", [n, s, c], "input"],
              ["ref_points_raw", [n, lq, nl, 2], "input"], ["ref_boxes_raw", [n, lq, nl, 4], "input"],
              ["grad_weight", [n, lq, c], "input"]]
    arr = {name: torch.from_numpy(fake_value(SEED, name, tuple(shape), kind)) for name, shape, kind in inputs}
    ref_points = 0.5 + 0.5 * arr["ref_points_raw"]
    ref_boxes = 0.5 + 0.45 * arr["ref_boxes_raw"]
    shapes_t = torch.as_tensor(shapes, dtype=torch.long)
    start = torch.cat((shapes_t.new_zeros((1,)), shapes_t.prod(1).cumsum(0)[:-1]))
    mask = torch.from_numpy(np.concatenate([m.reshape(n, -1) for m in level_masks(n, shapes, True)], 1))
    out2 = module(arr["query"], ref_points, arr["input_flatten"], shapes_t, start, mask)
    out4 = module(arr["query"], ref_boxes, arr["input_flatten"], shapes_t, start, None)
    ((out2 + out4) * arr["grad_weight"]).sum().backward()
    params = dict(module.named_parameters())
    arrays = {"out_points": out2.detach().numpy(), "out_boxes": out4.detach().numpy(), "padding_mask": mask.numpy(),
              "init/sampling_offsets.bias": init.sampling_offsets.bias.detach().double().numpy()}
    for name in MODULE_GRADS:
        arrays[f"grad/{name}"] = params[name].grad.numpy()
    meta = {"case": "msda_module", "seed": SEED, "module_args": MODULE_ARGS, "spatial_shapes": shapes,
            "manifest": manifest, "inputs": inputs,
            "derived": {"ref_points": "0.5 + 0.5 * ref_points_raw", "ref_boxes": "0.5 + 0.45 * ref_boxes_raw",
                        "padding_mask": "stored", "out_points": "module(query, ref_points, input_flatten, shapes, "
                        "start, padding_mask)", "out_boxes": "module(query, ref_boxes, input_flatten, shapes, start, "
                        "None)"},
            "loss": "sum((out_points + out_boxes) * grad_weight)", "grad_params": list(MODULE_GRADS),
            "init": f"torch.manual_seed({SEED}); MSDeformAttn(**module_args) in float32",
            "init_stats": init_stats, "official": "models/old_models/deformable_detr/ops/modules/ms_deform_attn.py",
            "stats": {k: stats(v) for k, v in arrays.items()}, "versions": versions}
    return meta, arrays


def build_official_transformer(dt, mlp, options):
    import torch

    model = dt.DeformableTransformer(return_intermediate_dec=options["intermediate"], two_stage=False,
                                     **TRANSFORMER_ARGS)
    if options["refine"]:
        c = TRANSFORMER_ARGS["d_model"]
        model.decoder.bbox_embed = torch.nn.ModuleList([mlp(c, c, 4, 3) for _ in range(model.decoder.num_layers)])
    return model


def run_transformer_case(dt, mlp, name, seed, options, versions):
    import torch
    from recipe import fake_value

    torch.manual_seed(seed)
    init = dt.DeformableTransformer(return_intermediate_dec=options["intermediate"], two_stage=False,
                                    **TRANSFORMER_ARGS)
    init_stats = {k: stats(v.detach().double().numpy()) for k, v in init.state_dict().items()}
    model = build_official_transformer(dt, mlp, options).double().eval()
    manifest = manifest_of(model)
    model.load_state_dict(recipe_state(manifest, seed))
    c = TRANSFORMER_ARGS["d_model"]
    inputs = []
    for lvl, (h, w) in enumerate(LEVEL_SHAPES):
        inputs += [[f"src_l{lvl}", [BATCH, c, h, w], "input"], [f"pos_l{lvl}", [BATCH, c, h, w], "input"]]
    query_shape = [QUERIES, 2 * c] if options["query"] == "shared" else [BATCH, QUERIES, 2 * c]
    inputs.append(["query_embed", query_shape, "input"])
    arr = {n: torch.from_numpy(fake_value(seed, n, tuple(s), k)) for n, s, k in inputs}
    for key in arr:
        arr[key].requires_grad_(key in ("src_l0", "query_embed", "pos_l3"))
    masks = [torch.from_numpy(m) for m in level_masks(BATCH, LEVEL_SHAPES, options["pad"])]
    captured = {}
    model.encoder.register_forward_hook(lambda mod_, args, out: captured.__setitem__("memory", out))
    srcs = [arr[f"src_l{lvl}"] for lvl in range(len(LEVEL_SHAPES))]
    poses = [arr[f"pos_l{lvl}"] for lvl in range(len(LEVEL_SHAPES))]
    hs, init_ref, inter_refs, _, _ = model(srcs, masks, poses, arr["query_embed"])
    grad_inputs = [["grad_weight_hs", list(hs.shape), "input"], ["grad_weight_ref", list(init_ref.shape), "input"]]
    gw = {n: torch.from_numpy(fake_value(seed, n, tuple(s), k)) for n, s, k in grad_inputs}
    loss = (hs * gw["grad_weight_hs"]).sum() + (init_ref * gw["grad_weight_ref"]).sum()
    loss.backward()
    params = dict(model.named_parameters())
    arrays = {"memory": captured["memory"].detach().numpy(), "hs": hs.detach().numpy(),
              "init_reference": init_ref.detach().numpy(), "inter_references": inter_refs.detach().numpy(),
              "grad/input/src_l0": arr["src_l0"].grad.numpy(), "grad/input/pos_l3": arr["pos_l3"].grad.numpy(),
              "grad/input/query_embed": arr["query_embed"].grad.numpy()}
    for lvl, m in enumerate(masks):
        arrays[f"mask_l{lvl}"] = m.numpy()
    for p in TRANSFORMER_GRADS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    meta = {"case": name, "seed": seed, "options": options, "transformer_args": TRANSFORMER_ARGS,
            "level_shapes": LEVEL_SHAPES, "batch": BATCH, "queries": QUERIES, "manifest": manifest,
            "inputs": inputs + grad_inputs, "loss": "sum(hs * grad_weight_hs) + sum(init_reference * grad_weight_ref)",
            "grad_params": list(TRANSFORMER_GRADS), "official_state_dict_keys": list(model.state_dict()),
            "official_call": "DeformableTransformer(**transformer_args, return_intermediate_dec=options.intermediate, "
                             "two_stage=False); decoder.bbox_embed = ModuleList(MLP(C, C, 4, 3) per decoder layer) "
                             "if options.refine; model(srcs, masks, pos_embeds, query_embed)",
            "init": f"torch.manual_seed({seed}); DeformableTransformer(...) in float32 (no bbox_embed)",
            "init_stats": init_stats, "stats": {k: stats(v) for k, v in arrays.items()}, "versions": versions}
    return meta, arrays


# arrays larger than this are stored as every step-th element of their flattened form (meta "sampled": step;
# their full statistics stay in "stats"), which keeps each fixture under 2 MiB
SAMPLE_LIMIT = 4096


def write(out_dir, name, meta, arrays):
    sampled = {}
    for key, value in list(arrays.items()):
        if value.size > SAMPLE_LIMIT and value.dtype != bool:
            step = -(-value.size // SAMPLE_LIMIT)
            arrays[key] = value.reshape(-1)[::step]
            sampled[key] = step
    meta["sampled"] = sampled
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=0) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    print(name, {k: v["shape"] for k, v in meta["stats"].items()})


# whole-head cases: name -> (variant, seed, d_model, channels of CSN layer1..layer4). The fork's D4 hard-codes its
# action cross-attention to width 256, so its case runs at D = 256.
HEAD_CASES = {
    "head_d2": ("D2", 10, 32, (16, 64, 48, 40)),
    "head_d3": ("D3", 11, 32, (16, 64, 48, 40)),
    "head_d4": ("D4", 12, 256, (16, 64, 48, 40)),
}
HEAD_FRAMES, HEAD_SIZE, HEAD_BATCH, HEAD_QUERIES, HEAD_ACTIONS = 32, (64, 48), 2, 4, 6
# CSN layer1..layer4 for a 32-frame 64x48 clip with LAST_STRIDE False: temporal strides 1, 2, 4, 8; spatial 4, 8, 16, 16
HEAD_LEVELS = [(32, 16, 12), (16, 8, 6), (8, 4, 3), (4, 4, 3)]
HEAD_GRADS = {
    "common": ("input_proj.0.0.weight", "input_proj.3.0.weight", "input_proj.2.1.bias", "class_embed_b.weight"),
    "D2": ("conv3d_0.0.0.weight", "conv3d_3.0.1.weight", "query_embed.weight", "transformer.level_embed",
           "transformer.encoder.layers.0.self_attn.sampling_offsets.weight", "class_embed.1.weight",
           "bbox_embed.0.layers.2.weight"),
    "D3": ("query_pool.weight", "pool_decoder.layers.0.linear1.weight", "query_embed.weight", "query_embed2.weight",
           "transformer2.level_embed", "transformer1.decoder.layers.0.multihead_attn.in_proj_weight",
           "bbox_embed2.layers.0.weight", "class_embed.0.weight"),
    "D4": ("query_pool.weight", "pool_decoder.layers.0.multihead_attn.in_proj_weight", "query_embed.weight",
           "transformer.level_embed", "class_proj.weight", "encoder.layers.0.self_attn_t.in_proj_weight",
           "cross_attn.in_proj_weight", "class_fc.weight", "bbox_embed.1.layers.0.weight"),
}


def fake_joiner(levels, channels, d_model):
    """The fork's ``Joiner(Backbone, PositionEmbeddingSine)`` with its CSN replaced by the given stage outputs:
    the fork's own ``Backbone.forward`` (masks, time-major flattening) and 2-D sine positions run on them."""
    import torch
    from torch import nn

    import models.backbone_3d_builder2 as builder
    from models.seqformer.position_encoding import PositionEmbeddingSine

    class Body(nn.Module):
        def forward(self, _video):
            return {str(i): x for i, x in enumerate(levels)}

    backbone = builder.Backbone.__new__(builder.Backbone)
    nn.Module.__init__(backbone)
    backbone.body = Body()
    backbone.backbone_name = "CSN-50"
    backbone.temporal_ds_strategy = "decode"
    backbone.strides = [8, 16, 32]
    backbone.num_channels = list(channels[1:])
    assert torch.is_tensor(levels[0])
    return builder.Joiner(backbone, PositionEmbeddingSine(d_model // 2, normalize=True))


def build_official_head(dt, variant, d_model, channels, levels):
    import importlib
    from types import SimpleNamespace

    from models.transformer.transformer import build_transformer

    deformable = dt.DeformableTransformer(d_model=d_model, nhead=8 if d_model == 256 else 4, num_encoder_layers=1,
                                          num_decoder_layers=2, dim_feedforward=64, dropout=0.1, activation="relu",
                                          return_intermediate_dec=True, num_feature_levels=4, dec_n_points=2,
                                          enc_n_points=2, two_stage=False, two_stage_num_proposals=HEAD_QUERIES)
    common = dict(num_classes=HEAD_ACTIONS, num_queries=HEAD_QUERIES, num_feature_levels=4, num_frames=HEAD_FRAMES,
                  hidden_dim=d_model, temporal_length=HEAD_FRAMES, aux_loss=True, generate_lfb=False,
                  backbone_name="CSN-50", ds_rate=8, last_stride=False, dataset_mode="ava")
    backbone = fake_joiner(levels, channels, d_model)
    module = importlib.import_module(f"models.old_models.deformable_tuber{variant[1]}")
    if variant == "D3":
        model_cfg = SimpleNamespace(D_MODEL=d_model, DROPOUT=0.1, NHEAD=4, DIM_FEEDFORWARD=64, ENC_LAYERS=1,
                                    DEC_LAYERS=2, NORMALIZE_BEFORE=False, TEMP_LEN=HEAD_FRAMES, DS_RATE=8,
                                    SINGLE_FRAME=True)
        detr = build_transformer(SimpleNamespace(CONFIG=SimpleNamespace(MODEL=model_cfg)))
        return module.DETR(backbone, transformer1=detr, transformer2=deformable, **common)
    return module.DETR(backbone, deformable, **common)


def run_head_case(dt, name, variant, seed, d_model, channels, versions):
    import torch
    from recipe import fake_value

    from utils.misc import NestedTensor

    inputs = [[f"layer{i + 1}", [HEAD_BATCH, c, *HEAD_LEVELS[i]], "input"] for i, c in enumerate(channels)]
    arr = {n: torch.from_numpy(fake_value(seed, n, tuple(s), k)) for n, s, k in inputs}
    levels = [arr[f"layer{i + 1}"].requires_grad_(i in (1, 3)) for i in range(4)]
    model = build_official_head(dt, variant, d_model, channels, levels).double().eval()
    manifest = [m for m in manifest_of(model) if not m[0].startswith("backbone.")]
    model.load_state_dict(recipe_state(manifest, seed), strict=False)
    video = torch.zeros(HEAD_BATCH, 3, HEAD_FRAMES, *HEAD_SIZE, dtype=torch.float64)
    samples = NestedTensor(video, torch.zeros(HEAD_BATCH, *HEAD_SIZE, dtype=torch.bool))
    out = model(samples)
    per_layer = {key: torch.stack([a[key] for a in out["aux_outputs"]] + [out[key]])
                 for key in ("pred_logits", "pred_boxes", "pred_logits_b")}
    grad_inputs = [[f"grad_weight_{k}", list(v.shape), "input"] for k, v in per_layer.items()]
    gw = {n: torch.from_numpy(fake_value(seed, n, tuple(s), k)) for n, s, k in grad_inputs}
    loss = sum((v * gw[f"grad_weight_{k}"]).sum() for k, v in per_layer.items())
    loss.backward()
    params = model.state_dict(keep_vars=True)  # every name, also of the box heads the decoder shares
    grads = HEAD_GRADS["common"] + HEAD_GRADS[variant]
    arrays = {f"out/{k}": v.detach().numpy() for k, v in per_layer.items()}
    arrays["grad/input/layer2"] = levels[1].grad.numpy()
    arrays["grad/input/layer4"] = levels[3].grad.numpy()
    for p in grads:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    meta = {"case": name, "variant": variant, "seed": seed, "d_model": d_model, "level_channels": list(channels),
            "frames": HEAD_FRAMES, "clip_size": list(HEAD_SIZE), "batch": HEAD_BATCH, "queries": HEAD_QUERIES,
            "actions": HEAD_ACTIONS, "deformable": {"nhead": 8 if d_model == 256 else 4, "enc_layers": 1,
                                                     "dec_layers": 2, "dim_feedforward": 64, "enc_points": 2,
                                                     "dec_points": 2},
            "manifest": manifest, "inputs": inputs + grad_inputs, "grad_params": list(grads),
            "official_state_dict_keys": [k for k in model.state_dict() if not k.startswith("backbone.")],
            "loss": "sum over pred_logits / pred_boxes / pred_logits_b (every layer, aux first) of value * weight",
            "official_call": f"models/old_models/deformable_tuber{variant[1]}.py DETR(fake Joiner, ...); eval; "
                             "samples = NestedTensor(zeros [B, 3, 32, 64, 48], mask all False)",
            "stats": {k: stats(v) for k, v in arrays.items()}, "versions": versions}
    return meta, arrays


# whole-detector cases: the fork's build_model of each variant (its CSN-50, criterion, PostProcessAVA) from its
# own yaml with these overrides, two equal-size clips (the fork's time/batch regrouping shows; no padding),
# recipe weights except for the parameters the variant builds but never calls
_CSN_GRADS = ("backbone.0.body.conv1.weight", "backbone.0.body.layer2.0.conv3.weight", "input_proj.0.0.weight",
              "class_embed_b.bias")
_CSN_BUFFERS = ("backbone.0.body.bn1.running_mean", "backbone.0.body.layer4.2.bn4.running_var")
_WRAPPER = ("backbone.0.query_pool.", "backbone.0.pool_decoder.")
DETECTOR_CASES = {
    "detector_d2": {
        "variant": "D2", "seed": 20, "unused": _WRAPPER + ("class_proj.", "encoder.", "cross_attn."),
        "grads": _CSN_GRADS + ("conv3d_1.0.0.weight", "transformer.level_embed",
                               "transformer.decoder.layers.1.cross_attn.sampling_offsets.weight", "query_embed.weight",
                               "class_embed.1.weight", "bbox_embed.0.layers.0.weight"),
        "buffers": _CSN_BUFFERS + ("conv3d_0.2.1.running_mean", "conv3d_3.0.1.running_var")},
    "detector_d3": {
        "variant": "D3", "seed": 21, "unused": _WRAPPER + ("encoder.", "cross_attn."),
        "grads": _CSN_GRADS + ("query_pool.weight", "pool_decoder.layers.0.linear1.weight", "query_embed.weight",
                               "query_embed2.weight", "transformer1.encoder.layers.0.self_attn.in_proj_weight",
                               "transformer2.level_embed", "bbox_embed2.layers.2.weight", "class_embed.1.weight"),
        "buffers": _CSN_BUFFERS},
    "detector_d4": {
        "variant": "D4", "seed": 22, "unused": _WRAPPER,
        "grads": _CSN_GRADS + ("query_pool.weight", "transformer.level_embed", "class_proj.weight",
                               "encoder.layers.0.self_attn_s.in_proj_weight", "cross_attn.in_proj_weight",
                               "class_fc.weight", "bbox_embed.1.layers.0.weight"),
        "buffers": _CSN_BUFFERS},
}
DETECTOR_COMMON = {"overrides": {"ENC_LAYERS": 1, "DEC_LAYERS": 2, "QUERY_NUM": 5},
                   "clip_sizes": [[32, 32, 48], [32, 32, 48]], "gt_counts": [2, 1]}
# the fork's matcher and loss settings (CONFIG.MATCHER / CONFIG.LOSS_COFS) recorded with each case
OFFICIAL_COSTS = {"MATCHER": ("COST_CLASS", "COST_BBOX", "COST_GIOU"),
                  "LOSS_COFS": ("DICE_COF", "BBOX_COF", "GIOU_COF", "WEIGHT", "EOS_COF")}

class _Float64Full:
    """``torch`` as the fork's criterion sees it: ``full(dtype=float32)`` gives float64, so its BCE targets and
    weights follow a float64 model (the same shim as the TubeR section's)."""

    def __init__(self, torch):
        self._torch = torch

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def full(self, *args, dtype=None, **kwargs):
        return self._torch.full(*args, dtype=self._torch.float64 if dtype is self._torch.float32 else dtype, **kwargs)


def run_detector_case(fork, name, versions):
    """The fork's whole detector of a variant (``models/old_models/deformable_tuber{2,3,4}.py`` ``build_model``) in
    float64, eval mode, then one training-mode forward."""
    import contextlib
    import io

    import torch
    from recipe import GEN_VERSION, fake_input, fake_value, tuber_state, tuber_targets

    from pipelines.video_action_recognition_config import get_cfg_defaults

    case = {**DETECTOR_COMMON, **DETECTOR_CASES[name]}
    seed, variant = case["seed"], case["variant"]
    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(Path(fork) / "configuration" / "old_models" / f"{variant}_TubeR_CSN50_AVA21.yaml"))
    for key, value in case["overrides"].items():
        setattr(cfg.CONFIG.MODEL, key, value)
    cfg.CONFIG.MODEL.PRETRAINED = False
    with contextlib.redirect_stdout(io.StringIO()):
        import models.criterion as official_criterion
        import importlib

        build_model = importlib.import_module(f"models.old_models.deformable_tuber{variant[1]}").build_model
        torch.manual_seed(seed)
        model, criterion, postprocess = build_model(cfg)
    state = model.state_dict()
    entries = [[k, list(v.shape)] for k, v in state.items()
               if not k.endswith("num_batches_tracked") and not k.startswith(case["unused"])]
    values = tuber_state(seed, entries)
    for k in values:  # one value for the box heads the decoder shares
        for prefix in ("transformer.decoder.bbox_embed.", "transformer2.decoder.bbox_embed."):
            if k.startswith(prefix):
                values[k] = values["bbox_embed." + k[len(prefix):]]
    model.load_state_dict({k: torch.from_numpy(values[k]).to(v.dtype) if k in values else v
                           for k, v in state.items()})
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
        layers = [*outputs["aux_outputs"], {k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_logits_b")}]
        arrays = {}
        for k, layer in enumerate(layers):
            for key, ours in (("pred_logits_b", "logits_b"), ("pred_boxes", "boxes"), ("pred_logits", "logits")):
                arrays[f"out/{ours}/layer{k}"] = layer[key].detach().numpy()
        matches = {f"layer{k}": [[i.tolist(), j.tolist()] for i, j in criterion.matcher(layer, targets)]
                   for k, layer in enumerate(layers)}
        loss_dict = criterion(outputs, targets)
    finally:
        official_criterion.torch = torch
    weight_dict = criterion.weight_dict
    losses = {k: float(v.detach()) for k, v in loss_dict.items() if torch.is_tensor(v) and k in weight_dict}
    total = sum(loss_dict[k] * weight_dict[k] for k in losses)
    model.zero_grad()
    total.backward()
    params = model.state_dict(keep_vars=True)
    for p in case["grads"]:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    with torch.no_grad():
        sizes_hw = torch.tensor([[s[1], s[2]] for s in case["clip_sizes"]], dtype=torch.float64)
        scores, boxes, switch = postprocess["bbox"](model(clips), sizes_hw)
    arrays["det/scores"] = scores
    arrays["det/boxes_normalized"] = boxes / np.stack([sizes_hw[:, 1], sizes_hw[:, 0]] * 2, axis=1)[:, None]
    arrays["det/switch"] = switch
    for i, (b, lab) in enumerate(gts):
        arrays[f"target/boxes_cxcywh_{i}"] = b
        arrays[f"target/labels_{i}"] = lab
    # training mode (BatchNorm batch statistics, running statistics updated) with every dropout at 0
    for m in model.modules():  # nn.Dropout, and every attention keeping its rate as a float ``dropout``
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):  # nn.MultiheadAttention, the LSTR's DotProductAttention
            m.dropout = 0.0
    model.train()
    with torch.no_grad():
        outputs = model(clips)
    layers = [*outputs["aux_outputs"], {k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_logits_b")}]
    for k, layer in enumerate(layers):
        for key, ours in (("pred_logits_b", "logits_b"), ("pred_boxes", "boxes"), ("pred_logits", "logits")):
            arrays[f"train/out/{ours}/layer{k}"] = layer[key].numpy()
    buffers = model.state_dict()
    for key in case["buffers"]:
        arrays[f"train/{key}"] = buffers[key].numpy()
    meta = {"case": name, "variant": variant, "seed": seed, "gen_version": GEN_VERSION,
            "clip_sizes": case["clip_sizes"], "gt_counts": case["gt_counts"], "overrides": case["overrides"],
            "official_config": f"configuration/old_models/{variant}_TubeR_CSN50_AVA21.yaml",
            "official_costs": {f"{node}.{k}": float(getattr(getattr(cfg.CONFIG, node), k))
                               for node, keys in OFFICIAL_COSTS.items() for k in keys},
            "official_call": f"models.old_models.deformable_tuber{variant[1]}.build_model(cfg) -> model(list of clips), "
                             "criterion(outputs, targets), PostProcessAVA(outputs, sizes)",
            "official_state_dict": entries, "unused_prefixes": list(case["unused"]),
            "weight_dict": {k: float(v) for k, v in weight_dict.items()}, "losses": losses,
            "total_loss": float(total.detach()), "matches": matches, "grad_params": list(case["grads"]),
            "mode": "eval (no dropout, BatchNorm running statistics), float64; train/*: one training-mode forward "
                    "(dropout 0) after everything else", "train_buffers": list(case["buffers"]),
            "versions": versions,
            "stats": {k: stats(v) for k, v in arrays.items()}}
    return meta, arrays


def run_deformable_section(fork, out, versions):
    """Write ``<out>/deformable/<case>.{json,npz}`` for every case."""
    dt, mod, func, mlp = load_fork(Path(fork).resolve())
    out_dir = Path(out) / "deformable"
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir, "msda_function", *run_function_case(func, out_dir, versions))
    write(out_dir, "msda_module", *run_module_case(mod, out_dir, versions))
    for name, (seed, options) in TRANSFORMER_CASES.items():
        write(out_dir, name, *run_transformer_case(dt, mlp, name, seed, options, versions))
    for name, (variant, seed, d_model, channels) in HEAD_CASES.items():
        write(out_dir, name, *run_head_case(dt, name, variant, seed, d_model, channels, versions))
    for name in DETECTOR_CASES:
        write(out_dir, name, *run_detector_case(fork, name, versions))
