"""Caffe2 ir-CSN blob names (VMZ ``.pkl``, TubeR's ``.mat``) and TubeR ``.pth`` keys -> our ``IrCSN`` paths.

The Kinetics-400 ir-CSN weights TubeR starts from are VMZ's Caffe2 models
(``irCSN_{50,152}_..._kinetics...pkl``: ``{"blobs": {name: ndarray}}``), which TubeR reads
converted to MATLAB ``.mat`` files (``scipy.io.loadmat``: the same names, every 1-D blob
stored as ``[1, N]``). Names (``n`` = global block index; ``stmixer.modeling.backbones.csn``
has the table with our paths):

* ``conv1_w``, ``conv1_spatbn_relu_{s,b,rm,riv}`` — the stem;
* ``comp_{n}_conv_{1,3,4}_w``, ``comp_{n}_spatbn_{1,3,4}_{s,b,rm,riv}`` — block ``n``;
* ``shortcut_projection_{n}_w``, ``shortcut_projection_{n}_spatbn_{s,b,rm,riv}`` — the
  projection shortcut of the first block of each stage;
* ``last_out_L{K}_{w,b}`` — the Kinetics classifier (dropped; TubeR builds CSN with ``load_fc=False``);
* ``lr``, ``model_iter``, ``*_momentum`` — training state (dropped).

``_riv`` is copied into ``running_var`` as is (as TubeR's and VMZ's converters do). BatchNorm
vectors are flattened to 1-D (TubeR's ``reshape(-1)``); convolution weights keep their shape
(Caffe2 and PyTorch share ``[C_out, C_in/groups, kT, kH, kW]``).

The depth is read from the blob set: blocks ``comp_0 .. comp_15`` are CSN-50, ``.. comp_49``
CSN-152. Any other block count, or a name outside the layout, stays unmapped (the load table
reports it as unexpected).

TubeR's own checkpoints (``{"model": DDP state dict, "optimizer", "lr_scheduler",
"max_accuracy", "epoch", "config": yacs CfgNode}``): ``module.backbone.body.<name>`` is our
``backbone.<name>`` (``out_fc.*``, CSN-50's unused classifier, dropped); every other key
(``transformer.*``, ``query_embed``, ``input_proj``, ``class_proj``, ``encoder``,
``cross_attn``, ``class_embed_b``, ``bbox_embed``, ``class_fc``, and the temporal pooling of
TubeR's ``Backbone`` wrapper ``backbone.query_pool`` / ``backbone.pool_decoder``) is kept
below ``tuber_head.`` with TubeR's name (``backbone.`` removed for the two pooling parts),
for the TubeR detector; a model without a ``tuber_head`` reports them as skipped.
"""

import re

from ..modeling.backbones.csn import CSN_STAGE_DEPTHS, stage_starts

# A blob only VMZ ir-CSN models have (the first block's first convolution).
MARKER = "comp_0_conv_1_w"

_BN_LEAVES = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_STEM_CONV = re.compile(r"conv1_w")
_STEM_BN = re.compile(r"conv1_spatbn_relu_(?P<leaf>s|b|rm|riv)")
_BLOCK_CONV = re.compile(r"comp_(?P<n>\d+)_conv_(?P<j>[134])_w")
_BLOCK_BN = re.compile(r"comp_(?P<n>\d+)_spatbn_(?P<j>[134])_(?P<leaf>s|b|rm|riv)")
_SHORTCUT_CONV = re.compile(r"shortcut_projection_(?P<n>\d+)_w")
_SHORTCUT_BN = re.compile(r"shortcut_projection_(?P<n>\d+)_spatbn_(?P<leaf>s|b|rm|riv)")
CLASSIFIER = re.compile(r"last_out_L\d+_[wb]")
_BLOCK_INDEX = re.compile(r"comp_(?P<n>\d+)_")

# TubeR .pth: the CSN inside TubeR's Backbone wrapper, and the wrapper's own temporal pooling.
TUBER_BODY = "backbone.body."
TUBER_WRAPPER_PARTS = ("backbone.query_pool.", "backbone.pool_decoder.")
TUBER_HEAD = "tuber_head"


def is_csn_blobs(names):
    """True when the blob names (a set) hold a VMZ ir-CSN model."""
    return MARKER in names


def depth_of(names):
    """CSN depth (50 / 152) of a blob-name set from its number of blocks, or None when it fits neither."""
    blocks = {int(m["n"]) for m in map(_BLOCK_INDEX.match, names) if m}
    for depth, stages in CSN_STAGE_DEPTHS.items():
        if blocks == set(range(sum(stages))):
            return depth
    return None


def _block_path(depth, n):
    """``layer{L}.{i}`` of global block ``n``, or None when out of range."""
    starts = stage_starts(depth) + (sum(CSN_STAGE_DEPTHS[depth]),)
    for s in range(4):
        if starts[s] <= n < starts[s + 1]:
            return f"layer{s + 1}.{n - starts[s]}", n == starts[s]
    return None, False


def blob_to_module_path(name, depth):
    """Our ``IrCSN`` parameter / buffer path of a Caffe2 blob name, or None when it is not a CSN-``depth``
    parameter (e.g. ``comp_3_conv_1_w`` -> ``layer2.0.conv1.weight`` at depth 50)."""
    if _STEM_CONV.fullmatch(name):
        return "conv1.weight"
    m = _STEM_BN.fullmatch(name)
    if m:
        return f"bn1.{_BN_LEAVES[m['leaf']]}"
    for pattern, conv in ((_BLOCK_CONV, True), (_BLOCK_BN, False), (_SHORTCUT_CONV, True), (_SHORTCUT_BN, False)):
        m = pattern.fullmatch(name)
        if not m:
            continue
        block, first = _block_path(depth, int(m["n"]))
        if block is None:
            return None
        if "j" in m.groupdict():
            return f"{block}.conv{m['j']}.weight" if conv else f"{block}.bn{m['j']}.{_BN_LEAVES[m['leaf']]}"
        if not first:  # only the first block of a stage has a projection shortcut
            return None
        return f"{block}.down_sample.0.weight" if conv else f"{block}.down_sample.1.{_BN_LEAVES[m['leaf']]}"
    return None


