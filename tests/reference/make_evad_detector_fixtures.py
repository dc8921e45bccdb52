"""Section ``detector`` of ``make_evad_fixtures.py``: the whole official EVAD detector in float64.

    python tests/reference/make_evad_fixtures.py --evad /tmp/evad --detectron2 /tmp/detectron2 \
        --out tests/reference/evad --sections detector --commit <sha>

Runs the official ``EVAD`` model (``projects/evad/models/video_model_builder.py`` with its base class
``e2e_detector.E2EDetector`` (FPN, proposals, criterion, targets, eval post-processing), ``head_helper.py``
(``EVADRoIHead``: Sparse R-CNN person stages, context-refinement decoder, action loss), ``loss.py``
(``SetCriterion``, ``HungarianMatcher``), ``util/box_ops.py``, ``util/misc.py``, ``vit_model.py``) and
``slowfast/datasets/cv2_transform.py``, all loaded by path, on a tiny ViT / person detector / decoder from
a seed, and writes ``<out>/detector/``: ``inputs.npz`` (clip as ``clip_k`` int8 = 4 x clip, targets, the
float64 state dict as ``w/<official name>``), one ``<case>.npz`` per keep-rate case, ``cases.json``, and ``key_layout.json`` (the
state-dict keys and shapes of the official model-zoo detectors ViT-B and ViT-L, built on the meta device).

detectron2 is not installed: its pure-Python files are loaded from a source checkout
(``layers/wrappers.py``: ``Conv2d``, ``cat``, ...; ``layers/roi_align.py``: ``ROIAlign`` = torchvision's
``roi_align``, ``aligned=True`` for ROIAlignV2; ``structures/boxes.py``, ``image_list.py``,
``instances.py``; ``modeling/poolers.py``: ``ROIPooler``), without the compiled ``_C``. Shims (see
``install_detector_shims``), besides the backbone section's:

* ``detectron2.layers.ROIAlignRotated`` (unused) and ``detectron2.modeling.backbone.fpn.LastLevelMaxPool``
  (the extra ``p6`` level, max-pool kernel 1 stride 2; the head never reads it) are stand-ins, so that
  detectron2's backbone zoo need not be imported; ``pycocotools`` is not needed by the files loaded;
* ``torchvision.ops._new_empty_tensor`` / ``torchvision.ops.misc._output_size``: stand-ins (DETR's
  ``util/misc.py`` reads torchvision "0.29" as 0.2 and imports them; never called);
* ``slowfast.utils.weight_init_helper`` and ``slowfast.models.losses.focal_loss_wo_logits_jit``: stand-ins
  (imported, not used by EVAD: its ``__init__`` skips ``E2EDetector.__init__``; no focal loss, no softmax pose);
* ``torch.version.cuda`` reads "11.3" while the model is built (``EVAD.__init__`` splits it; None on a CPU build);
* the FPN width: ``E2EDetector._construct_fpn`` hard-codes 256 channels; ``Conv2d`` as seen by
  ``e2e_detector.py`` makes a 256-channel side ``HIDDEN_DIM`` wide instead (the tiny width, 16);
* float64 targets and sizes: ``prepare_targets`` and ``preprocess_image`` make float32 tensors; their
  floating outputs are cast to float64 (exact: box coordinates are multiples of 1/4, sizes integers);
* ``checkpoint.checkpoint`` in ``vit_model.py``: ``use_reentrant=True`` (as the backbone section).

Recorded with hooks and wrappers: the kept-token indices after every backbone block, the FPN outputs
(case ``FPN_CASE``), each person stage's
class logits and boxes (``RCNNHead`` outputs), each decoder block's action logits, the matcher's indices
(last stage first, then the auxiliary stages), the weighted loss dict, gradients of ``GRAD_PARAMS`` for the
sum of the losses (``USE_CHECKPOINT True``; the official backward without it is tried and its outcome
recorded), and the eval-mode detections (selected actions, boxes, person boxes and scores).
"""

import functools
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from official_code import stub_module as _module, load_by_path as _load  # noqa: E402  (sibling helper)

