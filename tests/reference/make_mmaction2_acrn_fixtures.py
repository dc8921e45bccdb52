"""Build the mmaction2 ACRN fixtures by running mmaction2's own modules (float64, seeded).

    python tests/reference/make_mmaction2_acrn_fixtures.py --mmaction2 /path/to/mmaction2 --out tests/reference/mmaction2

``--mmaction2`` is a checkout (or ``git archive``) of open-mmlab/mmaction2 1.x. Unlike
``make_mmaction2_fixtures.py`` this driver needs mmcv-lite and mmengine installed (pure-Python
wheels from the package index): ``ACRNHead`` is built from mmcv's real ``ConvModule`` and
initialised by mmengine's real ``kaiming_init`` / ``constant_init``. Executed official files
(loaded by path): ``mmaction/models/roi_heads/shared_heads/acrn_head.py``,
``mmaction/models/roi_heads/roi_extractors/single_straight3d.py``,
``mmaction/models/roi_heads/bbox_heads/bbox_head.py`` and ``mmaction/structures/bbox/bbox_target.py``.
Shims: ``mmcv.ops.RoIAlign`` -> ``torchvision.ops.roi_align`` (the stand-in of
``make_mmaction2_fixtures.py``; mmcv-lite has no compiled ops), ``mmdet...SamplingResult`` and
``mmaction.utils.InstanceList`` (type hints only).

Writes ``<out>/acrn/<case>.npz`` (inputs, weights, outputs, gradients; float64) and
``<out>/acrn/cases.json`` (module arguments, losses, versions).
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
from make_mmaction2_fixtures import _load, _module, _RoIAlign, _RoIPool  # noqa: E402

from official_code import checkout_commit  # noqa: E402  (sibling helper)

IMG = (128, 128)  # (h, w) of the network input; stride 16 -> 8x8 feature maps
NUM_CLASSES = 7


def install(root):
    """Shim the compiled / heavy names, then load the official files from ``root``."""
    import mmcv  # noqa: F401  (the real mmcv-lite package: mmcv.cnn.ConvModule)
    import mmengine  # noqa: F401

    _module("mmcv.ops", RoIAlign=_RoIAlign, RoIPool=_RoIPool)
    for name in ("mmdet", "mmdet.models", "mmdet.models.task_modules"):
        _module(name)
    _module("mmdet.models.task_modules.samplers", SamplingResult=object)
    _module("mmaction")
    _module("mmaction.utils", InstanceList=list)
    _module("mmaction.structures")
    target = _load("mmaction.structures.bbox.bbox_target", root / "mmaction/structures/bbox/bbox_target.py")
    _module("mmaction.structures.bbox", bbox_target=target.bbox_target)
    acrn = _load("mm_acrn_head", root / "mmaction/models/roi_heads/shared_heads/acrn_head.py")
    extractor = _load("mm_single_straight3d", root / "mmaction/models/roi_heads/roi_extractors/single_straight3d.py")
    head = _load("mm_bbox_head", root / "mmaction/models/roi_heads/bbox_heads/bbox_head.py")
    return acrn.ACRNHead, extractor.SingleRoIExtractor3D, head.BBoxHeadAVA


def _acrn_kwargs(args):
    """Our ``ACRNHead`` arguments as mmaction2's ``conv_cfg`` / ``norm_cfg`` / ``act_cfg``."""
    kw = dict(in_channels=args["in_channels"], out_channels=args["out_channels"], stride=args.get("stride", 1),
              num_convs=args.get("num_convs", 1))
    norm = args.get("norm", "BN3d")
    kw["norm_cfg"] = None if norm == "none" else dict(type=norm, requires_grad=True)
    act = args.get("act", "ReLU")
    kw["act_cfg"] = None if act == "none" else dict(type=act, inplace=True)
    return kw


