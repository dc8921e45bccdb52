"""Run our Sparse R-CNN head and criterion on a reference fixture (``tests/reference/sparse_rcnn/<case>/``).

A case folder holds ``case.json`` (``"model": "sparse_rcnn/sparsercnn"`` for PeizeSun's head,
``"sparse_rcnn/evad"`` for EVAD's person-detector series; the head's arguments), ``inputs.npz``
(``features_l{i}`` ``[B, d, H_l, W_l]``, ``whwh`` ``[B, 4]``, ``gt_boxes_{i}`` / ``gt_labels_{i}``,
``weight/<state-dict key>``) and ``expected.npz``, whose names ``run_sparse_rcnn_fixture`` writes:
``eval/stage{k}/{class_logits,boxes}``, ``eval/jitter_boxes`` / ``train/jitter_boxes`` (EVAD),
``match/stage{k}/image{i}/{src,tgt}``, ``loss/<name>`` and ``grad/<parameter>`` (gradient of the sum
of the weighted losses, train mode).
"""

import json
from pathlib import Path

import numpy as np
import torch

from ..matcher import HungarianMatcher
from .criterion import SparseRCNNCriterion
from .head import SparseRCNNHead

MODELS = ("sparse_rcnn/sparsercnn", "sparse_rcnn/evad")


class SparseRCNNFixtureError(ValueError):
    """A folder that is not a readable Sparse R-CNN fixture."""


def is_sparse_rcnn_fixture(fixture):
    """True when ``fixture/case.json`` names one of ``MODELS``."""
    path = Path(fixture) / "case.json"
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("model") in MODELS
    except (ValueError, AttributeError):
        return False


def build_from_case(spec):
    """(head, criterion) of a fixture's ``case.json`` ``spec`` (float32, randomly initialized)."""
    head = SparseRCNNHead(
        spec["num_proposals"], spec["hidden_dim"], spec["num_classes"], spec["num_stages"],
        featmap_strides=spec["strides"], pooler_resolution=spec["pooler_resolution"],
        sampling_ratio=spec["sampling_ratio"], use_focal=spec["use_focal"], prior_prob=spec["prior_prob"],
        dim_feedforward=spec["dim_feedforward"], nhead=spec["nheads"], dropout=spec["dropout"],
        activation=spec["activation"], dim_dynamic=spec["dim_dynamic"], num_dynamic=spec["num_dynamic"],
        num_cls=spec["num_cls"], num_reg=spec["num_reg"], with_jitter=spec["jitter"])
    matcher = HungarianMatcher(spec["class_weight"], spec["l1_weight"], spec["giou_weight"],
                               class_cost="focal" if spec["use_focal"] else "softmax",
                               focal_alpha=spec["alpha"], focal_gamma=spec["gamma"])
    criterion = SparseRCNNCriterion(
        matcher, spec["num_classes"],
        {"loss_ce": spec["class_weight"], "loss_bbox": spec["l1_weight"], "loss_giou": spec["giou_weight"]},
        no_object_weight=spec["no_object_weight"], deep_supervision=True, use_focal=spec["use_focal"],
        focal_alpha=spec["alpha"], focal_gamma=spec["gamma"])
    return head, criterion


def run_sparse_rcnn_fixture(fixture, dtype=torch.float64, device="cpu"):
    """Our outputs on ``fixture`` under the names of its ``expected.npz`` (numpy arrays)."""
    fixture = Path(fixture)
    try:
        spec = json.loads((fixture / "case.json").read_text())
        arrays = dict(np.load(fixture / "inputs.npz"))
    except (OSError, ValueError) as e:
        raise SparseRCNNFixtureError(f"{fixture}: not a readable Sparse R-CNN fixture ({e})") from None
    head, criterion = build_from_case(spec)
    state = {k[len("weight/"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("weight/")}
    head.load_state_dict(state)
    head.to(device=device, dtype=dtype)
    criterion.to(device=device, dtype=dtype)

    def tensor(name):
        return torch.from_numpy(arrays[name]).to(device=device, dtype=dtype)

    features = [tensor(f"features_l{i}") for i in range(len(spec["strides"]))]
    whwh = tensor("whwh")
    targets = [{"boxes": tensor(f"gt_boxes_{i}"), "labels": torch.from_numpy(arrays[f"gt_labels_{i}"]).to(device),
                "whwh": whwh[i]} for i in range(whwh.size(0))]
    out = {}
    head.eval()
    with torch.no_grad():
        outputs = head(features, whwh)
    for k, (c, b) in enumerate(zip(outputs.class_logits, outputs.boxes)):
        out[f"eval/stage{k}/class_logits"] = c
        out[f"eval/stage{k}/boxes"] = b
    if outputs.jitter_boxes is not None:
        out["eval/jitter_boxes"] = outputs.jitter_boxes
    head.train()
    torch.manual_seed(spec["train_seed"])
    outputs = head(features, whwh)
    if outputs.jitter_boxes is not None:
        out["train/jitter_boxes"] = outputs.jitter_boxes.detach()
    trace = {}
    losses, _ = criterion.losses_and_matches(outputs, targets, trace)
    for k in range(len(outputs.boxes)):
        for i, match in enumerate(trace[f"match/stage{k}"][0]):
            out[f"match/stage{k}/image{i}/src"] = match.src
            out[f"match/stage{k}/image{i}/tgt"] = match.tgt
    sum(losses.values()).backward()
    params = dict(head.named_parameters())
    for name in spec["grad_params"]:
        out[f"grad/{name}"] = params[name].grad
    for name, value in losses.items():
        out[f"loss/{name}"] = value.detach()
    return {k: v.detach().cpu().numpy() for k, v in out.items()}
