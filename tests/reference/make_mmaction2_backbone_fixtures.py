"""Reference fixtures of mmaction2's AVA backbones (ResNet3dSlowOnly R50, with and without non-local
blocks, and ResNet3dSlowFast R50 8x8), for the ``mmaction2`` checkpoint format.

    python tests/reference/make_mmaction2_backbone_fixtures.py --mmaction2 /tmp/mm/src \\
        --out tests/reference/mmaction2/backbone --commit <sha>

``--mmaction2`` is a folder holding mmaction2's ``mmaction`` package (e.g. ``git archive`` of
open-mmlab/mmaction2); it runs in a throwaway environment with mmengine and mmcv-lite (see
``tests/reference/mmaction2/README.md``). Nothing of mmaction2 is copied here: the script builds
its backbones with the settings of the AVA configs, fills every state-dict entry with
``fake_value`` (deterministic, seeded, independent of torch's RNG), runs a tiny clip in float64 and
writes per case:

* ``<case>.json``: the mmaction2 constructor arguments, the seed, the manifest (every state-dict
  key of mmaction2's backbone in order, its shape, dtype and generator kind), the input shapes
  and the statistics of every output (sum, sum of squares, shape);
* ``<case>.npz``: the outputs (the last stage in full, earlier stages as a
  channel slice ``[:, ::CHANNEL_STEP]``).

The weights and the clip are not stored: ``fake_state_dict(manifest, seed)`` and
``fake_input(seed, shape)`` regenerate them bit for bit, in the test as here (numpy only).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

GEN_VERSION = "stmixer-mmaction2-backbone-v1"
CHANNEL_STEP = 16  # channel slice stored for stages 1..3

# kind -> (low, high) of a uniform distribution, or ("fan_in", gain): uniform with std gain*sqrt(2/fan_in).
KINDS = {
    "conv_weight": ("fan_in", 1.0),
    # theta / phi of the non-local blocks: kept small so the softmax is not one-hot.
    "nl_affinity_weight": ("fan_in", 0.05),
    "bias": (-0.1, 0.1),
    "bn_weight": (0.5, 1.0),
    "bn_bias": (-0.1, 0.1),
    "bn_mean": (-0.1, 0.1),
    "bn_var": (0.5, 2.0),
    "counter": "counter",
}

# mmaction2 constructor arguments of the AVA configs (configs/detection/slowonly, slowfast).
SLOWONLY_ARGS = dict(
    depth=50, pretrained=None, pretrained2d=False, lateral=False, num_stages=4, conv1_kernel=(1, 7, 7),
    conv1_stride_t=1, pool1_stride_t=1, spatial_strides=(1, 2, 2, 1), out_indices=(0, 1, 2, 3),
)
SLOWONLY_NL_ARGS = dict(
    SLOWONLY_ARGS, norm_cfg=dict(type="BN3d", requires_grad=True),
    non_local=((0, 0, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 0, 0)),
    non_local_cfg=dict(sub_sample=True, use_scale=True, norm_cfg=dict(type="BN3d", requires_grad=True),
                       mode="embedded_gaussian"),
)
SLOWFAST_ARGS = dict(
    resample_rate=4, speed_ratio=4, channel_ratio=8, pretrained=None,
    slow_pathway=dict(type="resnet3d", depth=50, pretrained=None, lateral=True, conv1_kernel=(1, 7, 7),
                      dilations=(1, 1, 1, 1), conv1_stride_t=1, pool1_stride_t=1, inflate=(0, 0, 1, 1),
                      spatial_strides=(1, 2, 2, 1), fusion_kernel=7),
    fast_pathway=dict(type="resnet3d", depth=50, pretrained=None, lateral=False, base_channels=8,
                      conv1_kernel=(5, 7, 7), conv1_stride_t=1, pool1_stride_t=1, spatial_strides=(1, 2, 2, 1)),
)
SLOWFAST_4X16_ARGS = dict(
    SLOWFAST_ARGS, resample_rate=8, speed_ratio=8,
    slow_pathway={k: v for k, v in SLOWFAST_ARGS["slow_pathway"].items() if k != "fusion_kernel"},
)
CASES = {
    # name: (class, args, seed, input shape [B, 3, T, H, W])
    "slowonly_r50_4x16": ("ResNet3dSlowOnly", SLOWONLY_ARGS, 0, (1, 3, 4, 32, 32)),
    "slowonly_r50_nl_4x16": ("ResNet3dSlowOnly", SLOWONLY_NL_ARGS, 1, (1, 3, 4, 32, 32)),
    "slowfast_r50_8x8": ("ResNet3dSlowFast", SLOWFAST_ARGS, 2, (1, 3, 16, 32, 32)),
    # the r101 8x8 row; the SlowFast 4x16 rows (alpha 8, default fusion kernel 5). 16x16 inputs keep them small.
    "slowonly_r101_8x8": ("ResNet3dSlowOnly", dict(SLOWONLY_ARGS, depth=101), 3, (1, 3, 4, 16, 16)),
    "slowfast_r50_4x16": ("ResNet3dSlowFast", SLOWFAST_4X16_ARGS, 4, (1, 3, 32, 16, 16)),
}


def kind_of(key, shape):
    """Generator kind of an mmaction2 backbone state-dict entry."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return "counter"
    if ".bn." in f".{key}":
        return {"weight": "bn_weight", "bias": "bn_bias", "running_mean": "bn_mean", "running_var": "bn_var"}[leaf]
    if leaf == "bias":
        return "bias"
    if leaf == "weight" and len(shape) == 5:
        parts = key.split(".")
        if "non_local_block" in parts and ("theta" in parts or "phi" in parts):
            return "nl_affinity_weight"
        return "conv_weight"
    raise ValueError(f"no generator kind for {key} {shape}")


