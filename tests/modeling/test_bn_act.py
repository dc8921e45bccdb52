"""MODEL.BACKBONE.FUSED_TRAINING_BN (stmixer/modeling/backbones/bn_act.py): training-mode BatchNorm (+ residual)
(+ ReLU) as Triton kernels. Values, gradients, running statistics and ``num_batches_tracked`` equal the modules',
on the CPU through Triton's interpreter (TRITON_INTERPRET=1) and on CUDA; elsewhere the modules run."""

import contextlib
import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from stmixer.modeling import build_backbone
from stmixer.modeling.backbones import bn_act

CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(bn_act.triton is None, reason="needs Triton")
needs_cuda = pytest.mark.skipif(not (CUDA and bn_act.triton is not None), reason="needs CUDA and Triton")
CL = torch.channels_last_3d
HERE = Path(__file__).resolve()
# Triton decides at import whether its kernels run in the interpreter: the "interpreter" tests run in a subprocess
# started with TRITON_INTERPRET=1 (test_the_interpreter_tests_pass_in_a_subprocess)
IN_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
# What Triton 3.6's interpreter raises with NumPy 2.4+ at a kernel loop over a runtime bound (``range(0, ROWS, ...)``)
INTERPRETER_NUMPY_CLASH = "only 0-dimensional arrays can be converted to Python scalars"

# (shape [N, C, T, H, W], relu, residual): channels below and above one 64-channel block, not powers of two, and
# rows that leave the last tile and the last reduction chunk partly empty; channels that divide 64 with rows packed
# 64 / C to a tile row (8, 16, 1) or not (8 channels, 945 rows)
CASES = [((2, 5, 3, 4, 6), True, True), ((1, 70, 2, 3, 5), True, False), ((3, 8, 5, 7, 9), False, True),
         ((2, 130, 3, 7, 9), True, True), ((2, 33, 1, 1, 3), False, False), ((2, 8, 4, 6, 6), True, True),
         ((2, 16, 2, 4, 4), True, False), ((2, 1, 3, 8, 8), False, True)]


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's CPU interpreter for this test, every channel count allowed, a fresh self-check."""
    if bn_act.triton is None:
        pytest.skip("needs Triton")
    if not IN_INTERPRETER:
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_the_interpreter_tests_pass_in_a_subprocess")
    monkeypatch.setattr(bn_act, "MIN_CHANNELS", 1)
    monkeypatch.setattr(bn_act, "_SELF_CHECKS", {})
    monkeypatch.setattr(bn_act, "_warned", set())


def inputs(shape, dtype, residual, device="cpu", residual_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2 + 3).to(device, dtype).to(memory_format=CL).requires_grad_()
    r = None
    if residual:
        r = torch.randn(shape, generator=g).to(device, residual_dtype or dtype).to(memory_format=CL).requires_grad_()
    weight = (torch.rand(c, generator=g) + 0.5).to(device).requires_grad_()
    bias = torch.randn(c, generator=g).to(device).requires_grad_()
    stats = torch.randn(c, generator=g).to(device), (torch.rand(c, generator=g) + 0.5).to(device)
    grad = torch.randn(shape, generator=g).to(device)
    return x, r, weight, bias, stats, grad


def run(fn, x, r, weight, bias, stats, grad, relu, cast=None):
    """[output, running mean, running var, grad x, grad weight, grad bias(, grad residual)] of ``fn``."""
    if cast is not None:
        x, weight, bias = (t.detach().to(cast).requires_grad_() for t in (x, weight, bias))
        r = r.detach().to(cast).requires_grad_() if r is not None else None
    rm, rv = (s.clone().to(cast or s.dtype) for s in stats)
    y = fn(x, weight, bias, r, rm, rv, 0.1, 1e-5, relu)
    leaves = [x, weight, bias] + ([r] if r is not None else [])
    return [y, rm, rv] + list(torch.autograd.grad(y, leaves, grad.to(y.dtype)))


NAMES = ["output", "running mean", "running var", "grad x", "grad weight", "grad bias", "grad residual"]


