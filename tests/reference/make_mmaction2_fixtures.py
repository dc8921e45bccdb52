"""Build the mmaction2 RoI-head fixtures by running mmaction2's own modules (float64, seeded).

    python tests/reference/make_mmaction2_fixtures.py --mmaction2 /path/to/mmaction2 --out tests/reference/mmaction2

``--mmaction2`` is a checkout (or ``git archive``) of open-mmlab/mmaction2 1.x; only two of its files
are executed, ``mmaction/models/roi_heads/roi_extractors/single_straight3d.py`` and
``mmaction/models/roi_heads/bbox_heads/bbox_head.py`` (plus ``mmaction/structures/bbox/bbox_target.py`` and
``transforms.py``'s ``bbox2result``),
loaded by path. Nothing of mmcv / mmdet / mmengine is installed; the few names those files import
are shimmed (see ``install_shims``):

* ``mmcv.ops.RoIAlign`` -> ``torchvision.ops.roi_align`` with the same output size, spatial scale,
  sampling ratio and ``aligned`` (mmcv's compiled CPU roi_align equals torchvision's bit for bit,
  forward and backward, float32 and float64 -- measured with mmcv 2.1, see issue #15);
* ``mmengine.config.ConfigDict`` (attribute dict), ``mmengine.structures.InstanceData`` (attribute
  bag), ``mmdet...SamplingResult`` and ``mmaction.utils.InstanceList`` (type hints only).

Writes ``<out>/roi_head/<case>.npz`` (inputs, weights, outputs, gradients; float64) and
``<out>/roi_head/cases.json`` (each case's module arguments, losses, metadata).

``--part detector`` instead runs the whole two-stage detector (mmdet 3.3's ``FastRCNN`` with
mmaction2's ``AVARoIHead``, ``MaxIoUAssignerAVA``, mmdet's ``RandomSampler`` and mmaction2's real
R50 backbones), imported as packages: the mmaction2 checkout is put on ``sys.path`` and mmdet 3.3,
mmengine and mmcv-lite must be importable (see ``install_detector_shims`` for the two shims). It
writes ``<out>/detector/<case>/{config.yaml, mmaction2.json, inputs.npz, expected.npz}`` (layout in
``stmixer/tools/mmaction2_parity.py``) and ``<out>/detector/cases.json``.
"""

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from official_code import stub_module as _module, load_by_path as _load, checkout_commit  # noqa: E402  (sibling helper)

IMG = (128, 128)  # (h, w) of the network input; stride 16 -> 8x8 feature maps


# --------------------------------------------------------------------------- shims
class _RoIAlign(nn.Module):
    """Stand-in for mmcv.ops.RoIAlign (avg pool mode) on top of torchvision."""

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg", aligned=True,
                 use_torchvision=False):
        super().__init__()
        assert pool_mode == "avg", "torchvision's roi_align averages; max mode is not shimmed"
        self.output_size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
        self.spatial_scale, self.sampling_ratio, self.aligned = float(spatial_scale), int(sampling_ratio), aligned

    def forward(self, x, rois):
        return torchvision.ops.roi_align(x, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                                         self.aligned)


class _RoIPool(nn.Module):
    def __init__(self, output_size, spatial_scale=1.0):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, x, rois):
        return torchvision.ops.roi_pool(x, rois, self.output_size, self.spatial_scale)


class _AttrDict(dict):
    __getattr__ = dict.__getitem__


class _InstanceData:
    pass


