"""Every weight-file format users hold, mapped exactly into the detector's key space.

The detector's keys are ``backbone.*``, ``lateral_convs.*`` and ``stm_head.*``
(the official ``STMDetector.state_dict()`` keys), or ``backbone.*`` and ``roi_head.*`` for the
two-stage ``FastRCNN`` (mmaction2's own names). ``read_checkpoint`` returns
the file's tensors under those keys, what it dropped and why, and the file's
other top-level entries untouched. Formats (ids in ``FORMATS``):

* ``stmixer`` — our own: ``{"format": "stmixer", "format_version": 1,
  "model": detector state dict, ...trainer entries}``.
* ``official_stmixer`` — official STMixer checkpoints ``{"model": ...,
  "optimizer", "scheduler", "iteration", ["person_pool"]}`` (keys with or
  without ``module.``), or a bare detector state dict.
* ``pyslowfast_caffe2`` — PySlowFast Caffe2 pickles (``{"blobs": {...}}`` or
  the bare blob dict, Python 2 or 3, Caffe2 or PyTorch names); ``lr``,
  ``model_iter``, ``*_momentum`` and the classifier ``pred_*`` are dropped.
* ``pyslowfast_pyth`` — PySlowFast ``{"model_state": ...}`` (classifier
  ``head.*`` dropped), or any other file holding bare PySlowFast backbone keys.
* ``videomae`` — VideoMAE fine-tuned / VideoMAEv2 distilled ViTs
  (``"module"`` or ``"model"`` wrapper, or bare): ``fc_norm.*`` and
  ``head.*`` dropped; ``norm`` is NOT filled from ``fc_norm`` (as the
  official loader: the detector trains that LayerNorm from its init).
* ``videomae_pretrain`` — VideoMAE pre-training ``{"model": {"encoder.*",
  "decoder.*", ...}}``: ``encoder.`` keys kept without the prefix (including
  ``norm``), ``decoder.*``, ``encoder_to_decoder.*`` and ``mask_token``
  dropped. (The official loader silently loads nothing from these files.)
* ``mmaction2`` — mmaction2 / mmengine checkpoints ``{"meta": ..., "state_dict": ...}``
  (detectors with ``backbone.*`` + ``roi_head.*``, Kinetics recognizers with ``backbone.*`` +
  ``cls_head.*``) and bare backbone state dicts (``conv1.conv.weight``,
  ``slow_path.*``, ...): every backbone key renamed one to one by
  ``mmaction2.backbone_key`` (a key outside that layout keeps its name below
  ``backbone.`` and shows as unexpected); ``roi_head.*`` kept under its own names
  (``roi_head.bbox_head.fc_cls.*``, ``roi_head.shared_head.*``: ``FastRCNN``'s attribute
  names are mmaction2's; a model without a ``roi_head``, e.g. STMixer, reports them as
  skipped), ``cls_head.*`` dropped as the classifier head.
* ``caffe2_csn`` — VMZ Caffe2 ir-CSN-50 / ir-CSN-152 weights, the Kinetics models TubeR starts
  from: a pickle ``{"blobs": {...}}`` (or the bare blob dict) or TubeR's MATLAB v5 ``.mat``
  conversion; blob names mapped one to one by ``csn.blob_to_module_path`` (depth read from
  the block count), BatchNorm blobs flattened (``.mat`` stores ``[1, N]``); ``last_out_L*``
  (classifier), ``lr``, ``model_iter`` and ``*_momentum`` dropped.
* ``tuber`` — TubeR checkpoints ``{"model": ..., "optimizer", "lr_scheduler", "epoch",
  "config": yacs CfgNode (read as an inert placeholder)}``: ``backbone.body.*`` -> ``backbone.*``
  (CSN), ``backbone.body.out_fc.*`` dropped, everything else kept below ``tuber_head.``
  (``csn.tuber_key``). The TubeR fork's Deformable TubeR checkpoints (``backbone.0.body.*``, a Joiner,
  with a deformable ``transformer[2].level_embed``) map the same way, minus the modules they never call
  (``csn.deformable_tuber_unused``; docs/deformable_tuber.md).
* ``detr`` — DETR checkpoints (COCO ``detr-r50``, or TubeR's ``detr.pth``; ``module.`` prefix or not):
  ``transformer.*``, ``query_embed.weight``, ``bbox_embed.*`` -> ``tuber_head.*`` (``csn.detr_key``), the rest
  dropped; ``MODEL.TUBER.DETR_WEIGHT`` loads them (``stmixer.modeling.tuber.detr_weights``).
* ``evad`` — official EVAD checkpoints (PySlowFast ``{"epoch", "model_state", "optimizer_state", "cfg"}``
  of the whole ``EVAD`` model): the ViT keys (``patch_embed.*``, ``blocks.*``, ``norm.*``, ``pos_embed``) go
  to ``backbone.*`` under the same names, the FPN (``fpn_lateral{2..5}.*``, ``fpn_output{2..5}.*``) to
  ``evad_fpn.*`` and the person detector and decoder (``det_head.*``, ``init_proposal_{features,boxes}.*``)
  to ``evad_head.*``, each under its official name; the loss buffer ``criterion.empty_weight`` is dropped
  (rebuilt from the config).

For every format, a ``module.`` prefix carried by all keys is removed, and
``_orig_mod.`` path components (``torch.compile``) are removed. Tensors keep
the file's dtype; ``load_weights`` casts them to the model's.
"""

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..utils.io import atomic_open
from . import csn, mmaction2
from .caffe2 import caffe2_to_module_path
from .errors import CheckpointError, CheckpointFormatError
from .safe_unpickle import read_file

