"""GFLOPs of EVAD's ViT backbone at each keep rate, next to the official model zoo's numbers.

    python benchmarks/evad_flops.py [--sizes 256x256 288x512] [--frames 16]
    python benchmarks/evad_flops.py --detector [--sizes 288x288]

The second form counts the whole EVAD detector of each model-zoo config (``config_files/evad/``: backbone,
FPN, Sparse R-CNN person detector, context-refinement decoder) on the CPU (the person detector's RoI level
assignment needs values: random weights and clip, the count does not depend on them), with
``nn.MultiheadAttention``'s fused fast path off so that its products are counted. RoIAlign, softmax and
normalizations are not counted (no formula in the counter; fvcore skips them too).

Counts with ``torch.utils.flop_counter`` on the meta device (no computation, any size in
seconds), attention through its explicit matrix products (the math backend of
``scaled_dot_product_attention``; the fused CPU kernel is not counted by the counter). Printed
in the official convention (fvcore's: one multiply-add = one FLOP, i.e. the counter's FLOPs / 2).
The model zoo's GFLOPs are for the whole detector (backbone, FPN, Sparse R-CNN person detector,
context-refinement decoder); the backbone's share and the ratios between keep rates are what this
script measures.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stmixer.modeling.backbones.evad_vit import EVADVisionTransformer  # noqa: E402

# The model zoo (MCG-NJU/EVAD README): (name, ViT, keep rate, enhanced weight, official GFLOPs, official mAP).
ZOO = [
    ("ViT-B VideoMAE", "B", 1.0, 1, 425, 32.1),
    ("ViT-B VideoMAE", "B", 0.7, 1, 243, 32.3),
    ("ViT-B VideoMAE", "B", 0.6, 4, 209, 31.8),
    ("ViT-B VideoMAEv2", "B", 0.7, 1, 243, 37.7),
    ("ViT-L VideoMAE", "L", 0.7, 1, 737, 39.7),
]
# The zoo rows' configs (config_files/evad/), same order as ZOO.
ZOO_CONFIGS = ["ViT_B_16x4", "ViT_B_16x4_KTP", "ViT_B_16x4_KTP_EW", "ViT_B_16x4_KTP_VideoMAEv2", "ViT_L_16x4_KTP"]
# (embed_dim, depth, heads, pruning blocks, FPN blocks) as the official configs.
VITS = {"B": (768, 12, 12, (3, 6, 9), (2, 5, 8, 11)), "L": (1024, 24, 16, (6, 12, 18), (5, 11, 17, 23))}


def evad_backbone(vit, keep_rate, enhanced_weight=1.0, device="meta"):
    """EVAD's ViT-B or ViT-L (``vit`` "B" / "L") with ``keep_rate`` at the official pruning blocks."""
    dim, depth, heads, pruned, fpn = VITS[vit]
    rates = [keep_rate if i in pruned else 1.0 for i in range(depth)]
    with torch.device(device):
        return EVADVisionTransformer(keep_rates=rates, enhanced_weight=enhanced_weight, fpn_indices=fpn,
                                     embed_dim=dim, depth=depth, num_heads=heads, use_checkpoint=False).eval()


def backbone_gflops(model, frames, height, width, device="meta"):
    """Multiply-add GFLOPs (fvcore convention) of one forward of ``model`` on a ``[1, 3, frames, height, width]``
    clip."""
    clip = torch.empty(1, 3, frames, height, width, device=device)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model([clip])
    return counter.get_total_flops() / 2 / 1e9


def detector_gflops(config, frames, height, width):
    """Multiply-add GFLOPs (fvcore convention) of one eval forward of the EVAD detector of ``config`` (a yaml)
    on a random ``[1, 3, frames, height, width]`` clip, on the CPU."""
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    torch.manual_seed(0)
    model = build_detector(load_config(config, ["DATA.NUM_FRAMES", frames])).eval().requires_grad_(False)
    clip = torch.randn(1, 3, frames, height, width)
    whwh = torch.tensor([[width, height, width, height]], dtype=torch.float32)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(clip, None, whwh)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 2 / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=None,
                        help="input HxW (the model zoo trains and tests at short side 288); default 224x224 "
                             "288x288 288x512 (backbone), 288x288 (--detector)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--detector", action="store_true", help="count the whole detector of each zoo config")
    args = parser.parse_args()
    default = ["288x288"] if args.detector else ["224x224", "288x288", "288x512"]
    sizes = [tuple(int(v) for v in s.split("x")) for s in (args.sizes or default)]
    if args.detector:
        root = Path(__file__).resolve().parents[1] / "config_files" / "evad"
        header = "| model | keep | EW | official GFLOPs | official mAP | " + " | ".join(
            f"detector {h}x{w}" for h, w in sizes) + " |"
        print(header)
        print("|" + " --- |" * (header.count("|") - 1))
        for (name, _, keep, ew, gflops, mAP), config in zip(ZOO, ZOO_CONFIGS):
            ours = [detector_gflops(str(root / f"{config}.yaml"), args.frames, h, w) for h, w in sizes]
            print(f"| {name} | {keep} | {ew} | {gflops} | {mAP} | " + " | ".join(f"{g:.1f}" for g in ours) + " |",
                  flush=True)
        return
    header = "| model | keep | EW | official GFLOPs (detector) | official mAP | " + " | ".join(
        f"backbone {h}x{w}" for h, w in sizes) + " |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name, vit, keep, ew, gflops, mAP in ZOO:
        ours = [backbone_gflops(evad_backbone(vit, keep, ew), args.frames, h, w) for h, w in sizes]
        print(f"| {name} | {keep} | {ew} | {gflops} | {mAP} | " + " | ".join(f"{g:.1f}" for g in ours) + " |")


if __name__ == "__main__":
    main()
