"""MODEL.STM.SAMPLER "triton": the Triton kernels equal the folded sampler (values and gradients), on the CPU
through Triton's interpreter (a subprocess with TRITON_INTERPRET=1) and on CUDA; without Triton or CUDA the
folded sampler runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stmixer.config import get_cfg, validate_config
from stmixer.modeling.stmixer import sampling_triton
from stmixer.modeling.stmixer import sampling
from stmixer.modeling.stmixer.sampling import PyramidSampler

HERE = Path(__file__).resolve()
needs_triton = pytest.mark.skipif(sampling_triton.triton is None, reason="needs Triton")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and sampling_triton.triton is not None),
                                reason="needs CUDA and Triton")

# (batch, channels, frames, groups, queries, points, levels): channels per group 8 (a power of two) and 6
# (padded to 8 in the kernel), points per pair below and above one program's block of 8
SHAPES = [(2, 16, 3, 2, 5, 4, 4), (1, 18, 2, 3, 7, 9, 3), (2, 8, 1, 1, 3, 16, 1)]


def random_inputs(device, B, C, T, G, Q, P, L, frames_grad, seed):
    """(generator, strides, L levels ``[B, C, T, H_l, W_l]``, points ``[B, Q, G * P, 3]`` some outside the maps)."""
    gen = torch.Generator().manual_seed(B * 1000 + C * 10 + L + seed)
    strides = (4, 8, 16, 32)[:L]
    features = [(torch.randn(B, C, T, 32 // 2 ** level + 1, 48 // 2 ** level, generator=gen))
                .to(device).requires_grad_(frames_grad) for level in range(L)]
    xy = torch.rand(B, Q, G * P, 2, generator=gen) * torch.tensor([48 * 4 * 1.2, 32 * 4 * 1.2]) - 12
    z = torch.rand(B, Q, G * P, 1, generator=gen) * 4 + 2
    points = torch.cat([xy, z], -1).to(device).requires_grad_()
    return gen, strides, features, points


def compare(device, B, C, T, G, Q, P, L, frames_grad=True, tol=1e-5):
    """Folded vs Triton sampler on random levels and points (some outside the maps): max errors relative to
    each tensor's largest value must stay within ``tol``."""
    gen, strides, features, points = random_inputs(device, B, C, T, G, Q, P, L, frames_grad, seed=0)
    weight = torch.randn(B, G, C // G, T, Q, P, generator=gen).to(device)  # d loss / d samples
    results = {}
    for impl in ("folded", "triton"):
        sampler = PyramidSampler(features, strides, G, impl)
        assert sampler.impl == impl
        out = sampler(points)
        inputs = [points] + (features if frames_grad else [])
        results[impl] = [out] + list(torch.autograd.grad((out * weight).sum(), inputs))
    for name, want, got in zip(["samples", "points"] + [f"level {i}" for i in range(L)], *results.values()):
        assert got.shape == want.shape, name
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= tol, f"{name}: relative error {err:.2e}"


# (batch, channels, frames, groups, queries, points, levels) for the kernels of the two means: points per query in
# whole blocks of 8 (one and two blocks), channels per group 8 and 6
MEAN_SHAPES = [(2, 16, 3, 2, 3, 8, 4), (1, 18, 2, 3, 2, 16, 2)]


def compare_means(device, B, C, T, G, Q, P, L, frames_grad=True, tol=1e-5, use=("spatial", "temporal")):
    """``sample_means`` of the folded sampler (the samples' means) vs the Triton one (``TritonSampleMeans``, no
    samples): values, and the gradients of a random combination of the means in ``use`` (one alone: the other has
    no gradient)."""
    gen, strides, features, points = random_inputs(device, B, C, T, G, Q, P, L, frames_grad, seed=7)
    w_s = torch.randn(B, G, C // G, Q, P, generator=gen).to(device)
    w_t = torch.randn(B, G, C // G, T, Q, generator=gen).to(device)
    results = {}
    for impl in ("folded", "triton"):
        sampler = PyramidSampler(features, strides, G, impl)
        spatial, temporal, samples = sampler.sample_means(points)
        assert (samples is None) == (impl == "triton")
        inputs = [points] + (features if frames_grad else [])
        loss = sum((m * w).sum() for name, m, w in (("spatial", spatial, w_s), ("temporal", temporal, w_t))
                   if name in use)
        results[impl] = [spatial, temporal] + list(torch.autograd.grad(loss, inputs))
    names = ["spatial", "temporal", "points"] + [f"level {i}" for i in range(L)]
    for name, want, got in zip(names, *results.values()):
        assert got.shape == want.shape, name
        err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-12)
        assert err <= tol, f"{name}: relative error {err:.2e}"


def compare_shared(device, B=2, C=16, T=3, G=2, Q=3, P=8, L=3, tol=1e-5):
    """Four samplings of one pyramid (the decoder's stages: three means, one with the samples) vs the folded
    sampler. The Triton sampler's backward pass makes one frame-gradient buffer per level: the first sampling
    whose backward runs returns it, the other three add into it and return none. A second pass over the same
    graph makes its own and leaves what the first returned unchanged."""
    gen, strides, features, points = random_inputs(device, B, C, T, G, Q, P, L, True, seed=3)
    stages = [points * (1 + 0.1 * k) for k in range(3)]
    results, made = {}, []
    for impl in ("folded", "triton"):
        sampler = PyramidSampler(features, strides, G, impl)
        if impl == "triton":
            def counted(frames, buffers=sampler._frame_grads.buffers):
                out = buffers(frames)
                made.append(out[1])
                return out
            sampler._frame_grads.buffers = counted
        loss = sampler(stages[0]).pow(2).sum()
        for k, stage in enumerate(stages):
            spatial, temporal, _ = sampler.sample_means(stage)
            loss = loss + (spatial * (k + 1)).sum() + temporal.pow(2).sum()
        inputs = features + sampler._frames
        first = torch.autograd.grad(loss, inputs, retain_graph=True)
        kept = [g.clone() for g in first]
        second = torch.autograd.grad(loss, inputs)
        for name, a, b, c in zip(range(2 * L), first, kept, second):
            assert torch.equal(a, b), f"{impl}: the second pass changed the first's gradient {name}"
            assert (c - b).abs().max() <= tol * b.abs().max(), f"{impl}: the passes differ on gradient {name}"
        results[impl] = first[:L]
    assert made == [True, False, False, False] * 2, made
    for level, (want, got) in enumerate(zip(*results.values())):
        err = (got - want).abs().max().item() / want.abs().max().item()
        assert err <= tol, f"level {level}: relative error {err:.2e}"


@needs_triton
def test_the_kernels_equal_the_folded_sampler_in_the_interpreter():
    """Triton's interpreter runs the kernels on CPU tensors (how CI checks them without a GPU)."""
    code = (
        "import runpy, sys; m = runpy.run_path(sys.argv[1]); "
        "[m['compare']('cpu', *shape) for shape in m['SHAPES']]; "
        "m['compare']('cpu', *m['SHAPES'][0], frames_grad=False); "
        "[m['compare_means']('cpu', *shape) for shape in m['MEAN_SHAPES']]; "
        "m['compare_means']('cpu', *m['MEAN_SHAPES'][0], frames_grad=False); "
        "m['compare_means']('cpu', *m['MEAN_SHAPES'][0], use=('spatial',)); "
        "m['compare_means']('cpu', *m['MEAN_SHAPES'][1], use=('temporal',)); m['compare_shared']('cpu'); "
        "print('compared')"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(HERE)], env=env, capture_output=True, text=True,
                            cwd=HERE.parents[2])
    assert result.returncode == 0 and "compared" in result.stdout, result.stderr[-3000:]


@needs_triton
def test_the_detector_trains_the_same_with_the_triton_sampler_in_the_interpreter():
    code = r"""
import sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[1]).parent))
from test_cuda_graphs import batch, grads, tiny_cfg, train_pass
from stmixer.modeling import build_detector
root = Path(sys.argv[1]).parents[2]
torch.manual_seed(0)
folded = build_detector(tiny_cfg(root)).train()
fast = build_detector(tiny_cfg(root, "MODEL.STM.SAMPLER", "triton")).train()
fast.load_state_dict(folded.state_dict())
data = batch(0)
want, got = train_pass(folded, data), train_pass(fast, data)
for k in want:
    assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), k
gw, gg = grads(folded), grads(fast)
assert gw.keys() == gg.keys()
for k in gw:
    assert (gg[k] - gw[k]).norm() <= 1e-4 * gw[k].norm() + 1e-9, k
print("trained")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(HERE)], env=env, capture_output=True, text=True,
                            cwd=HERE.parents[2])
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-3000:]


@needs_triton
@pytest.mark.parametrize("levels,need_frames,frames,block_c", [(4, True, 8, 64), (3, False, 8, 64), (1, True, 1, 8)])
def test_the_kernels_compile_for_an_h100(levels, need_frames, frames, block_c):
    """Ahead of time, without a GPU: Triton's compiler (not only its interpreter) takes the kernels down to
    sm_90 machine code (the official sizes, and those of ``self_check``)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for fn, extra in [(sampling_triton._forward_kernel, {}),
                      (sampling_triton._backward_kernel, {"NEED_FRAMES": need_frames}),
                      (sampling_triton._forward_means_kernel, {}),
                      (sampling_triton._backward_means_kernel, {"NEED_FRAMES": need_frames})]:
        constexprs = dict(T=frames, LEVELS=levels, BLOCK=sampling_triton.BLOCK_P, BLOCK_C=block_c, **extra)
        signature = {name: "constexpr" if name in constexprs else
                     "*fp32" if name.endswith("_ptr") or (name[0] in "fg" and name[1:].isdigit()) else "i32"
                     for name in fn.arg_names}
        kernel = sampling_triton.triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                                target=GPUTarget("cuda", 90, 32),
                                                options={"num_warps": sampling_triton.NUM_WARPS})
        assert kernel.asm["cubin"], fn.__name__
        if extra.get("NEED_FRAMES"):  # the frames' gradient: relaxed atomic additions, no acquire/release fences
            ptx = kernel.asm["ptx"]
            assert ".relaxed." in ptx and ".acq_rel." not in ptx and "fence" not in ptx, fn.__name__


