"""Reference fixtures of the official TubeR code (amazon-science/tubelet-transformer) for the TubeR family.

    python tests/reference/make_query_detector_fixtures.py --tuber /tmp/csn/src \\
        --out tests/reference/tuber --commit <sha> [--sections csn]

``--tuber`` is a checkout (``git archive``) of the official repository; its modules are loaded by
path (nothing of it is copied here). It needs torch, numpy and scipy (the official ``.mat``
loader); run it in a throwaway environment (tests/reference/tuber/README.md).

Section ``csn`` (the ir-CSN backbones, ``models/backbones/ir_CSN_{50,152}.py``), per case:

1. build the official ``ResNeXt`` as TubeR's ``build_CSN`` does (BatchNorm, ``use_affine=False``,
   ``last_stride=False``), list its Caffe2 blob names from the architecture (stem, then every
   block ``comp_{n}`` and the shortcuts ``shortcut_projection_{n}``, as the official loader and
   VMZ's converters name them) with the classifier and training metadata of a real file;
2. write them as a float32 MATLAB ``.mat`` (values from ``tuber/recipe.py``) and load it with
   the official ``load_weights`` (which checks every name and shape); check every parameter and
   BatchNorm buffer got its blob; record which parameters TubeR's ``tune_point=4`` freezes;
3. in float64: eval-mode outputs of layer1..layer4 on the recipe clip, gradients of a few
   parameters of ``sum(layer4 * w)``, and one training-mode forward (batch statistics, running
   statistics updated with momentum 0.1).

Section ``tuber`` (the whole TubeR detector in float64): ``query_fixtures_tuber.py``.
Section ``seqformer`` (the TubeR fork's SeqFormer, ``--fork``): ``query_fixtures_seqformer.py``.

Section ``tuber_jhmdb`` (TubeR's JHMDB / UCF101-24 model in float64): ``query_fixtures_tuber_jhmdb.py``.

Writes ``csn/<case>.json`` (manifest of blob names and shapes, the official state-dict keys, the
frozen parameters, statistics of every output, versions) and ``csn/<case>.npz`` (layer4 in full,
layer1..3 as channel slices ``[:, ::CHANNEL_STEP]``, the gradients, the training-mode results).
"""

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

CHANNEL_STEP = 16
HERE = Path(__file__).resolve().parent
GRAD_PARAMS = ("conv1.weight", "layer1.0.conv3.weight", "layer3.0.down_sample.1.weight", "layer4.2.conv3.weight",
               "layer4.2.bn4.bias")
TRAIN_BUFFERS = ("bn1.running_mean", "bn1.running_var", "layer4.2.bn4.running_mean", "layer4.2.bn4.running_var")
CASES = {
    # name: (depth, seed, input shape [B, 3, T, H, W], gradients and training-mode forward)
    "csn50": (50, 0, (1, 3, 8, 64, 64), True),
    "csn152": (152, 1, (1, 3, 8, 32, 32), False),
}


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blob_manifest(model):
    """``[[blob name, shape]]`` of the official model's parameters and BatchNorm buffers, derived from
    the architecture (global block counter ``n`` over layer1..layer4)."""
    manifest = [["conv1_w", list(model.conv1.weight.shape)]]
    manifest += [[f"conv1_spatbn_relu_{leaf}", [64]] for leaf in ("s", "b", "rm", "riv")]
    n = 0
    for s in range(1, 5):
        for block in getattr(model, f"layer{s}"):
            for j in (1, 3, 4):
                conv, bn = getattr(block, f"conv{j}"), getattr(block, f"bn{j}")
                manifest.append([f"comp_{n}_conv_{j}_w", list(conv.weight.shape)])
                manifest += [[f"comp_{n}_spatbn_{j}_{leaf}", [bn.num_features]] for leaf in ("s", "b", "rm", "riv")]
            if block.down_sample is not None:
                conv, bn = block.down_sample[0], block.down_sample[1]
                manifest.append([f"shortcut_projection_{n}_w", list(conv.weight.shape)])
                manifest += [[f"shortcut_projection_{n}_spatbn_{leaf}", [bn.num_features]]
                             for leaf in ("s", "b", "rm", "riv")]
            n += 1
    return manifest


