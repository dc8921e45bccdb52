"""Build the EVAD backbone fixtures by running the official EVAD code (float64, seeded).

    python tests/reference/make_evad_fixtures.py --evad /tmp/evad --out tests/reference/evad --commit <sha> \
        [--sections backbone detector] [--detectron2 /tmp/detectron2]

Section ``backbone`` (this file, described below) writes ``<out>``; section ``detector`` (the whole official
EVAD detector: FPN, Sparse R-CNN person detector, context-refinement decoder, losses; see
``make_evad_detector_fixtures.py``, which needs ``--detectron2``) writes ``<out>/detector``.

``--evad`` is a checkout (or ``git archive``) of MCG-NJU/EVAD. Two of its files are executed, loaded
by path: ``projects/evad/models/vit_model.py`` (``PatchEmbed``, ``KTPBlock``, ``KTPAttention``, the
position table and its resizing) and ``projects/evad/models/video_model_builder.py`` (``EVAD._construct_network``
and ``EVAD.forward``, the backbone part: keyframe-first reordering, pruning, FPN inputs, dropped mask).
Neither timm, detectron2 nor PySlowFast is installed; the names those files import are shimmed (see
``install_shims``):

* ``timm.models.layers``: ``to_2tuple``, ``trunc_normal_`` (torch's), ``drop_path`` (timm's formula; unused
  here, every drop-path rate is 0);
* ``slowfast.models.build.MODEL_REGISTRY``: a registry whose ``register()`` returns the class unchanged;
* ``.e2e_detector.E2EDetector`` (base class, an empty ``nn.Module``) and ``.head_helper.EVADRoIHead``
  (an empty ``nn.Module``: the decoder is not part of these fixtures);
* ``torch.utils.checkpoint.checkpoint`` as seen by ``vit_model.py``: called with ``use_reentrant=True``, the
  default of the torch versions EVAD was written for (torch >= 2.9 refuses a call without the argument);
* on the built model, ``preprocess_image`` returns the clip unchanged, ``fpn_forward`` returns its input
  (the four ``res2`` .. ``res5`` maps) and ``head_forward`` returns what the decoder would receive
  (final tokens, FPN inputs, dropped mask, token grid).

The kept-token indices after every block are recorded with forward hooks on the official blocks.

Writes ``<out>/inputs.npz`` (``clip`` and the backbone's float64 state dict as ``w/<name>``, shared by all
cases) and, per case, ``<out>/<case>.npz`` (outputs ``features_<l>``, ``tokens``, ``kept_index``, ``dropped_mask``,
``index_after_<i>`` for every pruning block; ``grad/<param>`` of ``GRAD_PARAMS`` for the loss
``gradient_loss``), plus ``<out>/cases.json`` (model arguments, per-case keep rates and notes) and ``<out>/key_layout.json`` (the
state-dict keys and shapes of the official ViT-B and ViT-L backbones of the model zoo, built on the meta device).
"""

import argparse
import functools
import json
import math
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from official_code import stub_module as _module, load_by_path as _load  # noqa: E402  (sibling helper)

# The tiny model (ViT-B's structure at small width): 6 blocks of width 24, 3 heads, patch 4, tubelet 2.
MODEL = dict(embed_dim=24, depth=6, num_heads=3, mlp_ratio=2.0, qkv_bias=True, patch_size=4, tubelet_size=2,
             pretrain_img_size=16, init_values=0.0)
FPN_INDICES = [1, 2, 4, 5]
# Clip [B, 3, T, H, W]: 8 x 4 x 6 tokens (S = 24 keyframe tokens, N = 192); the pre-training grid is 4 x 4,
# so the position table is resized as in the official code.
CLIP = (2, 3, 16, 16, 24)
# case -> (keep rates per block, enhanced weight); pruning at blocks 1, 3 and 4.
CASES = {
    "keep10": ([1.0] * 6, 1.0),
    "keep07": ([1.0, 0.7, 1.0, 0.7, 0.7, 1.0], 1.0),
    "keep06_ew4": ([1.0, 0.6, 1.0, 0.6, 0.6, 1.0], 4.0),
}
GRAD_PARAMS = ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.attn.q_bias",
               "blocks.3.attn.proj.weight", "blocks.4.mlp.fc1.weight", "blocks.5.norm2.weight", "norm.bias"]
SEED = 16


def gradient_loss(features, tokens):
    """The scalar whose gradients the fixtures store: sum of every output times a fixed sine pattern
    (``sin(0.1 * k + j)`` over the flattened output k, j its position in the list)."""
    total = 0
    for j, out in enumerate(list(features) + [tokens]):
        pattern = torch.sin(0.1 * torch.arange(out.numel(), dtype=out.dtype) + j).reshape(out.shape)
        total = total + (out * pattern).sum()
    return total


