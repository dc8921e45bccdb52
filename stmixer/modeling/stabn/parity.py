"""Run our ST-ABN on a fixture made by ``tests/reference/make_stabn_fixtures.py`` (the official code).

A fixture folder holds ``stabn.json`` (seed, sizes, every official state key with its shape and
float64 sum, labels, gradient sample indices), ``config.yaml`` (our config of the same model) and
``expected.npz``. The weights and the input clip are not stored: they are regenerated here from the
seed with the fixture's rule (``seeded_tensor`` / ``seeded_inputs``), checked against the stored
sums, converted to our keys (``convert.official_key``) and loaded. ``run_stabn_fixture`` returns
the outputs under ``expected.npz``'s names (``python -m stmixer.tools.reference_parity`` writes
them prefixed with the precision).
"""

import json
import zlib
from pathlib import Path

import numpy as np
import torch

from .convert import official_key


class STABNFixtureError(RuntimeError):
    """An ST-ABN fixture folder that is incomplete or does not fit the model."""


def is_stabn_fixture(fixture):
    """True when ``fixture`` is an ST-ABN fixture folder (it holds ``stabn.json``)."""
    return (Path(fixture) / "stabn.json").is_file()


def seeded_tensor(key, shape, seed):
    """The float64 value of official state entry ``key`` (the fixture's weight rule): from
    ``numpy.random.default_rng([seed, crc32(key)])``, >= 2-D weights N(0, 1) / sqrt(fan_in), 1-D weights
    1 + 0.1 N, ``bias`` / ``running_mean`` 0.1 N, ``running_var`` U(0.5, 1.5)."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    if leaf in ("bias", "running_mean"):
        return 0.1 * rng.standard_normal(shape)
    if len(shape) == 1:
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))


def seeded_inputs(manifest):
    """The fixture's clip ``[B, 3, T, H, W]`` (float64) and labels ``[B]``."""
    rng = np.random.default_rng([manifest["seed"], 1])
    b, t, s = manifest["batch"], manifest["frames"], manifest["size"]
    video = rng.standard_normal((b, 3, t, s, s))
    labels = rng.integers(0, manifest["classes"], size=b)
    return video, labels


def fixture_state_dict(manifest):
    """Our float64 state dict of the fixture's official weights (regenerated, sums checked, keys converted)."""
    state = {}
    for key, shape, total in manifest["keys"]:
        value = seeded_tensor(key, tuple(shape), manifest["seed"])
        if not np.isclose(value.sum(), total, rtol=1e-12, atol=1e-9):
            raise STABNFixtureError(f"regenerated weight {key} does not match the fixture (sum {value.sum()} "
                                    f"vs {total}): another weight rule or NumPy stream")
        ours = official_key(key)
        if ours is not None:
            state[ours] = torch.from_numpy(value)
    return state


def build_fixture_model(fixture, dtype=torch.float64, device="cpu"):
    """(our model with the fixture's weights in ``dtype``, manifest, video, labels)."""
    from ...config import load_config
    from ..build import build_detector

    fixture = Path(fixture)
    for name in ("stabn.json", "config.yaml"):
        if not (fixture / name).is_file():
            raise STABNFixtureError(f"{fixture}: missing {name}")
    manifest = json.loads((fixture / "stabn.json").read_text())
    cfg = load_config(str(fixture / "config.yaml"), freeze=False)
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    model = build_detector(cfg)
    state = fixture_state_dict(manifest)
    ours = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != ours:
        raise STABNFixtureError(f"{fixture}: weights do not fit the model: missing {sorted(ours - set(state))[:5]}, "
                                f"unexpected {sorted(set(state) - ours)[:5]}")
    model.to(device=device, dtype=dtype)  # before loading: float64 weights stay exact
    model.load_state_dict(state, strict=False)
    video, labels = seeded_inputs(manifest)
    if not np.isclose(video.sum(), manifest["input_sum"], rtol=1e-12, atol=1e-9):
        raise STABNFixtureError(f"{fixture}: regenerated input does not match the fixture")
    return (model, manifest, torch.from_numpy(video).to(device=device, dtype=dtype),
            torch.from_numpy(labels).to(device))


def run_stabn_fixture(fixture, dtype=torch.float64, device="cpu"):
    """Our outputs on the fixture, as float64 arrays under ``expected.npz``'s names: ``{eval,train}/``
    ``logits``, ``att_logits``, ``spatial_attention``, ``temporal_attention``; ``train/loss_cls``,
    ``train/loss_att``, ``train/grad/<parameter>`` (the gradient at the fixture's flat indices) and
    ``train/running_{mean,var}/<BatchNorm>`` (after the training step).
    Train mode: BatchNorm with batch statistics, dropout off (as the fixture was made)."""
    model, manifest, video, labels = build_fixture_model(fixture, dtype, device)
    captured = {}
    model.head.register_forward_hook(lambda m, i, o: captured.__setitem__("head", o))

    def arrays(prefix):
        o = captured["head"]
        return {f"{prefix}/{name}": o[name].detach().double().cpu().numpy()
                for name in ("logits", "att_logits", "spatial_attention", "temporal_attention")}

    out = {}
    model.eval()
    with torch.no_grad():
        model(video)
    out.update(arrays("eval"))
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.enable_grad():
        losses = model(video, labels=labels)
        sum(losses.values()).backward()
    out.update(arrays("train"))
    out["train/loss_cls"] = np.asarray(losses["loss_cls"].item())
    out["train/loss_att"] = np.asarray(losses["loss_att"].item())
    modules = dict(model.named_modules())
    for name in manifest.get("bn_layers", {}):
        out[f"train/running_mean/{name}"] = modules[name].running_mean.detach().double().cpu().numpy()
        out[f"train/running_var/{name}"] = modules[name].running_var.detach().double().cpu().numpy()
    params = dict(model.named_parameters())
    for name, index in manifest["grad_index"].items():
        out[f"train/grad/{name}"] = params[name].grad.detach().double().cpu().numpy().reshape(-1)[np.asarray(index)]
    return out
