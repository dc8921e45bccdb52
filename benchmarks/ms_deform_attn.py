"""Benchmark: the pure-PyTorch multi-scale deformable attention at Deformable TubeR's full size.

Times ``MSDeformAttn`` (stmixer/modeling/layers/ms_deform_attn.py) forward and forward + backward for the
encoder (every token of the 4 levels a query) and the decoder (15 queries) of the fork's D2 on a 256x256
clip (levels 32x32, 16x16, 16x16, 8x8; D 256, 8 heads, 4 points), and the whole D2 transformer (6 + 6
layers). No fused kernel exists to compare with (the fork's is CUDA-only and not vendored); these are the
numbers a fused kernel would have to beat.

    python benchmarks/ms_deform_attn.py [--device cpu|cuda] [--threads 1] [--repeat 5] [--batch 1]
"""

import argparse
import time

import torch

from stmixer.modeling.layers import MSDeformAttn
from stmixer.modeling.tuber.deformable_transformer import DeformableTransformer

LEVELS = [(32, 32), (16, 16), (16, 16), (8, 8)]


def timed(fn, device, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    b, d = args.batch, 256
    shapes = torch.tensor(LEVELS, device=device)
    tokens = sum(h * w for h, w in LEVELS)
    attn = MSDeformAttn(d, len(LEVELS), 8, 4).to(device)
    memory = torch.randn(b, tokens, d, device=device, requires_grad=True)
    rows = []
    for name, queries in (("encoder attention", tokens), ("decoder attention", 15)):
        query = torch.randn(b, queries, d, device=device, requires_grad=True)
        ref = torch.rand(b, queries, len(LEVELS), 2, device=device)

        def forward():
            with torch.no_grad():
                attn(query, ref, memory, shapes)

        def both():
            attn(query, ref, memory, shapes).sum().backward()

        rows.append((name, queries, timed(forward, device, args.repeat), timed(both, device, args.repeat)))
    model = DeformableTransformer(d, 8, 6, 6, 2048, 0.1, "relu", True, len(LEVELS), 4, 4).to(device).eval()
    srcs = [torch.randn(b, d, h, w, device=device) for h, w in LEVELS]
    pos = [torch.randn_like(s) for s in srcs]
    query = torch.randn(15, 2 * d, device=device)

    def whole():
        with torch.no_grad():
            model(srcs, None, pos, query)

    rows.append(("D2 transformer (6+6 layers)", 15, timed(whole, device, args.repeat), float("nan")))
    print(f"device {device}, threads {args.threads}, batch {b}, tokens {tokens}, torch {torch.__version__}")
    print(f"{'':30s} {'queries':>8s} {'forward ms':>11s} {'fwd+bwd ms':>11s}")
    for name, queries, fwd, both in rows:
        print(f"{name:30s} {queries:8d} {fwd:11.1f} {both:11.1f}")


if __name__ == "__main__":
    main()