# --------------------------------------------------------------------------- shims
def _timm_drop_path(x, drop_prob=0.0, training=False):
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    return x.div(keep_prob) * random_tensor.floor_()


class _Registry:
    def register(self, *args, **kwargs):
        return lambda cls: cls


def install_shims(root):
    """Load the two official files with the shims of the module docstring; returns (vit_model, builder)."""
    _module("timm")
    _module("timm.models")
    _module("timm.models.layers", drop_path=_timm_drop_path, to_2tuple=lambda v: v if isinstance(v, tuple) else (v, v),
            trunc_normal_=nn.init.trunc_normal_)
    _module("slowfast")
    _module("slowfast.models")
    _module("slowfast.models.build", MODEL_REGISTRY=_Registry())
    package = _module("evad_official")
    package.__path__ = []
    _module("evad_official.e2e_detector", E2EDetector=nn.Module)
    _module("evad_official.head_helper", EVADRoIHead=lambda cfg, dim_in: nn.Module())
    models = Path(root) / "projects" / "evad" / "models"
    vit_model = _load("evad_official.vit_model", models / "vit_model.py")
    vit_model.checkpoint = types.SimpleNamespace(
        checkpoint=functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True))
    builder = _load("evad_official.video_model_builder", models / "video_model_builder.py")
    return vit_model, builder


def _ns(**kw):
    return types.SimpleNamespace(**kw)


def official_config(keep_rates, enhanced_weight, use_checkpoint, m=None):
    """The official cfg nodes ``_construct_network`` reads (``m``: model arguments, default ``MODEL``)."""
    m = m or MODEL
    vit = _ns(TUBELET_SIZE=m["tubelet_size"], PATCH_SIZE=m["patch_size"], EMBED_DIM=m["embed_dim"],
              PRETRAIN_IMG_SIZE=m["pretrain_img_size"], USE_LEARNABLE_POS_EMB=False, DROP_RATE=0.0,
              ATTN_DROP_RATE=0.0, DROP_PATH_RATE=0.0, DEPTH=m["depth"], NUM_HEADS=m["num_heads"],
              MLP_RATIO=m["mlp_ratio"], QKV_BIAS=m["qkv_bias"], QK_SCALE=None, INIT_VALUES=m["init_values"],
              USE_CHECKPOINT=use_checkpoint, FPN_INDICES=FPN_INDICES)
    return _ns(ViT=vit, DATA=_ns(INPUT_CHANNEL_NUM=[3], NUM_FRAMES=m.get("num_frames", CLIP[2])),
               MODEL=_ns(KTP=_ns(KEEP_RATES=keep_rates, ENHANCED_WEIGHT=enhanced_weight)),
               DETECTION=_ns(ENABLE=True))


# The model-zoo backbones whose official key layout (names and shapes) is recorded in <out>/key_layout.json.
ZOO_VITS = {
    "EVAD-ViT-B": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, patch_size=16,
                       tubelet_size=2, pretrain_img_size=224, init_values=0.0, num_frames=16),
    "EVAD-ViT-L": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, qkv_bias=True, patch_size=16,
                       tubelet_size=2, pretrain_img_size=224, init_values=0.0, num_frames=16),
}