# Top-level parts of the detector (the attribute names of STMDetector).
DETECTOR_PARTS = ("backbone", "lateral_convs", "stm_head", "roi_head", "tuber_head", "evad_fpn", "evad_head")
# Top-level parts of any model: the detectors' and the recognizers' classification head (Recognizer3D.head).
MODEL_PARTS = DETECTOR_PARTS + ("head",)
# Parts that --no-head leaves at their initialization (STMixer's decoder, the two-stage RoI head, TubeR's and
# EVAD's heads, a recognizer's head).
HEAD_PARTS = ("stm_head", "roi_head", "tuber_head", "evad_head", "head")
# Top-level keys of the official EVAD model: its ViT backbone, FPN, and person detector + decoder.
EVAD_BACKBONE_ROOTS = ("patch_embed", "blocks", "norm", "pos_embed")
EVAD_HEAD_ROOTS = ("det_head", "init_proposal_features", "init_proposal_boxes")
# Classifier tensors of PySlowFast files -> the recognizer's keys (LinearHead = PySlowFast's ResNetBasicHead).
_CAFFE2_CLASSIFIER = {"pred_w": "head.projection.weight", "pred_b": "head.projection.bias"}
# Version of the project format written by save_checkpoint.
FORMAT_VERSION = 1

FORMATS = {
    "stmixer": "stmixer checkpoint",
    "official_stmixer": "official STMixer checkpoint",
    "pyslowfast_caffe2": "PySlowFast Caffe2 weights",
    "pyslowfast_pyth": "PySlowFast checkpoint",
    "videomae": "VideoMAE / VideoMAEv2 ViT (fine-tuned or distilled)",
    "videomae_pretrain": "VideoMAE pre-training checkpoint (encoder + decoder)",
    "mmaction2": "mmaction2 checkpoint",
    "caffe2_csn": "VMZ Caffe2 ir-CSN weights",
    "tuber": "TubeR checkpoint",
    "detr": "DETR weights (transformer, queries, box MLP for TubeR)",
    "evad": "official EVAD checkpoint",
}

_CONTAINERS = {"zip": "torch zip file", "torch_legacy": "legacy torch file", "pickle": "pickle",
               "mat": "MATLAB .mat file"}


@dataclass
class CheckpointContents:
    """A weight file mapped into the detector's key space.

    Attributes:
        path: the file.
        format: format id (a key of ``FORMATS``).
        description: human-readable format and container, for logs.
        state_dict: detector key -> CPU tensor (dtype as stored in the file).
        extras: the file's other top-level entries (optimizer, scheduler, iteration, ...), untouched.
        dropped: reason -> original keys the format's rules dropped (classifier heads, momentum, decoder, ...).
        expected_missing: detector keys this format never stores (reported, not an error).
        classifier: recognizer key (``head.projection.*``) -> tensor of the classifier the format's
            rules dropped (PySlowFast ``head.projection.*`` / Caffe2 ``pred_w``, ``pred_b``); a model
            with a ``head`` (``Recognizer3D``) loads them, a detector reports them dropped.
    """

    path: str
    format: str
    description: str
    state_dict: dict
    extras: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    expected_missing: frozenset = frozenset()
    classifier: dict = field(default_factory=dict)