@needs_cuda
@pytest.mark.parametrize("shape", SHAPES + [(2, 256, 8, 4, 100, 32, 4)])
def test_the_kernels_equal_the_folded_sampler_on_cuda(shape):
    compare("cuda", *shape, tol=1e-4)  # atomic additions in another order on both sides


@needs_cuda
def test_the_stages_share_one_frame_gradient_on_cuda():
    compare_shared("cuda", tol=1e-4)


@needs_cuda
@pytest.mark.parametrize("shape", MEAN_SHAPES + [(2, 256, 8, 4, 100, 32, 4)])
def test_the_mean_kernels_equal_the_folded_sampler_on_cuda(shape):
    compare_means("cuda", *shape, tol=1e-4)


def test_points_per_query_outside_whole_blocks_take_the_samples_means(monkeypatch):
    """``TritonSampleMeans`` takes whole blocks of points per query; other counts use the samples' means (on the
    interpreter's CPU tensors here, so without a GPU)."""
    assert sampling_triton.means_supported(32) and not sampling_triton.means_supported(9)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    features = [torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 4, 4)]
    sampler = PyramidSampler(features, (4, 8), 2, "folded")
    spatial, temporal, samples = sampler.sample_means(torch.rand(1, 3, 2 * 9, 3) * 20)
    assert samples is not None and torch.equal(spatial, samples.mean(3)) and torch.equal(temporal, samples.mean(5))
    if sampling_triton.triton is not None:
        monkeypatch.setattr(sampling_triton.TritonSampleMeans, "apply", staticmethod(lambda *a: 1 / 0))
        triton_sampler = PyramidSampler(features, (4, 8), 2, "triton")
        if triton_sampler.impl == "triton":
            assert triton_sampler.sample_means(torch.rand(1, 3, 2 * 9, 3) * 20)[2] is not None  # never called


