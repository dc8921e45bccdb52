"""TubeR reference fixtures (tests/reference/tuber/tuber, ``model: "TubeR"``) run through our model.

Used by ``python -m stmixer.tools.reference_parity --fixture DIR`` (a folder of ``<case>.json`` +
``<case>.npz`` made by ``tests/reference/make_query_detector_fixtures.py --sections tuber``) and by
tests/modeling/test_tuber.py. The fixture's weights are the seed recipe (``DIR/../recipe.py``:
``tuber_state(seed, official names and shapes)``) loaded through ``stmixer.checkpoint`` as a TubeR
``.pth``; the inputs are the recipe's clips (zero-padded to one size, ``whwh`` the unpadded sizes) and
ground truth (normalized cxcywh -> absolute xyxy pixels).

Outputs (the fixture's names; ``<case>/`` in front when the folder holds several cases):
``trace/{backbone,pooled,context}`` (channel slices ``[:, ::slice]`` / ``[..., ::slice]``),
``trace/{pos,memory,hs,mask}``, ``out/{logits_b,boxes,logits}/layer{k}``, ``grad/<official name>``,
``grad_focal/<official name>`` (first 3), ``det/{scores,boxes_normalized,switch}`` (our boxes are clamped
to [0, 1]; the official ones are not), and ours only: ``loss/<name>`` / ``loss_focal/<name>``
(unweighted, as the official loss dict), ``match/layer{k}_{src,tgt}_b{i}``.
Everything runs in eval mode (the fixtures' mode: no dropout, BatchNorm running statistics), except the
``train/`` section (``train/out/{logits_b,boxes,logits}`` of the last layer, ``train/loss/<name>``,
``train/grad/<name>``, ``train/<BatchNorm buffer>``): training mode with every dropout at 0.

JHMDB / UCF101-24 fixtures (tests/reference/tuber/tuber_jhmdb, ``model: "TubeR-frame"``, made by
``--sections tuber_jhmdb`` from TubeR's ``Tuber_CSN152_JHMDB.yaml`` on CSN-50): ``MODEL.TUBER.HEAD "frame"``;
outputs (``run_frame_case``) ``trace/{backbone,pooled,memory,pos}`` (``[:, ::slice]``),
``trace/{context,hs}`` (``[..., ::slice]``), ``out/{logits_b,boxes,logits}/layer{k}`` (all frames' queries),
``grad/<official name>``, ``det/{scores,boxes_normalized,switch}`` (TubeR's ``PostProcess`` of every query:
``A + 1`` softmax, unclamped boxes, ``[B, 1]`` actor-visible probability), ``eval/{boxes_normalized,labels,
scores}_{b}`` (our detections of clip b: the rows TubeR's evaluation keeps, sorted by descending score, labels
0-based), and ours only: ``loss/<name>``, ``match/layer{k}_{src,tgt}_b{i}``.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from .criterion import cxcywh_to_xyxy

MODEL_NAME = "TubeR"
FRAME_MODEL_NAME = "TubeR-frame"  # TubeR's JHMDB / UCF101-24 model (MODEL.TUBER.HEAD "frame")


class TubeRFixtureError(RuntimeError):
    """A TubeR fixture folder that is incomplete."""


def json_cases(fixture, accept):
    """``[(meta, json path)]`` of the ``*.json`` in the folder ``fixture`` (sorted by name) that hold a dict for
    which ``accept(meta)`` is true; unreadable files are skipped. Shared by the TubeR-fork fixture runners
    (TubeR, Deformable TubeR, SeqFormer)."""
    fixture = Path(fixture)
    if not fixture.is_dir():
        return []
    cases = []
    for path in sorted(fixture.glob("*.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and accept(meta):
            cases.append((meta, path))
    return cases


def fixture_cases(fixture):
    """``[(name, meta)]`` of the TubeR cases (json ``"model": "TubeR"`` or ``"TubeR-frame"`` with an ``.npz``
    beside) in ``fixture``."""
    return [(path.stem, meta) for meta, path in
            json_cases(fixture, lambda meta: meta.get("model") in (MODEL_NAME, FRAME_MODEL_NAME))
            if path.with_suffix(".npz").is_file()]


def is_tuber_fixture(fixture):
    return Path(fixture).is_dir() and bool(fixture_cases(fixture))


def load_recipe(fixture, error=TubeRFixtureError):
    """The kit's seed recipe ``<fixture>/../recipe.py`` as a module (shared by the TubeR-fork fixture runners);
    raises ``error`` (the caller's fixture error class) when it is missing."""
    path = Path(fixture).parent / "recipe.py"
    if not path.is_file():
        raise error(f"{fixture}: the fixture's weights and inputs need the kit's seed recipe {path}")
    spec = importlib.util.spec_from_file_location("stmixer_tuber_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_config(meta):
    """Our config of the fixture's official config (TubeR_CSN50_AVA21, or Tuber_CSN152_JHMDB for
    ``"TubeR-frame"``, + the case's overrides)."""
    from ...config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "TubeR"
    over = meta.get("overrides", {})
    cfg.MODEL.BACKBONE.CONV_BODY = over.get("BACKBONE_NAME", "CSN-50")
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    cfg.MODEL.TUBER.ENC_LAYERS = over.get("ENC_LAYERS", 6)
    cfg.MODEL.TUBER.DEC_LAYERS = over.get("DEC_LAYERS", 6)
    cfg.MODEL.TUBER.NUM_QUERIES = over.get("QUERY_NUM", 15)
    cfg.DATA.NUM_FRAMES = over.get("TEMP_LEN", 32)
    if meta.get("model") == FRAME_MODEL_NAME:  # Tuber_CSN152_JHMDB.yaml (docs/tuber.md)
        cfg.MODEL.TUBER.HEAD = "frame"
        cfg.MODEL.TUBER.TEMPORAL_POOL = "center"  # its TEMPORAL_DS_STRATEGY "decoder"
        cfg.MODEL.STM.ACTION_CLASSES = meta.get("num_classes", 21)
        cfg.MODEL.TUBER.COST_CLASS = 1.0
        cfg.MODEL.TUBER.ACTION_WEIGHT = 1.0
    return cfg


def official_state(meta, recipe):
    """The fixture's weights under the official TubeR state-dict names (float64 tensors)."""
    values = recipe.tuber_state(meta["seed"], meta["official_state_dict"])
    return {k: torch.from_numpy(v) for k, v in values.items()}


def build_loaded(meta, recipe, dtype, **overrides):
    """Our TubeR of the fixture (``MODEL.TUBER`` ``overrides``), weights loaded as a TubeR ``.pth``, in eval mode;
    returns ``(model, LoadReport)``."""
    from ...checkpoint import checkpoint_from_object, load_weights
    from ..build import build_detector

    cfg = fixture_config(meta)
    for key, value in overrides.items():
        setattr(cfg.MODEL.TUBER, key, value)
    model = build_detector(cfg)
    report = load_weights(model, checkpoint_from_object({"model": official_state(meta, recipe)}, "tuber-fixture"),
                          log=None)
    return model.to(dtype).eval(), report


def fixture_inputs(meta, recipe, dtype):
    """``(video [B, 3, T, H, W], whwh [B, 4])`` of the fixture's clips (json ``clip_sizes``, recipe values), each
    zero-padded at the end of time / bottom / right to the largest size, as the fork's nested tensors; ``whwh``
    the unpadded sizes."""
    seed, sizes = meta["seed"], meta["clip_sizes"]
    T, H, W = (max(s[d] for s in sizes) for d in range(3))
    video = torch.zeros(len(sizes), 3, T, H, W, dtype=torch.float64)
    for i, (t, h, w) in enumerate(sizes):
        clip = (recipe.fake_input(seed, (3, t, h, w)) if i == 0
                else recipe.fake_value(seed, f"input_{i}", (3, t, h, w), "input"))
        video[i, :, :t, :h, :w] = torch.from_numpy(clip)
    whwh = torch.tensor([[w, h, w, h] for _, h, w in sizes], dtype=torch.float64)
    return video.to(dtype), whwh.to(dtype)


def cxcywh_targets(pairs, whwh):
    """Ground truth ``(boxes: B x [n, 4] absolute xyxy, labels: B x [n, A])`` in ``whwh.dtype`` from per-clip
    ``(boxes [n, 4] normalized cxcywh, labels [n, A])`` arrays."""
    boxes, labels = [], []
    for i, (cxcywh, label) in enumerate(pairs):
        c = torch.from_numpy(np.asarray(cxcywh))
        xyxy = torch.cat([c[:, :2] - c[:, 2:] / 2, c[:, :2] + c[:, 2:] / 2], dim=1)
        boxes.append((xyxy * whwh[i].double()).to(whwh.dtype))
        labels.append(torch.from_numpy(np.asarray(label)).to(whwh.dtype))
    return boxes, labels


def fixture_targets(meta, arrays, whwh):
    """Ground truth ``(boxes: B x [n, 4] absolute xyxy, labels: B x [n, A])`` from the fixture's cxcywh."""
    return cxcywh_targets([(arrays[f"target/boxes_cxcywh_{i}"], arrays[f"target/labels_{i}"])
                           for i in range(len(meta["gt_counts"]))], whwh)


def match_outputs(trace):
    """``{"match/layer{k}_{src,tgt}_b{i}": indices}`` of a detector trace's ``match/*`` entries."""
    out = {}
    for key, matches in trace.items():
        if key.startswith("match/"):
            for i, m in enumerate(matches):
                out[f"{key}_src_b{i}"] = m.src
                out[f"{key}_tgt_b{i}"] = m.tgt
    return out


def zero_dropout(model):
    """Every dropout probability of ``model`` to 0 (the fixtures' training-mode sections)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0


def eval_modules(model):
    """Training mode for ``model`` itself (losses), eval mode for every submodule (the fixtures' mode)."""
    model.train()
    for m in model.modules():
        if m is not model:
            m.eval()


def detection_outputs(detections, switch):
    """``det/{scores,boxes_normalized}`` (and ``det/switch`` [B, Q, 1] when ``switch``) of our detections."""
    out = {"det/scores": torch.stack([d["scores"] for d in detections]),
           "det/boxes_normalized": torch.stack([d["boxes"] for d in detections])}
    if switch:
        out["det/switch"] = torch.stack([d["person_scores"] for d in detections])[..., None]
    return out


def load_fork_detector(cfg, values, case, error, dtype):
    """``build_detector(cfg)`` with ``values`` (``{fork state-dict name: numpy array}``) loaded as a fork
    checkpoint (``stmixer.checkpoint.load_weights``, format ``tuber``), in ``dtype``; ``error`` naming ``case``
    with the load report when a weight does not fit."""
    from ...checkpoint import checkpoint_from_object, load_weights
    from ..build import build_detector

    model = build_detector(cfg)
    report = load_weights(model, checkpoint_from_object({"model": {k: torch.from_numpy(v) for k, v in values.items()}},
                                                        "fork-fixture"), log=None)
    if not report.ok:
        raise error(f"{case}: the fork's weights do not load:\n{report.table()}")
    return model.to(dtype)


def fork_detector_outputs(model, meta, video, whwh, boxes, labels, param_key, keys, switch):
    """One fork detector case (Deformable TubeR, SeqFormer): a training forward with eval-mode modules (weighted
    losses, backward of their sum), then eval-mode predictions and detections, then (json ``train_buffers``) a
    training-mode forward with every dropout at 0. Returns ``{name: tensor}``: ``grad/<fork name>`` (json
    ``grad_params``, our path ``param_key(name)``), ``loss/<name>`` (unweighted), ``match/*``,
    ``out/<key>/layer{k}`` for ``keys``, ``det/*`` (``det/switch`` when ``switch``), ``train/out/<key>/layer{k}``,
    ``train/<buffer>``."""
    eval_modules(model)
    trace = {}
    losses = model(video, None, whwh, boxes, labels, trace=trace)
    sum(losses.values()).backward()
    params = model.state_dict(keep_vars=True)
    result = {f"grad/{p}": params[param_key(p)].grad for p in meta["grad_params"]}
    result.update({f"loss/{k}": v.detach() / meta["weight_dict"][k] for k, v in losses.items()})
    result.update(match_outputs(trace))
    model.eval()
    with torch.no_grad():
        heads = model.predictions(video, whwh)
        detections = model.detections(heads)
    for k in range(heads["boxes"].shape[0]):
        for key in keys:
            result[f"out/{key}/layer{k}"] = heads[key][k]
    result.update(detection_outputs(detections, switch))
    if meta.get("train_buffers"):
        zero_dropout(model)
        model.train()
        with torch.no_grad():
            heads = model.predictions(video, whwh)
        for k in range(heads["boxes"].shape[0]):
            for key in keys:
                result[f"train/out/{key}/layer{k}"] = heads[key][k]
        buffers = model.state_dict()
        for name in meta["train_buffers"]:
            result[f"train/{name}"] = buffers[param_key(name)]
        model.eval()
    return result


def as_stored(meta, name, value, dtype):
    """``value`` as a fork fixture stores it: numpy in ``dtype`` (bool / int kept), sampled per json
    ``sampled``."""
    value = value.detach().cpu()
    value = value.numpy() if not value.is_floating_point() else value.to(dtype).numpy()
    step = meta.get("sampled", {}).get(name)
    return value.reshape(-1)[::step] if step else value


def run_fork_fixture(fixture, case_files, run_case, error, what, dtype=torch.float64, device="cpu"):
    """``{"<case>/<name>": array}`` of every case ``case_files(fixture)`` lists, each run by
    ``run_case(meta, recipe, dtype)`` and stored by ``as_stored``; CPU only (``error`` naming ``what``)."""
    if torch.device(device).type != "cpu":
        raise error(f"the {what} fixtures run on the CPU (recipe tensors are built there)")
    recipe = load_recipe(fixture, error)
    out = {}
    for case, path in case_files(fixture):
        meta = json.loads(path.read_text())
        for name, value in run_case(meta, recipe, dtype).items():
            out[f"{case}/{name}"] = as_stored(meta, name, value, dtype)
    return out


def our_param(name):
    """Our parameter path of an official TubeR name."""
    if name.startswith("backbone.body."):
        return "backbone." + name[len("backbone.body."):]
    if name.startswith(("backbone.query_pool", "backbone.pool_decoder")):
        return "tuber_head." + name[len("backbone."):]
    return "tuber_head." + name


def loss_pass(model, meta, recipe, arrays, dtype, params):
    """Train-mode forward with every module in eval mode (the fixtures' mode), backward of the sum of
    the weighted terms; returns ``(loss dict, trace, {official param name: grad})``."""
    eval_modules(model)
    video, whwh = fixture_inputs(meta, recipe, dtype)
    boxes, labels = fixture_targets(meta, arrays, whwh)
    trace = {}
    model.zero_grad()
    losses = model(video, None, whwh, boxes, labels, trace=trace)
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    grads = {p: named[our_param(p)].grad.detach().clone() for p in params}
    model.eval()
    return losses, trace, grads


def train_pass(model, meta, recipe, arrays, dtype, params):
    """Training mode with every dropout probability 0 (the fixture's ``train/`` section): one forward (BatchNorm
    on batch statistics, running statistics updated), the loss, backward. Returns ``(head outputs, loss dict,
    {official param name: grad})``."""
    zero_dropout(model)
    model.train()
    video, whwh = fixture_inputs(meta, recipe, dtype)
    boxes, labels = fixture_targets(meta, arrays, whwh)
    model.zero_grad()
    out = model.predictions(video, whwh)
    targets = [{"boxes": b, "actions": a, "whwh": s} for b, a, s in zip(boxes, labels, whwh)]
    losses = model.criterion(out, targets)
    sum(losses.values()).backward()
    named = dict(model.named_parameters())
    grads = {p: named[our_param(p)].grad.detach().clone() for p in params}
    model.eval()
    return out, losses, grads


def _loss_outputs(meta, arrays, recipe, dtype, device):
    """Our loaded model of a case and the outputs of its eval-mode loss pass: ``(model, trace, {"loss/<name>"
    (unweighted), "match/*", "grad/<official name>": tensor})``."""
    model, _ = build_loaded(meta, recipe, dtype)
    model.to(device)
    losses, trace, grads = loss_pass(model, meta, recipe, arrays, dtype, meta["grad_params"])
    out = {f"loss/{k}": v.detach() / meta["weight_dict"][k] for k, v in losses.items()}
    out.update(match_outputs(trace))
    out.update({f"grad/{p}": g for p, g in grads.items()})
    return model, trace, out


def _as_numpy(out, dtype):
    """``{name: numpy}``: floating tensors in ``dtype``, the others int64."""
    result = {}
    for name, value in out.items():
        value = torch.as_tensor(value).detach().cpu()
        result[name] = value.to(dtype).numpy() if value.is_floating_point() else value.to(torch.int64).numpy()
    return result


def run_case(meta, arrays, recipe, dtype, device="cpu"):
    """Every output of one case (names in the module docstring)."""
    model, trace, out = _loss_outputs(meta, arrays, recipe, dtype, device)
    step = meta.get("slice", 8)
    weights = meta["weight_dict"]
    out["trace/backbone"] = trace["backbone"][:, ::step]
    out["trace/pooled"] = trace["pooled"][:, ::step]
    out["trace/context"] = trace["context"][..., ::step]
    for key in ("pos", "memory", "hs"):
        out[f"trace/{key}"] = trace[key]
    model.criterion.class_loss = "focal"
    focal, _, focal_grads = loss_pass(model, meta, recipe, arrays, dtype, meta["grad_params"][:3])
    model.criterion.class_loss = "bce"
    out.update({f"loss_focal/{k}": v.detach() / weights[k] for k, v in focal.items()})
    out.update({f"grad_focal/{p}": g for p, g in focal_grads.items()})
    video, whwh = fixture_inputs(meta, recipe, dtype)
    with torch.no_grad():
        heads = model.predictions(video.to(device), whwh.to(device))
        detections = model.detections(heads)
    for k in range(heads["boxes"].shape[0]):
        for key in ("logits_b", "boxes", "logits"):
            out[f"out/{key}/layer{k}"] = heads[key][k]
    out.update(detection_outputs(detections, switch=True))
    if "train_losses" in meta:
        heads, train_losses, train_grads = train_pass(model, meta, recipe, arrays, dtype,
                                                      meta["grad_params"][:5])
        for key in ("logits_b", "boxes", "logits"):
            out[f"train/out/{key}"] = heads[key][-1]
        out.update({f"train/loss/{k}": v.detach() / weights[k] for k, v in train_losses.items()})
        out.update({f"train/grad/{p}": g for p, g in train_grads.items()})
        state = model.state_dict()
        for name in meta.get("train_buffers", []):
            out[f"train/{name}"] = state[our_param(name)]
    return _as_numpy(out, dtype)


def run_frame_case(meta, arrays, recipe, dtype, device="cpu"):
    """Every output of one ``"TubeR-frame"`` case (names in the module docstring)."""
    model, trace, out = _loss_outputs(meta, arrays, recipe, dtype, device)
    step = meta.get("slice", 8)
    for key in ("backbone", "pooled", "memory", "pos"):
        out[f"trace/{key}"] = trace[key][:, ::step]
    for key in ("context", "hs"):
        out[f"trace/{key}"] = trace[key][..., ::step]
    video, whwh = fixture_inputs(meta, recipe, dtype)
    with torch.no_grad():
        heads = model.predictions(video.to(device), whwh.to(device))
        detections = model.detections(model.tuber_head.key_frame_outputs(heads))
    for k in range(heads["boxes"].shape[0]):
        for key in ("logits_b", "boxes", "logits"):
            out[f"out/{key}/layer{k}"] = heads[key][k]
    out["det/scores"] = heads["logits"][-1].softmax(-1)
    out["det/boxes_normalized"] = cxcywh_to_xyxy(heads["boxes"][-1])
    out["det/switch"] = heads["logits_b"][-1].softmax(-1)[:, 1:]
    for b, det in enumerate(detections):
        score, label = det["scores"].max(-1) if len(det["scores"]) else (det["scores"].new_zeros(0),) * 2
        order = torch.argsort(-score, stable=True)
        out[f"eval/boxes_normalized_{b}"] = det["boxes"][order]
        out[f"eval/labels_{b}"] = label.long()[order]
        out[f"eval/scores_{b}"] = score[order]
    return _as_numpy(out, dtype)


def run_tuber_fixture(fixture, dtype, device="cpu"):
    """Outputs of every case in the folder (see module docstring)."""
    cases = fixture_cases(fixture)
    if not cases:
        raise TubeRFixtureError(f"{fixture}: no <case>.json with \"model\": \"TubeR\" and its .npz")
    recipe = load_recipe(fixture)
    out = {}
    for name, meta in cases:
        with np.load(Path(fixture) / f"{name}.npz") as data:
            arrays = {k: data[k] for k in data.files}
        prefix = f"{name}/" if len(cases) > 1 else ""
        run = run_frame_case if meta.get("model") == FRAME_MODEL_NAME else run_case
        out.update({prefix + k: v for k, v in run(meta, arrays, recipe, dtype, device).items()})
    return out