def read_checkpoint(path):
    """Read any supported weight file safely and map it to detector keys (see the module docstring).

    Raises:
        CheckpointError (or a subclass): unreadable, unsafe or unknown files, naming ``path``.
    """
    path = str(path)
    try:
        container, obj = read_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, expected a weight file") from None
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: expected a dict at the top level, found {type(obj).__name__}")
    if container == "mat":
        contents = _from_csn_blobs(path, obj, {})
    elif container == "pickle":
        contents = _from_caffe2_pickle(path, obj)
    else:
        contents = _from_torch_object(path, obj)
    contents.description = f"{FORMATS[contents.format]}, {_CONTAINERS[container]}"
    return contents


def checkpoint_from_object(obj, source):
    """Map a checkpoint already in memory (what ``torch.load`` of a weight file returns: e.g. an
    official ``{"model": state_dict}``, a project-format dict or a bare state dict) exactly as
    ``read_checkpoint`` maps a torch file holding it.

    Args:
        obj: the loaded object (a dict).
        source: a name for it in the load table and in errors (e.g. where the weights came from).

    Returns:
        ``CheckpointContents`` for ``load_weights``.
    """
    source = str(source)
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{source}: expected a dict at the top level, found {type(obj).__name__}")
    contents = _from_torch_object(source, obj)
    contents.description = f"{FORMATS[contents.format]}, in memory"
    return contents


def save_checkpoint(path, model_state, **extras):
    """Write a project-format checkpoint atomically.

    Args:
        path: destination file.
        model_state: detector state dict (keys ``backbone.*`` / ``lateral_convs.*`` / ``stm_head.*``,
            no ``module.``; pass ``model.module.state_dict()`` for a DDP-wrapped model).
        extras: other entries (e.g. optimizer, scheduler, iteration, rng, sampler, config). They must load
            with ``torch.load(weights_only=True)``: tensors, numbers, strings, None, numpy arrays and
            lists / tuples / dicts of those.
    """
    bad = [k for k in model_state if k.split(".", 1)[0] not in MODEL_PARTS]
    if bad:
        raise ValueError(f"save_checkpoint: model_state keys must start with one of {MODEL_PARTS}; got {bad[:3]}")
    reserved = {"format", "format_version", "model"} & set(extras)
    if reserved:
        raise ValueError(f"save_checkpoint: {sorted(reserved)} are reserved entry names")
    payload = {"format": "stmixer", "format_version": FORMAT_VERSION, "model": OrderedDict(model_state), **extras}
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


# ----------------------------------------------------------------------------- torch files
def _from_torch_object(path, obj):
    if obj.get("format") == "stmixer":
        version = obj.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointFormatError(
                f"{path}: stmixer checkpoint format_version {version!r}; this stmixer reads versions up to "
                f"{FORMAT_VERSION} (written by a newer stmixer?)"
            )
        extras = {k: v for k, v in obj.items() if k not in ("format", "format_version", "model")}
        contents = _from_state_dict(path, _require_state_dict(path, obj.get("model"), "model"), extras)
        contents.format = "stmixer"
        return contents
    for wrapper in ("model_state", "model", "module", "state_dict"):
        if wrapper in obj:
            extras = {k: v for k, v in obj.items() if k != wrapper}
            return _from_state_dict(path, _require_state_dict(path, obj[wrapper], wrapper), extras,
                                    wrapper=wrapper)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _from_state_dict(path, obj, {})
    raise CheckpointFormatError(
        f"{path}: no weights found: expected an entry 'model', 'module', 'model_state' or 'state_dict', or a "
        f"plain state dict of tensors; top-level entries: {_first(list(obj), 8)}"
    )


def _require_state_dict(path, value, entry):
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise CheckpointFormatError(f"{path}: entry {entry!r} is not a state dict of tensors")
    return value


# ----------------------------------------------------------------------------- Caffe2 pickles
_CAFFE2_META = ("lr", "model_iter")


