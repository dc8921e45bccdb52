"""Build the Sparse R-CNN head fixtures by running the official heads and criteria (float64, seeded).

    PYTHONPATH=/path/to/detectron2-source python tests/reference/make_sparse_rcnn_fixtures.py \
        --sparsercnn /path/to/SparseR-CNN --evad /path/to/EVAD --out tests/reference/sparse_rcnn

``--sparsercnn``: a checkout (or ``git archive``) of PeizeSun/SparseR-CNN; its
``projects/SparseRCNN/sparsercnn/{head,loss}.py`` (``DynamicHead``, ``RCNNHead``, ``DynamicConv``,
``SetCriterion``, ``HungarianMatcher``) and ``util/`` are executed. ``--evad``: a checkout of
MCG-NJU/EVAD; its ``projects/evad/models/head_helper.py`` (``RCNNHead`` with ``JITTER_BOX``,
``DynamicConv``), ``loss.py`` (``SetCriterion`` returning the last stage's matches) and
``slowfast/datasets/cv2_transform.py`` (``clip_boxes_tensor``) are executed. detectron2's source
(facebookresearch/detectron2, pure Python, no compiled ``_C``) must be importable: its
``ROIPooler`` / ``ROIAlign`` (torchvision's ``roi_align`` with ``aligned=True``) and ``Boxes`` run.

Shims (none changes a number): ``detectron2.modeling`` as a bare package (its ``__init__`` imports
the config system, which needs cloudpickle); ``pycocotools`` (masks, unused); for EVAD ``timm``
(``trunc_normal_``, unused by ``RCNNHead``), ``cv2`` (imported by ``cv2_transform``, unused by
``clip_boxes_tensor``), ``slowfast.models.losses`` and ``.vit_model`` (names imported, unused);
``torchvision.__version__`` reads "0.99" while the DETR utilities load (they read "0.29" as 0.2 and
import helpers of torchvision < 0.7 that no longer exist; none is used). The official detectors'
``prepare_targets`` build float32 image sizes: the targets are built here in float64 with the same keys.

Writes ``<out>/<case>/{case.json, inputs.npz, expected.npz}`` (see ``stmixer/modeling/sparse_rcnn/parity.py``
for the names; ``expected.npz`` holds them under ``f64/`` and ``f32/`` as ``stmixer.tools.parity_check`` reads).
"""

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_code import checkout_commit, load_by_path, stub_module  # noqa: E402

IMAGES = ((160, 192), (144, 176))  # (h, w) of the two images; the padded canvas is 160 x 192
CANVAS = (160, 192)
STRIDES = (4, 8, 16, 32)
GRAD_PARAMS = ("init_proposal_features.weight", "init_proposal_boxes.weight",
               "head_series.0.inst_interact.dynamic_layer.weight", "head_series.0.self_attn.in_proj_weight",
               "head_series.1.class_logits.bias", "head_series.1.bboxes_delta.weight")
CASES = {
    # PeizeSun's head + criterion, focal classifier (the COCO default), 3 classes
    "peize_focal": dict(source="sparsercnn", use_focal=True, num_classes=3, jitter=False),
    # PeizeSun's head + criterion, softmax classifier (USE_FOCAL False), 2 classes + no object
    "peize_softmax": dict(source="sparsercnn", use_focal=False, num_classes=2, jitter=False),
    # EVAD's person detector series (softmax, 1 class) with JITTER_BOX, EVAD's criterion
    "evad_jitter": dict(source="evad", use_focal=False, num_classes=1, jitter=True),
}
HEAD = dict(num_proposals=6, hidden_dim=8, nheads=2, dim_feedforward=24, dim_dynamic=4, num_dynamic=2,
            pooler_resolution=3, sampling_ratio=2, num_cls=1, num_reg=2, num_stages=2, dropout=0.0,
            activation="relu", prior_prob=0.01, alpha=0.25, gamma=2.0, class_weight=2.0, giou_weight=2.0,
            l1_weight=5.0, no_object_weight=0.1)