SEED = 1616
# Tiny official config: ViT (6 blocks, width 24, patch 16), person detector (8 proposals, 2 stages, width 16),
# decoder (3 blocks, width 12), 6 action classes. Clip [B, 3, T, H, W] -> token grid 8 x 4 x 6.
VIT = dict(embed_dim=24, depth=6, num_heads=3, mlp_ratio=2.0, patch_size=16, tubelet_size=2, pretrain_img_size=64)
FPN_INDICES = [1, 2, 4, 5]
CLIP = (2, 3, 16, 64, 96)
SPARSE = dict(NUM_PROPOSALS=8, HIDDEN_DIM=16, NHEADS=2, DIM_FEEDFORWARD=32, NUM_HEADS=2, DIM_DYNAMIC=4,
              NUM_DYNAMIC=2, NUM_CLS=1, NUM_REG=3, NUM_ACT=1, ACT_FC_DIM=16, PERSON_THRESHOLD=0.5)
CRD = dict(EMBED_DIM=12, DEPTH=3, NUM_HEADS=2, MLP_RATIO=4, ROI_EXTENSION=(0.4, 0.2))
NUM_CLASSES = 6
POOLER = dict(resolution=7, sampling_ratio=2)
CASES = {
    "keep10": ([1.0] * 6, 1.0),
    "keep07": ([1.0, 0.7, 1.0, 0.7, 0.7, 1.0], 1.0),
    "keep06_ew4": ([1.0, 0.6, 1.0, 0.6, 0.6, 1.0], 4.0),
}
# The case whose FPN outputs p2 .. p5 are stored too.
FPN_CASE = "keep07"
# Ground truth per clip: absolute xyxy boxes (pixels of the 96 x 64 clip, multiples of 1/4) and actions.
GT_BOXES = [[[8.0, 6.5, 40.25, 60.0], [50.5, 10.0, 90.0, 58.75]],
            [[4.0, 4.0, 30.5, 44.0], [34.25, 12.0, 70.0, 62.0], [60.0, 2.5, 94.5, 40.25]]]
GT_LABELS = [[[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]],
             [[0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 1]]]
GRAD_PARAMS = ["patch_embed.proj.bias", "blocks.3.attn.proj.weight", "fpn_lateral3.weight", "fpn_output2.bias",
               "init_proposal_features.weight", "init_proposal_boxes.weight",
               "det_head.s0_headseries.0.inst_interact.dynamic_layer.weight",
               "det_head.s0_headseries.1.class_logits.weight", "det_head.s0_headseries.1.bboxes_delta.bias",
               "det_head.encoder_to_decoder.weight", "det_head.mask_token",
               "det_head.decoder.blocks.0.attn.qkv.weight", "det_head.decoder.blocks.2.action_logits.weight"]
# Loaded official modules the builders patch: "e2e_detector", "Conv2d" (detectron2's).
_LOADED = {}


class _LastLevelMaxPool(nn.Module):
    """Stand-in for detectron2's ``LastLevelMaxPool`` (p6 = subsampled p5; unused by EVAD's head)."""

    num_levels = 1
    in_feature = "p5"

    def forward(self, x):
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


def _unused(*args, **kwargs):
    raise RuntimeError("shim called: not expected in these fixtures")