def _sort_blobs(path, blobs, is_classifier):
    """Caffe2 blobs -> ``([(name, array)] weights in file order, {reason: [names]} dropped)``: training
    metadata, SGD momenta, the classifier (``is_classifier(name)``) and non-arrays are dropped."""
    weights, dropped = [], {}
    for name, value in blobs.items():
        if not isinstance(name, str):
            raise CheckpointFormatError(f"{path}: blob names must be strings, found {name!r}")
        if name in _CAFFE2_META:
            dropped.setdefault("training metadata", []).append(name)
        elif name.endswith("_momentum"):
            dropped.setdefault("SGD momentum", []).append(name)
        elif is_classifier(name):
            dropped.setdefault("classifier head", []).append(name)
        elif not isinstance(value, np.ndarray):
            dropped.setdefault("not an array", []).append(name)
        else:
            weights.append((name, value))
    return weights, dropped


def _from_caffe2_pickle(path, obj):
    blobs, extras = (obj["blobs"], {k: v for k, v in obj.items() if k != "blobs"}) if "blobs" in obj else (obj, {})
    if not isinstance(blobs, dict):
        raise CheckpointFormatError(f"{path}: 'blobs' is a {type(blobs).__name__}, expected a dict of arrays")
    if csn.is_csn_blobs(blobs):
        return _from_csn_blobs(path, blobs, extras)
    weights, dropped = _sort_blobs(path, blobs, lambda name: name.startswith("pred_"))
    tensors = OrderedDict((caffe2_to_module_path(name) or name, torch.from_numpy(value)) for name, value in weights)
    classifier = OrderedDict((key, torch.from_numpy(blobs[name])) for name, key in _CAFFE2_CLASSIFIER.items()
                             if isinstance(blobs.get(name), np.ndarray))
    contents = _from_state_dict(path, tensors, extras)
    for reason, names in dropped.items():
        contents.dropped.setdefault(reason, []).extend(names)
    contents.format = "pyslowfast_caffe2"
    contents.classifier = classifier
    return contents


def _from_csn_blobs(path, blobs, extras):
    """VMZ ir-CSN blobs (pickle or ``.mat``) -> ``backbone.*`` keys of ``IrCSN`` (see ``csn``)."""
    depth = csn.depth_of(set(blobs))
    weights, dropped = _sort_blobs(path, blobs, csn.CLASSIFIER.fullmatch)
    tensors = OrderedDict()
    for name, value in weights:
        target = csn.blob_to_module_path(name, depth) if depth else None
        if target and csn.is_bn_blob(name):
            value = value.reshape(-1)
        tensors["backbone." + (target or name)] = torch.from_numpy(np.ascontiguousarray(value))
    return CheckpointContents(path, "caffe2_csn", "", tensors, extras, dropped)


# ----------------------------------------------------------------------------- key layouts
def _normalize_keys(state_dict):
    """Remove ``_orig_mod.`` path components everywhere and a ``module.`` prefix carried by every key."""
    keys = [".".join(p for p in k.split(".") if p != "_orig_mod") for k in state_dict]
    if len(set(keys)) != len(keys):
        raise CheckpointFormatError("keys collide after removing '_orig_mod.' components")
    if keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module."):] for k in keys]
    return OrderedDict(zip(keys, state_dict.values()))


def _layout(keys):
    """Which key space the (normalized) keys are in."""
    roots = {k.split(".", 1)[0] for k in keys}
    if mmaction2.is_mmaction2(set(keys)):
        return "mmaction2"
    if csn.is_tuber(keys):
        return "tuber"
    if {"transformer", "query_embed"} <= roots and not roots & set(DETECTOR_PARTS) - {"backbone"}:
        return "detr"
    if roots & set(DETECTOR_PARTS):
        return "detector"
    if "det_head" in roots and roots & {"patch_embed", "blocks"}:
        return "evad"
    if "encoder" in roots:
        return "videomae_pretrain"
    if roots & {"patch_embed", "blocks"}:
        return "vit"
    if "s1" in roots:
        return "resnet"
    return None


