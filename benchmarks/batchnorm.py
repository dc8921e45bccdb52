"""Time of a training BatchNorm (+ residual) + ReLU, forward + backward: PyTorch's modules against the Triton
kernels of ``MODEL.BACKBONE.FUSED_TRAINING_BN`` (stmixer/modeling/backbones/bn_act.py), on CUDA.

    python benchmarks/batchnorm.py [--dtypes bfloat16 float32] [--repeats 20] [--no-residual] [--frozen]

Shapes: the activations of a SlowFast-R50 at 8 clips of 256x448 (Slow res2-res5 outputs and inner maps, Fast
res2 maps with 8, 16 and 32 channels) and one at 2 clips, channels_last_3d, as the backbone has them on CUDA.
One call = ``relu(bn(x) + residual)`` (``--no-residual``: ``relu(bn(x))``) in training mode (``--frozen``: eval
mode with gradients, frozen BatchNorm) and its backward to x, the residual, the weight and the bias. Printed per
shape and dtype: the median time over the repeats (CUDA events) of the modules and of the kernels, forward and
backward, and kernels/modules (< 1 is faster), then the total over the shapes.
"""

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stmixer.modeling.backbones import bn_act  # noqa: E402

SHAPES = [(8, 64, 8, 64, 112), (8, 256, 8, 64, 112), (8, 128, 8, 32, 56), (8, 512, 8, 32, 56),
          (8, 1024, 8, 16, 28), (8, 2048, 8, 8, 14), (8, 8, 32, 64, 112), (8, 16, 32, 32, 56),
          (8, 32, 32, 64, 112), (2, 256, 8, 64, 112)]


def time_call(fn, shape, dtype, residual, training, repeats):
    """(median forward ms, median backward ms) of ``fn`` on fresh inputs of ``shape``."""
    gen = torch.Generator().manual_seed(0)
    cl = torch.channels_last_3d
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).to("cuda", dtype).to(memory_format=cl).requires_grad_()
    r = torch.randn(shape, generator=gen).to("cuda", dtype).to(memory_format=cl).requires_grad_() if residual else None
    c = shape[1]
    w = (torch.rand(c, generator=gen) + 0.5).cuda().requires_grad_()
    b = torch.randn(c, generator=gen).cuda().requires_grad_()
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    g = torch.randn(shape, generator=gen).to("cuda", dtype).to(memory_format=cl)
    leaves = [x, w, b] + ([r] if residual else [])
    forward, backward = [], []
    for i in range(repeats + 3):
        e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        e[0].record()
        y = fn(x, w, b, r, rm, rv, 0.1, 1e-5, True, training)
        e[1].record()
        torch.autograd.grad(y, leaves, g)
        e[2].record()
        torch.cuda.synchronize()
        if i >= 3:  # warm-up: Triton's compilation, the allocator
            forward.append(e[0].elapsed_time(e[1]))
            backward.append(e[1].elapsed_time(e[2]))
    return statistics.median(forward), statistics.median(backward)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-residual", action="store_true")
    ap.add_argument("--frozen", action="store_true", help="eval-mode BatchNorm with gradients (frozen BN)")
    args = ap.parse_args()
    if not torch.cuda.is_available() or bn_act.triton is None:
        sys.exit("benchmarks/batchnorm.py: needs CUDA and Triton (the kernels run on CUDA only)")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  cuDNN {torch.backends.cudnn.version()}  "
          f"residual {not args.no_residual}  {'frozen (eval mode)' if args.frozen else 'batch statistics'}")
    print(f"{'dtype':9} {'shape':22} {'modules fwd/bwd ms':>19} {'kernels fwd/bwd ms':>19} {'kernels/modules':>16}")
    for dtype in args.dtypes:
        totals = [0.0, 0.0]
        for shape in SHAPES:
            times = [time_call(fn, shape, getattr(torch, dtype), not args.no_residual, not args.frozen, args.repeats)
                     for fn in (bn_act.reference, bn_act.FusedBatchNormAct.apply)]
            mod, ker = sum(times[0]), sum(times[1])
            totals[0] += mod
            totals[1] += ker
            print(f"{dtype:9} {str(shape):22} {times[0][0]:9.3f}/{times[0][1]:<9.3f} "
                  f"{times[1][0]:9.3f}/{times[1][1]:<9.3f} {ker / mod:16.2f}", flush=True)
        print(f"{dtype:9} {'all shapes':22} {totals[0]:19.3f} {totals[1]:19.3f} {totals[1] / totals[0]:16.2f}")


if __name__ == "__main__":
    main()