def install_detector_shims(evad_root, d2_root):
    """Load the official detector files (module docstring) with their shims; returns ``video_model_builder``."""
    d2 = Path(d2_root) / "detectron2"
    package = _module("detectron2")
    package.__path__ = [str(d2)]
    layers = _module("detectron2.layers")
    wrappers = _load("detectron2.layers.wrappers", d2 / "layers" / "wrappers.py")
    roi = _load("detectron2.layers.roi_align", d2 / "layers" / "roi_align.py")
    for name in ("Conv2d", "cat", "nonzero_tuple", "shapes_to_tensor", "move_device_like"):
        setattr(layers, name, getattr(wrappers, name))
    layers.ROIAlign = roi.ROIAlign
    layers.ROIAlignRotated = _unused
    structures = _module("detectron2.structures")
    boxes = _load("detectron2.structures.boxes", d2 / "structures" / "boxes.py")
    image_list = _load("detectron2.structures.image_list", d2 / "structures" / "image_list.py")
    instances = _load("detectron2.structures.instances", d2 / "structures" / "instances.py")
    structures.Boxes, structures.ImageList, structures.Instances = boxes.Boxes, image_list.ImageList, \
        instances.Instances
    modeling = _module("detectron2.modeling")
    modeling.__path__ = []
    poolers = _load("detectron2.modeling.poolers", d2 / "modeling" / "poolers.py")
    _module("detectron2.modeling.backbone").__path__ = []
    _module("detectron2.modeling.backbone.fpn", LastLevelMaxPool=_LastLevelMaxPool)
    assert poolers.ROIPooler

    import torchvision.ops
    import torchvision.ops.misc
    torchvision.ops._new_empty_tensor = _unused
    torchvision.ops.misc._output_size = _unused
    _module("slowfast.utils")
    _module("slowfast.utils.weight_init_helper", init_weights=_unused)
    _module("slowfast.models.losses", focal_loss_wo_logits_jit=_unused)
    _module("slowfast.datasets")
    cv2_transform = _load("slowfast.datasets.cv2_transform",
                          Path(evad_root) / "slowfast" / "datasets" / "cv2_transform.py")
    assert cv2_transform.clip_boxes_tensor

    root = Path(evad_root) / "projects" / "evad" / "models"
    _module("evad_full").__path__ = []
    _module("evad_full.util").__path__ = []
    _load("evad_full.util.box_ops", root / "util" / "box_ops.py")
    _load("evad_full.util.misc", root / "util" / "misc.py")
    vit_model = _load("evad_full.vit_model", root / "vit_model.py")
    vit_model.checkpoint = types.SimpleNamespace(
        checkpoint=functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True))
    _load("evad_full.loss", root / "loss.py")
    e2e = _load("evad_full.e2e_detector", root / "e2e_detector.py")
    hidden = SPARSE["HIDDEN_DIM"]

    def narrow_conv2d(in_channels, out_channels, **kwargs):
        return wrappers.Conv2d(hidden if in_channels == 256 else in_channels,
                               hidden if out_channels == 256 else out_channels, **kwargs)

    e2e.Conv2d = narrow_conv2d
    _LOADED.update(e2e_detector=e2e, Conv2d=wrappers.Conv2d)
    _load("evad_full.head_helper", root / "head_helper.py")
    return _load("evad_full.video_model_builder", root / "video_model_builder.py")


def _ns(**kw):
    return types.SimpleNamespace(**kw)


def official_config(keep_rates, enhanced_weight, use_checkpoint, zoo=None):
    """The official cfg nodes the EVAD model reads (tiny sizes, every dropout and drop-path rate 0); ``zoo``: one
    of ``ZOO_DETECTORS`` instead (its sizes, the official defaults otherwise; device "meta")."""
    if zoo is not None:
        return _zoo_config(keep_rates, zoo)
    vit = _ns(TUBELET_SIZE=VIT["tubelet_size"], PATCH_SIZE=VIT["patch_size"], EMBED_DIM=VIT["embed_dim"],
              PRETRAIN_IMG_SIZE=VIT["pretrain_img_size"], USE_LEARNABLE_POS_EMB=False, DROP_RATE=0.0,
              ATTN_DROP_RATE=0.0, DROP_PATH_RATE=0.0, DEPTH=VIT["depth"], NUM_HEADS=VIT["num_heads"],
              MLP_RATIO=VIT["mlp_ratio"], QKV_BIAS=True, QK_SCALE=None, INIT_VALUES=0.0,
              USE_CHECKPOINT=use_checkpoint, FPN_INDICES=FPN_INDICES)
    sparse = _ns(NUM_CLASSES=1, DROPOUT=0.0, ACTIVATION="relu", CLASS_WEIGHT=2.0, GIOU_WEIGHT=2.0, L1_WEIGHT=5.0,
                 ACTION_WEIGHT=12.0, NO_OBJECT_WEIGHT=0.1, DEEP_SUPERVISION=True, USE_FOCAL=False, ALPHA=0.25,
                 GAMMA=2.0, PRIOR_PROB=0.01, JITTER_BOX=False, SOFTMAX_POSE=False, GT_BOXES_PROB=0.0, KEYWAY=False,
                 USE_FPN=True, PONY=False, WORKAROUND=False, NUM_EVAL_ACT_CLASSES=0, **SPARSE)
    crd = _ns(USE_LEARNABLE_POS_EMB=False, DROP_RATE=0.0, ATTN_DROP_RATE=0.0, DROP_PATH_RATE=0.0, **CRD)
    model = _ns(DEVICE="cpu", NUM_CLASSES=NUM_CLASSES, LOSS_FUNC="bce", SparseRCNN=sparse, CRD=crd,
                KTP=_ns(KEEP_RATES=keep_rates, ENHANCED_WEIGHT=enhanced_weight),
                ROI_BOX_HEAD=_ns(POOLER_TYPE="ROIAlignV2", POOLER_RESOLUTION=POOLER["resolution"],
                                 POOLER_SAMPLING_RATIO=POOLER["sampling_ratio"]))
    return _ns(ViT=vit, MODEL=model, DATA=_ns(INPUT_CHANNEL_NUM=[3], NUM_FRAMES=CLIP[2]),
               DETECTION=_ns(ENABLE=True, ALIGNED=True, ROI_XFORM_RESOLUTION=POOLER["resolution"],
                             SPATIAL_SCALE_FACTOR=VIT["patch_size"]))


