"""Build the mmaction2 long-term feature bank fixtures by running mmaction2's own LFB code (float64, seeded).

    python tests/reference/make_mmaction2_lfb_fixtures.py --mmaction2 /path/to/mmaction2 \\
        --out tests/reference/mmaction2

``--mmaction2`` is a checkout (or ``git archive``) of open-mmlab/mmaction2 1.x. Three of its files are
executed, loaded by path as one package: ``mmaction/models/roi_heads/shared_heads/lfb.py`` (``LFB``),
``fbo_head.py`` (``FBOHead``, ``FBONonLocal``, ``FBOMax``, ``FBOAvg``) and ``lfb_infer_head.py``
(``LFBInferHead``). They need mmengine and mmcv (``ConvModule`` only: ``pip install mmengine mmcv-lite``,
no compiled ops). Shims:

* ``LFB.sample_long_term_features`` builds its output with ``torch.zeros`` of the default dtype
  (float32): the lookups run under ``torch.set_default_dtype(torch.float64)`` so the fixture is float64;
* ``LFBInferHead`` writes its bank in ``__del__``: the script deletes the head (and collects) to get
  ``lfb_<mode>.pkl`` written by mmaction2's code path, in a temporary folder, then copies it.

Randomness is designed out: the lookup bank has at most one feature per second (``randperm(1)`` is the
identity), modules run in eval mode (dropout off). One extra case seeds the global generator and samples
the multi-feature bank, to show that the same seed draws the same ``randperm`` in both.

Writes ``<out>/lfb/``: ``lfb_train.pkl`` / ``lfb_val.pkl`` (float64 banks, at most one feature per
second), ``lfb_multi.pkl`` (float64, several RoIs per keyframe) and ``lfb_multi_half.pkl`` (the same
with ``use_half_precision=True``), ``lfb.npz`` (inputs, weights, outputs, gradients) and ``cases.json``.
"""

import argparse
import gc
import importlib.util
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from official_code import checkout_commit  # noqa: E402  (sibling helper)

LFB_CHANNELS = 8     # bank feature channels
ROI_CHANNELS = 10    # RoI feature channels of the FBO heads
LATENT = 6           # FBONonLocal latent channels
ROI_SHAPE = (2, 3, 3)  # (T, h, w) of the RoI features


def load_official(root):
    """mmaction2's three shared-head files as one package ``mm_shared_heads`` (relative imports work)."""
    folder = root / "mmaction/models/roi_heads/shared_heads"
    pkg = types.ModuleType("mm_shared_heads")
    pkg.__path__ = [str(folder)]
    sys.modules["mm_shared_heads"] = pkg
    mods = {}
    for name in ("lfb", "fbo_head", "lfb_infer_head"):
        spec = importlib.util.spec_from_file_location(f"mm_shared_heads.{name}", folder / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    return mods


class float64_default:
    """The shim around mmaction2's hard-coded ``torch.zeros`` (default dtype) in the bank lookup."""

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.previous)


def write_bank(InferHead, batches, mode, half, pools, folder):
    """Run mmaction2's LFBInferHead over ``batches`` [(roi_feats, rois, img_keys)], let ``__del__`` write
    ``lfb_<mode>.pkl`` into ``folder``; returns its path."""
    head = InferHead(str(folder), dataset_mode=mode, use_half_precision=half, temporal_pool_type=pools[0],
                     spatial_pool_type=pools[1])
    for x, rois, keys in batches:
        out = head(x, rois, [{"img_key": k} for k in keys])
        assert out is x
    del head
    gc.collect()
    return folder / f"lfb_{mode}.pkl"


def roi_batch(gen, keys, batch_index):
    n = len(batch_index)
    x = torch.randn(n, LFB_CHANNELS, *ROI_SHAPE, generator=gen, dtype=torch.float64)
    boxes = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 50
    rois = torch.cat([torch.tensor(batch_index, dtype=torch.float64)[:, None], boxes], 1)
    return x, rois, keys


# Lookup bank: at most one feature per (video, second). train: vidA 900..910 (some seconds missing),
# vidB 903..905; val: vidB 907..909 (replaces train's vidB: mmaction2 merges files per video), vidC 1000.
SPARSE_TRAIN = [(["vidA,0900", "vidA,0901", "vidB,0903"], [0, 1, 2]),
                (["vidA,0903", "vidA,0904"], [1, 0]),
                (["vidA,0906", "vidB,0904", "vidA,0907"], [2, 0, 1]),
                (["vidA,0909", "vidA,0910", "vidB,0905"], [0, 2, 1])]
