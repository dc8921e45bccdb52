"""Run our EVAD detector on an official EVAD detector fixture (``tests/reference/evad/detector``).

A fixture folder made by ``tests/reference/make_evad_fixtures.py --sections detector`` holds ``cases.json``
(``"model_name": "EVAD"``, the tiny official configuration, one entry per keep-rate case), ``inputs.npz``
(``clip_k`` = 4 x clip as int8, ``gt_boxes_<i>`` / ``gt_labels_<i>``, and the official float64 state dict as
``w/<official name>``) and the answers ``<case>.npz``. ``run_evad_fixture`` builds our ``EVAD`` from the
same configuration through ``build_detector``, loads the official weights through the checkpoint reader and
loader (official EVAD checkpoint layout), and returns, per case, every array the answers hold, under the
same names (``<case>/<name>``): eval ``kept/*``, ``fpn/p*`` (when the answers have it), ``stage<k>/{logits,
boxes}``, ``block<j>/actions``, ``eval/*`` (detections in the official layout), and train ``loss/*``,
``match/stage<k>/{query,target}_<b>`` (only the last stage's matching is kept by our detector; the
earlier stages' are recomputed with the same matcher) and ``grad/<official name>``.

Used by ``tests/modeling/test_evad_detector.py`` and ``python -m stmixer.tools.reference_parity``.
"""

import json
from pathlib import Path

import numpy as np
import torch

from ...checkpoint import load_weights
from ...checkpoint.formats import checkpoint_from_object
from ...config import get_cfg
from ..build import build_detector
from ..trace import Trace

MODEL_NAME = "EVAD"


class EVADFixtureError(RuntimeError):
    """An EVAD fixture folder that is incomplete or does not fit the model."""


def is_evad_fixture(fixture):
    """True for a folder whose ``cases.json`` names the model "EVAD"."""
    path = Path(fixture) / "cases.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model_name") == MODEL_NAME
    except (ValueError, AttributeError):
        return False


def fixture_cfg(meta, case, use_checkpoint=True):
    """Our config for ``case`` of the fixture metadata ``meta`` (``cases.json``)."""
    info, vit, sparse, crd = meta["cases"][case], meta["vit"], meta["sparse_rcnn"], meta["crd"]
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "EVAD"
    cfg.MODEL.BACKBONE.CONV_BODY = "EVAD-ViT-B"
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    cfg.MODEL.STM.ACTION_CLASSES = meta["num_classes"]
    cfg.DATA.NUM_FRAMES = meta["clip"][2]
    cfg.ViT.merge_from_list([
        "EMBED_DIM", vit["embed_dim"], "DEPTH", vit["depth"], "NUM_HEADS", vit["num_heads"],
        "MLP_RATIO", int(vit["mlp_ratio"]), "PATCH_SIZE", vit["patch_size"], "TUBELET_SIZE", vit["tubelet_size"],
        "PRETRAIN_IMG_SIZE", vit["pretrain_img_size"], "DROP_PATH_RATE", 0.0, "USE_CHECKPOINT", use_checkpoint])
    cfg.EVAD.merge_from_list([
        "KEEP_RATES", [float(r) for r in info["keep_rates"]], "ENHANCED_WEIGHT", float(info["enhanced_weight"]),
        "FPN_INDICES", meta["fpn_indices"], "DECODER_DIM", crd["EMBED_DIM"], "DECODER_DEPTH", crd["DEPTH"],
        "DECODER_HEADS", crd["NUM_HEADS"], "DECODER_MLP_RATIO", float(crd["MLP_RATIO"]),
        "ROI_EXTENSION", [float(v) for v in crd["ROI_EXTENSION"]], "ROI_RESOLUTION", meta["pooler"]["resolution"],
        "ROI_SAMPLING_RATIO", meta["pooler"]["sampling_ratio"], "ACT_FC_DIM", sparse["ACT_FC_DIM"],
        "NUM_ACT_LAYERS", sparse["NUM_ACT"], "PERSON_THRESHOLD", float(sparse["PERSON_THRESHOLD"])])
    cfg.EVAD.PERSON.merge_from_list([
        "NUM_PROPOSALS", sparse["NUM_PROPOSALS"], "HIDDEN_DIM", sparse["HIDDEN_DIM"], "NUM_STAGES", sparse["NUM_HEADS"],
        "NHEADS", sparse["NHEADS"], "DIM_FEEDFORWARD", sparse["DIM_FEEDFORWARD"], "DIM_DYNAMIC", sparse["DIM_DYNAMIC"],
        "NUM_DYNAMIC", sparse["NUM_DYNAMIC"], "NUM_CLS", sparse["NUM_CLS"], "NUM_REG", sparse["NUM_REG"],
        "POOLER_RESOLUTION", meta["pooler"]["resolution"], "POOLER_SAMPLING_RATIO", meta["pooler"]["sampling_ratio"]])
    return cfg