def official_key_layout(builder):
    """{backbone name: {state-dict key: shape}} of the official model-zoo ViTs (built on the meta device)."""
    layout = {}
    for name, m in ZOO_VITS.items():
        pruned = (m["depth"] // 4, m["depth"] // 2, 3 * m["depth"] // 4)
        rates = [0.7 if i in pruned else 1.0 for i in range(m["depth"])]
        linspace = torch.linspace  # the stochastic-depth rates are read with .item(): made on the CPU
        torch.linspace = functools.partial(linspace, device="cpu")
        try:
            with torch.device("meta"):
                model = build_official(builder, rates, 1.0, True, None, official_config(rates, 1.0, True, m))
        finally:
            torch.linspace = linspace
        layout[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return layout


def build_official(builder, keep_rates, enhanced_weight, use_checkpoint, state, cfg=None):
    """The official EVAD model's backbone part (see the module docstring), float64, weights ``state``."""
    cfg = cfg or official_config(keep_rates, enhanced_weight, use_checkpoint)
    model = builder.EVAD.__new__(builder.EVAD)
    nn.Module.__init__(model)
    model.enable_detection, model.use_fpn, model.cfg = True, True, cfg
    model.num_features = [cfg.ViT.EMBED_DIM]
    model._construct_network(cfg)
    model.fpn_indices = cfg.ViT.FPN_INDICES
    model.double()
    if state is not None:
        model.load_state_dict(state, strict=True)
    model.preprocess_image = lambda x_list: (x_list, None)
    model.fpn_forward = lambda feats: feats
    model.head_forward = lambda x, images_whwh, gt, fpn, window_size, mask: dict(
        tokens=x[0], fpn=fpn, mask=mask, ws=tuple(window_size))
    model.recorded = {}
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(functools.partial(_record_index, model.recorded, i))
    return model


def _record_index(store, i, module, inputs, output):
    store[i] = output[1].detach().clone()


def random_state(model, seed):
    """Every parameter drawn from a seeded normal (weights ~ 1/sqrt(fan-in), biases 0.1, LayerNorm 1 + 0.1 N)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if name.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            value = 1.0 + 0.1 * noise
        elif p.dim() == 1:
            value = 0.1 * noise
        else:
            value = noise / math.sqrt(p[0].numel())
        state[name] = value
    return state


def run_case(builder, name, keep_rates, enhanced_weight, state, clip):
    """Eval forward, train forward + backward (USE_CHECKPOINT True), and the USE_CHECKPOINT False backward."""
    model = build_official(builder, keep_rates, enhanced_weight, True, state).eval()
    with torch.no_grad():
        out = model([clip], None)
    recorded = dict(model.recorded)
    model.train()
    train_out = model([clip], None)
    for key in ("res2", "res3", "res4", "res5"):
        assert torch.equal(train_out["fpn"][key], out["fpn"][key]), "train and eval differ (no dropout configured)"
    assert torch.equal(train_out["tokens"], out["tokens"])
    gradient_loss([train_out["fpn"][f"res{k}"] for k in range(2, 6)], train_out["tokens"]).backward()
    params = dict(model.named_parameters())
    arrays = {"tokens": out["tokens"].numpy(), "dropped_mask": out["mask"].numpy(),
              "kept_index": recorded[len(keep_rates) - 1].numpy()}
    for level in range(4):
        arrays[f"features_{level}"] = out["fpn"][f"res{level + 2}"].numpy()
    for i, rate in enumerate(keep_rates):
        if rate < 1:
            arrays[f"index_after_{i}"] = recorded[i].numpy()
    for p in GRAD_PARAMS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    # the official backward without activation checkpointing
    plain = build_official(builder, keep_rates, enhanced_weight, False, state).train()
    plain_out = plain([clip], None)
    try:
        gradient_loss([plain_out["fpn"][f"res{k}"] for k in range(2, 6)], plain_out["tokens"]).backward()
        no_ckpt = "backward ok"
    except RuntimeError as e:
        no_ckpt = "RuntimeError: " + str(e).splitlines()[0][:160]
    info = dict(keep_rates=keep_rates, enhanced_weight=enhanced_weight, ws=list(out["ws"]),
                kept_tokens=int(out["tokens"].shape[1]), official_backward_without_checkpoint=no_ckpt)
    print(f"{name}: tokens {tuple(out['tokens'].shape)}, without checkpoint: {no_ckpt}")
    return arrays, info


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evad", required=True, help="checkout of MCG-NJU/EVAD")
    parser.add_argument("--out", required=True, help="output folder (tests/reference/evad)")
    parser.add_argument("--commit", default="", help="the EVAD commit, recorded in cases.json")
    parser.add_argument("--detectron2", default="", help="detectron2 source checkout (section detector)")
    parser.add_argument("--sections", nargs="+", default=["backbone", "detector"], choices=["backbone", "detector"],
                        help="what to make: the backbone fixtures (<out>) and/or the detector ones (<out>/detector)")
    args = parser.parse_args()
    if "detector" in args.sections and not args.detectron2:
        parser.error("--sections detector needs --detectron2 PATH (a checkout of facebookresearch/detectron2)")
    _, builder = install_shims(args.evad)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if "backbone" in args.sections:
        make_backbone(builder, out, args.commit)
    if "detector" in args.sections:
        import make_evad_detector_fixtures as detector  # noqa: E402  (sibling module, loads detectron2 files)

        detector.make_detector(args.evad, args.detectron2, out / "detector", args.commit)


def make_backbone(builder, out, commit):
    """The backbone section: <out>/inputs.npz, <out>/<case>.npz, cases.json, key_layout.json."""
    template = build_official(builder, [1.0] * MODEL["depth"], 1.0, True, None)
    state = random_state(template, SEED)
    clip = torch.randn(CLIP, generator=torch.Generator().manual_seed(SEED + 1), dtype=torch.float64)
    np.savez_compressed(out / "inputs.npz", clip=clip.numpy(), **{f"w/{k}": v.numpy() for k, v in state.items()})
    cases = {}
    for name, (rates, ew) in CASES.items():
        arrays, info = run_case(builder, name, rates, ew, state, clip)
        np.savez_compressed(out / f"{name}.npz", **arrays)
        cases[name] = info
    (out / "key_layout.json").write_text(json.dumps(official_key_layout(builder)) + "\n")
    meta = dict(evad_commit=commit, torch=torch.__version__, seed=SEED, model=MODEL, fpn_indices=FPN_INDICES,
                clip=list(CLIP), grad_params=GRAD_PARAMS, cases=cases)
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
