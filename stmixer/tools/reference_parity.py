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
never reads ``expected.npz``; comparing is the caller's job.

Fixture kinds are told apart by their inputs. Implemented: "decoder" (inputs
``features_l*``; the decoder alone, keys without ``stm_head.``). A detector
kind (inputs ``slow_video_u8``) plugs in as another ``FixtureKind`` whose
``build``/``batch``/``forward`` call the full detector; ``eval_arrays`` and
``train_arrays`` already produce the shared decoder outputs.

Runs on the CPU with 1 thread by default, as the fixtures were generated, so
float32 results are reproducible across machines (``--threads`` changes it).
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..config import get_cfg
from ..modeling.losses import reduce_losses
from ..utils.env import find_shared_dir
from ..utils.io import atomic_open

PRECISIONS = {"f32": torch.float32, "f64": torch.float64}
# Per-stage trace entries written as [S, ...] arrays under eval/.
STAGE_KEYS = ("cls_logits", "action_logits", "delta_xyzr", "xyzr", "boxes")
# Trace entries recorded once per forward, written as they are under eval/.
SINGLE_KEYS = ("person_scores", "init_xyzr", "init_q_s", "init_q_t")


class FixtureError(RuntimeError):
    """A fixture folder that is incomplete or does not fit the model."""


def load_config(fixture):
    """Our default config with ``fixture/config.yaml`` merged on top."""
    cfg = get_cfg()
    cfg.merge_from_file(str(fixture / "config.yaml"))
    return cfg


def _load_recipe(fixture):
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
    raise FixtureError(f"{fixture}: weights.json asks for recipe weights but there is no {candidates[0]} (nor in the kit)")


def load_weights(fixture):
    """The fixture's float32 state dict: ``weights.pth``, or the recipe over ``manifest.json``."""
    if (fixture / "weights.pth").is_file():
        return torch.load(fixture / "weights.pth", map_location="cpu", weights_only=True)
    if (fixture / "weights.json").is_file() and (fixture / "manifest.json").is_file():
        info = json.loads((fixture / "weights.json").read_text())
        recipe = _load_recipe(fixture)
        return recipe.build_state_dict(fixture / info.get("manifest", "manifest.json"), salt=info.get("salt", ""))
    raise FixtureError(f"{fixture}: no weights.pth and no weights.json + manifest.json")


def load_strict(model, state_dict, fixture):
    """Load every key of the fixture into ``model``; FixtureError listing any mismatch."""
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FixtureError(
            f"{fixture}: weights do not fit the model built from config.yaml; missing in the weights: "
            f"{result.missing_keys[:10]} ({len(result.missing_keys)}), not in the model: "
            f"{result.unexpected_keys[:10]} ({len(result.unexpected_keys)})"
        )


def _numpy(value, dtype):
    """Float tensors -> numpy in ``dtype``; integer tensors -> int64."""
    value = torch.as_tensor(value).detach().cpu()
    if value.is_floating_point():
        return value.to(dtype).numpy()
    return value.to(torch.int64).numpy()


def eval_arrays(detections, trace, dtype, stage_keys=STAGE_KEYS):
    """``eval/...`` arrays from the decoder's detections and its eval-mode trace."""
    out = {}
    for i, det in enumerate(detections):
        out[f"eval/scores_b{i}"] = _numpy(det["scores"], dtype)
        out[f"eval/boxes_b{i}"] = _numpy(det["boxes"], dtype)
        out[f"eval/selected_b{i}"] = _numpy(det["query_indices"], dtype)
    for name in SINGLE_KEYS:
        out[f"eval/{name}"] = _numpy(trace[name][0], dtype)
    for name in stage_keys:
        out[f"eval/{name}"] = _numpy(torch.stack(trace[name]), dtype)
    return out


def train_arrays(losses, trace, dtype):
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


