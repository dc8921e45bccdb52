"""Pieces the DETR-style query heads share (TubeR, Deformable TubeR, SeqFormer, Sparse R-CNN / EVAD).

* ``ACTIVATIONS`` / ``activation_fn``: the FFN activation by name (DETR's ``_get_activation_fn``).
* ``clones``: ``n`` deep copies of a layer (DETR's ``_get_clones``): every copy starts from the same values.
* ``detr_layer_modules``: the FFN and residual modules of a DETR-style post/pre-norm layer, created in DETR's
  order (``linear1, dropout, linear2, norm1..normK, dropout1..dropoutK``), so a layer that assigns them to
  those attribute names keeps DETR's state-dict names and its random initialization order.
"""

import copy

import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


def activation_fn(name, what="transformer"):
    """The activation function called ``name`` (one of ``ACTIVATIONS``); ``ValueError`` naming ``what``
    otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{what}: activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


def clones(module, n):
    """``nn.ModuleList`` of ``n`` deep copies of ``module``."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


def detr_layer_modules(d_model, dim_feedforward, dropout, num_blocks):
    """``(linear1 [C -> F], dropout, linear2 [F -> C], norm1, ..., norm{K}, dropout1, ..., dropout{K})`` with
    ``K = num_blocks`` residual blocks (the FFN's one included), created in this order."""
    modules = [nn.Linear(d_model, dim_feedforward), nn.Dropout(dropout), nn.Linear(dim_feedforward, d_model)]
    modules += [nn.LayerNorm(d_model) for _ in range(num_blocks)]
    modules += [nn.Dropout(dropout) for _ in range(num_blocks)]
    return tuple(modules)
