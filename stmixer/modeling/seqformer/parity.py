"""Run the SeqFormer fixtures (tests/reference/tuber/seqformer) through our code.

``python -m stmixer.tools.reference_parity --fixture tests/reference/tuber/seqformer --out OUT.npz`` comes here
(``is_seqformer_fixture``): the folder holds one ``<case>.json`` (``"model": "SeqFormer"``) + ``<case>.npz`` per
case, made by tests/reference/make_query_detector_fixtures.py --sections seqformer from the TubeR fork (README
there). The fork's weights are rebuilt from the kit's ``recipe.py`` (``DIR/../recipe.py``) by the json's
``official_state_dict`` and loaded as a fork checkpoint (``stmixer.checkpoint.load_weights``, format ``tuber``);
clips and ground truth come from the recipe too. Written as ``<precision>/<case>/<name>``: every name of
``<case>.npz`` except ``target/*`` (``out/{logits,boxes}/layer{k}``, ``grad/<fork parameter>``, ``det/scores``,
``det/boxes_normalized`` (clamped to [0, 1], as our detections), ``train/...``), plus ours only:
``loss/<name>`` (unweighted) and ``match/layer{k}_{src,tgt}_b{i}`` (the fork's are in the json). The ``.npz``
answers are never read here.
"""

import json
from pathlib import Path

import torch
from torch import nn


class SeqFormerFixtureError(RuntimeError):
    """A SeqFormer fixture folder that is incomplete or does not fit the model."""


