"""Run the Deformable TubeR fixtures (tests/reference/tuber/deformable) through our code.

``python -m stmixer.tools.reference_parity --fixture tests/reference/tuber/deformable --out OUT.npz`` comes
here (``is_deformable_fixture``): the folder holds one ``<case>.json`` + ``<case>.npz`` per case, made by
tests/reference/make_query_detector_fixtures.py --sections deformable from the TubeR fork (its README).
Every weight and input is rebuilt from the kit's ``recipe.py`` (``DIR/../recipe.py``) by the json's
``[name, shape, kind(, recipe name)]`` lists; the model named by the case runs in the requested dtype and
its results are written as ``<precision>/<case>/<name>`` with the names, shapes and sampling (json
``sampled``) of ``<case>.npz``. The ``.npz`` answers are never read here.

Cases (json ``case``): ``msda_function`` (``ms_deform_attn_pytorch``), ``msda_module`` (``MSDeformAttn``),
``transformer_*`` (``DeformableTransformer`` with DETR box heads for refinement), ``head_*``
(``DeformableTubeRHead`` of variant json ``variant`` on given CSN stage outputs), ``detector_*`` (the whole
TubeR detector of that variant, the fork's weights loaded as a fork checkpoint; also writes ``loss/*`` and
``match/*``, which the fork's answers keep in the json).
"""

import torch
from torch import nn

from ..modeling.layers import MSDeformAttn, ms_deform_attn_pytorch
from ..modeling.tuber.deformable_transformer import DeformableTransformer
from ..modeling.tuber.deformable_tuber import DeformableTubeRHead, DeformableTubeRTransformer
from ..modeling.tuber.head import MLP
from ..modeling.tuber.parity import as_stored  # noqa: F401  (callers of this module use it)
from ..modeling.tuber.parity import (cxcywh_targets, fixture_inputs, fork_detector_outputs, json_cases,
                                     load_fork_detector, run_fork_fixture)
from ..modeling.tuber.transformer import DETRTransformer

CASE_PREFIXES = ("msda_function", "msda_module", "transformer_", "head_", "detector_")


class DeformableFixtureError(RuntimeError):
    """A Deformable TubeR fixture folder that is incomplete or does not fit the model."""


def case_files(fixture):
    """``[(case name, json path)]`` of the Deformable TubeR cases in ``fixture`` (a folder)."""
    return [(meta["case"], path) for meta, path in
            json_cases(fixture, lambda meta: isinstance(meta.get("case"), str)
                       and meta["case"].startswith(CASE_PREFIXES))]


def is_deformable_fixture(fixture):
    return bool(case_files(fixture))


def recipe_arrays(recipe, entries, seed, dtype):
    """``{name: tensor}`` for ``[name, shape, kind]`` (inputs) or ``[name, shape, kind, recipe name]`` (weights)."""
    return {e[0]: torch.from_numpy(recipe.fake_value(seed, e[-1] if len(e) == 4 else e[0], tuple(e[1]), e[2]))
            .to(dtype) for e in entries}