def assert_close(got, want, tol):
    for name, g, w in zip(NAMES, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        err = (g.double() - w.double()).abs().max().item() / max(w.double().abs().max().item(), 1e-12)
        assert err <= tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("shape,relu,residual", CASES)
def test_the_kernels_equal_batchnorm_add_relu_in_the_interpreter(interpreter, shape, relu, residual):
    data = inputs(shape, torch.float32, residual)
    want = run(bn_act.reference, *data, relu)
    got = run(bn_act.FusedBatchNormAct.apply, *data, relu)
    assert got[0].is_contiguous(memory_format=CL) and got[3].is_contiguous(memory_format=CL)
    assert_close(got, want, 1e-5)


@pytest.mark.parametrize("residual_dtype", [torch.bfloat16, torch.float32])
def test_bfloat16_activations_stay_within_one_rounding_of_float64_in_the_interpreter(interpreter, residual_dtype):
    """bfloat16 input (and a bfloat16 or float32 residual): statistics and sums in float32, the output rounded once
    (the interpreter truncates, a GPU rounds to nearest: within 1 bfloat16 ulp = 2^-7 of the largest value)."""
    data = inputs((2, 40, 3, 5, 6), torch.bfloat16, True, residual_dtype=residual_dtype)
    truth = run(bn_act.reference, *data, True, cast=torch.float64)
    got = run(bn_act.FusedBatchNormAct.apply, *data, True)
    assert got[0].dtype == torch.promote_types(torch.bfloat16, residual_dtype)
    assert got[3].dtype == torch.bfloat16 and got[6].dtype == residual_dtype and got[4].dtype == torch.float32
    for name, g, w in zip(NAMES, got, truth):
        err = (g.double() - w).abs().max().item() / w.abs().max().item()
        assert err <= 2 ** -7, f"{name}: relative error {err:.2e}"


def backbone_pair(repo_root, name, fused_mode, *opts):
    from tests.modeling.test_fused_inference import backbone_cfg, randomize_batchnorms

    fused = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.FUSED_TRAINING_BN", fused_mode))
    plain = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.FUSED_TRAINING_BN", False))
    randomize_batchnorms(fused)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def training_step(backbone, videos, seed=1):
    """(outputs, parameter gradients, buffers) of one training forward and backward."""
    backbone.train()
    outs = backbone([v.clone() for v in videos])
    g = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outs)
    params = [p for p in backbone.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return outs, grads, [b.clone() for b in backbone.buffers()]


def assert_same(got, want, tol=1e-4):
    """Each tensor of ``got`` within ``tol`` of ``want`` in norm (integers equal): outputs and buffers relative to
    their own norms, gradients relative to the largest gradient's norm (some are 0 up to rounding: biases that a
    training-mode BatchNorm or the non-local softmax cancel)."""
    for kind, gs, ws in zip(("outputs", "gradients", "buffers"), got, want):
        assert len(gs) == len(ws)
        largest = max([w.double().norm().item() for w in ws if w.is_floating_point()] + [1e-30])
        for i, (g, w) in enumerate(zip(gs, ws)):
            if not w.is_floating_point():
                assert torch.equal(g, w), f"{kind} {i}"
                continue
            scale = largest if kind == "gradients" else max(w.double().norm().item(), 1e-30)
            err = (g.double() - w.double()).norm().item() / scale
            assert err <= tol, f"{kind} {i}: relative error {err:.2e}"


def count_kernel_calls(monkeypatch, device="cpu"):
    """A list that grows by one per ``FusedBatchNormAct`` call (after the self-check's own calls)."""
    assert bn_act.self_check(torch.device(device)) is None
    calls = []
    original = bn_act.FusedBatchNormAct.apply
    monkeypatch.setattr(bn_act.FusedBatchNormAct, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("name,frozen", [("PySlowfast-R50-K400-8x8.yaml", False),
                                         ("PySlowfast-R101-NL-K600-8x8.yaml", False),
                                         ("PySlowonly-R50-K400-4x16.yaml", True)])
def test_a_backbone_forward_is_the_same_with_the_kernels_in_the_interpreter(interpreter, repo_root, monkeypatch,
                                                                           name, frozen):
    """Every BatchNorm of a backbone (stems, blocks, shortcuts, lateral connections, non-local blocks; batch
    statistics, or frozen BatchNorm in training) through the kernels: the same outputs, running statistics and
    batch counts as the modules, and a backward that runs. (The gradients of a whole tiny backbone amplify the
    float rounding of BatchNorms over 4 values per channel and of ReLU inputs near 0 into ~10 % differences for
    the modules in float32 against float64 as much as for the kernels, and the last stages' outputs by up to
    ~3e-3: the blocks are compared one by one, tightly, below.)"""
    from tests.modeling.test_fused_inference import videos_for

    fused, plain = backbone_pair(repo_root, name, True, "MODEL.BACKBONE.FROZEN_BN", frozen)
    for b in (fused, plain):
        b.use_channels_last()
    calls = count_kernel_calls(monkeypatch)
    videos = [v.float().contiguous(memory_format=CL) for v in videos_for(fused, dtype=torch.float32)]
    got = training_step(fused, videos)
    assert len(calls) == sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules())  # every one of them
    want = training_step(plain, videos)
    assert all(torch.isfinite(g).all() for g in got[1]) and len(got[1]) == len(want[1])
    # a wrong residual, ReLU or statistic moves these by O(1); rounding moves the last stages by up to ~3e-3
    assert_same((got[0], (), got[2]), (want[0], (), want[2]), tol=1e-2)


def block_cases():
    from stmixer.modeling.backbones.resnet3d import (BatchNormSpec, NonLocalBlock, ResBlock, ResNetBasicStem,
                                                     ResNetSpec)
    from stmixer.modeling.backbones.slowfast import FuseFastToSlow

    bn = BatchNormSpec()
    return {
        "bottleneck, projection shortcut": (lambda: ResBlock(32, 64, 3, 2, 16, 1, 1, ResNetSpec(bn=bn)),
                                            (2, 32, 4, 8, 8)),
        "bottleneck, identity shortcut": (lambda: ResBlock(64, 64, 1, 1, 32, 1, 1, ResNetSpec(bn=bn)),
                                          (2, 64, 4, 6, 6)),
        "basic block": (lambda: ResBlock(32, 32, 3, 1, 32, 1, 1, ResNetSpec(bn=bn, trans_func="basic_transform")),
                        (2, 32, 3, 6, 6)),
        "stem": (lambda: ResNetBasicStem(3, 40, 5, bn), (2, 3, 4, 12, 12)),
        "non-local": (lambda: NonLocalBlock(48, 24, (1, 2, 2), "softmax", bn), (2, 48, 4, 6, 6)),
        "lateral connection": (lambda: FuseFastToSlow(32, 2, 5, 4, bn), [(2, 40, 2, 6, 6), (2, 32, 8, 6, 6)]),
    }


@pytest.mark.parametrize("case", list(block_cases()))
@pytest.mark.parametrize("frozen", [False, True])
def test_each_block_trains_the_same_with_the_kernels_in_the_interpreter(interpreter, monkeypatch, case, frozen):
    """One block at a time (batch statistics over 144+ values per channel): outputs, the input's and every
    parameter's gradient, running statistics and batch counts equal the modules' to float32 rounding."""
    from tests.modeling.test_fused_inference import randomize_batchnorms

    make, shape = block_cases()[case]
    torch.manual_seed(0)
    fused = randomize_batchnorms(make())
    plain = copy.deepcopy(fused)
    for m in fused.modules():
        if hasattr(type(m), "fused_training_bn"):
            m.fused_training_bn = True
    shapes = shape if isinstance(shape, list) else [shape]
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(s, generator=gen).contiguous(memory_format=CL) for s in shapes]
    calls = count_kernel_calls(monkeypatch)
    results = []
    for block in (fused, plain):
        block.to(memory_format=CL).train(not frozen)
        leaves = [x.clone().requires_grad_() for x in xs]
        out = block(leaves if isinstance(shape, list) else leaves[0])
        outs = out if isinstance(out, list) else [out]
        loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(2))).sum() for o in outs)
        grads = torch.autograd.grad(loss, leaves + list(block.parameters()))
        results.append(([o.detach() for o in outs], grads, [b.clone() for b in block.buffers()]))
    assert len(calls) == sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules())  # the fused block's, all
    # the non-local block: 6.6e-5 (from float64 the modules are 2.7e-5 off, the kernels 1.0e-5)
    assert_same(*results, tol=1e-4)