# The model-zoo detectors whose official state-dict layout is recorded in <out>/detector/key_layout.json.
ZOO_DETECTORS = {
    "ViT_B_16x4_KTP": dict(embed_dim=768, depth=12, num_heads=12, fpn=[2, 5, 8, 11], crd=(384, 6, 6)),
    "ViT_L_16x4_KTP": dict(embed_dim=1024, depth=24, num_heads=16, fpn=[5, 11, 17, 23], crd=(512, 12, 8)),
}


def _zoo_config(keep_rates, zoo):
    cfg = official_config(keep_rates, 1.0, True)
    cfg.ViT = _ns(**dict(vars(cfg.ViT), PATCH_SIZE=16, EMBED_DIM=zoo["embed_dim"], PRETRAIN_IMG_SIZE=224,
                         DEPTH=zoo["depth"], NUM_HEADS=zoo["num_heads"], MLP_RATIO=4.0, FPN_INDICES=zoo["fpn"]))
    m = cfg.MODEL
    m.DEVICE, m.NUM_CLASSES = "meta", 80
    m.SparseRCNN = _ns(**dict(vars(m.SparseRCNN), NUM_PROPOSALS=100, HIDDEN_DIM=256, NHEADS=8, DIM_FEEDFORWARD=2048,
                              NUM_HEADS=6, DIM_DYNAMIC=64, NUM_DYNAMIC=2, NUM_CLS=1, NUM_REG=3, NUM_ACT=1,
                              ACT_FC_DIM=2048))
    m.CRD = _ns(**dict(vars(m.CRD), EMBED_DIM=zoo["crd"][0], DEPTH=zoo["crd"][1], NUM_HEADS=zoo["crd"][2]))
    cfg.DATA = _ns(INPUT_CHANNEL_NUM=[3], NUM_FRAMES=16)
    cfg.DETECTION = _ns(**dict(vars(cfg.DETECTION), SPATIAL_SCALE_FACTOR=16))
    return cfg