def fake_value(seed, key, shape, kind):
    """Deterministic float64 (int64 for counters) array for one entry: uniform doubles from numpy's PCG64
    bit generator (raw >> 11, times 2**-53) seeded with sha256("<GEN_VERSION>|<seed>|<key>"), mapped by
    ``kind``."""
    digest = hashlib.sha256(f"{GEN_VERSION}|{seed}|{key}".encode()).digest()
    bitgen = np.random.PCG64(int.from_bytes(digest[:16], "little"))
    n = int(np.prod(shape, dtype=np.int64))
    raw = bitgen.random_raw(max(n, 1)).astype(np.uint64)
    u = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
    spec = KINDS[kind]
    if spec == "counter":
        return np.asarray(1000 + int(raw[0] % 1000), dtype=np.int64).reshape(shape)
    if spec[0] == "fan_in":
        fan_in = int(np.prod(shape[1:]))
        half = spec[1] * np.sqrt(2.0 / fan_in) * np.sqrt(3.0)
        low, high = -half, half
    else:
        low, high = spec
    return (low + (high - low) * u[:n]).reshape(shape)


def fake_state_dict(manifest, seed):
    """``{mmaction2 backbone key: numpy array}`` for a case's manifest (list of ``[key, shape, dtype, kind]``)."""
    return {key: fake_value(seed, key, tuple(shape), kind) for key, shape, _, kind in manifest}


def fake_input(seed, shape):
    """The input clip ``[B, 3, T, H, W]`` float64 of a case."""
    return fake_value(seed, "input", tuple(shape), "bn_mean") * 10.0


def output_stats(value):
    return {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value * value).sum())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmaction2", required=True, help="folder holding mmaction2's mmaction package")
    parser.add_argument("--out", required=True)
    parser.add_argument("--commit", default="unknown", help="mmaction2 commit, recorded in the fixtures")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(args.mmaction2).resolve()))
    import torch
    from mmaction.models.backbones.resnet3d_slowfast import ResNet3dSlowFast
    from mmaction.models.backbones.resnet3d_slowonly import ResNet3dSlowOnly
    import mmcv
    import mmengine

    classes = {"ResNet3dSlowOnly": ResNet3dSlowOnly, "ResNet3dSlowFast": ResNet3dSlowFast}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, (cls_name, kwargs, seed, in_shape) in CASES.items():
        model = classes[cls_name](**kwargs).double()
        model.eval()  # (mmaction2's ResNet3d.train does not return the module)
        state = model.state_dict()
        manifest = [[k, list(v.shape), str(v.dtype).replace("torch.", ""), kind_of(k, tuple(v.shape))]
                    for k, v in state.items()]
        values = fake_state_dict(manifest, seed)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in values.items()}, strict=True)
        for k, v in model.state_dict().items():  # loaded exactly
            assert np.array_equal(v.numpy(), values[k]), k
        video = fake_input(seed, in_shape)
        with torch.no_grad():
            result = model(torch.from_numpy(video))
        arrays = {}  # the clip is regenerated from the seed (fake_input); its statistics are in stats
        if cls_name == "ResNet3dSlowFast":
            slow, fast = (r.numpy() for r in result)
            arrays["out/slow"], arrays["out/fast"] = slow, fast
            stats = {"out/slow": output_stats(slow), "out/fast": output_stats(fast)}
            # mmaction2 picks the pathways' frames with nearest interpolation: these are plain strides.
            x = torch.from_numpy(video)
            r, s = kwargs["resample_rate"], kwargs["speed_ratio"]
            for rate in (r, r // s):
                picked = torch.nn.functional.interpolate(x, mode="nearest", scale_factor=(1.0 / rate, 1.0, 1.0))
                assert torch.equal(picked, x[:, :, ::rate]), rate
        else:
            stats = {}
            for i, level in enumerate(r.numpy() for r in result):
                stats[f"out/level{i}"] = output_stats(level)
                arrays[f"out/level{i}"] = level if i == 3 else level[:, ::CHANNEL_STEP]
        stats["input/video"] = output_stats(video)
        meta = {
            "case": name, "class": cls_name, "kwargs": kwargs, "seed": seed, "input_shape": list(in_shape),
            "gen_version": GEN_VERSION, "channel_step": CHANNEL_STEP, "stats": stats, "manifest": manifest,
            "versions": {"mmaction2_commit": args.commit, "torch": torch.__version__, "mmcv": mmcv.__version__,
                         "mmengine": mmengine.__version__, "numpy": np.__version__},
        }
        (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        np.savez_compressed(out / f"{name}.npz", **arrays)
        print(name, len(manifest), "keys;", {k: v["shape"] for k, v in stats.items()})


if __name__ == "__main__":
    main()