def ns(**kw):
    return types.SimpleNamespace(**kw)


def official_cfg(case):
    h = HEAD
    sparse = ns(NUM_CLASSES=case["num_classes"], NUM_PROPOSALS=h["num_proposals"], NHEADS=h["nheads"],
                DROPOUT=h["dropout"], DIM_FEEDFORWARD=h["dim_feedforward"], ACTIVATION=h["activation"],
                HIDDEN_DIM=h["hidden_dim"], NUM_CLS=h["num_cls"], NUM_REG=h["num_reg"], NUM_HEADS=h["num_stages"],
                NUM_DYNAMIC=h["num_dynamic"], DIM_DYNAMIC=h["dim_dynamic"], DEEP_SUPERVISION=True,
                USE_FOCAL=case["use_focal"], ALPHA=h["alpha"], GAMMA=h["gamma"], PRIOR_PROB=h["prior_prob"],
                JITTER_BOX=case["jitter"], SOFTMAX_POSE=False)
    box_head = ns(POOLER_RESOLUTION=h["pooler_resolution"], POOLER_SAMPLING_RATIO=h["sampling_ratio"],
                  POOLER_TYPE="ROIAlignV2")
    return ns(MODEL=ns(SparseRCNN=sparse, ROI_BOX_HEAD=box_head, ROI_HEADS=ns(IN_FEATURES=["p2", "p3", "p4", "p5"]),
                       DEVICE="cpu"))


def install_common_shims():
    modeling = stub_module("detectron2.modeling")
    import detectron2
    modeling.__path__ = [str(Path(detectron2.__file__).parent / "modeling")]
    pycoco = stub_module("pycocotools")
    pycoco.__path__ = []
    stub_module("pycocotools.mask")


def load_package(name, directory, files):
    """Register ``name`` as a package rooted at ``directory`` and execute ``files`` (module names) from it.

    While they load, ``torchvision.__version__`` reads "0.99": the DETR utilities test
    ``float(torchvision.__version__[:3]) < 0.7``, which takes "0.29" for 0.2 and imports helpers of
    torchvision < 0.7 that no longer exist."""
    pkg = stub_module(name)
    pkg.__path__ = [str(directory)]
    version, torchvision.__version__ = torchvision.__version__, "0.99"
    try:
        return {f: load_by_path(f"{name}.{f}", directory / f"{f.replace('.', '/')}.py") for f in files}
    finally:
        torchvision.__version__ = version


def load_sparsercnn(root):
    d = Path(root) / "projects/SparseRCNN/sparsercnn"
    util = stub_module("sparsercnn_official.util")
    util.__path__ = [str(d / "util")]
    mods = load_package("sparsercnn_official", d, ["util.box_ops", "util.misc", "head", "loss"])
    return mods["head"], mods["loss"]


def load_evad(root):
    root = Path(root)
    stub_module("timm").__path__ = []
    stub_module("timm.models").__path__ = []
    stub_module("timm.models.layers", trunc_normal_=lambda t, std=1.0: t)
    stub_module("cv2")
    stub_module("slowfast").__path__ = []
    stub_module("slowfast.models").__path__ = []
    stub_module("slowfast.models.losses", focal_loss_wo_logits_jit=None)
    stub_module("slowfast.datasets").__path__ = []
    load_by_path("slowfast.datasets.cv2_transform", root / "slowfast/datasets/cv2_transform.py")
    d = root / "projects/evad/models"
    util = stub_module("evad_official.util")
    util.__path__ = [str(d / "util")]
    stub_module("evad_official.vit_model", ContextRefinementDecoder=None, get_sinusoid_encoding_table=None,
                interpolate_pos_embed_online=None)
    mods = load_package("evad_official", d, ["util.box_ops", "util.misc", "head_helper", "loss"])
    return mods["head_helper"], mods["loss"]