def install_shims(root):
    """Register the stand-in modules, then load the three official files from ``root``."""
    _module("mmcv")
    _module("mmcv.ops", RoIAlign=_RoIAlign, RoIPool=_RoIPool)
    _module("mmengine", ConfigDict=_AttrDict)
    _module("mmengine.config", ConfigDict=_AttrDict)
    _module("mmengine.structures", InstanceData=_InstanceData)
    for name in ("mmdet", "mmdet.models", "mmdet.models.task_modules"):
        _module(name)
    _module("mmdet.models.task_modules.samplers", SamplingResult=object)
    _module("mmaction")
    _module("mmaction.utils", InstanceList=list)
    _module("mmaction.structures")
    target = _load("mmaction.structures.bbox.bbox_target", root / "mmaction/structures/bbox/bbox_target.py")
    transforms = _load("mmaction.structures.bbox.transforms", root / "mmaction/structures/bbox/transforms.py")
    _module("mmaction.structures.bbox", bbox_target=target.bbox_target, bbox2result=transforms.bbox2result)
    extractor = _load("mm_single_straight3d", root / "mmaction/models/roi_heads/roi_extractors/single_straight3d.py")
    head = _load("mm_bbox_head", root / "mmaction/models/roi_heads/bbox_heads/bbox_head.py")
    return extractor.SingleRoIExtractor3D, head.BBoxHeadAVA, transforms.bbox2result


# --------------------------------------------------------------------------- cases
NUM_CLASSES = 7
C_SLOW, C_FAST = 12, 4
CASES = [
    # SlowOnly-R50 4x16 baseline: temporal avg, linear head, BCE
    dict(name="slowonly_linear_avg", pathways=[(C_SLOW, 4)],
         extractor=dict(output_size=4, with_temporal_pool=True, temporal_pool_mode="avg"),
         head=dict(background_class=True, in_channels=C_SLOW, num_classes=NUM_CLASSES),
         pos_weight=-1.0, flip=False, crop_quadruple=None),
    # linear head, temporal max pooling in the extractor, non-default sampling ratio
    dict(name="slowonly_linear_max", pathways=[(C_SLOW, 4)],
         extractor=dict(output_size=4, sampling_ratio=2, with_temporal_pool=True, temporal_pool_mode="max"),
         head=dict(background_class=True, in_channels=C_SLOW, num_classes=NUM_CLASSES, topk=(2, 4)),
         pos_weight=2.0, flip=True, crop_quadruple=[0.1, 0.05, 0.8, 0.9]),
    # SlowFast-R50 8x8 with context + temporal max + focal (alpha 3, gamma 1)
    dict(name="slowfast_context_max_focal", pathways=[(C_SLOW, 4), (C_FAST, 16)],
         extractor=dict(output_size=4, with_temporal_pool=True, temporal_pool_mode="max", with_global=True),
         head=dict(background_class=True, in_channels=2 * (C_SLOW + C_FAST), num_classes=NUM_CLASSES,
                   focal_alpha=3.0, focal_gamma=1.0),
         pos_weight=-1.0, flip=False, crop_quadruple=None),
    # the SlowOnly K700 row: context + temporal max + nonlinear (MLP) head + focal gamma 1
    dict(name="slowonly_context_max_nlhead_focal", pathways=[(C_SLOW, 4)],
         extractor=dict(output_size=4, with_temporal_pool=True, temporal_pool_mode="max", with_global=True),
         head=dict(background_class=True, in_channels=2 * C_SLOW, num_classes=NUM_CLASSES, mlp_head=True,
                   focal_gamma=1.0),
         pos_weight=-1.0, flip=True, crop_quadruple=None),
    # no temporal pooling in the extractor (the head pools T with max, space with avg), legacy
    # aligned=False, single-label softmax head, SlowFast pathways
    dict(name="slowfast_notpool_singlelabel", pathways=[(C_SLOW, 4), (C_FAST, 16)],
         extractor=dict(output_size=(3, 5), aligned=False, with_temporal_pool=False),
         head=dict(background_class=True, in_channels=C_SLOW + C_FAST, num_classes=NUM_CLASSES,
                   temporal_pool_type="max", spatial_pool_type="avg", multilabel=False, topk=3),
         pos_weight=-1.0, flip=False, crop_quadruple=[0.0, 0.2, 1.0, 0.6]),
]
# thresholds of bbox2result: multi-label scalar, single-label (negative), per-class thresholds
DET_THRESHOLDS = {"thr0.5": 0.5, "single": -1.0, "perclass": tuple(np.linspace(0.3, 0.7, NUM_CLASSES).tolist())}
# per clip: number of positive and negative RoIs (clip 1 has no negatives: mmaction2's weight quirk)
POS_NEG = [(2, 1), (2, 0)]