SPARSE_VAL = [(["vidB,0907", "vidB,0908", "vidB,0909"], [0, 1, 2]),
              (["vidC,1000"], [0])]
# Writer case: several RoIs per keyframe, interleaved batch indices.
MULTI = [(["vidM,0902", "vidN,0905"], [0, 1, 0, 1, 1, 0]),
         (["vidM,0903", "vidM,0904"], [1, 1, 0]),
         (["vidN,0906"], [0, 0, 0, 0])]
# Lookups: (img_key, window_size, max_num_sampled_feat)
LOOKUPS = [("vidA,0902", 6, 2), ("vidA,0905", 5, 1), ("vidA,0910", 6, 2), ("vidB,0908", 5, 2),
           ("vidB,0903", 4, 1), ("vidC,1000", 3, 3), ("vidA,0950", 6, 1)]
# FBO heads: RoIs of a 2-clip batch, window 5 x 2 features per second
FBO_KEYS = ["vidA,0904", "vidB,0908"]
FBO_BATCH_INDEX = [0, 1, 1, 0]
FBO_WINDOW, FBO_K = 5, 2
FBO_CASES = [
    dict(name="nonlocal", type="non_local", pools=("avg", "max"),
         fbo=dict(num_non_local_layers=2, pre_activate=True)),
    dict(name="nonlocal_postact", type="non_local", pools=("max", "avg"),
         fbo=dict(num_non_local_layers=1, pre_activate=False)),
    dict(name="max", type="max", pools=("avg", "max"), fbo={}),
    dict(name="avg", type="avg", pools=("avg", "max"), fbo={}),
]
RANDPERM_SEED = 1234
RANDPERM_LOOKUPS = [("vidM,0903", 4, 2), ("vidN,0906", 3, 2), ("vidM,0902", 2, 3)]


