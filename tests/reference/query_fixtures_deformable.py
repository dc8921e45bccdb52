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
   Deformable DETR tests its CUDA kernel against).

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
                     "decoder.layers.0.cross_attn.attention_weights.weight", "decoder.layers.0.cross_attn.output_proj.bias",
                     "decoder.layers.1.self_attn.in_proj_weight", "decoder.layers.1.linear2.weight")
MODULE_ARGS = {"d_model": 16, "n_levels": 3, "n_heads": 4, "n_points": 2}
MODULE_SHAPES = [(4, 6), (2, 3), (1, 2)]
MODULE_GRADS = ("sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight", "value_proj.weight",
                "output_proj.weight", "output_proj.bias")


def param_kind(name, shape):
    """Recipe kind of a parameter: matrices fan-in uniform, LayerNorm scales in [0.5, 1], biases small,
    embeddings in [-1, 1]."""
    if name == "level_embed" or name.endswith("query_embed"):
        return "input"
    if len(shape) >= 2:
        return "conv_weight"
    if ".norm" in name and name.endswith(".weight"):
        return "bn_weight"
    return "bias"


def manifest_of(module):
    return [[k, list(v.shape), param_kind(k, tuple(v.shape))] for k, v in module.state_dict().items()]


def recipe_state(manifest, seed):
    import torch
    from recipe import fake_value

    return {name: torch.from_numpy(fake_value(seed, name, tuple(shape), kind)) for name, shape, kind in manifest}


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


def write(out_dir, name, meta, arrays):
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=0) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    print(name, {k: v["shape"] for k, v in meta["stats"].items()})


def run_deformable_section(fork, out, versions):
    """Write ``<out>/deformable/<case>.{json,npz}`` for every case."""
    dt, mod, func, mlp = load_fork(Path(fork).resolve())
    out_dir = Path(out) / "deformable"
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir, "msda_function", *run_function_case(func, out_dir, versions))
    write(out_dir, "msda_module", *run_module_case(mod, out_dir, versions))
    for name, (seed, options) in TRANSFORMER_CASES.items():
        write(out_dir, name, *run_transformer_case(dt, mlp, name, seed, options, versions))
