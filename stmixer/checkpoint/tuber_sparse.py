"""The TubeR fork's Sparse R-CNN checkpoints -> our ``SparseRCNN`` detector keys.

jinsingsangsung/tuber (50cd09b^, ``models/sparse_ava.py`` + ``models/sparsercnn/``) saves
``{"model": DDP state dict, "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config": yacs CfgNode}``
(``utils/model_utils.py``). Its detector's keys (``module.`` removed; the full layout is recorded in
``tests/reference/sparse_rcnn/fork_key_layout.json``):

* ``backbone.0.body.<csn key>`` — the CSN-50 inside TubeR's ``Backbone`` inside a ``Joiner(backbone,
  positions)`` -> ``backbone.<csn key>`` (same names as our ``IrCSN``; ``out_fc.*``, the CSN classifier, is
  cut off by torchvision's ``IntermediateLayerGetter`` and dropped if present);
* ``backbone.0.query_pool.*`` / ``backbone.0.pool_decoder.*`` — TubeR's temporal pooling decoder
  (``SINGLE_FRAME`` + ``TEMPORAL_DS_STRATEGY decode``), built and never called: dropped;
* ``backbone.1.*`` — a learned position table of the Joiner (``POSITION_EMBEDDING learned``; the config's
  ``sine`` has none), never read by the Sparse R-CNN: dropped;
* ``input_proj.{0,1,2}.*`` — the per-level ``Conv2d 1x1 + GroupNorm`` of layer2..layer4 ->
  ``lateral_convs.{0,1,2}.*``;
* ``input_proj.{3,...}.*`` — the extra pyramid levels. The fork's first one is a ``Conv2d 3x3 s2`` from the
  2048 channels of layer4's *unpooled* frames (time-major, read across clips: one of the fork's defects,
  docs/sparse_rcnn.md); ours convolves the time-pooled, projected 256-channel level (``extra_convs``):
  no counterpart, dropped (``extra_convs`` stays at its initialization);
* ``init_proposal_features.weight`` / ``init_proposal_boxes.weight`` -> ``head.init_proposal_*``;
* ``head.head_series.{k}.*`` -> the same keys (the official ``RCNNHead`` names).
"""

from . import csn

# Keys only this layout has: the learned proposals on the detector next to a Joiner-wrapped CSN.
_MARKERS = ("init_proposal_boxes.weight", csn.TUBER_JOINER + "body.conv1.weight")
# The fork's Backbone always returns layer2..layer4 (strides 8, 16, 32): input_proj's first three entries.
BACKBONE_LEVELS = 3
HEAD = "head"

DROP_POOLING = "TubeR Backbone's temporal pooling decoder (query_pool / pool_decoder), built but never called"
DROP_POSITIONS = "the Joiner's position embedding, never read by the fork's Sparse R-CNN"
DROP_EXTRA = ("the fork's extra pyramid level (input_proj.3+: a conv on layer4's unpooled 2048-channel frames, "
              "a defect ours corrects by convolving the pooled projected level): no counterpart")
DROP_CLASSIFIER = "classifier head (the CSN's unused out_fc)"


def is_fork_sparse_rcnn(keys):
    """True when the (normalized) keys hold the TubeR fork's Sparse R-CNN detector."""
    return all(m in keys for m in _MARKERS) and any(k.startswith(HEAD + ".head_series.") for k in keys)


def fork_key(key):
    """``(detector key, None)`` for a fork key (``module.`` already removed), or ``(None, reason)`` to drop it;
    a key outside the layout keeps its name (the load table reports it as unexpected)."""
    if key.startswith(csn.TUBER_JOINER):
        rest = csn.tuber_unjoin(key)  # backbone.<rest of TubeR's Backbone>
        if rest.startswith(csn.TUBER_WRAPPER_PARTS):
            return None, DROP_POOLING
        if rest.startswith(csn.TUBER_BODY):
            body = rest[len(csn.TUBER_BODY):]
            return (None, DROP_CLASSIFIER) if body.startswith("out_fc.") else ("backbone." + body, None)
        return key, None
    if key.startswith("backbone.1."):
        return None, DROP_POSITIONS
    if key.startswith("input_proj."):
        index, _, rest = key[len("input_proj."):].partition(".")
        if not index.isdigit():
            return key, None
        if int(index) >= BACKBONE_LEVELS:
            return None, DROP_EXTRA
        return f"lateral_convs.{index}.{rest}", None
    if key.startswith("init_proposal_"):
        return f"{HEAD}.{key}", None
    return key, None