def _load_weights(module, meta, recipe, dtype):
    state = recipe_arrays(recipe, meta["manifest"], meta["seed"], dtype)
    ours = module.state_dict()
    missing, unexpected = module.load_state_dict({k: v for k, v in state.items() if k in ours}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing:
        raise DeformableFixtureError(f"{meta['case']}: the fixture has no weights for {missing[:5]}")


def run_function(meta, recipe, dtype):
    arr = recipe_arrays(recipe, meta["inputs"], meta["seed"], dtype)
    value = arr["value"].requires_grad_(True)
    n, lq = arr["locations_raw"].shape[:2]
    m, nl = value.shape[2], len(meta["spatial_shapes"])
    locations = (0.5 + 0.6 * arr["locations_raw"]).requires_grad_(True)
    weights = arr["weight_logits"].softmax(-1).view(n, lq, m, nl, -1).detach().requires_grad_(True)
    out = ms_deform_attn_pytorch(value, meta["spatial_shapes"], locations, weights)
    (out * arr["grad_weight"]).sum().backward()
    return {"out": out, "grad/value": value.grad, "grad/locations": locations.grad, "grad/weights": weights.grad}


def run_module(meta, recipe, dtype):
    torch.manual_seed(meta["seed"])
    init = MSDeformAttn(**meta["module_args"])
    module = MSDeformAttn(**meta["module_args"]).to(dtype).eval()
    _load_weights(module, meta, recipe, dtype)
    arr = recipe_arrays(recipe, meta["inputs"], meta["seed"], dtype)
    shapes = torch.as_tensor(meta["spatial_shapes"], dtype=torch.long)
    start = torch.cat((shapes.new_zeros((1,)), shapes.prod(1).cumsum(0)[:-1]))
    n = arr["query"].shape[0]
    mask = torch.cat([_level_mask(n, h, w, True).flatten(1) for h, w in meta["spatial_shapes"]], 1)
    out2 = module(arr["query"], 0.5 + 0.5 * arr["ref_points_raw"], arr["input_flatten"], shapes, start, mask)
    out4 = module(arr["query"], 0.5 + 0.45 * arr["ref_boxes_raw"], arr["input_flatten"], shapes, start, None)
    ((out2 + out4) * arr["grad_weight"]).sum().backward()
    params = dict(module.named_parameters())
    result = {"out_points": out2, "out_boxes": out4, "padding_mask": mask,
              "init/sampling_offsets.bias": init.sampling_offsets.bias.detach().to(dtype)}
    result.update({f"grad/{p}": params[p].grad for p in meta["grad_params"]})
    return result


def _level_mask(batch, h, w, pad):
    """The fixtures' padding: clip 1 padded on its last quarter of columns (at least one) and its last row."""
    mask = torch.zeros(batch, h, w, dtype=torch.bool)
    if pad and batch > 1:
        mask[1, :, w - max(1, w // 4):] = True
        if h > 1:
            mask[1, h - 1:, :] = True
    return mask


def run_transformer(meta, recipe, dtype):
    args, options = dict(meta["transformer_args"]), meta["options"]
    model = DeformableTransformer(return_intermediate_dec=options["intermediate"], **args)
    if options["refine"]:
        c = args["d_model"]
        model.decoder.bbox_embed = nn.ModuleList(MLP(c, c, 4, 3) for _ in range(model.decoder.num_layers))
    model = model.to(dtype).eval()
    _load_weights(model, meta, recipe, dtype)
    arr = recipe_arrays(recipe, meta["inputs"], meta["seed"], dtype)
    for key in ("src_l0", "query_embed", "pos_l3"):
        arr[key].requires_grad_(True)
    batch = meta["batch"]
    masks = [_level_mask(batch, h, w, options["pad"]) for h, w in meta["level_shapes"]]
    captured = {}
    hook = model.encoder.register_forward_hook(lambda mod, inputs, out: captured.__setitem__("memory", out))
    levels = range(len(meta["level_shapes"]))
    hs, init_ref, inter_refs, _, _ = model([arr[f"src_l{i}"] for i in levels], masks if options["pad"] else None,
                                           [arr[f"pos_l{i}"] for i in levels], arr["query_embed"])
    hook.remove()
    ((hs * arr["grad_weight_hs"]).sum() + (init_ref * arr["grad_weight_ref"]).sum()).backward()
    params = dict(model.named_parameters())
    result = {"memory": captured["memory"], "hs": hs, "init_reference": init_ref, "inter_references": inter_refs}
    result.update({f"grad/input/{k}": arr[k].grad for k in ("src_l0", "pos_l3", "query_embed")})
    result.update({f"mask_l{i}": m for i, m in enumerate(masks)})
    result.update({f"grad/{p}": params[p].grad for p in meta["grad_params"]})
    return result


def build_head(meta):
    """Our ``DeformableTubeRHead`` with the fixture's settings."""
    d, t = meta["d_model"], meta["deformable"]
    deformable = DeformableTubeRTransformer(d_model=d, nhead=t["nhead"], num_encoder_layers=t["enc_layers"],
                                            num_decoder_layers=t["dec_layers"], dim_feedforward=t["dim_feedforward"],
                                            return_intermediate_dec=True, num_feature_levels=4,
                                            dec_n_points=t["dec_points"], enc_n_points=t["enc_points"])
    detr = DETRTransformer(d, 4, 1, 2, 64, 0.1, "relu", False) if meta["variant"] == "D3" else None
    return DeformableTubeRHead(deformable, meta["variant"], num_queries=meta["queries"], num_actions=meta["actions"],
                               level_channels=tuple(meta["level_channels"][1:]), num_frames=meta["frames"],
                               batch_time_mix=True, detr_transformer=detr)


def run_head(meta, recipe, dtype):
    head = build_head(meta).to(dtype).eval()
    _load_weights(head, meta, recipe, dtype)
    arr = recipe_arrays(recipe, meta["inputs"], meta["seed"], dtype)
    levels = [arr[f"layer{i + 1}"].requires_grad_(i in (1, 3)) for i in range(4)]
    out = head(levels, torch.zeros(meta["batch"], *meta["clip_size"], dtype=torch.bool))
    pairs = {"pred_logits": out["logits"], "pred_boxes": out["boxes"], "pred_logits_b": out["logits_b"]}
    sum((v * arr[f"grad_weight_{k}"]).sum() for k, v in pairs.items()).backward()
    params = head.state_dict(keep_vars=True)
    result = {f"out/{k}": v for k, v in pairs.items()}
    result.update({"grad/input/layer2": levels[1].grad, "grad/input/layer4": levels[3].grad})
    result.update({f"grad/{p}": params[p].grad for p in meta["grad_params"]})
    return result


def detector_config(meta):
    """Our config of the fork's yaml of the case's variant (config_files/tuber/D{2,3,4}_TubeR_CSN50_AVA21.yaml) with
    the case's overrides."""
    from ..config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "TubeR"
    cfg.MODEL.BACKBONE.CONV_BODY = "CSN-50"
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    cfg.MODEL.CSN.LAST_STRIDE = False
    cfg.MODEL.STM.ACTION_CLASSES = 80
    cfg.DATA.NUM_FRAMES = meta["clip_sizes"][0][0]
    t = cfg.MODEL.TUBER
    t.TRANSFORMER, t.DEFORMABLE.VARIANT = "deformable", meta["variant"]
    over = meta["overrides"]
    t.ENC_LAYERS, t.DEC_LAYERS, t.NUM_QUERIES = over["ENC_LAYERS"], over["DEC_LAYERS"], over["QUERY_NUM"]
    costs = meta["official_costs"]
    t.COST_CLASS, t.COST_BBOX, t.COST_GIOU = (costs[f"MATCHER.{k}"] for k in ("COST_CLASS", "COST_BBOX", "COST_GIOU"))
    t.ACTION_WEIGHT, t.L1_WEIGHT, t.GIOU_WEIGHT, t.SWITCH_WEIGHT = (
        costs["LOSS_COFS.DICE_COF"], costs["LOSS_COFS.BBOX_COF"], costs["LOSS_COFS.GIOU_COF"], 1.0)
    t.MATCHED_WEIGHT, t.EOS_COEF = costs["LOSS_COFS.WEIGHT"], costs["LOSS_COFS.EOS_COF"]
    t.BACKBONE_LR_FACTOR = {"D2": 0.1, "D3": 1 / 21, "D4": 1.0}[meta["variant"]]  # LR_BACKBONE / LR (training)
    return cfg


def our_detector_param(name):
    """Our parameter path of a fork D-TubeR name (``backbone.0.body.*`` is the CSN)."""
    from ..checkpoint.csn import tuber_key

    return tuber_key(name)


def run_detector(meta, recipe, dtype):
    """The whole detector: weights as a fork checkpoint through ``load_weights`` (format ``tuber``), the recipe's
    clips and ground truth; per-layer predictions, unweighted losses, matches, gradients, detections."""
    values = recipe.tuber_state(meta["seed"], meta["official_state_dict"])
    for k in values:  # one value for the box heads the decoder shares
        for prefix in ("transformer.decoder.bbox_embed.", "transformer2.decoder.bbox_embed."):
            if k.startswith(prefix):
                values[k] = values["bbox_embed." + k[len(prefix):]]
    model = load_fork_detector(detector_config(meta), values, meta["case"], DeformableFixtureError, dtype)
    video, whwh = fixture_inputs(meta, recipe, dtype)
    boxes, labels = cxcywh_targets(recipe.tuber_targets(meta["seed"], meta["gt_counts"], 80), whwh)
    return fork_detector_outputs(model, meta, video, whwh, boxes, labels, our_detector_param,
                                 ("logits_b", "boxes", "logits"), switch=True)


def run_case(meta, recipe, dtype=torch.float64):
    """Our full-size results of one case: ``{name: tensor}`` (names of the case's ``.npz``, and for the detector
    ours only: ``loss/<name>`` unweighted, ``match/layer{k}_{src,tgt}_b{i}``)."""
    case = meta["case"]
    if case.startswith("detector_"):
        return run_detector(meta, recipe, dtype)
    if case == "msda_function":
        return run_function(meta, recipe, dtype)
    if case == "msda_module":
        return run_module(meta, recipe, dtype)
    if case.startswith("transformer_"):
        return run_transformer(meta, recipe, dtype)
    return run_head(meta, recipe, dtype)


def run_deformable_fixture(fixture, dtype=torch.float64, device="cpu"):
    """``{"<case>/<name>": array}`` for every case of the folder (see the module docstring)."""
    return run_fork_fixture(fixture, case_files, run_case, DeformableFixtureError, "Deformable TubeR", dtype,
                            device)
