"""GFLOPs of EVAD's ViT backbone at each keep rate, next to the official model zoo's numbers.

    python benchmarks/evad_flops.py [--sizes 256x256 288x512] [--frames 16]

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["224x224", "288x288", "288x512"],
                        help="input HxW (the model zoo trains and tests at short side 288)")
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    header = "| model | keep | EW | official GFLOPs (detector) | official mAP | " + " | ".join(
        f"backbone {h}x{w}" for h, w in sizes) + " |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for name, vit, keep, ew, gflops, mAP in ZOO:
        ours = [backbone_gflops(evad_backbone(vit, keep, ew), args.frames, h, w) for h, w in sizes]
        print(f"| {name} | {keep} | {ew} | {gflops} | {mAP} | " + " | ".join(f"{g:.1f}" for g in ours) + " |")


if __name__ == "__main__":
    main()
