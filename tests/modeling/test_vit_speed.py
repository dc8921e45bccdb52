"""The ViT's fast paths: which blocks activation checkpointing recomputes (``ViT.RECOMPUTE``) and
``torch.compile`` of the blocks' branches and of the neck (``ViT.COMPILE``)."""

import copy
import logging

import pytest
import torch

from stmixer.config import ConfigError, get_cfg, load_config
from stmixer.modeling import build_backbone, build_neck
from stmixer.modeling.backbones import vit
from stmixer.modeling.layers import compiled
from stmixer.modeling.layers.compiled import CompiledFunction

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not (CUDA and compiled.HAS_TRITON), reason="needs CUDA and Triton")


def tiny_cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_list(["ViT.EMBED_DIM", 32, "ViT.DEPTH", 4, "ViT.NUM_HEADS", 4, "ViT.DROP_PATH_RATE", 0.3,
                         "MODEL.STM.HIDDEN_DIM", 16, "MODEL.BACKBONE.CONV_BODY", "MAE-ViT-B", *opts])
    return cfg


def clip(batch=2, frames=4, size=(32, 48), device="cpu"):
    return torch.randn(batch, 3, frames, *size, generator=torch.Generator().manual_seed(1)).to(device)


def train_step(model, video, seed=0):
    """Backbone forward + backward with drop path drawing from ``seed``; (output, input grad, param grads)."""
    video = video.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = model([video])[0]
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), video.grad, grads


# ----------------------------------------------------------------------------- ViT.RECOMPUTE
def test_the_config_keys():
    cfg = get_cfg()
    assert (cfg.ViT.RECOMPUTE, cfg.ViT.RECOMPUTE_MEMORY_FRACTION, cfg.ViT.COMPILE) == ("auto", 0.25, "auto")
    assert load_config(opts=["ViT.COMPILE", "False"]).ViT.COMPILE is False
    assert load_config(opts=["ViT.COMPILE", "True"]).ViT.COMPILE is True
    for key, bad in (("ViT.RECOMPUTE", "some"), ("ViT.COMPILE", "always"), ("ViT.RECOMPUTE_MEMORY_FRACTION", 1.5)):
        with pytest.raises((ConfigError, ValueError), match=key.replace(".", r"\.")):
            load_config(opts=[key, bad])


def test_which_blocks_recompute_on_the_cpu():
    model = build_backbone(tiny_cfg())
    x = torch.zeros(2, 10, 32)
    assert model.recomputed_blocks(x) == 4  # "auto" on the CPU: every block, as the official code
    model.recompute = "all"
    assert model.recomputed_blocks(x) == 4
    with torch.no_grad():
        assert model.recomputed_blocks(x) == 0
    model.eval()
    assert model.recomputed_blocks(x) == 0
    model.train()
    model.use_checkpoint = False
    assert model.recomputed_blocks(x) == 0


class FakeCudaTokens:
    """Stands for CUDA tokens ``[B, N, D]`` in ``recomputed_blocks`` (only the device and sizes are read)."""

    is_cuda = True
    device = "cuda:0"

    def __init__(self, *shape, element_size=2):
        self.shape, self._element_size = shape, element_size

    def numel(self):
        return self.shape[0] * self.shape[1] * self.shape[2]

    def element_size(self):
        return self._element_size


@pytest.mark.parametrize("total_gib, fraction, expected", [(80, 0.25, 0), (24, 0.25, 4), (40, 0.25, 0),
                                                          (40, 0.1, 7), (80, 0.0, 12), (8, 0.25, 10)])