def _perturb(module, gen):
    """Random BatchNorm scale / shift, so that a wrong affine or a missing norm shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bn.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith("bn.bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _rois(counts, gen, img=IMG):
    """``[K, 5]`` rois (``batch_index, x1, y1, x2, y2`` pixels), ``counts[b]`` per clip; some leave the image."""
    rows = []
    for b, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([img[1] - 28.0, img[0] - 38.0],
                                                                                  dtype=torch.float64)
        wh = 12 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60
        boxes = torch.cat([xy - 8, xy - 8 + wh], 1)
        rows.append(torch.cat([torch.full((n, 1), float(b), dtype=torch.float64), boxes], 1))
    return torch.cat(rows, 0)


# --------------------------------------------------------------------------- ACRN alone
HEAD_CASES = [
    # mmaction2's config: one (1, 3, 3) conv, stride 1, BN3d + ReLU
    dict(name="acrn_default", acrn=dict(in_channels=12, out_channels=6), roi_channels=6, map_hw=(6, 5),
         roi_size=(4, 4), counts=(3, 1)),
    # three (1, 3, 3) convs, the first with stride 2
    dict(name="acrn_stride2_convs3", acrn=dict(in_channels=10, out_channels=5, stride=2, num_convs=3),
         roi_channels=6, map_hw=(7, 6), roi_size=(3, 3), counts=(1, 4)),
    # no norm, no activation (ConvModule with norm_cfg / act_cfg None)
    dict(name="acrn_plain", acrn=dict(in_channels=8, out_channels=4, num_convs=2, norm="none", act="none"),
         roi_channels=4, map_hw=(5, 5), roi_size=(2, 3), counts=(2, 1)),
]


def run_head_case(case, ACRN, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = ACRN(**_acrn_kwargs(case["acrn"]))
    head.init_weights()
    head = head.double()
    _perturb(head, gen)
    weights = {k: v.clone() for k, v in head.state_dict().items()}
    rois = _rois(case["counts"], gen)
    k, c_roi = rois.shape[0], case["roi_channels"]
    c_map = case["acrn"]["in_channels"] - c_roi
    x = torch.randn(k, c_roi, 1, *case["roi_size"], generator=gen, dtype=torch.float64).requires_grad_()
    feat = torch.randn(len(case["counts"]), c_map, 1, *case["map_hw"], generator=gen,
                       dtype=torch.float64).requires_grad_()

    head.train()
    out = head(x, feat, rois)
    probe = torch.randn(out.shape, generator=gen, dtype=torch.float64)  # d(loss)/d(out), a generic gradient
    (out * probe).sum().backward()
    head.eval()
    with torch.no_grad():
        out_eval = head(x, feat, rois)  # running statistics after one training step

    arrays = {"input/roi_feats": x.detach(), "input/feat": feat.detach(), "input/rois": rois, "input/probe": probe}
    arrays.update({f"weight/{k}": v for k, v in weights.items()})
    arrays["out/train"] = out.detach()
    arrays["out/eval"] = out_eval
    arrays.update({f"state/{k}": v for k, v in head.state_dict().items() if "running" in k or "batches" in k})
    arrays["grad/roi_feats"] = x.grad
    arrays["grad/feat"] = feat.grad
    arrays.update({f"grad/{k}": p.grad for k, p in head.named_parameters()})
    meta = dict(acrn=case["acrn"], counts=list(case["counts"]), seed=seed, loss="sum(out/train * input/probe)")
    return arrays, meta


# --------------------------------------------------------------------------- extractor + ACRN + bbox head
C_SLOW, C_FAST = 12, 4
CHAIN_CASES = [
    # the ACRN config's wiring on SlowFast-shaped features: temporal avg pool, no context, ACRN in = 2 x map
    # channels, out = map channels, bbox head in = ACRN out, dropout 0 (the config's 0.5 is random)
    dict(name="slowfast_acrn", pathways=[(C_SLOW, 4), (C_FAST, 16)],
         extractor=dict(output_size=4, with_temporal_pool=True, temporal_pool_mode="avg", with_global=False),
         acrn=dict(in_channels=2 * (C_SLOW + C_FAST), out_channels=C_SLOW + C_FAST),
         head=dict(background_class=True, in_channels=C_SLOW + C_FAST, num_classes=NUM_CLASSES, multilabel=True,
                   dropout_ratio=0.0),
         pos_neg=[(2, 1), (1, 0)], pos_weight=1.0),
]


def run_chain_case(case, ACRN, Extractor, Head, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    extractor = Extractor(featmap_stride=16, **case["extractor"]).double()
    acrn = ACRN(**_acrn_kwargs(case["acrn"]))
    acrn.init_weights()
    acrn = acrn.double()
    _perturb(acrn, gen)
    head = Head(**case["head"])
    head.init_weights()
    with torch.no_grad():  # non-zero biases, so that a wrong bias would show
        for name, p in head.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    head = head.double()
    weights = {f"shared_head.{k}": v.clone() for k, v in acrn.state_dict().items()}
    weights.update({f"bbox_head.{k}": v.clone() for k, v in head.state_dict().items()})

    feats = [torch.randn(2, c, t, 8, 8, generator=gen, dtype=torch.float64).requires_grad_()
             for c, t in case["pathways"]]
    rois = _rois([p + n for p, n in case["pos_neg"]], gen)
    pos_labels = []
    for n_pos, _ in case["pos_neg"]:
        labels = (torch.rand(n_pos, NUM_CLASSES, generator=gen) < 0.35).double()
        labels[torch.arange(n_pos), 1 + torch.randint(NUM_CLASSES - 1, (n_pos,), generator=gen)] = 1.0
        pos_labels.append(labels)

    # AVARoIHead._bbox_forward: extractor -> shared head (feat = the extractor's map) -> bbox head
    acrn.train()
    head.train()
    roi_feats, global_feat = extractor(tuple(feats), rois)
    roi_feats.retain_grad()
    acrn_feats = acrn(roi_feats, feat=global_feat, rois=rois, img_metas=None)
    acrn_feats.retain_grad()
    cls_score = head(acrn_feats)
    sampling, start = [], 0
    for (n_pos, n_neg), labels in zip(case["pos_neg"], pos_labels):
        block = rois[start:start + n_pos + n_neg, 1:]
        sampling.append(types.SimpleNamespace(pos_priors=block[:n_pos], neg_priors=block[n_pos:],
                                              pos_gt_labels=labels))
        start += n_pos + n_neg
    out = head.loss_and_target(cls_score, rois, sampling, types.SimpleNamespace(pos_weight=case["pos_weight"]))
    losses = out["loss_bbox"]
    labels, label_weights = out["bbox_targets"]
    losses["loss_action_cls"].backward()

    acrn.eval()
    head.eval()
    with torch.no_grad():  # the test path: running statistics after one training step
        roi_eval, map_eval = extractor(tuple(feats), rois)
        cls_eval = head(acrn(roi_eval, feat=map_eval, rois=rois))

    arrays = {f"input/feat{i}": f.detach() for i, f in enumerate(feats)}
    arrays["input/rois"] = rois
    arrays["input/labels"] = labels
    arrays["out/label_weights"] = label_weights
    arrays.update({f"weight/{k}": v for k, v in weights.items()})
    arrays["out/roi_feats"] = roi_feats.detach()
    arrays["out/global_feat"] = global_feat.detach()
    arrays["out/acrn_feats"] = acrn_feats.detach()
    arrays["out/cls_score"] = cls_score.detach()
    arrays["out/cls_score_eval"] = cls_eval
    for i, f in enumerate(feats):
        arrays[f"grad/feat{i}"] = f.grad
    arrays["grad/roi_feats"] = roi_feats.grad
    arrays["grad/acrn_feats"] = acrn_feats.grad
    arrays.update({f"grad/shared_head.{k}": p.grad for k, p in acrn.named_parameters()})
    arrays.update({f"grad/bbox_head.{k}": p.grad for k, p in head.named_parameters()})
    meta = {k: case[k] for k in ("pathways", "extractor", "acrn", "head", "pos_neg", "pos_weight")}
    meta.update(featmap_stride=16, img_shape=list(IMG), seed=seed,
                losses={k: float(v.detach()) for k, v in losses.items()})
    return arrays, meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmaction2", required=True, type=Path, help="mmaction2 1.x checkout or archive")
    parser.add_argument("--out", required=True, type=Path, help="fixture folder (acrn/ is written in it)")
    parser.add_argument("--commit", default=None, help="mmaction2 commit (read from the checkout when it is git)")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    commit = checkout_commit(args.mmaction2, args.commit)
    ACRN, Extractor, Head = install(args.mmaction2)
    import mmcv
    import mmengine

    out = args.out / "acrn"
    out.mkdir(parents=True, exist_ok=True)
    index = {"mmaction2_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
             "mmcv": mmcv.__version__, "mmengine": mmengine.__version__,
             "shims": "mmcv.ops.RoIAlign -> torchvision.ops.roi_align; mmdet SamplingResult, mmaction InstanceList "
                      "type hints", "cases": {}}
    for i, case in enumerate(HEAD_CASES):
        arrays, meta = run_head_case(case, ACRN, args.seed + i)
        np.savez_compressed(out / f"{case['name']}.npz", **{k: v.detach().numpy() for k, v in arrays.items()})
        index["cases"][case["name"]] = dict(meta, kind="head")
        print(case["name"], tuple(arrays["out/train"].shape))
    for i, case in enumerate(CHAIN_CASES):
        arrays, meta = run_chain_case(case, ACRN, Extractor, Head, args.seed + len(HEAD_CASES) + i)
        np.savez_compressed(out / f"{case['name']}.npz", **{k: v.detach().numpy() for k, v in arrays.items()})
        index["cases"][case["name"]] = dict(meta, kind="chain")
        print(case["name"], {k: round(v, 6) for k, v in meta["losses"].items()})
    (out / "cases.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
