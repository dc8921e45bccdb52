"""Run our model on a reference fixture and write its outputs under the fixture's names.

    python -m stmixer.tools.reference_parity --fixture DIR --out OUT.npz [--precision f32|f64]

A fixture folder (see ``shared/reference/README.md``) holds ``config.yaml``
(official keys, merged onto our defaults like an official config file), the
weights (``weights.pth``, or ``weights.json`` + ``manifest.json`` meaning "build
them with ``recipe.py``", found at ``DIR/../recipe.py`` or in the shared kit,
with the salt of ``weights.json``), and ``inputs.npz``. The tool builds the
model, runs it in eval and in train mode as the fixture README describes, and
writes every output under the names ``expected.npz`` uses, prefixed with the
precision (``f64/eval/...``, ``f32/train/...``; same shapes and dtypes). It
never reads ``expected.npz``; comparing is the caller's job
(``python -m stmixer.tools.parity_check --fixture DIR --outputs OUT.npz``).

Fixture kinds are told apart by their inputs:

* "decoder" (inputs ``features_l*``): the decoder alone, keys without
  ``stm_head.``, weights loaded with ``load_state_dict``; writes every
  per-stage tensor including the inside-stage ``detail/`` ones.
* "detector" (inputs ``slow_video_u8`` [+ ``fast_video_u8``]): the whole model
  from ``stmixer.modeling.build_detector(cfg)``, weights loaded through
  ``stmixer.checkpoint.load_weights`` as an official checkpoint ``{"model":
  state_dict}`` (every key must load). Videos are decoded as ``(code -
  video_offset) / video_scale``. Besides the decoder outputs (per-stage
  queries only for stage 0: ``eval/q_s_stage0``, ``eval/q_t_stage0``) it writes,
  for each backbone level and neck output ``{backbone,mapped}_l{i}``,
  ``.../shape``, ``.../chan_mean`` (mean over B, T, H, W per channel) and
  ``.../full``: the whole tensor. The fixture's ``.../sample`` answers are the
  values of ``.../full`` at the flat indices ``index/...`` stored with the
  answers, which only the comparing side reads. The float32 run also writes
  ``eval/mapped_l3_full``. When the train forward differs from the eval one
  (BatchNorm using batch statistics: the SlowFast configs, ``FROZEN_BN``
  false), the per-stage tensors and feature statistics are written under
  ``train/`` too.

A folder with ``mmaction2.json`` is a fixture of mmaction2's two-stage detectors (``FastRCNN``),
run by ``stmixer.tools.mmaction2_parity`` (its docstring gives the layout and the output names).
A folder whose ``cases.json`` names the model "EVAD" is an EVAD detector fixture, run by
``stmixer.modeling.evad.parity`` (outputs ``<case>/<answer name>``).
A folder whose ``case.json`` names a ``sparse_rcnn/...`` model is a Sparse R-CNN head fixture, run by
``stmixer.modeling.sparse_rcnn.parity``.
A folder of ``<case>.json`` (``"model": "TubeR"``) + ``<case>.npz`` is a TubeR fixture, run by
``stmixer.modeling.tuber.parity`` (its docstring gives the layout and the output names).
A folder with ``stabn.json`` (model "ST-ABN") is a fixture of the official ST-ABN recognizer, run by
``stmixer.modeling.stabn.parity`` (its docstring gives the layout and the output names).
A folder of Deformable TubeR cases (``<case>.json`` naming ``msda_*`` / ``transformer_*`` / ``head_*``) is
run by ``stmixer.tools.deformable_parity``.
A folder of SeqFormer cases (``<case>.json`` with ``"model": "SeqFormer"``) is run by
``stmixer.modeling.seqformer.parity``.

Runs on the CPU with 1 thread by default, as the fixtures were generated, so
float32 results are reproducible across machines (``--threads`` changes it).
"""

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, checkpoint_from_object, load_weights
from ..config import load_config
from ..modeling.losses import reduce_losses
from ..modeling.trace import Trace
from ..utils.env import find_shared_dir
from ..utils.io import atomic_open