def official_key_layout(builder):
    """{zoo config: {state-dict key: shape}} of the official EVAD detectors (built on the meta device)."""
    layout = {}
    for name, zoo in ZOO_DETECTORS.items():
        rates = [0.7 if i in (zoo["depth"] // 4, zoo["depth"] // 2, 3 * zoo["depth"] // 4) else 1.0
                 for i in range(zoo["depth"])]
        linspace, cuda = torch.linspace, torch.version.cuda
        torch.linspace = functools.partial(linspace, device="cpu")  # drop-path rates are read with .item()
        torch.version.cuda = "11.3"
        narrow, _LOADED["e2e_detector"].Conv2d = _LOADED["e2e_detector"].Conv2d, _LOADED["Conv2d"]  # FPN width 256
        try:
            with torch.device("meta"):
                model = builder.EVAD(official_config(rates, 1.0, True, zoo))
        finally:
            torch.linspace, torch.version.cuda = linspace, cuda
            _LOADED["e2e_detector"].Conv2d = narrow
        layout[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return layout


def _to64(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    if isinstance(value, dict):
        return {k: _to64(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to64(v) for v in value)
    return value


def build_official(builder, keep_rates, enhanced_weight, use_checkpoint, state):
    """The official EVAD model in float64 with ``state`` (None: its own init) and recording hooks."""
    cfg = official_config(keep_rates, enhanced_weight, use_checkpoint)
    cuda = torch.version.cuda
    torch.version.cuda = "11.3"
    try:
        model = builder.EVAD(cfg)
    finally:
        torch.version.cuda = cuda
    model.double()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert missing == ["criterion.empty_weight"] and not unexpected, (missing, unexpected)  # a loss buffer
    prepare, preprocess = model.prepare_targets, model.preprocess_image
    model.prepare_targets = lambda targets, whwh: _to64(prepare(targets, whwh))
    model.preprocess_image = lambda inputs: _to64(preprocess(inputs))
    rec = model.recorded = {"kept": {}, "stages": [], "actions": [], "matches": []}

    def kept_hook(i, module, inputs, output):
        rec["kept"][i] = output[1].detach().clone()

    def stage_hook(module, inputs, output):
        rec["stages"].append((output[0].detach().clone(), output[1].detach().clone()))

    def action_hook(module, inputs, output):
        rec["actions"].append(output[1].detach().clone())

    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(functools.partial(kept_hook, i))
    for stage in model.det_head.s0_headseries:
        stage.register_forward_hook(stage_hook)
    for blk in model.det_head.decoder.blocks:
        blk.register_forward_hook(action_hook)
    fpn_forward = model.fpn_forward

    def recording_fpn(features):
        out = fpn_forward(features)
        rec["fpn"] = [out[f"p{k}"].detach().clone() for k in range(2, 6)]
        return out

    model.fpn_forward = recording_fpn
    matcher = model.criterion.matcher
    match = matcher.forward

    def recording_match(outputs, targets, writer=None):
        indices = match(outputs, targets, writer=writer)
        rec["matches"].append([(i.clone(), j.clone()) for i, j in indices])
        return indices

    matcher.forward = recording_match
    return model


def random_state(model, seed):
    """Every parameter from a seeded normal (weights ~ 1/sqrt(fan-in), 1-D 0.1 N, LayerNorm weights 1 + 0.1 N);
    the proposal boxes (cx, cy, w, h of the image) uniform: centres in [0.25, 0.75], sizes in [0.2, 0.6]."""
    gen = torch.Generator().manual_seed(seed)
    norms = {n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    state = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if name == "init_proposal_boxes.weight":
            u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
            value = torch.cat([0.25 + 0.5 * u[:, :2], 0.2 + 0.4 * u[:, 2:]], dim=1)
        elif name in norms:
            value = 1.0 + 0.1 * noise
        elif p.dim() == 1:
            value = 0.1 * noise
        else:
            value = noise / math.sqrt(p[0].numel())
        state[name] = value
    return state


def _inputs(clip):
    batch = [[clip[i]] for i in range(clip.shape[0])]
    metas = [{"boxes": np.array(b), "ori_height": CLIP[3], "ori_width": CLIP[4], "metadata": [[i, 902 + i]]}
             for i, b in enumerate(GT_BOXES)]
    return batch, metas


def run_case(builder, name, keep_rates, enhanced_weight, state, clip):
    batch, metas = _inputs(clip)
    model = build_official(builder, keep_rates, enhanced_weight, True, state).eval()
    with torch.no_grad():
        actions, boxes, metadata, person = model(batch, metas)
    rec = model.recorded
    arrays = {"eval/actions": actions.numpy(), "eval/boxes": boxes.numpy(), "eval/metadata": metadata.numpy(),
              "eval/person_boxes": person["boxes"].numpy(), "eval/person_scores": person["scores"].numpy()}
    for i, rate in enumerate(keep_rates):
        if rate < 1:
            arrays[f"kept/after_{i}"] = rec["kept"][i].numpy()
    arrays["kept/final"] = rec["kept"][len(keep_rates) - 1].numpy()
    for s, (logits, bx) in enumerate(rec["stages"]):
        arrays[f"stage{s}/logits"], arrays[f"stage{s}/boxes"] = logits.numpy(), bx.numpy()
    for j, logits in enumerate(rec["actions"]):
        arrays[f"block{j}/actions"] = logits.numpy()
    if name == FPN_CASE:
        for level, value in enumerate(rec["fpn"]):
            arrays[f"fpn/p{level + 2}"] = value.numpy()
    eval_record = {k: v for k, v in arrays.items()}

    model.train()
    rec.update(stages=[], actions=[], matches=[])
    losses = model(batch, (metas, GT_LABELS))
    for s, (logits, bx) in enumerate(rec["stages"]):
        assert torch.equal(logits, torch.from_numpy(eval_record[f"stage{s}/logits"])), "train/eval differ"
    for j, logits in enumerate(rec["actions"]):
        assert torch.equal(logits, torch.from_numpy(eval_record[f"block{j}/actions"])), "train/eval differ"
    sum(losses.values()).backward()
    for k, v in losses.items():
        arrays[f"loss/{k}"] = v.detach().numpy()
    # matcher calls: the last stage first, then the auxiliary stages 0 .. S-2
    order = [len(rec["matches"]) - 1] + list(range(len(rec["matches"]) - 1))
    for call, stage in enumerate(order):
        for b, (q, t) in enumerate(rec["matches"][call]):
            arrays[f"match/stage{stage}/query_{b}"] = q.numpy()
            arrays[f"match/stage{stage}/target_{b}"] = t.numpy()
    params = dict(model.named_parameters())
    for p in GRAD_PARAMS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    plain = build_official(builder, keep_rates, enhanced_weight, False, state).train()
    try:
        sum(plain(batch, (metas, GT_LABELS)).values()).backward()
        no_ckpt = "backward ok"
    except RuntimeError as e:
        no_ckpt = "RuntimeError: " + str(e).splitlines()[0][:160]
    selected = int(actions.shape[0])
    info = dict(keep_rates=keep_rates, enhanced_weight=enhanced_weight, loss_keys=list(losses),
                selected_detections=selected, official_backward_without_checkpoint=no_ckpt)
    print(f"{name}: {selected} detections, person scores {person['scores'].numpy().round(3).tolist()}, "
          f"losses {({k: round(float(v), 4) for k, v in losses.items()})}, without checkpoint: {no_ckpt}")
    return arrays, info


def make_detector(evad_root, d2_root, out, commit):
    """Write ``out`` (``inputs.npz``, ``<case>.npz``, ``cases.json``); see the module docstring."""
    builder = install_detector_shims(evad_root, d2_root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    template = build_official(builder, [1.0] * VIT["depth"], 1.0, True, None)
    state = random_state(template, SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    # clip = clip_k / 4 with integers clip_k in [-8, 8] (exact in every dtype; stored as int8)
    clip_k = torch.randint(-8, 9, CLIP, generator=gen, dtype=torch.int8)
    clip = clip_k.to(torch.float64) / 4
    inputs = {"clip_k": clip_k.numpy(), **{f"w/{k}": v.numpy() for k, v in state.items()}}
    for i, (bx, lb) in enumerate(zip(GT_BOXES, GT_LABELS)):
        inputs[f"gt_boxes_{i}"], inputs[f"gt_labels_{i}"] = np.array(bx), np.array(lb, dtype=np.float64)
    np.savez_compressed(out / "inputs.npz", **inputs)
    cases = {}
    for name, (rates, ew) in CASES.items():
        arrays, info = run_case(builder, name, rates, ew, state, clip)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        cases[name] = info
    (out / "key_layout.json").write_text(json.dumps(official_key_layout(builder)) + "\n")
    meta = dict(evad_commit=commit, torch=torch.__version__, seed=SEED, vit=VIT, fpn_indices=FPN_INDICES,
                clip=list(CLIP), sparse_rcnn=SPARSE, crd={k: list(v) if isinstance(v, tuple) else v
                                                           for k, v in CRD.items()},
                num_classes=NUM_CLASSES, pooler=POOLER, grad_params=GRAD_PARAMS, cases=cases,
                model_name="EVAD")
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", out, sum(f.stat().st_size for f in out.iterdir()), "bytes")


if __name__ == "__main__":
    sys.exit("run through make_evad_fixtures.py --sections detector")