def is_bn_blob(name):
    """True for BatchNorm blobs (flattened to 1-D when loaded: ``.mat`` files store them as ``[1, N]``)."""
    return bool(_STEM_BN.fullmatch(name) or _BLOCK_BN.fullmatch(name) or _SHORTCUT_BN.fullmatch(name))


def blob_names(depth):
    """Every parameter blob name of a VMZ ir-CSN-``depth`` model with our path, in network order:
    ``[(blob name, module path)]`` (what the official converters read; no classifier, no metadata)."""
    names = [("conv1_w", "conv1.weight")]
    names += [(f"conv1_spatbn_relu_{leaf}", f"bn1.{attr}") for leaf, attr in _BN_LEAVES.items()]
    n = 0
    for s, blocks in enumerate(CSN_STAGE_DEPTHS[depth]):
        for i in range(blocks):
            block = f"layer{s + 1}.{i}"
            for j in (1, 3, 4):
                names.append((f"comp_{n}_conv_{j}_w", f"{block}.conv{j}.weight"))
                names += [(f"comp_{n}_spatbn_{j}_{leaf}", f"{block}.bn{j}.{attr}") for leaf, attr in _BN_LEAVES.items()]
            if i == 0:
                names.append((f"shortcut_projection_{n}_w", f"{block}.down_sample.0.weight"))
                names += [(f"shortcut_projection_{n}_spatbn_{leaf}", f"{block}.down_sample.1.{attr}")
                          for leaf, attr in _BN_LEAVES.items()]
            n += 1
    return names


# The TubeR fork's Deformable TubeR (``backbone_3d_builder2``) wraps TubeR's Backbone in a Joiner (backbone,
# positions): its keys are ``backbone.0.body.*``, ``backbone.0.query_pool.*``, ... for TubeR's ``backbone.*``.
TUBER_JOINER = "backbone.0."


def tuber_unjoin(key):
    """A TubeR-fork Joiner key (``backbone.0.<rest>``) as TubeR's (``backbone.<rest>``); other keys unchanged."""
    return "backbone." + key[len(TUBER_JOINER):] if key.startswith(TUBER_JOINER) else key


def tuber_key(key):
    """Detector key of a TubeR state-dict key (``module.`` already removed), or None to drop it
    (the CSN classifier ``backbone.body.out_fc.*``)."""
    key = tuber_unjoin(key)
    if key.startswith(TUBER_BODY):
        rest = key[len(TUBER_BODY):]
        return None if rest.startswith("out_fc.") else "backbone." + rest
    if key.startswith(TUBER_WRAPPER_PARTS):
        return f"{TUBER_HEAD}.{key[len('backbone.'):]}"
    return f"{TUBER_HEAD}.{key}"


def deformable_tuber_unused(keys):
    """Key prefixes of a Deformable TubeR checkpoint (the TubeR fork's D2 / D3 / D4, docs/deformable_tuber.md) that
    its model builds but never calls, to be dropped: the backbone wrapper's temporal pooling (every variant pools
    per level in the head), and D2's ``class_proj`` / ``encoder`` / ``cross_attn``, D3's ``encoder`` /
    ``cross_attn``. Empty for TubeR itself (no ``transformer.level_embed`` / ``transformer2.level_embed``)."""
    if "transformer.decoder.layers.0.time_attention_weights.weight" in keys:  # the fork's SeqFormer (docs/seqformer.md)
        # its encoder attentions carry an output_proj_box they never call
        return TUBER_WRAPPER_PARTS + tuple(sorted({k[:k.index(".output_proj_box.")] + ".output_proj_box." for k in keys
                                                   if k.startswith("transformer.encoder.") and ".output_proj_box." in k}))
    if "transformer2.level_embed" in keys:  # D3
        return TUBER_WRAPPER_PARTS + ("encoder.", "cross_attn.")
    if "transformer.level_embed" in keys:
        unused = ("class_proj.", "encoder.", "cross_attn.") if "conv3d_0.0.0.weight" in keys else ()  # D2 / D4
        return TUBER_WRAPPER_PARTS + unused
    return ()


def is_tuber(keys):
    """True when the (normalized) keys hold a TubeR model (its CSN lives below ``backbone.body.``)."""
    if any(k.startswith(TUBER_BODY + "conv1.") for k in keys):
        return True
    # the fork's Deformable TubeR (Joiner keys); DETR's own checkpoints also nest a backbone.0.body (a ResNet)
    deformable = "transformer.level_embed" in keys or "transformer2.level_embed" in keys
    return deformable and any(k.startswith(TUBER_JOINER + "body.conv1.") for k in keys)


# DETR checkpoints: the parts TubeR's load_detr_weights takes (models/../utils/model_utils.py).
DETR_PARTS = ("transformer.", "query_embed.", "bbox_embed.")


def detr_key(key):
    """Detector key of a DETR state-dict key (``module.`` already removed): ``tuber_head.<key>`` for the
    transformer, the queries and the box MLP; None (dropped) for the rest (class_embed, input_proj, backbone)."""
    return f"{TUBER_HEAD}.{key}" if key.startswith(DETR_PARTS) else None
