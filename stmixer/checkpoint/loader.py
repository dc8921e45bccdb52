"""Loading a checkpoint into a model by exact key matching, with one report table per load.

``load_weights(model, path_or_contents, no_head=False)`` matches every key of
the file (already in detector key space, see ``formats``) with the same key
of ``model.state_dict()`` — no suffix guessing — and sorts every key into:

* loaded — same key, same shape: copied (cast to the model tensor's dtype);
* missing — a model key of a part the file covers (``backbone`` /
  ``lateral_convs`` / ``stm_head``) that the file lacks;
* unexpected — a file key the model does not have;
* shape mismatch — same key, different shape (not copied);
* not stored — model keys the file's format never stores (BatchNorm
  ``num_batches_tracked`` counters, a VideoMAE fine-tuned file's ``norm``):
  they keep their values;
* left at init — model parts the file does not contain (e.g. neck and decoder
  for a backbone-only file), or ``stm_head`` with ``no_head``;
* dropped — file entries the format's rules drop (classifier heads, momentum, decoder);
* skipped — file keys of detector parts the model does not hold, or
  ``stm_head`` with ``no_head``.

The table is logged once per load. With ``strict`` (default), anything missing,
unexpected or shape-mismatched — or nothing loaded at all — raises
``CheckpointMismatchError`` carrying the table before any tensor is changed.
"""

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import CheckpointMismatchError
from .formats import HEAD_PARTS, MODEL_PARTS, CheckpointContents, read_checkpoint

logger = logging.getLogger("stmixer.checkpoint")

_NAMES_SHOWN = 3


@dataclass
class LoadReport:
    """What one load did (see the module docstring for the categories); ``table()`` renders it."""

    source: str
    description: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (key, file shape, model shape)
    not_stored: list = field(default_factory=list)
    left_at_init: dict = field(default_factory=dict)  # reason -> model keys
    dropped: dict = field(default_factory=dict)  # reason -> file keys
    skipped: dict = field(default_factory=dict)  # reason -> file keys

    @property
    def ok(self):
        """True when nothing is missing, unexpected or mismatched and at least one tensor loads."""
        return bool(self.loaded) and not (self.missing or self.unexpected or self.mismatched)

    def table(self):
        """A compact multi-line table: one row per category with its count and first names."""
        mismatched = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched]
        rows = [
            ("loaded", len(self.loaded), _names(self.loaded)),
            ("missing", len(self.missing), _names(self.missing)),
            ("unexpected", len(self.unexpected), _names(self.unexpected)),
            ("shape mismatch", len(self.mismatched), _names(mismatched)),
        ]
        if self.not_stored:
            rows.append(("not stored (kept)", len(self.not_stored), _names(self.not_stored)))
        for label, groups in (("left at init", self.left_at_init), ("dropped", self.dropped),
                              ("skipped", self.skipped)):
            if groups:
                count = sum(len(v) for v in groups.values())
                rows.append((label, count, "; ".join(f"{len(v)} {r}: {_names(v)}" for r, v in groups.items())))
        lines = [f"Weights from {self.source} ({self.description}):"]
        lines += [f"  {label:<18}{count:>6}  {names}".rstrip() for label, count, names in rows]
        return "\n".join(lines)


def _names(keys):
    shown = ", ".join(keys[:_NAMES_SHOWN])
    return shown + (", ..." if len(keys) > _NAMES_SHOWN else "")


def unwrap_model(model):
    """The module inside a DistributedDataParallel / DataParallel wrapper (or ``model`` itself)."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def with_classifier(model, contents):
    """``contents`` as ``model`` reads it: for a model with a ``head`` (a recognizer), the classifier
    tensors the format set aside (``contents.classifier``, e.g. PySlowFast ``head.projection.*``) join
    the state dict and leave the "classifier head" entry of ``dropped``; otherwise ``contents`` itself."""
    if not contents.classifier or not hasattr(unwrap_model(model), "head"):
        return contents
    state_dict = dict(contents.state_dict, **contents.classifier)
    dropped = {r: list(v) for r, v in contents.dropped.items() if r != "classifier head"}
    return dataclasses.replace(contents, state_dict=state_dict, dropped=dropped, classifier={})


def match_state_dict(model, contents, no_head=False):
    """Sort the keys of ``contents`` against ``model`` (see the module docstring); copies nothing.

    Modules of ``model`` with a method ``adapt_loaded_state(state_dict, prefix)`` may first adapt
    their entries of ``contents.state_dict`` in place (e.g. resize a learned position table).
    """
    model = unwrap_model(model)
    contents = with_classifier(model, contents)
    for prefix, module in model.named_modules():
        if hasattr(module, "adapt_loaded_state"):
            module.adapt_loaded_state(contents.state_dict, f"{prefix}." if prefix else "")
    model_state = model.state_dict()
    held = {k.split(".", 1)[0] for k in model_state}
    file_parts = {k.split(".", 1)[0] for k in contents.state_dict}
    report = LoadReport(source=contents.path, description=contents.description,
                        dropped={r: list(v) for r, v in contents.dropped.items()})
    for key, value in contents.state_dict.items():
        part = key.split(".", 1)[0]
        if no_head and part in HEAD_PARTS:
            report.skipped.setdefault(f"{part} (--no-head)", []).append(key)
        elif part in MODEL_PARTS and part not in held:
            report.skipped.setdefault(f"{part}.* (the model holds no {part})", []).append(key)
        elif key not in model_state:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(model_state[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            report.loaded.append(key)
    for key in model_state:
        part = key.split(".", 1)[0]
        if no_head and part in HEAD_PARTS:
            report.left_at_init.setdefault(f"{part} (--no-head)", []).append(key)
        elif key in contents.state_dict:
            continue
        elif part not in file_parts:
            report.left_at_init.setdefault(f"{part}.* (not in the file)", []).append(key)
        elif key.endswith(".num_batches_tracked") or key in contents.expected_missing:
            report.not_stored.append(key)
        else:
            report.missing.append(key)
    return report


def load_weights(model, source, no_head=False, strict=True, log=logger):
    """Load a weight file into ``model`` by exact key matching and log the report table.

    Args:
        model: the detector (or any module whose top-level children are detector parts, e.g. a
            backbone + neck holder); DDP / DataParallel wrappers are unwrapped.
        source: a path (any supported format) or a ``CheckpointContents`` from ``read_checkpoint``.
        no_head: leave ``stm_head`` (STMixer), ``roi_head`` (FastRCNN), ``tuber_head`` (TubeR),
            ``evad_head`` (EVAD) or ``head`` (Recognizer3D) at its
            initialization (its file keys are skipped).
        strict: raise ``CheckpointMismatchError`` (with the table) when the report is not ``ok``;
            nothing is copied in that case.
        log: logger receiving the table (INFO), or None. When the load fails the table is in the
            exception's message instead.

    Returns:
        the ``LoadReport``.
    """
    contents = source if isinstance(source, CheckpointContents) else read_checkpoint(source)
    contents = with_classifier(model, contents)
    report = match_state_dict(model, contents, no_head=no_head)
    table = report.table()
    if strict and not report.ok:
        problem = "no tensor of the file fits the model" if not report.loaded else \
            "the checkpoint does not fit the model (wrong architecture or config?)"
        raise CheckpointMismatchError(f"{contents.path}: {problem}\n{table}", report)
    if log is not None:
        log.info("%s", table)
    model_state = unwrap_model(model).state_dict()
    with torch.no_grad():
        for key in report.loaded:
            model_state[key].copy_(contents.state_dict[key])
    return report