def _from_state_dict(path, state_dict, extras, wrapper=None):
    """Map a state dict in any known key space to detector keys."""
    state_dict = _normalize_keys(state_dict)
    layout = _layout(state_dict)
    dropped = {}
    mapped = OrderedDict()
    classifier = OrderedDict()

    def drop(reason, key):
        dropped.setdefault(reason, []).append(key)

    if layout == "mmaction2":
        bare = not any(k.startswith("backbone.") for k in state_dict)
        for k, v in state_dict.items():
            root, _, rest = k.partition(".")
            if root == "roi_head":
                mapped[k] = v  # FastRCNN's roi_head has mmaction2's names
            elif root == "cls_head":
                drop("classifier head", k)
            elif root == "backbone" or bare:
                name = rest if root == "backbone" else k
                mapped["backbone." + (mmaction2.backbone_key(name) or name)] = v
            else:
                mapped[k] = v
        fmt, expected_missing = "mmaction2", frozenset()
    elif layout == "tuber":
        unused = csn.deformable_tuber_unused({csn.tuber_unjoin(k) for k in state_dict})
        for k, v in state_dict.items():
            target = csn.tuber_key(k)
            if unused and csn.tuber_unjoin(k).startswith(unused):
                drop("Deformable TubeR modules the fork builds but never calls", k)
            elif target is None:
                drop("classifier head (TubeR's unused CSN out_fc)", k)
            else:
                mapped[target] = v
        fmt, expected_missing = "tuber", frozenset()
    elif layout == "detr":
        for k, v in state_dict.items():
            target = csn.detr_key(k)
            if target is None:
                drop("DETR parts TubeR does not take (COCO classifier, 2-D input_proj, ResNet backbone)", k)
            else:
                mapped[target] = v
        fmt, expected_missing = "detr", frozenset()
    elif layout == "evad":
        for k, v in state_dict.items():
            root = k.split(".", 1)[0]
            if root in EVAD_BACKBONE_ROOTS:
                mapped["backbone." + k] = v
            elif root.startswith(("fpn_lateral", "fpn_output")):
                mapped["evad_fpn." + k] = v
            elif root in EVAD_HEAD_ROOTS:
                mapped["evad_head." + k] = v
            elif root == "criterion":
                drop("loss buffers (rebuilt from the config)", k)
            else:
                mapped[k] = v
        fmt, expected_missing = "evad", frozenset()  # the criterion's empty_weight is not a state-dict entry
    elif layout == "detector":
        mapped.update(state_dict)
        fmt, expected_missing = "official_stmixer", frozenset()
    elif layout == "videomae_pretrain":
        for k, v in state_dict.items():
            if k.startswith("encoder."):
                mapped["backbone." + k[len("encoder."):]] = v
            elif k.split(".", 1)[0] in ("decoder", "encoder_to_decoder", "mask_token"):
                drop("VideoMAE decoder (pre-training only)", k)
            else:
                mapped[k] = v
        fmt, expected_missing = "videomae_pretrain", frozenset({"backbone.pos_embed"})
    elif layout in ("vit", "resnet"):
        for k, v in state_dict.items():
            root = k.split(".", 1)[0]
            if root == "head":
                drop("classifier head", k)
                if layout == "resnet":
                    classifier[k] = v  # PySlowFast's ResNetBasicHead: head.projection.* (the recognizer's keys)
            elif layout == "vit" and root == "fc_norm":
                drop("fc_norm (not loaded into norm, as the official loader)", k)
            else:
                mapped["backbone." + k] = v
        if layout == "vit":
            fmt = "videomae"
            expected_missing = frozenset({"backbone.norm.weight", "backbone.norm.bias", "backbone.pos_embed"})
        else:
            fmt, expected_missing = "pyslowfast_pyth", frozenset()
    else:
        where = f"entry {wrapper!r}" if wrapper else "the state dict"
        raise CheckpointFormatError(
            f"{path}: unrecognised key layout in {where}: expected detector keys (backbone.*, lateral_convs.*, "
            f"stm_head.*), PySlowFast backbone keys (s1.*, s2.*, ...), VideoMAE keys (patch_embed.*, blocks.*), "
            f"VideoMAE pre-training keys (encoder.*) or mmaction2 keys (backbone.conv1.conv.*, ...); "
            f"first keys: {_first(list(state_dict), 5)}"
        )
    return CheckpointContents(path, fmt, "", mapped, extras, dropped, expected_missing, classifier)


def _first(items, n):
    """The first ``n`` items as a short string."""
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")