def make_inputs(case, gen):
    """Feature maps, rois (positives first per clip) and positive labels, float64."""
    feats = [torch.randn(2, c, t, 8, 8, generator=gen, dtype=torch.float64) for c, t in case["pathways"]]
    rois, pos_labels = [], []
    for b, (n_pos, n_neg) in enumerate(POS_NEG):
        n = n_pos + n_neg
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([100.0, 90.0], dtype=torch.float64)
        wh = 12 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60
        boxes = torch.cat([xy - 8, xy - 8 + wh], 1)  # some boxes start left of / above the image
        rois.append(torch.cat([torch.full((n, 1), float(b), dtype=torch.float64), boxes], 1))
        labels = (torch.rand(n_pos, NUM_CLASSES, generator=gen) < 0.35).double()
        labels[torch.arange(n_pos), 1 + torch.randint(NUM_CLASSES - 1, (n_pos,), generator=gen)] = 1.0
        pos_labels.append(labels)
    return feats, torch.cat(rois, 0), pos_labels


def run_case(case, Extractor, Head, bbox2result, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    extractor = Extractor(featmap_stride=16, **case["extractor"]).double()
    head = Head(**case["head"])
    head.init_weights()
    with torch.no_grad():  # non-zero biases, so that a wrong bias would show
        for name, p in head.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    head = head.double()
    feats, rois, pos_labels = make_inputs(case, gen)
    feats = [f.requires_grad_() for f in feats]

    roi_feats, global_feat = extractor(tuple(feats) if len(feats) > 1 else feats[0], rois)
    roi_feats.retain_grad()
    cls_score = head(roi_feats)

    # sampling results as mmdet's sampler returns them: positives then negatives per clip
    sampling = []
    start = 0
    for (n_pos, n_neg), labels in zip(POS_NEG, pos_labels):
        block = rois[start:start + n_pos + n_neg, 1:]
        sampling.append(types.SimpleNamespace(pos_priors=block[:n_pos], neg_priors=block[n_pos:],
                                              pos_gt_labels=labels))
        start += n_pos + n_neg
    cfg = types.SimpleNamespace(pos_weight=case["pos_weight"])
    out = head.loss_and_target(cls_score, rois, sampling, cfg)
    losses = out["loss_bbox"]
    labels, label_weights = out["bbox_targets"]
    losses["loss_action_cls"].backward()

    img_meta = {"img_shape": IMG, "flip": case["flip"]}
    if case["crop_quadruple"] is not None:
        img_meta["crop_quadruple"] = np.array(case["crop_quadruple"])
    n0 = sum(POS_NEG[0])
    pred = head.predict_by_feat((rois[:n0].detach().clone(), rois[n0:].detach().clone()),
                                (cls_score[:n0].detach(), cls_score[n0:].detach()), [img_meta, img_meta])

    arrays = {f"input/feat{i}": f.detach() for i, f in enumerate(feats)}
    arrays["input/rois"] = rois
    arrays["input/labels"] = labels
    arrays["out/label_weights"] = label_weights
    arrays.update({f"weight/{k}": v for k, v in head.state_dict().items()})
    arrays["out/roi_feats"] = roi_feats.detach()
    arrays["out/global_feat"] = global_feat.detach()
    arrays["out/cls_score"] = cls_score.detach()
    for i, f in enumerate(feats):
        arrays[f"grad/feat{i}"] = f.grad
    arrays["grad/roi_feats"] = roi_feats.grad
    arrays.update({f"grad/{k}": p.grad for k, p in head.named_parameters()})
    for b, res in enumerate(pred):
        arrays[f"pred/boxes_b{b}"] = res.bboxes
        arrays[f"pred/scores_b{b}"] = res.scores
        # the AVA metric's per-class detections: rows (class, x1, y1, x2, y2, score), classes in order
        for tag, thr in DET_THRESHOLDS.items():
            per_class = bbox2result(res.bboxes, res.scores, NUM_CLASSES, thr=thr)
            arrays[f"det/{tag}_b{b}"] = torch.from_numpy(np.concatenate(
                [np.concatenate([np.full((len(d), 1), c + 1.0), d], 1) for c, d in enumerate(per_class)], 0))
    arrays = {k: v.detach().numpy() for k, v in arrays.items()}
    meta = {k: case[k] for k in ("extractor", "head", "pos_weight", "flip", "crop_quadruple", "pathways")}
    meta.update(det_thresholds=DET_THRESHOLDS, featmap_stride=16, img_shape=list(IMG), pos_neg=POS_NEG, seed=seed,
                losses={k: float(v.detach()) for k, v in losses.items()},
                loss_dtypes={k: str(v.dtype).replace("torch.", "") for k, v in losses.items()})
    return arrays, meta


# =========================================================================== the whole detector
# ``--part detector``: mmaction2's FastRCNN (mmdet 3.3 ``TwoStageDetector``) with ``AVARoIHead``,
# ``MaxIoUAssignerAVA``, mmdet's ``RandomSampler`` and mmaction2's real backbones, imported as packages
# (mmaction2 checkout on sys.path, mmdet 3.3 + mmengine 0.10 + mmcv-lite 2.1 installed).
DET_IMG = (64, 64)  # (h, w) of the clips; stride 16 -> 4x4 maps
DET_IMG_KEYS = ["clip0,0902", "clip1,0903"]
# our config of each case (config.yaml of its folder)
_OUR_SLOWONLY = {"MODEL": {"META_ARCHITECTURE": "FastRCNN", "BACKBONE": {"CONV_BODY": "PySlowonly"},
                           "ROI_HEAD": {"DROPOUT": 0.0}},
                 "RESNET": {"DEPTH": 50, "SPATIAL_STRIDES": [[1], [2], [2], [1]],
                            "NUM_BLOCK_TEMP_KERNEL": [[3], [4], [6], [3]]},
                 "DATA": {"INPUT_CHANNEL_NUM": [3], "NUM_FRAMES": 4}}
_OUR_SLOWFAST = {"MODEL": {"META_ARCHITECTURE": "FastRCNN", "BACKBONE": {"CONV_BODY": "PySlowfast-R50", "PATHWAYS": 2},
                           "ROI_HEAD": {"DROPOUT": 0.0}},
                 "RESNET": {"DEPTH": 50, "SPATIAL_STRIDES": [[1, 1], [2, 2], [2, 2], [1, 1]],
                            "SPATIAL_DILATIONS": [[1, 1], [1, 1], [1, 1], [1, 1]],
                            "NUM_BLOCK_TEMP_KERNEL": [[3, 3], [4, 4], [6, 6], [3, 3]]},
                 "NONLOCAL": {"LOCATION": [[[], []], [[], []], [[], []], [[], []]],
                              "GROUP": [[1, 1], [1, 1], [1, 1], [1, 1]]},
                 "SLOWFAST": {"ALPHA": 4, "BETA_INV": 8, "FUSION_CONV_CHANNEL_RATIO": 2, "FUSION_KERNEL_SZ": 7,
                              "FUSION_BN_RELU": False},
                 "DATA": {"INPUT_CHANNEL_NUM": [3, 3], "NUM_FRAMES": 16}}


def _merged(base, **roi_head):
    out = json.loads(json.dumps(base))
    out["MODEL"]["ROI_HEAD"].update(roi_head)
    return out


DET_CASES = [
    # (a) SlowOnly-R50 4x16 baseline
    # (configs/detection/slowonly/slowonly_kinetics400-pretrained-r50_8xb16-4x16x1-20e_ava21-rgb.py)
    dict(name="slowonly_r50_4x16", backbone="slowonly", frames=4, seed=100, ours=_merged(_OUR_SLOWONLY),
         extractor=dict(output_size=8, with_temporal_pool=True),
         head=dict(background_class=True, in_channels=2048, num_classes=81, multilabel=True)),
    # (b) SlowFast-R50 8x8 with context + temporal max + focal (alpha 3, gamma 1)
    dict(name="slowfast_r50_8x8_context_max_focal", backbone="slowfast", frames=16, seed=101,
         ours=_merged(_OUR_SLOWFAST, WITH_GLOBAL=True, TEMPORAL_POOL_MODE="max", FOCAL_ALPHA=3.0, FOCAL_GAMMA=1.0),
         extractor=dict(output_size=8, with_temporal_pool=True, temporal_pool_mode="max", with_global=True),
         head=dict(background_class=True, in_channels=4608, num_classes=81, multilabel=True, focal_alpha=3.0,
                   focal_gamma=1.0)),
    # (c) SlowOnly-R50 K700 8x8: context + temporal max + nonlinear (MLP) head
    dict(name="slowonly_r50_8x8_context_max_nlhead", backbone="slowonly", frames=8, seed=102,
         ours=dict(_merged(_OUR_SLOWONLY, WITH_GLOBAL=True, TEMPORAL_POOL_MODE="max", MLP_HEAD=True),
                   DATA={"INPUT_CHANNEL_NUM": [3], "NUM_FRAMES": 8}),
         extractor=dict(output_size=8, with_temporal_pool=True, temporal_pool_mode="max", with_global=True),
         head=dict(background_class=True, in_channels=4096, num_classes=81, multilabel=True, mlp_head=True)),
]
# Per clip: ground truth (x1, y1, x2, y2) and its action ids (1..80), and the person proposals. Clip 0:
# proposals near both persons (IoU >= 0.9 -> positive, one at ~0.8 -> negative), one false positive;
# clip 1: one person whose best proposal has IoU < 0.9 (only the ground truth itself is positive), plus
# a proposal partly outside the frame. <= 32 candidates per clip, so the sampler keeps them all.
DET_GT = [
    ([[6.0, 4.0, 30.0, 58.0], [34.0, 10.0, 60.0, 62.0]], [[3, 12, 79], [12, 80]]),
    ([[16.0, 8.0, 44.0, 56.0]], [[1, 5, 17, 64]]),
]
DET_PROPOSALS = [
    [[6.5, 4.2, 30.3, 57.5], [5.0, 3.0, 31.0, 59.0], [34.2, 10.5, 59.7, 62.0], [36.0, 12.0, 60.0, 56.0],
     [40.0, 30.0, 52.0, 44.0], [8.0, 6.0, 28.0, 50.0]],
    [[18.0, 10.0, 44.0, 52.0], [-4.0, 20.0, 14.0, 66.0], [30.0, 2.0, 62.0, 40.0]],
]
DET_GRADS = {  # parameter -> stored slice (full tensors are too big for R50)
    "backbone.conv1.conv.weight": (slice(None),),
    "backbone.slow_path.conv1.conv.weight": (slice(None),),
    "backbone.fast_path.conv1.conv.weight": (slice(None),),
    "backbone.layer4.2.conv3.conv.weight": (slice(0, 8), slice(0, 64)),
    "backbone.slow_path.layer4.2.conv3.conv.weight": (slice(0, 8), slice(0, 64)),
    "roi_head.bbox_head.fc_cls.weight": (slice(None), slice(0, 64)),
    "roi_head.bbox_head.fc_cls.bias": (slice(None),),
    "roi_head.bbox_head.fc_cls.0.weight": (slice(0, 16), slice(0, 256)),
    "roi_head.bbox_head.fc_cls.2.weight": (slice(None), slice(0, 64)),
    "roi_head.bbox_head.fc_cls.2.bias": (slice(None),),
}
ROI_CHANNEL_STEP = 128  # channel slice of the RoI features (and their gradient) stored


def _backbone_generator():
    """tests/reference/make_mmaction2_backbone_fixtures.py: the seeded weights and clips."""
    spec = importlib.util.spec_from_file_location("mm_backbone_fixtures",
                                                  Path(__file__).with_name("make_mmaction2_backbone_fixtures.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detector_kind(gen, key, shape):
    """Generator kind of an mmaction2 detector state-dict entry (backbone kinds as the backbone
    fixtures; the head's linear weights He-uniform over their fan-in, biases U(-0.1, 0.1))."""
    if key.startswith("backbone."):
        return gen.kind_of(key[len("backbone."):], shape)
    return "bias" if key.endswith("bias") else "conv_weight"


def det_labels(action_ids, num_classes=81):
    """mmaction2's ``[k, num_classes]`` multi-hot rows (column = action id, column 0 never set)."""
    out = np.zeros((len(action_ids), num_classes))
    for i, ids in enumerate(action_ids):
        out[i, ids] = 1.0
    return out


def install_detector_shims():
    """mmcv-lite has no compiled ops: a stand-in ``mmcv._ext`` lets ``mmcv.ops`` import (its ops raise when
    called), and ``mmcv.ops.RoIAlign`` becomes the torchvision stand-in (read by ``SingleRoIExtractor3D`` at
    construction). mmaction2's ``MaxIoUAssignerAVA`` creates float32 labels whatever the input dtype (and
    fails on float64 ground-truth labels): it is given them as float32 and its labels are cast back to the
    ground truth's dtype (0/1 values: exact both ways)."""
    class _Ext(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def _missing(*args, **kwargs):
                raise RuntimeError(f"compiled mmcv op {name} is not available (shimmed)")
            return _missing

    sys.modules.setdefault("mmcv._ext", _Ext("mmcv._ext"))
    import mmcv.ops
    mmcv.ops.RoIAlign = _RoIAlign
    mmcv.ops.RoIPool = _RoIPool
    from mmaction.models.task_modules.assigners import MaxIoUAssignerAVA
    original = MaxIoUAssignerAVA.assign_wrt_overlaps

    def assign_wrt_overlaps(self, overlaps, gt_labels):
        result = original(self, overlaps, gt_labels.float())  # its float32 label tensor takes float32 rows
        result.labels = result.labels.to(gt_labels.dtype)
        return result
    MaxIoUAssignerAVA.assign_wrt_overlaps = assign_wrt_overlaps


def build_mm_detector(case, gen):
    from mmaction.utils import register_all_modules
    from mmdet.registry import MODELS
    register_all_modules(init_default_scope=True)
    if case["backbone"] == "slowonly":
        backbone = dict(type="mmaction.ResNet3dSlowOnly", **{k: v for k, v in gen.SLOWONLY_ARGS.items()
                                                            if k != "out_indices"})
    else:
        backbone = dict(type="mmaction.ResNet3dSlowFast", **gen.SLOWFAST_ARGS)
    cfg = dict(
        type="FastRCNN", _scope_="mmdet", backbone=backbone,
        roi_head=dict(type="AVARoIHead",
                      bbox_roi_extractor=dict(type="SingleRoIExtractor3D", roi_layer_type="RoIAlign",
                                              **case["extractor"]),
                      bbox_head=dict(type="BBoxHeadAVA", dropout_ratio=0.0, **case["head"])),
        train_cfg=dict(rcnn=dict(
            assigner=dict(type="MaxIoUAssignerAVA", pos_iou_thr=0.9, neg_iou_thr=0.9, min_pos_iou=0.9),
            sampler=dict(type="RandomSampler", num=32, pos_fraction=1, neg_pos_ub=-1, add_gt_as_proposals=True),
            pos_weight=1.0)),
        test_cfg=dict(rcnn=None))
    from mmengine.config import ConfigDict
    return MODELS.build(ConfigDict(cfg)).double()


def det_samples(with_gt):
    from mmaction.structures import ActionDataSample
    from mmengine.structures import InstanceData
    samples = []
    for b, ((boxes, ids), props) in enumerate(zip(DET_GT, DET_PROPOSALS)):
        sample = ActionDataSample()
        sample.set_metainfo(dict(img_shape=DET_IMG, img_key=DET_IMG_KEYS[b]))
        if with_gt:
            sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float64),
                                               labels=torch.from_numpy(det_labels(ids)))
        sample.proposals = InstanceData(bboxes=torch.tensor(props, dtype=torch.float64))
        samples.append(sample)
    return samples


def run_detector_case(case, gen):
    seed = case["seed"]
    model = build_mm_detector(case, gen)
    manifest = [[k, list(v.shape), str(v.dtype).replace("torch.", ""), detector_kind(gen, k, tuple(v.shape))]
                for k, v in model.state_dict().items()]
    weights = {k: torch.from_numpy(v) for k, v in gen.fake_state_dict(manifest, seed).items()}
    model.load_state_dict(weights, strict=True)
    clip = torch.from_numpy(gen.fake_input(seed, (2, 3, case["frames"]) + DET_IMG))

    captured = {}
    sampler = model.roi_head.bbox_sampler
    original_sample = sampler.sample

    def sample(*args, **kwargs):
        result = original_sample(*args, **kwargs)
        captured.setdefault("sampling", []).append(result)
        return result
    sampler.sample = sample
    model.roi_head.bbox_roi_extractor.register_forward_hook(
        lambda m, i, o: captured.update(rois=i[1].detach().clone(), roi_feats=o[0]))
    model.roi_head.bbox_head.register_forward_hook(lambda m, i, o: captured.update(cls_score=o))

    model.train()
    torch.manual_seed(seed)
    losses = model.loss(clip, det_samples(with_gt=True))
    captured["roi_feats"].retain_grad()
    losses["loss_action_cls"].backward()
    params = dict(model.named_parameters())

    inputs = {}  # the clip is not stored: fake_input(seed, shape) regenerates it (its statistics are in the json)
    for b, ((boxes, ids), props) in enumerate(zip(DET_GT, DET_PROPOSALS)):
        inputs[f"gt_boxes_b{b}"] = np.array(boxes)
        inputs[f"gt_labels_b{b}"] = det_labels(ids)
        inputs[f"proposals_b{b}"] = np.array(props)
    arrays = {f"loss/{k}" if k.startswith("loss") else f"metric/{k}": v.detach().double().numpy()
              for k, v in losses.items()}
    for b, res in enumerate(captured["sampling"]):
        arrays[f"sample/pos_inds_b{b}"] = res.pos_inds.numpy()
        arrays[f"sample/neg_inds_b{b}"] = res.neg_inds.numpy()
        arrays[f"sample/pos_gt_labels_b{b}"] = res.pos_gt_labels.numpy()
        arrays[f"sample/pos_is_gt_b{b}"] = res.pos_is_gt.numpy()
    roi_feats = captured["roi_feats"]
    arrays["out/rois"] = captured["rois"].numpy()
    arrays["out/roi_feats"] = roi_feats.detach()[:, ::ROI_CHANNEL_STEP].numpy()
    arrays["out/cls_score"] = captured["cls_score"].detach().numpy()
    arrays["grad/roi_feats"] = roi_feats.grad[:, ::ROI_CHANNEL_STEP].numpy()
    for name, index in DET_GRADS.items():
        if name in params:
            arrays[f"grad/{name}"] = params[name].grad[index].numpy()

    # test mode (mmaction2 predicts one clip at a time); the seeded weights again (training moved the
    # BatchNorm running statistics)
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        for b, sample in enumerate(det_samples(with_gt=False)):
            pred = model.predict(clip[b:b + 1], [sample])[0].pred_instances
            arrays[f"pred/boxes_b{b}"] = pred.bboxes.numpy()
            arrays[f"pred/scores_b{b}"] = pred.scores.numpy()
            per_class = bbox2result_fn()(pred.bboxes, pred.scores, 81, thr=0.002)
            arrays[f"det/b{b}"] = np.concatenate(
                [np.concatenate([np.full((len(d), 1), c + 1.0), d], 1) for c, d in enumerate(per_class)], 0)
    stats = {name: {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value ** 2).sum())}
             for name, value in (("input/clip", clip), ("out/roi_feats", roi_feats.detach()),
                                 ("grad/roi_feats", roi_feats.grad))}
    meta = dict(backbone=case["backbone"], frames=case["frames"], seed=seed, extractor=case["extractor"],
                head=case["head"], img_shape=list(DET_IMG), gen_version=gen.GEN_VERSION,
                clip_shape=[2, 3, case["frames"]] + list(DET_IMG), img_keys=DET_IMG_KEYS, action_thr=0.002,
                slow_stride=gen.SLOWFAST_ARGS["resample_rate"] if case["backbone"] == "slowfast" else 0,
                roi_channel_step=ROI_CHANNEL_STEP, stats=stats, manifest=manifest,
                grads={k: [[s.start, s.stop] for s in v] for k, v in DET_GRADS.items() if k in params},
                losses={k: float(v.detach()) for k, v in losses.items()})
    return {k: np.asarray(v) for k, v in inputs.items()}, {k: np.asarray(v) for k, v in arrays.items()}, meta