@needs_triton
@pytest.mark.skipif(IN_INTERPRETER, reason="starts the subprocess")
@pytest.mark.skipif(CUDA, reason="on a CUDA machine the CUDA tests check the kernels (with Triton 3.6 the "
                    "interpreter subprocess launched them for the GPU there)")
def test_the_interpreter_tests_pass_in_a_subprocess(repo_root):
    """How CI checks the kernels without a GPU: every test above named "interpreter", under TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE), "-k",
                             "interpreter and not subprocess"], cwd=repo_root, env=env, capture_output=True, text=True)
    if result.returncode and INTERPRETER_NUMPY_CLASH in result.stdout:
        import numpy
        import triton

        pytest.skip(f"Triton {triton.__version__}'s interpreter passes loop bounds as 1-element arrays, which NumPy "
                    f"{numpy.__version__} refuses to turn into ints ({INTERPRETER_NUMPY_CLASH!r}); Triton 3.8+ runs "
                    "these tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "deselected" in summary, summary


def test_auto_runs_the_modules_on_the_cpu(repo_root, monkeypatch):
    from tests.modeling.test_fused_inference import videos_for

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(bn_act.FusedBatchNormAct, "apply", staticmethod(lambda *a: 1 / 0))
    fused, plain = backbone_pair(repo_root, "PySlowfast-R50-K400-8x8.yaml", "auto")
    videos = videos_for(fused, dtype=torch.float32)
    for a, b in zip(training_step(fused, videos)[0], training_step(plain, videos)[0]):
        assert torch.equal(a, b)
    assert not bn_act.wanted(True, torch.device("cpu"))  # True too: the CPU needs the interpreter


def test_only_what_the_kernels_compute_exactly_is_sent_to_them_in_the_interpreter(interpreter):
    bn = nn.BatchNorm3d(40).train()
    x = torch.randn(2, 40, 2, 3, 3).to(memory_format=CL)
    assert bn_act.fusable(True, x, bn) and bn_act.fusable(True, x, bn, torch.randn_like(x))
    assert not bn_act.fusable(False, x, bn)
    assert not bn_act.fusable(True, x.contiguous(), bn)  # NCDHW
    assert not bn_act.fusable(True, x.double(), bn)
    assert not bn_act.fusable(True, x, bn, torch.randn(2, 40, 2, 3, 3))  # an NCDHW residual
    assert not bn_act.fusable(True, x, bn, torch.randn(2, 40, 1, 3, 3).to(memory_format=CL))
    assert not bn_act.fusable(True, x[:1, :, :1, :1, :1], bn)  # one value per channel: the module raises
    assert bn_act.fusable(True, x, nn.BatchNorm3d(40).eval())  # frozen BatchNorm: the running statistics
    assert bn_act.fusable(True, x[:1, :, :1, :1, :1], nn.BatchNorm3d(40).eval())
    assert not bn_act.fusable(True, x, nn.BatchNorm3d(40, momentum=None))  # a cumulative average in training
    assert bn_act.fusable(True, x, nn.BatchNorm3d(40, momentum=None).eval())
    assert not bn_act.fusable(True, x, nn.BatchNorm3d(40, affine=False))
    assert not bn_act.fusable(True, x, nn.BatchNorm3d(40, track_running_stats=False))
    # SyncBatchNorm without a process group normalizes with this batch's statistics, as BatchNorm3d
    assert bn_act.fusable(True, x, nn.SyncBatchNorm(40)) and bn_act.fusable(True, x, nn.SyncBatchNorm(40).eval())
    assert not bn_act.fusable(True, torch.randn(2, 40, 3, 3), nn.SyncBatchNorm(40))  # not [N, C, T, H, W]
    assert not bn_act.fusable(True, x, nn.BatchNorm2d(40))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bn_act, "MIN_CHANNELS", 41)
        assert not bn_act.fusable(True, x, bn)
        small = nn.BatchNorm3d(8)
        assert bn_act.fusable(True, torch.randn(2, 8, 2, 2, 2).to(memory_format=CL), small)  # 64 values a tile row
        assert not bn_act.fusable(True, torch.randn(1, 8, 1, 1, 7).to(memory_format=CL), small)  # 7 rows: no packs
    assert not bn_act.fusable("auto", x, bn)  # "auto" wants a CUDA GPU of compute capability 8.0+


def test_bn_act_updates_the_module_like_its_forward_in_the_interpreter(interpreter):
    bn = nn.BatchNorm3d(40).train()
    twin = nn.BatchNorm3d(40).train()
    x = torch.randn(2, 40, 2, 3, 3).to(memory_format=CL)
    relu = nn.ReLU(inplace=True)
    for _ in range(2):
        got = bn_act.bn_act(True, x, bn, relu)
        want = torch.relu(twin(x))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == twin.num_batches_tracked.item() == 2
    torch.testing.assert_close(bn.running_mean, twin.running_mean)
    torch.testing.assert_close(bn.running_var, twin.running_var)
    # not fusable (NCDHW): the modules, as the block had them
    ones = torch.ones_like(x)
    y = bn_act.bn_act(True, x.contiguous(), bn, None, residual=ones)
    assert torch.equal(y, ones + twin(x.contiguous()))
    assert bn.num_batches_tracked.item() == twin.num_batches_tracked.item() == 3
    torch.testing.assert_close(bn.running_var, twin.running_var)


# SyncBatchNorm in training over a process group (bn_act.sync_group): (shape [N, C, T, H, W] of rank 0's batch,
# rank 1's batch size, relu, residual): channels above one 64-channel block; 8 channels with packed rows; rows
# that leave partial tiles and chunks; rank 1 with fewer clips than rank 0 (different counts to merge)
SYNC_CASES = [((2, 70, 3, 5, 6), 1, True, True), ((2, 8, 4, 6, 6), 3, True, False), ((1, 40, 3, 5, 7), 1, False, True)]


def _sync_inputs(shape, n1, relu, residual, device="cpu"):
    """(x, residual, weight, bias, running stats, output gradient) of both processes' clips together."""
    full = (shape[0] + n1,) + tuple(shape[1:])
    return inputs(full, torch.float32, residual, device=device, seed=3)