def test_auto_recomputes_the_fewest_blocks_that_fit_the_budget(monkeypatch, total_gib, fraction, expected):
    """A ViT-B at 8 clips of 256x448 in bfloat16: 0.70 GiB estimated per block (0.73 measured on an H100)."""
    model = vit.VisionTransformer3D(embed_dim=768, depth=12, num_heads=12, use_checkpoint=True, recompute="auto",
                                    recompute_memory_fraction=fraction)
    props = type("Props", (), {"total_memory": total_gib * 2**30})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    tokens = FakeCudaTokens(8, 8 * 16 * 28, 768)
    assert model.saved_bytes_per_block(tokens) / 2**30 == pytest.approx(0.70, abs=0.01)
    assert model.recomputed_blocks(tokens) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_saved_bytes_estimate_is_what_a_block_keeps(dtype):
    block = vit.Block(64, 4).to(dtype)
    x = torch.randn(2, 96, 64, dtype=dtype, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    kept = sum(n for n in storages.values() if n >= x.numel())  # activations, not weights or statistics
    model = vit.VisionTransformer3D(embed_dim=64, depth=1, num_heads=4)
    estimate = model.saved_bytes_per_block(x.detach())
    assert 0.8 <= kept / estimate <= 1.25, (kept, estimate)


@pytest.mark.parametrize("recomputed", [0, 1, 3])
def test_recomputing_some_blocks_gives_the_same_values_and_gradients(monkeypatch, recomputed):
    torch.manual_seed(0)
    model = build_backbone(tiny_cfg("ViT.COMPILE", False)).train()
    video = clip()
    want = train_step(model, video, seed=5)  # every block recomputed (the CPU)
    monkeypatch.setattr(type(model), "recomputed_blocks", lambda self, x: recomputed)
    got = train_step(model, video, seed=5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        assert torch.equal(got[2][name], want[2][name]), name
    # drop path drew the same samples: a different seed gives other values
    assert not torch.equal(train_step(model, video, seed=6)[0], want[0])


# ----------------------------------------------------------------------------- ViT.COMPILE
def test_auto_does_not_compile_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("torch.compile called"))
    model = build_backbone(tiny_cfg())
    neck = build_neck(tiny_cfg(), model.out_channels)
    assert neck.compile_mode == "auto" and all(b.compile_mode == "auto" for b in model.blocks)
    neck(model([clip()]))


def test_a_failed_compilation_warns_once_and_runs_eagerly(monkeypatch, caplog):
    from torch._dynamo.exc import Unsupported

    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise Unsupported("no graph for you")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    f = CompiledFunction(lambda module, x: module(x) * 2, "test function")
    relu = torch.nn.ReLU()
    x = torch.tensor([-1.0, 3.0])
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert torch.equal(f(True, relu, x), torch.tensor([0.0, 6.0]))
        assert torch.equal(f(True, relu, x), torch.tensor([0.0, 6.0]))
    assert len(calls) == 1 and "Unsupported" in f.failure
    messages = [r.getMessage() for r in caplog.records if "test function" in r.getMessage()]
    assert len(messages) == 1 and "no graph for you" in messages[0]


def test_calls_under_a_dispatch_mode_or_inside_a_compilation_run_eagerly(monkeypatch):
    """A FLOP count (FlopCounterMode) before training must not reach Dynamo: torch 2.11 then left the function
    eager for the rest of the process; the next plain call compiles."""
    from torch.utils.flop_counter import FlopCounterMode

    calls = []

    def fake_compile(fn, **kwargs):
        def compiled_fn(*args):
            calls.append(len(args))
            return fn(*args)
        return compiled_fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    f = CompiledFunction(lambda module, x: module(x), "test function")
    linear, x = torch.nn.Linear(3, 2), torch.ones(4, 3)
    with FlopCounterMode(display=False) as counter:
        y = f(True, linear, x)
    assert torch.equal(y, linear(x)) and calls == [] and f.failure is None
    assert counter.get_total_flops() == 2 * 4 * 3 * 2
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    f(True, linear, x)
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setattr(torch, "compile", fake_compile)
    f(True, linear, x)
    assert calls == [2]


def test_a_function_first_called_under_flop_counting_compiles_on_the_next_call(monkeypatch):
    """With real Dynamo (the eager backend, to spare Inductor's C++ build): torch 2.11 compiled nothing after a
    first call under FlopCounterMode when the call reached Dynamo."""
    from torch.utils.flop_counter import FlopCounterMode

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: real_compile(fn, backend="eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    f = CompiledFunction(lambda module, x: torch.nn.functional.gelu(module(x)) * 3, "test function")
    linear, x = torch.nn.Linear(8, 8), torch.randn(4, 8)
    with torch.no_grad(), FlopCounterMode(display=False):
        f(True, linear, x)
    assert torch.allclose(f(True, linear, x), torch.nn.functional.gelu(linear(x)) * 3)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1 and f.failure is None


def test_cuda_is_initialized_before_the_checkpointed_blocks_compile_on_the_cpu(monkeypatch):
    """On the CPU of a machine with a GPU: the first compilation initializes CUDA, which activation checkpointing
    (default device CUDA) refuses inside its forward; the backbone initializes it before the first block."""
    cuda = {"initialized": False, "inits": 0}

    def init():
        cuda.update(initialized=True, inits=cuda["inits"] + 1)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda["initialized"])
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    def fresh_branches():  # the shared ones may have compiled in an earlier test
        for name in ("ATTENTION_BRANCH", "MLP_BRANCH"):
            monkeypatch.setattr(vit, name, CompiledFunction(getattr(vit, name).fn, name))

    fresh_branches()
    seen_at_checkpoint = []

    def checkpoint(fn, *args, **kwargs):
        seen_at_checkpoint.append(cuda["initialized"])
        return fn(*args)

    monkeypatch.setattr(vit, "checkpoint", checkpoint)
    model = build_backbone(tiny_cfg("ViT.COMPILE", True, "ViT.USE_CHECKPOINT", True)).train()
    model([clip()])
    assert seen_at_checkpoint == [True] * 4 and cuda["inits"] == 1
    fresh_branches()
    model.set_compile_mode(False)
    cuda["initialized"] = False
    model([clip()])
    assert cuda["inits"] == 1 and len(seen_at_checkpoint) == 8  # nothing to compile: CUDA left alone


def test_an_error_of_the_model_is_not_swallowed(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # "compiled" = eager: the error is the model's
    f = CompiledFunction(lambda module, x: module(x), "test function")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        f(True, torch.nn.Linear(3, 2), torch.zeros(4, 5))
    assert f.failure is None
    with pytest.raises(ValueError, match="compile mode"):
        f("yes", torch.nn.ReLU(), torch.zeros(1))


def compiled_and_eager(cfg_opts, video, device="cpu", steps=2):
    """Backbone + neck trained a step with ViT.COMPILE True and False from the same weights."""
    torch.manual_seed(0)
    cfg = tiny_cfg("ViT.COMPILE", False, *cfg_opts)
    backbone = build_backbone(cfg).to(device)
    neck = build_neck(cfg, backbone.out_channels).to(device)
    eager = torch.nn.ModuleList([backbone, neck]).train()
    fast = copy.deepcopy(eager)
    fast[0].set_compile_mode(True)
    fast[1].compile_mode = True
    results = []
    for model in (eager, fast):
        per_step = []
        for step in range(steps):
            v = video.clone().requires_grad_(True)
            torch.manual_seed(step)
            levels = model[1](model[0]([v]))
            loss = sum((lvl * torch.cos(torch.arange(lvl.numel(), device=device).view_as(lvl) * 0.1)).sum()
                       for lvl in levels)
            loss.backward()
            per_step.append(([lvl.detach() for lvl in levels], v.grad,
                             {n: p.grad.clone() for n, p in model.named_parameters()}))
            model.zero_grad(set_to_none=True)
        results.append(per_step)
    return results


def assert_close_steps(eager, fast, tol):
    """Every level, input gradient and parameter gradient of ``fast`` within ``tol`` x the largest magnitude of
    ``eager``'s (gradients summed over many tokens cancel: an element-wise relative bound would test noise)."""
    for (lv_e, vg_e, g_e), (lv_f, vg_f, g_f) in zip(eager, fast):
        assert g_f.keys() == g_e.keys()
        pairs = [(f"level {i}", a, b) for i, (a, b) in enumerate(zip(lv_f, lv_e))] + [("video grad", vg_f, vg_e)]
        for name, a, b in pairs + [(n, g_f[n], g_e[n]) for n in g_e]:
            assert (a - b).abs().max() <= tol * b.abs().max(), name


def test_compiled_blocks_and_neck_equal_the_eager_ones_on_the_cpu():
    """Float32, drop path on: values and gradients within float32 rounding; two input shapes (the second
    compiles the dynamic-shape graph)."""
    eager, fast = compiled_and_eager([], clip())
    assert vit.ATTENTION_BRANCH.failure is None and vit.MLP_BRANCH.failure is None
    assert_close_steps(eager, fast, 2e-5)
    eager, fast = compiled_and_eager([], clip(size=(48, 32)), steps=1)
    assert_close_steps(eager, fast, 2e-5)


# ----------------------------------------------------------------------------- CUDA
@needs_cuda
def test_compiled_blocks_and_neck_equal_the_eager_ones_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager, fast = compiled_and_eager([], clip(device="cuda"), device="cuda")
    assert vit.ATTENTION_BRANCH.failure is None and vit.MLP_BRANCH.failure is None
    assert_close_steps(eager, fast, 2e-5)


@needs_cuda
def test_auto_compiles_and_skips_recomputation_on_cuda():
    cfg = tiny_cfg()
    model = build_backbone(cfg).cuda().train()
    tokens = torch.zeros(2, 64, 32, device="cuda")
    assert model.recomputed_blocks(tokens) == 0  # a tiny model fits any GPU
    assert vit.ATTENTION_BRANCH.wanted("auto", tokens)
    want = train_step(copy.deepcopy(model), clip(device="cuda"), seed=3)
    model.recompute = "all"
    got = train_step(model, clip(device="cuda"), seed=3)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)


@needs_cuda
def test_channels_last_maps_on_cuda_give_the_same_neck_outputs(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = tiny_cfg("ViT.COMPILE", False)
    backbone = build_backbone(cfg).cuda().eval()
    neck = build_neck(cfg, backbone.out_channels).cuda()
    assert backbone.channels_last_output
    with torch.no_grad():
        maps = backbone([clip(device="cuda")])
        assert maps[0].is_contiguous(memory_format=torch.channels_last_3d) and not maps[0].is_contiguous()
        got = neck(maps)
        backbone.channels_last_output = False
        maps = backbone([clip(device="cuda")])
        assert maps[0].is_contiguous()
        want = neck(maps)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_cpu_maps_stay_contiguous():
    backbone = build_backbone(tiny_cfg())
    assert backbone.channels_last_output
    assert backbone([clip()])[0].is_contiguous()


@pytest.mark.parametrize("tubelet, patch", [(2, 16), (1, 8), (3, 4)])
def test_the_tubelet_embedding_as_one_matrix_product_equals_the_convolution(tubelet, patch):
    torch.manual_seed(0)
    embed = vit.PatchEmbed(3, 24, patch, tubelet)
    video = torch.randn(2, 3, 2 * tubelet, 2 * patch, 3 * patch)
    results = []
    for as_matmul in (False, True):
        tokens, grid = embed.tokens(video, as_matmul=as_matmul)
        (tokens * torch.linspace(-1, 1, tokens.numel()).view_as(tokens)).sum().backward()
        results.append((tokens.detach(), grid, embed.proj.weight.grad.clone(), embed.proj.bias.grad.clone()))
        embed.zero_grad(set_to_none=True)
    (conv, grid, wg, bg), (mm, grid_mm, wg_mm, bg_mm) = results
    assert grid == grid_mm == (2, 2, 3) and mm.shape == conv.shape == (2, 12, 24)
    torch.testing.assert_close(mm, conv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wg_mm, wg, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bg_mm, bg, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        embed.tokens(video[..., 1:], as_matmul=True)