def bbox2result_fn():
    from mmaction.structures.bbox import bbox2result
    return bbox2result


def main_detector(args, commit):
    sys.path.insert(0, str(args.mmaction2))
    install_detector_shims()
    import mmdet
    import mmengine
    gen = _backbone_generator()
    out = args.out / "detector"
    out.mkdir(parents=True, exist_ok=True)
    index = {"mmaction2_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
             "mmdet": mmdet.__version__, "mmengine": mmengine.__version__,
             "shims": "mmcv._ext stand-in (no compiled op is called); mmcv.ops.RoIAlign -> torchvision.ops.roi_align; "
                      "MaxIoUAssignerAVA labels cast to the ground truth's dtype",
             "cases": {}}
    import yaml
    for case in DET_CASES:
        inputs, arrays, meta = run_detector_case(case, gen)
        folder = out / case["name"]
        folder.mkdir(exist_ok=True)
        (folder / "config.yaml").write_text(
            f"# Our config of mmaction2's {case['name']} fixture (make_mmaction2_fixtures.py --part detector)\n"
            + yaml.safe_dump(case["ours"], sort_keys=True, default_flow_style=None))
        (folder / "mmaction2.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        np.savez_compressed(folder / "inputs.npz", **inputs)
        np.savez_compressed(folder / "expected.npz", **arrays)
        index["cases"][case["name"]] = {k: meta[k] for k in ("backbone", "frames", "seed", "losses")}
        print(case["name"], {k: round(v, 6) for k, v in meta["losses"].items()})
    (out / "cases.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmaction2", required=True, type=Path, help="mmaction2 1.x checkout or archive")
    parser.add_argument("--out", required=True, type=Path, help="fixture folder (roi_head/ is written in it)")
    parser.add_argument("--commit", default=None, help="mmaction2 commit (read from the checkout when it is git)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--part", choices=("roi_head", "detector"), default="roi_head",
                        help="roi_head: the RoI-head modules by path, nothing of mm* installed (roi_head/); detector: "
                             "the whole FastRCNN detector, mmdet 3.3 + mmengine + mmcv-lite installed (detector/)")
    args = parser.parse_args(argv)
    commit = checkout_commit(args.mmaction2, args.commit)
    if args.part == "detector":
        return main_detector(args, commit)
    Extractor, Head, bbox2result = install_shims(args.mmaction2)
    out = args.out / "roi_head"
    out.mkdir(parents=True, exist_ok=True)
    index = {"mmaction2_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
             "shims": "mmcv.ops.RoIAlign -> torchvision.ops.roi_align; mmengine/mmdet names stubbed",
             "cases": {}}
    for i, case in enumerate(CASES):
        arrays, meta = run_case(case, Extractor, Head, bbox2result, args.seed + i)
        np.savez_compressed(out / f"{case['name']}.npz", **arrays)
        index["cases"][case["name"]] = meta
        print(case["name"], {k: round(v, 6) for k, v in meta["losses"].items()})
    (out / "cases.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