# The other families' fixtures, tried in order before the STMixer layout: (module, is_fixture, run, error class).
# Each module's docstring gives its layout and output names.
FAMILY_FIXTURES = (
    ("..modeling.evad.parity", "is_evad_fixture", "run_evad_fixture", "EVADFixtureError"),
    (".mmaction2_parity", "is_mmaction2_fixture", "run_mmaction2_fixture", "MMAction2FixtureError"),
    ("..modeling.sparse_rcnn.parity", "is_sparse_rcnn_fixture", "run_sparse_rcnn_fixture", "SparseRCNNFixtureError"),
    ("..modeling.tuber.parity", "is_tuber_fixture", "run_tuber_fixture", "TubeRFixtureError"),
    ("..modeling.stabn.parity", "is_stabn_fixture", "run_stabn_fixture", "STABNFixtureError"),
    (".deformable_parity", "is_deformable_fixture", "run_deformable_fixture", "DeformableFixtureError"),
    ("..modeling.seqformer.parity", "is_seqformer_fixture", "run_seqformer_fixture", "SeqFormerFixtureError"),
)

PRECISIONS = {"f32": torch.float32, "f64": torch.float64}
# Per-stage trace entries written as [S, ...] arrays.
STAGE_KEYS = ("cls_logits", "action_logits", "delta_xyzr", "xyzr", "boxes")
# Trace entries recorded once per forward, written as they are under eval/.
SINGLE_KEYS = ("person_scores", "init_xyzr", "init_q_s", "init_q_t")
# Number of backbone levels / neck outputs of a detector.
NUM_LEVELS = 4


class FixtureError(RuntimeError):
    """A fixture folder that is incomplete or does not fit the model."""


def fixture_config(fixture):
    """Our default config with ``fixture/config.yaml`` merged on top, on the reference path: the CUDA
    channels_last_3d backbone layout, the CUDA graphs, TF32 matmuls, the Triton sampler, the stacked stage
    losses and the fused inference convolutions (fast paths, not bit-close) are turned off for parity runs."""
    cfg = load_config(str(fixture / "config.yaml"), freeze=False)
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    cfg.MODEL.CUDA_GRAPH.SCOPE = "off"
    cfg.MODEL.STM.STACKED_LOSSES = False
    cfg.MODEL.STM.SAMPLER = "folded"
    cfg.TF32_MATMUL = False
    return cfg