def load_fixture(fixture):
    """``(meta, inputs)``: ``cases.json`` and ``inputs.npz`` as a dict of arrays."""
    fixture = Path(fixture)
    for name in ("cases.json", "inputs.npz"):
        if not (fixture / name).is_file():
            raise EVADFixtureError(f"{fixture}: missing {name}")
    meta = json.loads((fixture / "cases.json").read_text())
    with np.load(fixture / "inputs.npz") as data:
        inputs = {k: data[k] for k in data.files}
    return meta, inputs


def build_case(meta, inputs, case, dtype=torch.float64, use_checkpoint=True, source="EVAD fixture"):
    """Our EVAD for ``case`` in ``dtype`` with the fixture's official weights loaded through the checkpoint
    loader (every official tensor must load)."""
    model = build_detector(fixture_cfg(meta, case, use_checkpoint)).to(dtype)
    state = {k[2:]: torch.from_numpy(v) for k, v in inputs.items() if k.startswith("w/")}
    contents = checkpoint_from_object({"model_state": state}, source)
    report = load_weights(model, contents, log=None)
    if not report.ok:
        raise EVADFixtureError(f"{source}: the official weights do not load:\n{report.table()}")
    return model


def fixture_batch(meta, inputs, dtype=torch.float64):
    """``(clip [B, 3, T, H, W], whwh [B, 4], gt_boxes, gt_labels)`` of the fixture."""
    clip = torch.from_numpy(inputs["clip_k"]).to(dtype) / 4
    b, _, _, h, w = clip.shape
    whwh = torch.tensor([[w, h, w, h]] * b, dtype=dtype)
    boxes = [torch.from_numpy(inputs[f"gt_boxes_{i}"]).to(dtype) for i in range(b)]
    labels = [torch.from_numpy(inputs[f"gt_labels_{i}"]).to(dtype) for i in range(b)]
    return clip, whwh, boxes, labels


def official_detections(detections, person_logits):
    """Our detections in the official eval layout: ``eval/actions`` ``[n, A]``, ``eval/boxes`` ``[n, 5]``
    (clip index, normalized xyxy), ``eval/person_scores`` ``[B, P]`` (the official ``eval/person_boxes`` are
    the last stage's boxes clipped into the clip; ``eval/metadata``, the official clip bookkeeping, is not a
    model output and not produced)."""
    actions = torch.cat([d["scores"] for d in detections])
    rows = torch.cat([torch.cat([torch.full((len(d["boxes"]), 1), float(i), dtype=d["boxes"].dtype), d["boxes"]], 1)
                      for i, d in enumerate(detections)])
    return {"eval/actions": actions, "eval/boxes": rows,
            "eval/person_scores": torch.softmax(person_logits, -1)[..., 0]}


