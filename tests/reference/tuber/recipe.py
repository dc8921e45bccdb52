"""Seed recipe of the TubeR-family fixtures: regenerates their weights and clips bit for bit (numpy only).

Used by ``tests/reference/make_query_detector_fixtures.py`` (with the official code) and by the
tests (with ours). Every value is a function of ``(GEN_VERSION, seed, name)`` only: uniform
doubles from numpy's PCG64 bit generator seeded with ``sha256("<GEN_VERSION>|<seed>|<name>")``
(``raw >> 11`` times ``2**-53``), mapped by a kind, then rounded to float32 (the Caffe2 weights
are float32, so a float32 ``.mat`` / ``.pkl`` holds them exactly).
"""

import hashlib

import numpy as np

GEN_VERSION = "stmixer-tuber-v1"

# kind -> (low, high) of a uniform distribution, or ("fan_in", gain): uniform with std gain*sqrt(2/fan_in).
KINDS = {
    "conv_weight": ("fan_in", 1.0),
    "fc_weight": (-0.01, 0.01),
    "bias": (-0.1, 0.1),
    "bn_weight": (0.5, 1.0),
    "bn_bias": (-0.1, 0.1),
    "bn_mean": (-0.1, 0.1),
    "bn_var": (0.5, 2.0),
    "input": (-1.0, 1.0),
}


def fake_value(seed, name, shape, kind):
    """float64 array of ``shape`` (values representable in float32) for one named entry."""
    digest = hashlib.sha256(f"{GEN_VERSION}|{seed}|{name}".encode()).digest()
    bitgen = np.random.PCG64(int.from_bytes(digest[:16], "little"))
    n = int(np.prod(shape, dtype=np.int64))
    raw = bitgen.random_raw(max(n, 1)).astype(np.uint64)
    u = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    spec = KINDS[kind]
    if spec[0] == "fan_in":
        fan_in = int(np.prod(shape[1:]))
        half = spec[1] * np.sqrt(2.0 / fan_in) * np.sqrt(3.0)
        low, high = -half, half
    else:
        low, high = spec
    return (low + (high - low) * u[:n]).reshape(shape).astype(np.float32).astype(np.float64)


def blob_kind(name, shape):
    """Generator kind of a Caffe2 ir-CSN blob (``*_w`` conv / fc weight, ``*_s|_b|_rm|_riv`` BN, fc bias)."""
    if name.startswith("last_out_"):
        return "fc_weight" if name.endswith("_w") else "bias"
    if name.endswith("_w"):
        return "conv_weight"
    for suffix, kind in (("_s", "bn_weight"), ("_rm", "bn_mean"), ("_riv", "bn_var"), ("_b", "bn_bias")):
        if name.endswith(suffix):
            return kind
    raise ValueError(f"no generator kind for blob {name} {shape}")


def fake_blobs(manifest, seed):
    """``{blob name: float64 array}`` for a manifest (list of ``[name, shape]``; shapes as in PyTorch,
    BatchNorm vectors 1-D)."""
    return {name: fake_value(seed, name, tuple(shape), blob_kind(name, shape)) for name, shape in manifest}


def fake_input(seed, shape):
    """The input clip ``[B, 3, T, H, W]`` (float64)."""
    return fake_value(seed, "input", tuple(shape), "input")


def grad_weight(seed, shape):
    """Weights of the scalar ``sum(layer4 * w)`` whose gradients the fixtures store."""
    return fake_value(seed, "grad_weight", tuple(shape), "input")


def tuber_param_kind(name, shape):
    """Generator kind of a TubeR state-dict entry (official names; ``backbone.body.*`` is the CSN)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return "bn_mean"
    if leaf == "running_var":
        return "bn_var"
    if name.endswith(("query_embed.weight", "query_pool.weight")):
        return "input"
    if len(shape) >= 2:
        return "conv_weight"
    if leaf == "weight":  # BatchNorm / LayerNorm scales
        return "bn_weight"
    return "bias"


def tuber_state(seed, entries):
    """``{name: float64 array}`` for ``[[name, shape]]`` TubeR state-dict entries (no num_batches_tracked)."""
    return {name: fake_value(seed, name, tuple(shape), tuber_param_kind(name, shape)) for name, shape in entries}


def tuber_targets(seed, counts, num_actions):
    """Ground truth per clip: ``(boxes [n, 4] normalized cxcywh, labels [n, A] multi-hot float64)``."""
    out = []
    for i, n in enumerate(counts):
        u = fake_value(seed, f"target_boxes_{i}", (n, 4), "input") * 0.5 + 0.5  # [0, 1]
        w = 0.2 + 0.5 * u[:, 2]
        h = 0.2 + 0.5 * u[:, 3]
        cx = w / 2 + (1 - w) * u[:, 0]
        cy = h / 2 + (1 - h) * u[:, 1]
        boxes = np.stack([cx, cy, w, h], axis=1).astype(np.float32).astype(np.float64)
        labels = (fake_value(seed, f"target_labels_{i}", (n, num_actions), "input") > 0.9).astype(np.float64)
        labels[np.arange(n), np.arange(n) % num_actions] = 1.0
        out.append((boxes, labels))
    return out