def load_recipe(fixture):
    """The kit's ``recipe.py`` module: ``fixture/../recipe.py``, else ``<shared kit>/reference/recipe.py``."""
    candidates = [fixture.parent / "recipe.py"]
    shared = find_shared_dir()
    if shared is not None:
        candidates.append(shared / "reference" / "recipe.py")
    for path in candidates:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("stmixer_reference_recipe", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FixtureError(
        f"{fixture}: weights.json asks for recipe weights but there is no {candidates[0]} (nor in the kit)"
    )


def fixture_state_dict(fixture):
    """The fixture's float32 state dict: ``weights.pth``, or the recipe over ``manifest.json`` with the salt
    of ``weights.json``."""
    if (fixture / "weights.pth").is_file():
        return torch.load(fixture / "weights.pth", map_location="cpu", weights_only=True)
    if (fixture / "weights.json").is_file() and (fixture / "manifest.json").is_file():
        info = json.loads((fixture / "weights.json").read_text())
        recipe = load_recipe(fixture)
        return recipe.build_state_dict(fixture / info.get("manifest", "manifest.json"), salt=info.get("salt", ""))
    raise FixtureError(f"{fixture}: no weights.pth and no weights.json + manifest.json")


def _numpy(value, dtype):
    """Float tensors -> numpy in ``dtype``; integer tensors -> int64."""
    value = torch.as_tensor(value).detach().cpu()
    if value.is_floating_point():
        return value.to(dtype).numpy()
    return value.to(torch.int64).numpy()


def detection_arrays(detections, dtype):
    """``eval/{scores,boxes,selected}_b{i}`` of the returned detections."""
    out = {}
    for i, det in enumerate(detections):
        out[f"eval/scores_b{i}"] = _numpy(det["scores"], dtype)
        out[f"eval/boxes_b{i}"] = _numpy(det["boxes"], dtype)
        out[f"eval/selected_b{i}"] = _numpy(det["query_indices"], dtype)
    return out


def stage_arrays(trace, dtype, names, mode):
    """``{mode}/{name}``: the per-stage trace entries ``names`` stacked as ``[S, ...]``."""
    return {f"{mode}/{name}": _numpy(torch.stack(trace[name]), dtype) for name in names}


def loss_arrays(losses, trace, dtype):
    """``train/...`` arrays: weighted loss terms, their order, the official mean, matches and costs."""
    out = {f"train/loss/{name}": _numpy(value, dtype) for name, value in losses.items()}
    out["train/loss_names"] = np.array(list(losses))
    out["train/total_loss_mean"] = _numpy(reduce_losses(losses, "mean"), dtype)
    for key, records in trace.items():
        if not key.startswith("match/"):
            continue
        stage = key[len("match/"):]
        for i, match in enumerate(records[0]):
            out[f"train/match/{stage}_src_b{i}"] = _numpy(match.src, dtype)
            out[f"train/match/{stage}_tgt_b{i}"] = _numpy(match.tgt, dtype)
            out[f"train/cost/{stage}_b{i}"] = _numpy(match.cost, dtype)
    return out


def feature_arrays(trace, dtype, mode):
    """``{mode}/{backbone,mapped}_l{i}/{shape,chan_mean,full}`` of the detector's feature maps.

    ``shape`` is ``[B, C, T, H, W]`` (int64), ``chan_mean`` the ``[C]`` mean over (B, T, H, W)
    and ``full`` the whole map (the fixture's ``sample`` = ``full.ravel()[index]``).
    """
    out = {}
    for part in ("backbone", "mapped"):
        for i in range(NUM_LEVELS):
            value = trace[f"{part}_l{i}"][0]
            out[f"{mode}/{part}_l{i}/shape"] = np.array(value.shape, dtype=np.int64)
            out[f"{mode}/{part}_l{i}/chan_mean"] = _numpy(value.mean(dim=(0, 2, 3, 4)), dtype)
            out[f"{mode}/{part}_l{i}/full"] = _numpy(value, dtype)
    return out


def _tensor(arrays, name, dtype, device):
    return torch.from_numpy(arrays[name]).to(device=device, dtype=dtype)


def clip_sizes_and_targets(arrays, dtype, device):
    """``whwh`` ``[B, 4]`` and the per-clip ``gt_boxes`` ``[n_i, 4]`` / ``gt_labels`` ``[n_i, A]`` of
    ``inputs.npz``, B = ``batch_size``, all in ``dtype`` (the kit's float64 runs use float64 targets)."""
    batch_size = int(arrays["batch_size"])
    return {
        "whwh": _tensor(arrays, "whwh", dtype, device),
        "gt_boxes": [_tensor(arrays, f"gt_boxes_b{i}", dtype, device) for i in range(batch_size)],
        "gt_labels": [_tensor(arrays, f"gt_labels_b{i}", dtype, device) for i in range(batch_size)],
    }


class FixtureKind:
    """How to build, load, feed and run the model of one kind of fixture, and what to write.

    ``build(cfg)`` -> module whose state-dict keys are the fixture's;
    ``load(model, state_dict, fixture)`` copies the fixture's weights into it (all must fit);
    ``batch(arrays, dtype, device)`` -> the inputs from ``inputs.npz``;
    ``forward(model, batch, train, trace)`` -> detections (eval) or the loss dict (train);
    ``eval_outputs`` / ``train_outputs`` turn results and traces into the fixture's arrays;
    ``trace_skip``: prefixes of trace entries not needed (not kept in memory).
    """

    trace_skip = ()

    def eval_outputs(self, detections, trace, dtype):
        out = detection_arrays(detections, dtype)
        out.update({f"eval/{name}": _numpy(trace[name][0], dtype) for name in SINGLE_KEYS})
        out.update(stage_arrays(trace, dtype, STAGE_KEYS, "eval"))
        return out

    def train_outputs(self, losses, trace, dtype, model):
        return loss_arrays(losses, trace, dtype)


class DecoderFixture(FixtureKind):
    """The decoder alone: ``decoder(features, whwh, gt_boxes, gt_labels)``.

    It has no BatchNorm and no dropout, so train-mode per-stage tensors equal the eval ones and
    are written once (under ``eval/``, with the inside-stage ``detail/`` tensors).
    """

    # Per-stage entries written besides STAGE_KEYS.
    extra_stage_keys = ("q_s", "q_t") + tuple(
        f"detail/{name}" for name in (
            "pe", "attn_in_s", "attn_bias_s", "attn_in_t", "attn_bias_t", "q_s_attn", "q_t_attn", "offsets",
            "sample_points", "sampled", "spatial_feats", "temporal_feats", "q_s_mixed_prenorm",
            "q_t_mixed_prenorm", "q_s_mix", "q_t_mix",
        )
    )

    def build(self, cfg):
        from ..modeling.stmixer import build_stm_decoder

        return build_stm_decoder(cfg)

    def load(self, model, state_dict, fixture):
        result = model.load_state_dict(state_dict, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise FixtureError(
                f"{fixture}: weights do not fit the model built from config.yaml; missing in the weights: "
                f"{result.missing_keys[:10]} ({len(result.missing_keys)}), not in the model: "
                f"{result.unexpected_keys[:10]} ({len(result.unexpected_keys)})"
            )

    def batch(self, arrays, dtype, device):
        num_levels = sum(1 for name in arrays.files if name.startswith("features_l"))
        features = [_tensor(arrays, f"features_l{i}", dtype, device) for i in range(num_levels)]
        return {"features": features, **clip_sizes_and_targets(arrays, dtype, device)}

    def forward(self, model, batch, train, trace):
        if train:
            return model(batch["features"], batch["whwh"], batch["gt_boxes"], batch["gt_labels"], trace=trace)
        return model(batch["features"], batch["whwh"], trace=trace)

    def eval_outputs(self, detections, trace, dtype):
        out = super().eval_outputs(detections, trace, dtype)
        out.update(stage_arrays(trace, dtype, self.extra_stage_keys, "eval"))
        return out


class DetectorFixture(FixtureKind):
    """The whole detector: ``model(slow_video, fast_video, whwh, gt_boxes, gt_labels)``.

    Train mode is ``model.train()``: with ``MODEL.BACKBONE.FROZEN_BN`` the backbone keeps its
    BatchNorms in eval mode (as the official trainer), otherwise they use batch statistics.
    """

    trace_skip = ("detail/",)

    def build(self, cfg):
        from ..modeling import build_detector

        return build_detector(cfg)

    def load(self, model, state_dict, fixture):
        """Through the official-checkpoint path (``{"model": state_dict}``); every key must load."""
        contents = checkpoint_from_object({"model": state_dict}, f"{fixture} weights")
        try:
            report = load_weights(model, contents, log=None)
        except CheckpointError as e:
            raise FixtureError(f"{fixture}: the weights do not fit the model built from config.yaml: {e}") from None
        unused = set(state_dict) - set(report.loaded)
        untouched = set(model.state_dict()) - set(report.loaded)
        if unused or untouched:
            raise FixtureError(
                f"{fixture}: not every weight was loaded (weights not consumed: {sorted(unused)[:5]} ({len(unused)}); "
                f"model entries not loaded: {sorted(untouched)[:5]} ({len(untouched)}))\n{report.table()}"
            )

    def batch(self, arrays, dtype, device):
        """Videos decoded as ``(code - video_offset) / video_scale`` in float32, then cast (exact for the
        kit's 128 and 64); ``fast_video`` is None without ``fast_video_u8`` (single-pathway backbones)."""
        offset = torch.from_numpy(np.asarray(arrays["video_offset"], dtype=np.float32))
        scale = torch.from_numpy(np.asarray(arrays["video_scale"], dtype=np.float32))

        def video(name):
            if name not in arrays.files:
                return None
            codes = torch.from_numpy(arrays[name]).to(torch.float32)
            return ((codes - offset) / scale).to(device=device, dtype=dtype)

        return {"slow_video": video("slow_video_u8"), "fast_video": video("fast_video_u8"),
                **clip_sizes_and_targets(arrays, dtype, device)}

    def forward(self, model, batch, train, trace):
        videos = batch["slow_video"], batch["fast_video"], batch["whwh"]
        if train:
            return model(*videos, batch["gt_boxes"], batch["gt_labels"], trace=trace)
        return model(*videos, trace=trace)

    def eval_outputs(self, detections, trace, dtype):
        out = super().eval_outputs(detections, trace, dtype)
        out["eval/q_s_stage0"] = _numpy(trace["q_s"][0], dtype)
        out["eval/q_t_stage0"] = _numpy(trace["q_t"][0], dtype)
        out.update(feature_arrays(trace, dtype, "eval"))
        if dtype == torch.float32:
            out["eval/mapped_l3_full"] = out["eval/mapped_l3/full"]
        return out

    def train_outputs(self, losses, trace, dtype, model):
        out = super().train_outputs(losses, trace, dtype, model)
        if uses_batch_statistics(model):  # train forward differs from eval: write its tensors too
            out.update(stage_arrays(trace, dtype, STAGE_KEYS, "train"))
            out.update(feature_arrays(trace, dtype, "train"))
        return out


def uses_batch_statistics(model):
    """True when some BatchNorm of ``model`` is in training mode (normalizes with batch statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


FIXTURE_KINDS = {"decoder": DecoderFixture(), "detector": DetectorFixture()}


def detect_kind(fixture, arrays):
    """The fixture kind from its inputs: "decoder" (``features_l*``) or "detector" (``slow_video_u8``)."""
    if "features_l0" in arrays.files:
        return FIXTURE_KINDS["decoder"]
    if "slow_video_u8" in arrays.files:
        return FIXTURE_KINDS["detector"]
    raise FixtureError(f"{fixture}/inputs.npz has neither features_l0 (decoder) nor slow_video_u8 (detector)")


def build_uninitialized(kind, cfg, device, dtype):
    """``kind.build(cfg)`` in ``dtype`` on ``device`` without initializing it (built on the meta device,
    then given empty storage): the fixture's weights overwrite every state entry, so initialization
    would be wasted time and memory. Modules holding tensors outside their state dict are refused."""
    with torch.device("meta"):
        model = kind.build(cfg)
    persistent = set(model.state_dict())
    transient = [name for name, _ in model.named_buffers() if name not in persistent]
    if transient:
        raise FixtureError(f"the model holds buffers outside its state dict, which no weights set: {transient[:5]}")
    return model.to(dtype=dtype).to_empty(device=device)


def run_fixture(fixture, precision="f64", device="cpu", state_dict=None):
    """All outputs of our model on ``fixture`` as ``{"<precision>/eval/...": array, ...}``.

    Args:
        fixture: the fixture folder.
        precision: "f64" or "f32" (the model's and the inputs' dtype, and the output prefix).
        device: torch device to run on.
        state_dict: the fixture's float32 weights if already at hand (``fixture_state_dict(fixture)``;
            callers running several precisions build them once); built from the fixture when None.
    """
    fixture = Path(fixture)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    for module, is_family, run_family, family_error in FAMILY_FIXTURES:
        family = importlib.import_module(module, __package__)
        if getattr(family, is_family)(fixture):  # another family's layout (see that module's docstring)
            try:
                arrays = getattr(family, run_family)(fixture, dtype, device)
            except getattr(family, family_error) as e:
                raise FixtureError(str(e)) from None
            return {f"{precision}/{name}": value for name, value in arrays.items()}
    for name in ("config.yaml", "inputs.npz"):
        if not (fixture / name).is_file():
            raise FixtureError(f"{fixture}: missing {name}")
    cfg = fixture_config(fixture)
    with np.load(fixture / "inputs.npz") as arrays:
        kind = detect_kind(fixture, arrays)
        batch = kind.batch(arrays, dtype, torch.device(device))
    if state_dict is None:
        state_dict = fixture_state_dict(fixture)
    model = build_uninitialized(kind, cfg, device, dtype)
    kind.load(model, state_dict, fixture)  # every state entry is loaded (checked), casting exactly
    del state_dict

    out = {}
    with torch.no_grad():
        model.eval()
        trace = Trace(kind.trace_skip)
        detections = kind.forward(model, batch, train=False, trace=trace)
        out.update(kind.eval_outputs(detections, trace, dtype))
        model.train()  # a FROZEN_BN backbone keeps its BatchNorms in eval mode (official trainer)
        trace = Trace(kind.trace_skip)
        losses = kind.forward(model, batch, train=True, trace=trace)
        out.update(kind.train_outputs(losses, trace, dtype, model))
    return {f"{precision}/{name}": value for name, value in out.items()}


def main(argv=None):
    """Command-line entry point; returns the exit status (0 ok, 2 bad fixture)."""
    parser = argparse.ArgumentParser(description="Run a reference fixture through our model; write its outputs.")
    parser.add_argument("--fixture", required=True, type=Path, help="fixture folder (config.yaml, inputs.npz, weights)")
    parser.add_argument("--out", required=True, type=Path, help="output .npz")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="f64")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1, as the fixtures were made)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        arrays = run_fixture(args.fixture, args.precision, args.device)
    except FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with atomic_open(args.out, "wb") as f:
        np.savez_compressed(f, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