def _sync_run(group, shape, n1, relu, residual, rank, device="cpu"):
    """Rank ``rank``'s part of the both-processes batch through ``FusedBatchNormAct`` over ``group``: [output,
    running mean, running var, grad x, grad weight, grad bias(, grad residual)]."""
    x, r, weight, bias, stats, grad = _sync_inputs(shape, n1, relu, residual, device)
    rows = slice(0, shape[0]) if rank == 0 else slice(shape[0], None)
    x = x.detach()[rows].contiguous(memory_format=CL).requires_grad_()
    r = r.detach()[rows].contiguous(memory_format=CL).requires_grad_() if r is not None else None

    def fused(*args):
        return bn_act.FusedBatchNormAct.apply(*args, True, group)

    return run(fused, x, r, weight, bias, stats, grad[rows], relu)


def _sync_worker(rank, init_file, results_dir, device="cpu"):
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(minutes=5))
    try:
        bn_act.MIN_CHANNELS = 1
        results = [_sync_run(dist.group.WORLD, *case, rank, device) for case in SYNC_CASES]
        torch.save([[t.detach().cpu() for t in r] for r in results], Path(results_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _check_two_processes(results_dir, tol):
    """Each rank's results (``_sync_worker``) against PyTorch's BatchNorm over both ranks' clips at once, on the CPU."""
    ranks = [torch.load(Path(results_dir) / f"rank{rank}.pt") for rank in range(2)]
    for case, got0, got1 in zip(SYNC_CASES, *ranks):
        shape, n1, relu, residual = case
        data = _sync_inputs(shape, n1, relu, residual)
        want = run(bn_act.reference, *data, relu)
        n0 = shape[0]
        for got, rows in ((got0, slice(0, n0)), (got1, slice(n0, None))):
            per_rank = [want[0][rows], want[1], want[2], want[3][rows]]
            assert_close(got[:4], per_rank, tol)
            if residual:
                assert_close(got[6:], [want[6][rows]], tol)
        for k in (4, 5):  # weight, bias: each process's own sums; together the whole batch's
            assert_close([got0[k] + got1[k]], [want[k]], tol)
            assert (got0[k] - want[k]).abs().max() > 1e-3, f"{NAMES[k]}: rank 0 has the whole batch's gradient"


def test_two_processes_normalize_with_the_statistics_of_both_batches_in_the_interpreter(interpreter, tmp_path):
    """SyncBatchNorm on two gloo processes with batches of different sizes: each process's output and input
    gradient equal BatchNorm's over both batches at once, the running statistics too (on both processes);
    the weight and bias gradients are each process's own (they add up to the whole batch's)."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    _check_two_processes(tmp_path, 1e-5)


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_the_collective_path_of_one_process_equals_batchnorm_in_the_interpreter(interpreter, one_process_group,
                                                                                monkeypatch):
    """A training SyncBatchNorm in a group of one process normalizes locally, as the module does; with
    ``SYNC_ONE_PROCESS`` (benchmarks) it takes the collective path, whose values are the same."""
    sync = nn.SyncBatchNorm(40).train()
    assert bn_act.sync_group(sync) is None and bn_act.sync_group(nn.BatchNorm3d(40)) is None
    monkeypatch.setattr(bn_act, "SYNC_ONE_PROCESS", True)
    assert bn_act.sync_group(sync) is one_process_group and bn_act.sync_group(sync.eval()) is None
    for shape, _, relu, residual in SYNC_CASES:
        data = inputs(shape, torch.float32, residual)
        want = run(bn_act.reference, *data, relu)
        got = run(lambda *args: bn_act.FusedBatchNormAct.apply(*args, True, one_process_group), *data, relu)
        assert_close(got, want, 1e-5)


def test_a_synchronizing_syncbatchnorm_takes_the_same_path_whatever_its_batch_in_the_interpreter(
        interpreter, one_process_group, monkeypatch):
    """Where SyncBatchNorm synchronizes, every process must take the kernels' collective or every process the
    module's: the local batch's size (which differs between processes) decides nothing."""
    monkeypatch.setattr(bn_act, "MIN_CHANNELS", 32)
    monkeypatch.setattr(bn_act, "SYNC_ONE_PROCESS", True)
    sync = nn.SyncBatchNorm(8, process_group=bn_act.new_sync_group()).train()
    plain = nn.BatchNorm3d(8).train()
    unpackable = torch.randn(1, 8, 1, 1, 7).to(memory_format=CL)  # 7 rows: no packs of 8
    one_row = torch.randn(1, 8, 1, 1, 1).to(memory_format=CL)
    assert not bn_act.fusable(True, unpackable, plain) and not bn_act.fusable(True, one_row, plain)
    assert bn_act.fusable(True, unpackable, sync) and bn_act.fusable(True, one_row, sync)
    y = bn_act.bn_act(True, unpackable, sync, nn.ReLU())
    torch.testing.assert_close(y, torch.relu(nn.BatchNorm3d(8).train()(unpackable)), rtol=1e-5, atol=1e-6)
    assert sync.num_batches_tracked.item() == 1


def test_only_a_new_sync_group_sends_syncbatchnorm_to_the_kernels_in_the_interpreter(interpreter, one_process_group,
                                                                                     monkeypatch):
    """Synchronizing SyncBatchNorm on the default group (which DistributedDataParallel shares) keeps PyTorch's module;
    on a ``new_sync_group`` group the kernels run, with one all_gather forward and one all_reduce backward, and
    none inside ``skip_collectives`` (a capture's warm-up), forward or backward."""
    import torch.distributed as dist

    monkeypatch.setattr(bn_act, "SYNC_ONE_PROCESS", True)
    x = torch.randn(2, 40, 2, 3, 3).to(memory_format=CL)
    assert not bn_act.fusable(True, x, nn.SyncBatchNorm(40).train())  # the default group: PyTorch's
    assert bn_act.fusable(True, x, nn.SyncBatchNorm(40).eval())  # eval mode synchronizes nothing
    group = bn_act.new_sync_group()
    assert group is not one_process_group and bn_act.kernels_synchronize(group)
    assert not bn_act.kernels_synchronize(one_process_group)
    calls = []
    real_gather, real_all_reduce = bn_act._all_gather, dist.all_reduce
    monkeypatch.setattr(bn_act, "_all_gather", lambda *a: calls.append("all_gather") or real_gather(*a))
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: calls.append("all_reduce") or real_all_reduce(*a, **k))
    relu = nn.ReLU()
    results = []
    for skip in (False, True):
        bn = nn.SyncBatchNorm(40, process_group=group).train()
        leaf = x.clone().requires_grad_()
        with bn_act.skip_collectives() if skip else contextlib.nullcontext():
            y = bn_act.bn_act(True, leaf, bn, relu)
            y.square().sum().backward()
        results.append((y.detach(), leaf.grad, bn.running_var.clone()))
        assert calls == ([] if skip else ["all_gather", "all_reduce"])
        calls.clear()
    for a, b in zip(*results):  # one process: its own statistics are everyone's
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    with bn_act.skip_collectives(), pytest.raises(RuntimeError, match="needs the Triton kernels"):
        bn_act.bn_act(True, x.contiguous(), nn.SyncBatchNorm(40, process_group=group).train(), relu)  # NCDHW


@needs_triton
def test_a_failed_self_check_leaves_the_modules(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bn_act, "_SELF_CHECKS", {})
    monkeypatch.setattr(bn_act, "_warned", set())
    monkeypatch.setattr(bn_act, "_self_check_run", lambda device: 1 / 0)
    with caplog.at_level(logging.WARNING, logger=bn_act.__name__):
        assert not bn_act.wanted(True, torch.device("cpu"))
        assert not bn_act.wanted(True, torch.device("cpu"))
    messages = [r.getMessage() for r in caplog.records if "FUSED_TRAINING_BN" in r.getMessage()]
    assert len(messages) == 1 and "ZeroDivisionError" in messages[0]


def test_parity_runs_use_the_modules(tmp_path):
    from stmixer.tools.reference_parity import fixture_config

    (tmp_path / "config.yaml").write_text("MODEL:\n  BACKBONE:\n    FUSED_TRAINING_BN: auto\n")
    assert fixture_config(tmp_path).MODEL.BACKBONE.FUSED_TRAINING_BN is False


@needs_cuda
@pytest.mark.parametrize("shape,relu,residual", CASES + [((4, 256, 4, 32, 56), True, True)])
def test_the_kernels_equal_batchnorm_add_relu_on_cuda(shape, relu, residual, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    data = inputs(shape, torch.float32, residual, device="cuda")
    want = run(bn_act.reference, *data, relu)
    got = run(bn_act.FusedBatchNormAct.apply, *data, relu)
    # a ReLU whose input is within float rounding of 0 may mask differently: compare where both agree
    keep = (got[0] > 0) == (want[0] > 0)
    assert keep.float().mean().item() > 0.999
    for i in (0, 3) + ((6,) if residual else ()):
        got[i], want[i] = got[i] * keep, want[i] * keep
    assert_close(got, want, 1e-4)


@needs_cuda
def test_two_processes_on_one_gpu_normalize_with_the_statistics_of_both_batches(tmp_path):
    """The compiled kernels' collective path with two processes whose batches differ in size, both on one GPU
    (NCCL refuses two processes on one device; gloo carries the CUDA tensors): the values of BatchNorm over
    both batches at once, as in the interpreter test."""
    import torch.multiprocessing as mp

    mp.spawn(_sync_worker, args=(str(tmp_path / "init"), str(tmp_path), "cuda"), nprocs=2)
    _check_two_processes(tmp_path, 1e-4)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_collective_path_on_one_nccl_process_equals_the_local_one(dtype, tmp_path):
    """The SyncBatchNorm path on CUDA (NCCL all_gather and all_reduce, one process with ``SYNC_ONE_PROCESS``):
    the same outputs, running statistics and gradients as the local kernels, in eager calls and replayed from a
    CUDA graph that holds the collectives."""
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        group = dist.group.WORLD
        for shape, _, relu, residual in SYNC_CASES + [((4, 256, 4, 32, 56), 1, True, True)]:
            # bfloat16: no ReLU (outputs within a rounding of 0 may mask differently on the two paths)
            relu = relu and dtype == torch.float32
            data = inputs(shape, dtype, residual, device="cuda")
            want = run(bn_act.FusedBatchNormAct.apply, *data, relu)
            got = run(lambda *args: bn_act.FusedBatchNormAct.apply(*args, True, group), *data, relu)
            assert_close(got, want, 1e-6 if dtype == torch.float32 else 1e-2)
        x, r, weight, bias, stats, grad = inputs((2, 64, 4, 8, 8), dtype, True, device="cuda")
        rm, rv = (t.clone() for t in stats)

        def step():
            xs, rs = x.detach().requires_grad_(), r.detach().requires_grad_()
            y = bn_act.FusedBatchNormAct.apply(xs, weight, bias, rs, rm, rv, 0.1, 1e-5, True, True, group)
            return [y.detach(), *torch.autograd.grad(y, [xs, weight, bias, rs], grad.to(y.dtype))]

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step()
        rm.copy_(stats[0]), rv.copy_(stats[1])
        eager = step()
        rm_eager, rv_eager = rm.clone(), rv.clone()
        rm.copy_(stats[0]), rv.copy_(stats[1])
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(captured, eager):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(rm, rm_eager, rtol=0, atol=0)
        torch.testing.assert_close(rv, rv_eager, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()


@needs_cuda
def test_bfloat16_on_cuda_is_closer_to_float64_than_pytorch(monkeypatch):
    data = inputs((4, 256, 4, 32, 56), torch.bfloat16, True, device="cuda")
    truth = run(bn_act.reference, *data, True, cast=torch.float64)
    native = run(bn_act.reference, *data, True)
    got = run(bn_act.FusedBatchNormAct.apply, *data, True)
    for name, g, n, w in zip(NAMES, got, native, truth):
        err = (g.double() - w).abs().max().item() / w.abs().max().item()
        assert err <= max(2 ** -8, 1.01 * (n.double() - w).abs().max().item() / w.abs().max().item()), name


@needs_cuda
def test_a_cuda_backbone_trains_the_same_with_the_kernels(repo_root, monkeypatch):
    from tests.modeling.test_fused_inference import videos_for

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fused, plain = backbone_pair(repo_root, "PySlowfast-R50-K400-8x8.yaml", "auto")
    fused, plain = fused.cuda(), plain.cuda()
    monkeypatch.setattr(bn_act, "MIN_CHANNELS", 1)
    calls = count_kernel_calls(monkeypatch, "cuda")
    videos = videos_for(fused, dtype=torch.float32, device="cuda")
    got = training_step(fused, videos)
    assert len(calls) == sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules())
    want = training_step(plain, videos)
    assert all(torch.isfinite(g).all() for g in got[1]) and len(got[1]) == len(want[1])
    assert_same((got[0], (), got[2]), (want[0], (), want[2]), tol=1e-3)