def run(mods, out, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    arrays, meta = {}, {"lookups": [], "fbo": {}, "multi": {}, "randperm": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mm_lfb_"))
    try:
        InferHead = mods["lfb_infer_head"].LFBInferHead
        # --- banks written by LFBInferHead (float64 features: use_half_precision=False)
        sparse = tmp / "sparse"
        for mode, spec in (("train", SPARSE_TRAIN), ("val", SPARSE_VAL)):
            batches = [roi_batch(gen, keys, idx) for keys, idx in spec]
            for b, (x, rois, keys) in enumerate(batches):
                arrays[f"sparse_{mode}/b{b}/roi_feats"] = x
                arrays[f"sparse_{mode}/b{b}/rois"] = rois
            meta[f"sparse_{mode}_keys"] = [keys for keys, _ in spec]
            shutil.copy(write_bank(InferHead, batches, mode, False, ("avg", "max"), sparse), out / f"lfb_{mode}.pkl")
        multi_batches = [roi_batch(gen, keys, idx) for keys, idx in MULTI]
        for b, (x, rois, keys) in enumerate(multi_batches):
            arrays[f"multi/b{b}/roi_feats"] = x
            arrays[f"multi/b{b}/rois"] = rois
        meta["multi"]["keys"] = [keys for keys, _ in MULTI]
        for tag, half, pools in (("multi", False, ("max", "avg")), ("multi_half", True, ("avg", "max"))):
            folder = tmp / tag
            shutil.copy(write_bank(InferHead, multi_batches, "train", half, pools, folder), out / f"lfb_{tag}.pkl")
            meta["multi"][tag] = dict(half_precision=half, pools=list(pools))

        # --- lookups of mmaction2's LFB (cpu) on the sparse train + val banks
        LFB = mods["lfb"].LFB
        for key, window, k in LOOKUPS:
            bank = LFB(str(sparse), max_num_sampled_feat=k, window_size=window, lfb_channels=LFB_CHANNELS,
                       dataset_modes=("train", "val"), device="cpu")
            with float64_default():
                feats = bank[key]
            arrays[f"lookup/{key}/w{window}k{k}"] = feats
            meta["lookups"].append([key, window, k])

        # --- seeded randperm on the multi-feature bank (float64)
        for key, window, k in RANDPERM_LOOKUPS:
            bank = LFB(str(tmp / "multi"), max_num_sampled_feat=k, window_size=window, lfb_channels=LFB_CHANNELS,
                       dataset_modes=("train",), device="cpu")
            torch.manual_seed(RANDPERM_SEED)
            with float64_default():
                arrays[f"randperm/{key}/w{window}k{k}"] = bank[key]
        meta["randperm"] = dict(seed=RANDPERM_SEED, lookups=[list(t) for t in RANDPERM_LOOKUPS])

        # --- FBO heads
        FBOHead = mods["fbo_head"].FBOHead
        x = torch.randn(len(FBO_BATCH_INDEX), ROI_CHANNELS, *ROI_SHAPE, generator=gen, dtype=torch.float64)
        rois = torch.cat([torch.tensor(FBO_BATCH_INDEX, dtype=torch.float64)[:, None],
                          torch.rand(len(FBO_BATCH_INDEX), 4, generator=gen, dtype=torch.float64) * 60], 1)
        arrays["fbo/input/roi_feats"], arrays["fbo/input/rois"] = x, rois
        meta["fbo_keys"], meta["fbo_window"], meta["fbo_k"] = FBO_KEYS, FBO_WINDOW, FBO_K
        for case in FBO_CASES:
            lfb_cfg = dict(lfb_prefix_path=str(sparse), max_num_sampled_feat=FBO_K, window_size=FBO_WINDOW,
                           lfb_channels=LFB_CHANNELS, dataset_modes=("train", "val"), device="cpu")
            fbo_cfg = dict(type=case["type"])
            if case["type"] == "non_local":
                fbo_cfg.update(st_feat_channels=ROI_CHANNELS, lt_feat_channels=LFB_CHANNELS,
                               latent_channels=LATENT, num_st_feat=1, num_lt_feat=FBO_WINDOW * FBO_K,
                               st_feat_dropout_ratio=0.2, lt_feat_dropout_ratio=0.2, **case["fbo"])
            head = FBOHead(lfb_cfg, dict(fbo_cfg), temporal_pool_type=case["pools"][0],
                           spatial_pool_type=case["pools"][1])
            head.init_weights()
            with torch.no_grad():  # non-default biases / LayerNorm affine, so that a wrong one would show
                for name, p in head.named_parameters():
                    if name.endswith("bias") or ".ln." in name:
                        p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            head = head.double().eval()  # eval: dropout off
            xin = x.clone().requires_grad_()
            with float64_default():
                out = head(xin, rois, [{"img_key": k} for k in FBO_KEYS])
            weight = torch.randn(out.shape, generator=gen, dtype=torch.float64)
            loss = (out * weight).sum()
            loss.backward()
            name = case["name"]
            arrays[f"fbo/{name}/loss_weight"] = weight
            arrays[f"fbo/{name}/out"] = out.detach()
            arrays[f"fbo/{name}/grad/roi_feats"] = xin.grad
            for k, v in head.state_dict().items():
                arrays[f"fbo/{name}/weight/{k}"] = v
            for k, p in head.named_parameters():
                arrays[f"fbo/{name}/grad/{k}"] = p.grad
            meta["fbo"][name] = dict(type=case["type"], pools=list(case["pools"]), fbo=case["fbo"],
                                     latent_channels=LATENT if case["type"] == "non_local" else None,
                                     loss=float(loss.detach()))
            print(name, tuple(out.shape), float(loss))
        # --- mmaction2's zero_init_out_conv: its constant_init gets the ConvModule (no ``weight``): a no-op
        fbo = mods["fbo_head"].FBONonLocal(4, 4, 4, 1, 2, num_non_local_layers=1, zero_init_out_conv=True)
        fbo.init_weights()
        meta["zero_init_out_conv_zeroes_out_conv"] = bool(
            fbo.non_local_layer_1.out_conv.conv.weight.abs().sum() == 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: v.detach().numpy() for k, v in arrays.items()}, meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmaction2", required=True, type=Path, help="mmaction2 1.x checkout or archive")
    parser.add_argument("--out", required=True, type=Path, help="fixture folder (lfb/ is written in it)")
    parser.add_argument("--commit", default=None, help="mmaction2 commit (read from the checkout when it is git)")
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args(argv)
    commit = checkout_commit(args.mmaction2, args.commit)
    mods = load_official(args.mmaction2)
    out = args.out / "lfb"
    out.mkdir(parents=True, exist_ok=True)
    arrays, meta = run(mods, out, args.seed)
    np.savez_compressed(out / "lfb.npz", **arrays)
    import mmcv
    import mmengine
    meta.update(mmaction2_commit=commit, torch=torch.__version__, mmengine=mmengine.__version__,
                mmcv=mmcv.__version__, seed=args.seed, lfb_channels=LFB_CHANNELS, roi_channels=ROI_CHANNELS,
                shims="LFB lookup under torch.set_default_dtype(float64); LFBInferHead bank written by __del__")
    (out / "cases.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
