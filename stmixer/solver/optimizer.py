"""AdamW (official STMixer) or SGD (mmaction2's detectors) over the official STMixer parameter groups.

Official grouping (default, ``SOLVER.DECAY_NORM_AND_BIAS: True``):
- ResNet backbones: backbone parameters whose name contains "bn" get
  ``SOLVER.WEIGHT_DECAY_BN``; every other parameter (neck and decoder LayerNorms
  and biases included) gets ``SOLVER.WEIGHT_DECAY``.
- ViT backbones: backbone parameters that are 1-D, end in ".bias" or are listed in
  ``ViT.NO_WEIGHT_DECAY`` get no decay, the other backbone parameters
  ``ViT.WEIGHT_DECAY``; neck and decoder get ``SOLVER.WEIGHT_DECAY``.
  The learning rate of backbone layer ``l`` (0 = patch embedding, i + 1 = block i,
  depth + 1 = the rest) is scaled by ``ViT.LAYER_DECAY ** (depth + 1 - l)``. The
  official code computes these scales but never applies them (its configs use 1.0,
  where both agree); here they are applied.
A model with a method ``param_optim_overrides(name) -> (lr multiplier, exempt from decay)`` adjusts
single parameters after the grouping above (EVAD: ``EVAD.HEAD_LR_SCALE`` for its heads and no decay
on the decoder's mask token; TubeR: ``MODEL.TUBER.BACKBONE_LR_FACTOR`` for its backbone and pooling).
``SOLVER.DECAY_NORM_AND_BIAS: False`` also exempts every other 1-D parameter
(norm scales, biases) of neck and decoder from weight decay.
"""

import torch


def _is_no_decay(name, param, extra_names=()):
    return param.ndim <= 1 or name.endswith(".bias") or name in extra_names


def build_param_groups(model, cfg, vit_layer_id=None):
    """Split ``model``'s trainable parameters into optimizer groups.

    Args:
        model: the detector; parameters under ``backbone.`` follow the backbone rules.
        cfg: config (SOLVER.*, ViT.*, MODEL.BACKBONE.CONV_BODY).
        vit_layer_id: for ViT backbones, ``f(name_inside_backbone) -> layer index``
            (0 = patch embedding, i + 1 = block i, depth + 1 = the rest).

    Returns:
        list of dicts with "params", "names", "weight_decay" and "lr_scale"
        (groups with equal settings are merged).
    """
    is_vit = "vit" in cfg.MODEL.BACKBONE.CONV_BODY.lower()
    depth = cfg.ViT.DEPTH
    groups = {}
    # a detector may override single parameters: name -> (lr multiplier, exempt from decay) (EVAD's heads,
    # TubeR's backbone)
    overrides = getattr(model, "param_optim_overrides", None)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_scale = 1.0
        if name.startswith("backbone."):
            inner = name[len("backbone."):]
            if is_vit:
                decay = 0.0 if _is_no_decay(inner, param, cfg.ViT.NO_WEIGHT_DECAY) else cfg.ViT.WEIGHT_DECAY
                if cfg.ViT.LAYER_DECAY < 1.0:
                    if vit_layer_id is None:
                        raise ValueError("ViT.LAYER_DECAY < 1 needs the backbone's layer ids")
                    lr_scale = cfg.ViT.LAYER_DECAY ** (depth + 1 - vit_layer_id(inner))
            elif "bn" in inner:
                decay = cfg.SOLVER.WEIGHT_DECAY_BN
            else:
                decay = cfg.SOLVER.WEIGHT_DECAY
        elif not cfg.SOLVER.DECAY_NORM_AND_BIAS and _is_no_decay(name, param):
            decay = 0.0
        else:
            decay = cfg.SOLVER.WEIGHT_DECAY
        if overrides is not None:
            lr_mult, no_decay = overrides(name)
            lr_scale, decay = lr_scale * lr_mult, (0.0 if no_decay else decay)
        group = groups.setdefault((decay, lr_scale), {"params": [], "names": [], "weight_decay": decay, "lr_scale": lr_scale})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(cfg, model, vit_layer_id=None):
    """The ``SOLVER.OPTIMIZING_METHOD`` optimizer over ``build_param_groups``; lr = BASE_LR x lr_scale.

    "adamw": ``torch.optim.AdamW`` with ``SOLVER.BETAS``. "sgd": ``torch.optim.SGD`` with
    ``SOLVER.MOMENTUM`` and ``SOLVER.NESTEROV`` (dampening 0), as mmengine builds mmaction2's
    ``optimizer=dict(type='SGD', ...)``; mmaction2's detector configs decay every parameter
    (no ``paramwise_cfg``), which their yamls get with ``WEIGHT_DECAY_BN`` equal to ``WEIGHT_DECAY``.
    """
    method = cfg.SOLVER.OPTIMIZING_METHOD.lower()
    if method not in ("adamw", "sgd"):
        raise ValueError(f"SOLVER.OPTIMIZING_METHOD: expected 'adamw' or 'sgd', got {cfg.SOLVER.OPTIMIZING_METHOD!r}")
    groups = build_param_groups(model, cfg, vit_layer_id)
    for group in groups:
        group["lr"] = cfg.SOLVER.BASE_LR * group["lr_scale"]
    if method == "sgd":
        return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                               nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    params = [p for group in groups for p in group["params"]]
    # the fused kernel: one launch per step instead of per-parameter host work (CUDA only)
    fused = bool(cfg.SOLVER.FUSED_OPTIMIZER) and bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR, betas=tuple(cfg.SOLVER.BETAS),
                             weight_decay=cfg.SOLVER.WEIGHT_DECAY, **({"fused": True} if fused else {}))