class FixtureKind:
    """How to build, feed and run the model of one kind of fixture.

    ``build(cfg)`` -> module whose state-dict keys are the fixture's;
    ``batch(arrays, dtype, device)`` -> the inputs from ``inputs.npz``;
    ``forward(model, batch, train, trace)`` -> detections (eval) or the loss dict (train);
    ``prepare_train(model, cfg)`` sets the train-mode module states the official trainer uses;
    ``eval_stage_keys`` are the per-stage trace entries written under ``eval/``.
    """

    eval_stage_keys = STAGE_KEYS

    def prepare_train(self, model, cfg):
        model.train()


class DecoderFixture(FixtureKind):
    """The decoder alone: ``decoder(features, whwh, gt_boxes, gt_labels)``."""

    eval_stage_keys = STAGE_KEYS + ("q_s", "q_t") + tuple(
        f"detail/{name}" for name in (
            "pe", "attn_in_s", "attn_bias_s", "attn_in_t", "attn_bias_t", "q_s_attn", "q_t_attn", "offsets",
            "sample_points", "sampled", "spatial_feats", "temporal_feats", "q_s_mixed_prenorm",
            "q_t_mixed_prenorm", "q_s_mix", "q_t_mix",
        )
    )

    def build(self, cfg):
        from ..modeling.stmixer import build_stm_decoder

        return build_stm_decoder(cfg)

    def batch(self, arrays, dtype, device):
        num_levels = sum(1 for name in arrays.files if name.startswith("features_l"))
        batch_size = int(arrays["batch_size"])

        def tensor(name):
            return torch.from_numpy(arrays[name]).to(device=device, dtype=dtype)

        return {
            "features": [tensor(f"features_l{i}") for i in range(num_levels)],
            "whwh": tensor("whwh"),
            "gt_boxes": [tensor(f"gt_boxes_b{i}") for i in range(batch_size)],
            "gt_labels": [tensor(f"gt_labels_b{i}") for i in range(batch_size)],
        }

    def forward(self, model, batch, train, trace):
        if train:
            return model(batch["features"], batch["whwh"], batch["gt_boxes"], batch["gt_labels"], trace=trace)
        return model(batch["features"], batch["whwh"], trace=trace)


FIXTURE_KINDS = {"decoder": DecoderFixture()}


def detect_kind(fixture, arrays):
    """The fixture kind from its inputs: "decoder" (``features_l*``) or "detector" (``slow_video_u8``)."""
    if "features_l0" in arrays.files:
        kind = "decoder"
    elif "slow_video_u8" in arrays.files:
        kind = "detector"
    else:
        raise FixtureError(f"{fixture}/inputs.npz has neither features_l0 (decoder) nor slow_video_u8 (detector)")
    if kind not in FIXTURE_KINDS:
        raise FixtureError(f"{fixture}: {kind} fixtures are not supported by this version of the parity tool")
    return FIXTURE_KINDS[kind]


def run_fixture(fixture, precision="f64", device="cpu"):
    """All outputs of our model on ``fixture`` as ``{"<precision>/eval/...": array, ...}``."""
    fixture = Path(fixture)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    for name in ("config.yaml", "inputs.npz"):
        if not (fixture / name).is_file():
            raise FixtureError(f"{fixture}: missing {name}")
    cfg = load_config(fixture)
    with np.load(fixture / "inputs.npz") as arrays:
        kind = detect_kind(fixture, arrays)
        batch = kind.batch(arrays, dtype, torch.device(device))
    model = kind.build(cfg)
    load_strict(model, load_weights(fixture), fixture)
    model.to(device=device, dtype=dtype)

    out = {}
    with torch.no_grad():
        model.eval()
        trace = {}
        detections = kind.forward(model, batch, train=False, trace=trace)
        out.update(eval_arrays(detections, trace, dtype, kind.eval_stage_keys))
        kind.prepare_train(model, cfg)
        trace = {}
        losses = kind.forward(model, batch, train=True, trace=trace)
        out.update(train_arrays(losses, trace, dtype))
    return {f"{precision}/{name}": value for name, value in out.items()}


def main(argv=None):
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