def run_case(meta, inputs, case, dtype=torch.float64, use_checkpoint=True, want=None):
    """Every answer array of ``case`` computed by our model (names as in ``<case>.npz``); ``want``: the names to
    produce (default: all we can)."""
    model = build_case(meta, inputs, case, dtype, use_checkpoint)
    clip, whwh, gt_boxes, gt_labels = fixture_batch(meta, inputs, dtype)
    out = {}
    model.eval()
    trace = Trace()
    kept = _record_kept_indices(model.backbone)
    with torch.no_grad():
        detections = model(clip, None, whwh, trace=trace)
    del model.backbone._block_forward
    out["kept/final"] = trace["kept_index"][0]
    for i, rate in enumerate(model.backbone.keep_rates):
        if rate < 1:
            out[f"kept/after_{i}"] = kept[i]
    for level in range(4):
        out[f"fpn/p{level + 2}"] = trace[f"fpn_p{level + 2}"][0]
    stages = model.evad_head.person.head_series
    for k in range(len(stages)):
        out[f"stage{k}/logits"] = trace[f"stage{k}/class_logits"][0]
        out[f"stage{k}/boxes"] = trace[f"stage{k}/boxes"][0]
    for j, logits in enumerate(trace["action_logits"]):
        out[f"block{j}/actions"] = logits
    last = len(stages) - 1
    out.update(official_detections(detections, trace[f"stage{last}/class_logits"][0]))
    out["eval/person_boxes"] = torch.minimum(trace[f"stage{last}/boxes"][0].clamp(min=0), whwh[:, None] - 1)

    model.train()
    trace = Trace()
    losses = model(clip, None, whwh, gt_boxes, gt_labels, trace=trace)
    sum(losses.values()).backward()
    for name, value in losses.items():
        out[f"loss/{name}"] = value.detach()
    targets = [{"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64), "whwh": wh}
               for b, wh in zip(gt_boxes, whwh)]
    person = _stage_outputs(trace, len(stages))
    indices = model.evad_head.criterion.match(person, targets, list(range(len(stages))), None)
    counts = np.cumsum([0] + [len(b) for b in gt_boxes])
    for k in range(len(stages)):
        clip_index, query_index, target_index = indices[k]
        for b in range(len(gt_boxes)):
            sel = clip_index == b
            out[f"match/stage{k}/query_{b}"] = query_index[sel]
            out[f"match/stage{k}/target_{b}"] = target_index[sel] - int(counts[b])
    grads = {name: p.grad for name, p in _official_named_parameters(model)}
    for name in meta["grad_params"]:
        out[f"grad/{name}"] = grads[name]
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in out.items()}
    if want is not None:
        arrays = {k: v for k, v in arrays.items() if k in want}
    return arrays


def _record_kept_indices(backbone):
    """Record the kept-token index after every backbone block (``{block: [B, K]}``) by wrapping the
    backbone's ``_block_forward`` on the instance (delete the instance attribute to undo)."""
    kept, calls = {}, []
    inner = backbone._block_forward

    def recording(*args, **kwargs):
        x, index = inner(*args, **kwargs)
        kept[len(calls)] = index.detach()
        calls.append(None)
        return x, index

    backbone._block_forward = recording
    return kept


def _stage_outputs(trace, num_stages):
    from ..sparse_rcnn import SparseRCNNOutputs

    return SparseRCNNOutputs([trace[f"stage{k}/class_logits"][0] for k in range(num_stages)],
                             [trace[f"stage{k}/boxes"][0] for k in range(num_stages)])


def _official_named_parameters(model):
    """``(official name, parameter)`` of our EVAD (inverse of the checkpoint mapping)."""
    from .detector import _OFFICIAL_PERSON_KEYS

    for name, p in model.named_parameters():
        part, _, rest = name.partition(".")
        if part == "backbone" or part == "evad_fpn":
            yield rest, p
        elif part == "evad_head":
            for official, ours in _OFFICIAL_PERSON_KEYS:
                if rest.startswith(ours):
                    rest = official + rest[len(ours):]
                    break
            yield rest, p


def run_evad_fixture(fixture, dtype=torch.float64, device="cpu"):
    """All answer names of every case of ``fixture`` as ``{"<case>/<name>": array}`` (CPU only)."""
    if torch.device(device).type != "cpu":
        raise EVADFixtureError("EVAD fixtures run on the CPU (device 'cpu')")
    fixture = Path(fixture)
    meta, inputs = load_fixture(fixture)
    out = {}
    for case in sorted(meta["cases"]):
        path = fixture / f"{case}.npz"
        want = None
        if path.is_file():
            with np.load(path) as answers:
                want = set(answers.files)
        for name, value in run_case(meta, inputs, case, dtype, want=want).items():
            out[f"{case}/{name}"] = value
    return out