def test_without_triton_or_cuda_the_folded_sampler_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    features = [torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 4, 4)]
    points = torch.rand(1, 3, 4, 3) * 20
    sampler = PyramidSampler(features, (4, 8), 2, "triton")
    assert sampler.impl == "folded"  # CPU tensors, no interpreter
    assert torch.equal(sampler(points), PyramidSampler(features, (4, 8), 2, "folded")(points))
    monkeypatch.setattr(sampling_triton, "triton", None)
    assert not sampling_triton.available("cuda")
    double = PyramidSampler([f.double() for f in features], (4, 8), 2, "triton")
    assert double.impl == "folded"  # float64 (parity runs): the kernels are float32


def test_the_config_accepts_the_triton_sampler():
    cfg = get_cfg()
    cfg.MODEL.STM.SAMPLER = "triton"
    validate_config(cfg)
    cfg.MODEL.STM.SAMPLER = "fused"
    with pytest.raises(Exception, match="MODEL.STM.SAMPLER"):
        validate_config(cfg)


def test_auto_picks_the_triton_sampler_only_for_float32_cuda_tensors(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter can run them, but "auto" keeps CPU tensors folded
    features = [torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 4, 4)]
    assert PyramidSampler(features, (4, 8), 2).impl == "folded"
    assert PyramidSampler(features, (4, 8), 2, "auto").impl == "folded"
    if torch.cuda.is_available():
        cuda = [f.cuda() for f in features]
        expected = "triton" if sampling_triton.triton is not None else "folded"
        assert PyramidSampler(cuda, (4, 8), 2, "auto").impl == expected
        assert PyramidSampler([f.bfloat16() for f in cuda], (4, 8), 2, "auto").impl == expected  # sampled in fp32
        assert PyramidSampler([f.double() for f in cuda], (4, 8), 2, "auto").impl == "folded"
        monkeypatch.setattr(sampling_triton, "triton", None)
        assert PyramidSampler(cuda, (4, 8), 2, "auto").impl == "folded"