def case_files(fixture):
    """``[(case name, json path)]`` of the SeqFormer cases in ``fixture`` (a folder)."""
    fixture = Path(fixture)
    if not fixture.is_dir():
        return []
    cases = []
    for path in sorted(fixture.glob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("model") == "SeqFormer" and isinstance(meta.get("case"), str):
            cases.append((meta["case"], path))
    return cases


def is_seqformer_fixture(fixture):
    return bool(case_files(fixture))


def _recipe(fixture):
    import importlib.util

    path = Path(fixture).parent / "recipe.py"
    if not path.is_file():
        raise SeqFormerFixtureError(f"{fixture}: the weights and inputs need the kit's recipe.py at {path}")
    spec = importlib.util.spec_from_file_location("stmixer_tuber_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seqformer_config(meta):
    """Our config of a case: config_files/tuber/SeqFormer_CSN50_AVA21.yaml's values with the case's overrides (the
    fork's ``CONFIG.MODEL`` / ``CONFIG.MODEL.SeqFormer`` / ``TRAIN.AUX_LOSS``)."""
    from ...config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SeqFormer"
    cfg.MODEL.BACKBONE.CONV_BODY = "CSN-50"
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.CSN.LAST_STRIDE = False
    cfg.MODEL.CSN.TEMPORAL_STRIDE = 1
    cfg.MODEL.STM.ACTION_CLASSES = 80
    cfg.DATA.NUM_FRAMES = meta["clip_sizes"][0][0]
    t, s = cfg.MODEL.TUBER, cfg.MODEL.SEQFORMER
    t.NUM_QUERIES = 20
    over = meta["model_overrides"]
    for ours, fork in (("ENC_LAYERS", "ENC_LAYERS"), ("DEC_LAYERS", "DEC_LAYERS"), ("NUM_QUERIES", "QUERY_NUM"),
                       ("D_MODEL", "D_MODEL"), ("NHEAD", "NHEAD"), ("DIM_FEEDFORWARD", "DIM_FEEDFORWARD")):
        if fork in over:
            t[ours] = over[fork]
    sf = meta["seqformer_overrides"]
    for ours, fork in (("BOX_REFINE", "BOX_REFINE"), ("NUM_FEATURE_LEVELS", "NUM_FEATURE_LEVELS"),
                       ("ENC_N_POINTS", "NUM_ENC_N_POINTS"), ("DEC_N_POINTS", "NUM_DEC_N_POINTS")):
        if fork in sf:
            s[ours] = sf[fork]
    s.DEEP_SUPERVISION = meta["aux_loss"]
    s.BATCH_TIME_MIX = "always"  # the fork's code: its eval-mode forward of two clips mixes them too
    costs = meta["official_costs"]
    s.COST_CLASS, s.COST_BBOX, s.COST_GIOU = (costs[f"LOSS_COFS.{k}"] for k in ("DICE_COF", "BBOX_COF", "GIOU_COF"))
    s.CLASS_WEIGHT, s.L1_WEIGHT, s.GIOU_WEIGHT = (costs[f"MATCHER.{k}"] for k in ("COST_CLASS", "COST_BBOX",
                                                                                  "COST_GIOU"))
    t.MATCHED_WEIGHT = 10.0  # SetCriterionAVA(weight=10): the fork's SeqFormer hard-codes it
    t.BACKBONE_LR_FACTOR = 0.05  # LR_BACKBONE / LR of the fork's yaml (training only)
    return cfg


def run_case(meta, recipe, dtype=torch.float64):
    """Our full-size results of one case ``{name: tensor}`` (module docstring)."""
    from ...checkpoint import checkpoint_from_object, load_weights
    from ...checkpoint.csn import tuber_key
    from ..build import build_detector

    values = recipe.tuber_state(meta["seed"], meta["official_state_dict"])
    for k in values:  # one value for the box heads the decoder shares (as the fixture)
        if k.startswith("transformer.decoder.bbox_embed."):
            values[k] = values["bbox_embed." + k[len("transformer.decoder.bbox_embed."):]]
    if not meta["seqformer_overrides"].get("BOX_REFINE", True):  # one head shared by every layer
        for k in values:
            for head in ("class_embed.", "bbox_embed."):
                if k.startswith(head):
                    values[k] = values[head + "0." + k[len(head):].split(".", 1)[1]]
    model = build_detector(seqformer_config(meta))
    report = load_weights(model, checkpoint_from_object({"model": {k: torch.from_numpy(v) for k, v in values.items()}},
                                                        "fork-fixture"), log=None)
    if not report.ok:
        raise SeqFormerFixtureError(f"{meta['case']}: the fork's weights do not load:\n{report.table()}")
    model = model.to(dtype)
    seed, sizes = meta["seed"], meta["clip_sizes"]
    clips = [torch.from_numpy(recipe.fake_input(seed, (3,) + tuple(s)) if i == 0 else
                              recipe.fake_value(seed, f"input_{i}", (3,) + tuple(s), "input"))
             for i, s in enumerate(sizes)]
    t_max, h_max, w_max = (max(s[d] for s in sizes) for d in range(3))
    video = torch.zeros(len(clips), 3, t_max, h_max, w_max, dtype=torch.float64)
    for i, c in enumerate(clips):  # zero padding at the bottom / right, as the fork's nested tensors
        video[i, :, :c.shape[1], :c.shape[2], :c.shape[3]] = c
    video = video.to(dtype)
    whwh = torch.tensor([[w, h, w, h] for _, h, w in sizes], dtype=dtype)
    boxes, labels = [], []
    for i, (b, lab) in enumerate(recipe.tuber_targets(seed, meta["gt_counts"], 80)):
        c = torch.from_numpy(b)
        boxes.append((torch.cat([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], 1) * whwh[i].double()).to(dtype))
        labels.append(torch.from_numpy(lab).to(dtype))
    model.train()
    for m in model.modules():  # the fixture's mode: a training forward (losses) with eval-mode modules
        if m is not model:
            m.eval()
    trace = {}
    losses = model(video, None, whwh, boxes, labels, trace=trace)
    sum(losses.values()).backward()
    params = model.state_dict(keep_vars=True)
    result = {f"grad/{p}": params[tuber_key(p)].grad for p in meta["grad_params"]}
    result.update({f"loss/{k}": v.detach() / meta["weight_dict"][k] for k, v in losses.items()})
    for key, matches in trace.items():
        if key.startswith("match/"):
            for i, m in enumerate(matches):
                result[f"{key}_src_b{i}"], result[f"{key}_tgt_b{i}"] = m.src, m.tgt
    model.eval()
    with torch.no_grad():
        heads = model.predictions(video, whwh)
        detections = model.detections(heads)
    for k in range(heads["boxes"].shape[0]):
        for key in ("logits", "boxes"):
            result[f"out/{key}/layer{k}"] = heads[key][k]
    result["det/scores"] = torch.stack([d["scores"] for d in detections])
    result["det/boxes_normalized"] = torch.stack([d["boxes"] for d in detections])
    if meta.get("train_buffers"):  # one training-mode forward, every dropout at 0
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = 0.0
        model.train()
        with torch.no_grad():
            heads = model.predictions(video, whwh)
        for k in range(heads["boxes"].shape[0]):
            for key in ("logits", "boxes"):
                result[f"train/out/{key}/layer{k}"] = heads[key][k]
        buffers = model.state_dict()
        for name in meta["train_buffers"]:
            result[f"train/{name}"] = buffers[tuber_key(name)]
        model.eval()
    return result


def as_stored(meta, name, value, dtype):
    """``value`` as the fixture stores it: numpy in ``dtype`` (bool / int kept), sampled per json ``sampled``."""
    value = value.detach().cpu()
    value = value.numpy() if not value.is_floating_point() else value.to(dtype).numpy()
    step = meta.get("sampled", {}).get(name)
    return value.reshape(-1)[::step] if step else value


def run_seqformer_fixture(fixture, dtype=torch.float64, device="cpu"):
    """``{"<case>/<name>": array}`` for every case of the folder (see the module docstring)."""
    if torch.device(device).type != "cpu":
        raise SeqFormerFixtureError("the SeqFormer fixtures run on the CPU (recipe tensors are built there)")
    recipe = _recipe(fixture)
    out = {}
    for case, path in case_files(fixture):
        meta = json.loads(path.read_text())
        for name, value in run_case(meta, recipe, dtype).items():
            out[f"{case}/{name}"] = as_stored(meta, name, value, dtype)
    return out