def make_inputs(gen, num_classes, multi_level=True):
    C = HEAD["hidden_dim"]
    feats = [torch.randn(2, C, -(-CANVAS[0] // s), -(-CANVAS[1] // s), generator=gen, dtype=torch.float64)
             for s in STRIDES]
    whwh = torch.tensor([[w, h, w, h] for h, w in IMAGES], dtype=torch.float64)
    targets = []
    for i, n in enumerate((2, 3)):
        h, w = IMAGES[i]
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([w * 0.5, h * 0.5])
        wh = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.4 + 0.15) * torch.tensor([w, h])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], dim=1)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        targets.append((boxes, labels))
    return feats, whwh, targets


def official_targets(targets, whwh):
    out = []
    for (boxes, labels), size in zip(targets, whwh):
        out.append({"labels": labels, "boxes": boxes / size, "boxes_xyxy": boxes, "image_size_xyxy": size,
                    "image_size_xyxy_tgt": size[None].repeat(len(boxes), 1)})
    return out


def run_case(name, case, head_mod, loss_mod, seed):
    torch.manual_seed(seed)
    cfg = official_cfg(case)
    h = HEAD
    Q, D = h["num_proposals"], h["hidden_dim"]
    if case["source"] == "sparsercnn":
        shape = {k: ns(stride=s, channels=D) for k, s in zip(cfg.MODEL.ROI_HEADS.IN_FEATURES, STRIDES)}
        head = head_mod.DynamicHead(cfg, shape)
        series, pooler = head.head_series, head.box_pooler
    else:
        series = head_mod._get_clones(head_mod.RCNNHead(cfg), h["num_stages"])
        for p in series.parameters():  # EVADRoIHead._reset_parameters
            if p.dim() > 1:
                torch.nn.init.xavier_uniform_(p)
        pooler = head_mod.EVADRoIHead._init_box_pooler(cfg)
    init_features = torch.nn.Embedding(Q, D)
    init_boxes = torch.nn.Embedding(Q, 4)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # proposals spread over the image, so that several pyramid levels are used
        init_boxes.weight[:, :2] = torch.rand(Q, 2, generator=gen) * 0.6 + 0.2
        init_boxes.weight[:, 2:] = torch.rand(Q, 2, generator=gen) * 0.8 + 0.2
    torch.nn.ModuleDict({"series": series, "feat": init_features, "box": init_boxes}).double()  # in place
    feats, whwh, targets = make_inputs(gen, case["num_classes"])

    state = {f"head_series.{k}": v for k, v in series.state_dict().items()}
    state["init_proposal_features.weight"] = init_features.weight.detach()
    state["init_proposal_boxes.weight"] = init_boxes.weight.detach()

    def forward(training):
        series.train(training)
        boxes = box_cxcywh(init_boxes.weight)[None] * whwh[:, None, :]
        pro = init_features.weight[None].repeat(1, 2, 1)
        logits, preds, jitter = [], [], None
        for stage in series:
            if case["source"] == "sparsercnn":
                c, b, pro = stage(feats, boxes, pro, pooler)
            else:
                c, b, pro, jitter = stage(feats, boxes, pro, pooler, images_whwh=whwh)
            logits.append(c)
            preds.append(b)
            boxes = b.detach()
        return logits, preds, jitter

    expected = {}
    with torch.no_grad():
        logits, preds, jitter = forward(False)
    for k, (c, b) in enumerate(zip(logits, preds)):
        expected[f"eval/stage{k}/class_logits"] = c
        expected[f"eval/stage{k}/boxes"] = b
    if jitter is not None:
        expected["eval/jitter_boxes"] = jitter
    torch.manual_seed(seed + 2)  # the train forward draws the jitter
    logits, preds, jitter = forward(True)
    if jitter is not None:
        expected["train/jitter_boxes"] = jitter.detach()
    matcher = loss_mod.HungarianMatcher(cfg=cfg, cost_class=h["class_weight"], cost_bbox=h["l1_weight"],
                                        cost_giou=h["giou_weight"], use_focal=case["use_focal"])
    weight_dict = {"loss_ce": h["class_weight"], "loss_bbox": h["l1_weight"], "loss_giou": h["giou_weight"]}
    weight_dict.update({f"{k}_0": v for k, v in list(weight_dict.items())})
    criterion = loss_mod.SetCriterion(cfg=cfg, num_classes=case["num_classes"], matcher=matcher,
                                      weight_dict=weight_dict, eos_coef=h["no_object_weight"],
                                      losses=["labels", "boxes"], use_focal=case["use_focal"]).double()
    output = {"pred_logits": logits[-1], "pred_boxes": preds[-1],
              "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], preds[:-1])]}
    otargets = official_targets(targets, whwh)
    result = criterion(output, otargets)
    losses = result[0] if isinstance(result, tuple) else result
    for k in losses:
        losses[k] = losses[k] * weight_dict[k]
    # the matches of every stage, as the criterion computes them
    for k, out in enumerate(output["aux_outputs"] + [{"pred_logits": logits[-1], "pred_boxes": preds[-1]}]):
        for i, (src, tgt) in enumerate(matcher(out, otargets)):
            expected[f"match/stage{k}/image{i}/src"] = src
            expected[f"match/stage{k}/image{i}/tgt"] = tgt
    total = sum(losses.values())
    total.backward()
    named = {f"head_series.{k}": p for k, p in series.named_parameters()}
    named["init_proposal_features.weight"] = init_features.weight
    named["init_proposal_boxes.weight"] = init_boxes.weight
    for pname in GRAD_PARAMS:
        expected[f"grad/{pname}"] = named[pname].grad
    for k, v in losses.items():
        expected[f"loss/{k}"] = v.detach()
    inputs = {f"features_l{i}": f for i, f in enumerate(feats)}
    inputs["whwh"] = whwh
    for i, (boxes, labels) in enumerate(targets):
        inputs[f"gt_boxes_{i}"] = boxes
        inputs[f"gt_labels_{i}"] = labels
    inputs.update({f"weight/{k}": v for k, v in state.items()})
    spec = dict(case, **HEAD, strides=list(STRIDES), seed=seed, train_seed=seed + 2, loss_order=list(losses),
                model=f"sparse_rcnn/{case['source']}", grad_params=list(GRAD_PARAMS))
    return spec, inputs, expected


def box_cxcywh(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def save(out, name, spec, inputs, expected):
    d = Path(out) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "case.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(d / "inputs.npz", **{k: v.detach().numpy() for k, v in inputs.items()})
    # answers under "f64/" (as computed) and "f32/" (float answers rounded to float32), the layout of
    # stmixer.tools.parity_check (a float32 run is compared against the f64/ answers)
    answers = {}
    for k, v in expected.items():
        v = v.detach().numpy()
        answers[f"f64/{k}"] = v
        answers[f"f32/{k}"] = v.astype(np.float32) if v.dtype.kind == "f" else v
    np.savez_compressed(d / "expected.npz", **answers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsercnn", required=True, type=Path)
    parser.add_argument("--evad", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sparsercnn-commit")
    parser.add_argument("--evad-commit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_common_shims()
    sources = {"sparsercnn": load_sparsercnn(args.sparsercnn), "evad": load_evad(args.evad)}
    commits = {"sparsercnn": checkout_commit(args.sparsercnn, args.sparsercnn_commit),
               "evad": checkout_commit(args.evad, args.evad_commit)}
    for i, (name, case) in enumerate(CASES.items()):
        spec, inputs, expected = run_case(name, case, *sources[case["source"]], seed=args.seed + 10 * i)
        spec.update(commit=commits[case["source"]], torch=torch.__version__, torchvision=torchvision.__version__)
        save(args.out, name, spec, inputs, expected)
        print(name, {k: round(float(v), 6) for k, v in expected.items() if k.startswith("loss/")})


if __name__ == "__main__":
    main()