def test_parity_runs_use_the_folded_sampler(tmp_path):
    from stmixer.tools.reference_parity import fixture_config

    (tmp_path / "config.yaml").write_text("MODEL:\n  STM:\n    SAMPLER: auto\n")
    assert fixture_config(tmp_path).MODEL.STM.SAMPLER == "folded"


def test_auto_needs_a_gpu_triton_supports(monkeypatch):
    for capability, expected in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert sampling_triton.auto_supported("cuda") is (expected and sampling_triton.triton is not None)
    assert not sampling_triton.auto_supported("cpu")


@needs_triton
def test_kernels_that_fail_their_self_check_leave_the_folded_sampler(monkeypatch, caplog):
    """A GPU or an installation Triton cannot build for: the first sampler says why once and runs folded."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # makes the CPU a device the kernels may run on
    monkeypatch.setattr(sampling_triton, "_SELF_CHECKS", {})
    monkeypatch.setattr(sampling, "_warned", set())

    def broken(*args):
        raise RuntimeError("no kernel image is available for execution on the device\nsecond line")

    monkeypatch.setattr(sampling_triton.TritonWeightedSampling, "apply", staticmethod(broken))
    features = [torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 4, 4)]
    points = torch.rand(1, 3, 4, 3) * 20
    with caplog.at_level("WARNING", logger=sampling.__name__):
        first = PyramidSampler(features, (4, 8), 2, "triton")
        second = PyramidSampler(features, (4, 8), 2, "triton")
    assert first.impl == second.impl == "folded"
    assert torch.equal(first(points), PyramidSampler(features, (4, 8), 2, "folded")(points))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no kernel image is available" in warnings[0] and "second line" not in warnings[0]
    assert sampling_triton._SELF_CHECKS == {("cpu", None): "RuntimeError: no kernel image is available for "
                                                           "execution on the device"}


def test_frame_gradients_are_shared_within_one_backward_pass_only(monkeypatch):
    """``FrameGradients.buffers``: new zeros for the first sampling of a pass, the same tensors for the later ones
    while autograd holds them; a new pass, buffers already freed, or no pass id (older PyTorch) give new ones."""
    frames = [torch.randn(2, 3, 4, 5), torch.randn(2, 2, 2, 5)]
    task = [7]
    monkeypatch.setattr(sampling_triton, "_graph_task", lambda: task[0])
    grads = sampling_triton.FrameGradients()
    first, new = grads.buffers(frames)
    assert new and all(torch.equal(b, torch.zeros_like(f)) for b, f in zip(first, frames))
    again, new = grads.buffers(frames)
    assert not new and all(a is b for a, b in zip(again, first))
    task[0] = 8  # another backward pass: its own buffers, the first pass's untouched
    other, new = grads.buffers(frames)
    assert new and all(a is not b for a, b in zip(other, first))
    del other, again, first  # autograd consumed them
    assert grads.buffers(frames)[1]
    task[0] = None  # PyTorch cannot say which pass runs: every sampling gets its own
    kept = [grads.buffers(frames) for _ in range(2)]
    assert all(new for _, new in kept) and kept[0][0][0] is not kept[1][0][0]


def test_graph_task_is_none_outside_a_backward_pass():
    assert sampling_triton._graph_task() is None