def extra_blobs(seed):
    """What a real VMZ file holds besides the backbone: classifier, training metadata, a momentum blob."""
    from recipe import fake_value  # noqa: E402  (tuber/recipe.py, on sys.path)

    return {
        "last_out_L400_w": fake_value(seed, "last_out_L400_w", (400, 2048), "fc_weight"),
        "last_out_L400_b": fake_value(seed, "last_out_L400_b", (400,), "bias"),
        "lr": np.asarray([[0.001]]),
        "model_iter": np.asarray([[12345.0]]),
        "conv1_w_momentum": fake_value(seed, "conv1_w_momentum", (64, 3, 3, 7, 7), "bias"),
    }


def stats(value):
    return {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value * value).sum())}


def run_csn_case(official, name, depth, seed, in_shape, full, out_dir, versions):
    import scipy.io
    import torch
    from recipe import GEN_VERSION, fake_blobs, fake_input, grad_weight

    module = official[depth]
    model = module.build_model(n_classes=400, load_pretrain=False, use_affine=False, last_stride=False)
    manifest = blob_manifest(model)
    blobs = fake_blobs(manifest, seed)
    extras = extra_blobs(seed)
    with tempfile.TemporaryDirectory() as tmp:
        mat = Path(tmp) / f"{name}.mat"
        scipy.io.savemat(mat, {k: v.astype(np.float32) for k, v in {**blobs, **extras}.items()})
        module.load_weights(model, pretrain_path=str(mat), load_fc=False, use_affine=False, tune_point=4)
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    for p in model.parameters():
        p.requires_grad_(True)
    # every parameter / BN buffer received its blob (the official loader copies in float32)
    state = model.state_dict()
    loaded = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and not k.startswith("out_fc.")}
    flat = {k: v.double().numpy().ravel() for k, v in loaded.items()}
    blob_sets = {b: blobs[b].ravel() for b, _ in manifest}
    unmatched = [k for k, v in flat.items() if not any(v.shape == b.shape and np.array_equal(v, b)
                                                       for b in blob_sets.values())]
    assert not unmatched, unmatched[:5]
    model = model.double()
    model.eval()
    video = torch.from_numpy(fake_input(seed, in_shape))
    arrays, out_stats = {}, {"input/video": stats(video.numpy())}
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(video))))
        for s in range(1, 5):
            x = getattr(model, f"layer{s}")(x)
            level = x.numpy()
            out_stats[f"eval/layer{s}"] = stats(level)
            arrays[f"eval/layer{s}"] = level if s == 4 else level[:, ::CHANNEL_STEP]
        full_out, _ = model(video)
        assert torch.equal(full_out, x)
    if full:
        out, _ = model(video)
        loss = (out * torch.from_numpy(grad_weight(seed, tuple(out.shape)))).sum()
        loss.backward()
        params = dict(model.named_parameters())
        for p in GRAD_PARAMS:
            arrays[f"grad/{p}"] = params[p].grad.numpy()
            out_stats[f"grad/{p}"] = stats(params[p].grad.numpy())
        out_stats["grad/loss"] = float(loss.detach())
        model.train()
        with torch.no_grad():
            out, _ = model(video)
        arrays["train/layer4"] = out.numpy()
        out_stats["train/layer4"] = stats(out.numpy())
        buffers = model.state_dict()
        for b in TRAIN_BUFFERS:
            arrays[f"train/{b}"] = buffers[b].numpy()
        out_stats["train/bn1.num_batches_tracked"] = int(buffers["bn1.num_batches_tracked"])
    meta = {
        "case": name, "depth": depth, "seed": seed, "input_shape": list(in_shape), "gen_version": GEN_VERSION,
        "channel_step": CHANNEL_STEP, "official_call": "build_model(n_classes=400, load_pretrain=False, "
        "use_affine=False, last_stride=False); load_weights(model, mat, load_fc=False, use_affine=False, tune_point=4)",
        "manifest": manifest, "extra_blobs": {k: list(v.shape) for k, v in extras.items()},
        "official_state_dict_keys": list(state), "frozen_by_tune_point_4": frozen, "stats": out_stats,
        "grad_params": list(GRAD_PARAMS) if full else [], "train_buffers": list(TRAIN_BUFFERS) if full else [],
        "versions": versions,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=0) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    print(name, len(manifest), "blobs;", {k: v["shape"] for k, v in out_stats.items() if isinstance(v, dict)})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuber", help="checkout of amazon-science/tubelet-transformer (sections csn, ...)")
    parser.add_argument("--fork", help="checkout of jinsingsangsung/tuber at 50cd09b^ (section deformable)")
    parser.add_argument("--fork-commit", default="unknown", help="fork commit, recorded in the deformable fixtures")
    parser.add_argument("--out", required=True, help="output folder (tests/reference/tuber)")
    parser.add_argument("--commit", default="unknown", help="official commit, recorded in the fixtures")
    parser.add_argument("--sections", nargs="+", default=["csn", "tuber", "tuber_jhmdb"],
                        choices=["csn", "tuber", "tuber_jhmdb", "deformable", "seqformer"])
    args = parser.parse_args(argv)
    if {"deformable", "seqformer"} & set(args.sections) and not args.fork:
        parser.error("--sections deformable / seqformer need --fork")
    if set(args.sections) - {"deformable", "seqformer"} and not args.tuber:
        parser.error("--tuber is required for sections other than deformable / seqformer")
    sys.path.insert(0, str(HERE / "tuber"))  # recipe.py
    import scipy
    import torch

    torch.manual_seed(0)
    tuber = Path(args.tuber).resolve() if args.tuber else None
    versions = {"tuber_commit": args.commit, "torch": torch.__version__, "numpy": np.__version__,
                "scipy": scipy.__version__}
    if "csn" in args.sections:
        official = {d: load_module(tuber / "models" / "backbones" / f"ir_CSN_{d}.py", f"official_ir_csn_{d}")
                    for d in (50, 152)}
        out = Path(args.out) / "csn"
        out.mkdir(parents=True, exist_ok=True)
        for name, (depth, seed, in_shape, full) in CASES.items():
            run_csn_case(official, name, depth, seed, in_shape, full, out, versions)
    if "tuber" in args.sections:  # the TubeR detector: tests/reference/query_fixtures_tuber.py
        sys.path.insert(0, str(HERE))
        import query_fixtures_tuber

        query_fixtures_tuber.run(tuber, args.out, versions)
    if "deformable" in args.sections:
        from query_fixtures_deformable import run_deformable_section  # noqa: E402  (this folder, on sys.path)

        run_deformable_section(args.fork, args.out, {**versions, "tuber_commit": None, "fork_commit": args.fork_commit})
    if "tuber_jhmdb" in args.sections:  # TubeR's JHMDB / UCF101-24 model: tests/reference/query_fixtures_tuber_jhmdb.py
        sys.path.insert(0, str(HERE))
        import query_fixtures_tuber_jhmdb

        query_fixtures_tuber_jhmdb.run(tuber, args.out, versions)
    if "seqformer" in args.sections:
        sys.path.insert(0, str(HERE))
        from query_fixtures_seqformer import run_seqformer_section  # noqa: E402  (this folder)

        run_seqformer_section(args.fork, args.out, {**versions, "tuber_commit": None, "fork_commit": args.fork_commit})


if __name__ == "__main__":
    main()
