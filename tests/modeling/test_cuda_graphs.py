"""CUDA graphs of the STMixer detector (MODEL.CUDA_GRAPH.*): never used off CUDA, equal to the eager path on CUDA
(values, gradients, BatchNorm statistics; the CUDA tests skip without a GPU)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stmixer.config import ConfigError, get_cfg, validate_config
from stmixer.modeling import build_detector
from stmixer.modeling.cuda_graphs import GraphedPart, parameter_stand_ins

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def tiny_cfg(repo_root, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "synthetic" / "tiny-slowonly.yaml"))
    cfg.merge_from_list(["MODEL.BACKBONE.CHANNELS_LAST", False, "TF32_MATMUL", False, *opts])
    return cfg


def batch(seed, B=2, H=64, W=96, device="cpu", T=4, actions=9):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 3, T, H, W, generator=g)
    whwh = torch.tensor([[W - 8 * i, H, W - 8 * i, H] for i in range(B)], dtype=torch.float32)
    boxes, labels = [], []
    for i in range(B):
        n = 1 + i % 3
        xy = torch.rand(n, 2, generator=g) * torch.tensor([W / 2, H / 2])
        wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([W / 3, H / 3])
        boxes.append(torch.cat([xy, xy + wh], 1).to(device))
        labels.append((torch.rand(n, actions, generator=g) < 0.3).float().to(device))
    return video.to(device), whwh.to(device), boxes, labels


def train_pass(model, data, backwards=1):
    video, whwh, boxes, labels = data
    losses = model(video, None, whwh, boxes, labels)
    total = sum(losses.values()) / len(losses)
    for _ in range(backwards):
        total.backward(retain_graph=backwards > 1)
    return {k: v.detach().clone() for k, v in losses.items()}


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def pair(repo_root, device, scope="model", *opts):
    torch.manual_seed(0)
    eager = build_detector(tiny_cfg(repo_root, "MODEL.CUDA_GRAPH.SCOPE", "off", *opts)).to(device)
    graphed = build_detector(tiny_cfg(repo_root, "MODEL.CUDA_GRAPH.SCOPE", scope, *opts)).to(device)
    graphed.load_state_dict(eager.state_dict())
    return eager, graphed


def assert_same(a, b, tol):
    """Every tensor of ``a`` within ``tol`` of ``b``'s, relative to ``b``'s norm (0: equal).

    Relative to the norm, not per element: two eager CUDA runs already differ where atomics
    (grid_sample's backward, some cuDNN backward kernels) add in a different order; a gradient
    element near 0 then differs by 1e-3 of itself while the tensor agrees to ~1e-6."""
    assert a.keys() == b.keys()
    for k in a:
        if tol == 0:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
            continue
        assert a[k].shape == b[k].shape, k
        diff, norm = (a[k].double() - b[k].double()).norm().item(), b[k].double().norm().item()
        assert diff <= tol * norm + 1e-12, f"{k}: relative difference {diff / norm:.2e}"


def test_scope_is_validated(repo_root):
    cfg = tiny_cfg(repo_root, "MODEL.CUDA_GRAPH.SCOPE", "all")
    with pytest.raises(ConfigError, match="MODEL.CUDA_GRAPH.SCOPE"):
        validate_config(cfg)
    cfg = tiny_cfg(repo_root, "MODEL.CUDA_GRAPH.MAX_GRAPHS", 0)
    with pytest.raises(ConfigError, match="MODEL.CUDA_GRAPH.MAX_GRAPHS"):
        validate_config(cfg)


def test_graphs_are_not_used_on_the_cpu(repo_root):
    eager, graphed = pair(repo_root, "cpu")
    eager.train(), graphed.train()
    data = batch(0)
    assert_same(train_pass(graphed, data), train_pass(eager, data), 0.0)
    assert_same(grads(graphed), grads(eager), 0.0)
    assert graphed._graphed is None  # never built off CUDA
    part = GraphedPart(lambda x: (x * 2,), torch.nn.Linear(1, 1))
    assert part(torch.ones(2)) is None  # the caller runs eagerly


def test_parameter_stand_ins_share_memory_take_the_gradients_and_are_restored():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    model.append(model[0])  # a shared (tied) module: its parameters appear twice in the tree
    model[2].bias.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    originals = dict(model.named_parameters(remove_duplicate=False))
    x = torch.randn(5, 3)
    expected = torch.autograd.grad(model(x).square().sum(), params)
    with parameter_stand_ins(model, params) as stand_ins:
        assert model[0].weight is model[3].weight is stand_ins[0]  # one stand-in for the shared parameter
        assert all(s is not p and s.data_ptr() == p.data_ptr() and s.is_leaf for s, p in zip(stand_ins, params))
        assert model[2].bias is originals["2.bias"]  # frozen: not replaced
        got = torch.autograd.grad(model(x).square().sum(), stand_ins)
        assert all(p.grad is None for p in params)
    assert dict(model.named_parameters(remove_duplicate=False)).items() == originals.items()
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_a_graphed_part_does_not_keep_its_module_alive():
    """The detector owns its GraphedPart: no reference cycle, so dropping the detector frees the graphs' memory
    at once, without waiting for a garbage collection."""
    import gc
    import weakref

    gc.disable()
    try:
        module = torch.nn.Linear(2, 2)
        module.part = GraphedPart(module.forward, module)
        module.part._hooked()  # lists the module tree
        alive = weakref.ref(module)
        del module
        assert alive() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_tf32_matmuls_are_scoped_to_the_forward_on_cuda(repo_root, device):
    """TF32_MATMUL: the STMixer forward turns TF32 matmuls on for CUDA inputs and restores PyTorch's setting."""
    model = build_detector(tiny_cfg(repo_root, "TF32_MATMUL", True, "MODEL.CUDA_GRAPH.SCOPE", "off")).to(device)
    model.eval()
    seen = []
    model.stm_head.register_forward_hook(lambda *_: seen.append(torch.backends.cuda.matmul.allow_tf32))
    video, whwh, _, _ = batch(8, device=device)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            model(video, None, whwh)
        assert seen == [device == "cuda"]
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_copies_and_pickles_of_a_detector_start_without_graphs(repo_root):
    import copy

    model = build_detector(tiny_cfg(repo_root))
    model._graphed, model._graph_scope = GraphedPart(model._model_outputs, model), "model"
    for other in (copy.deepcopy(model), torch.load(save(model), weights_only=False)):
        assert other._graphed is None and other._graph_scope is None
        assert other.cuda_graph == "model" and other.state_dict().keys() == model.state_dict().keys()
    assert model._graphed is not None and model._graphed.module is model


def save(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.fixture
def exact_cuda():
    """float32 CUDA math without TF32 (graph replays and eager steps then run the same kernels)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@needs_cuda
@pytest.mark.parametrize("scope,channels_last", [("model", False), ("decoder", False), ("model", True), ("split", False),
                                                 ("split", True)])
def test_graphed_training_equals_eager(repo_root, exact_cuda, scope, channels_last):
    # channels_last: the backbone moves its weights to NDHWC on its first CUDA forward (before the capture)
    eager, graphed = pair(repo_root, "cuda", scope, "MODEL.BACKBONE.CHANNELS_LAST", channels_last)
    eager.train(), graphed.train()
    shapes = [(64, 96), (64, 96), (96, 64), (64, 96)]  # replays, a second captured shape, back to the first
    for step, (H, W) in enumerate(shapes):
        data = batch(step, H=H, W=W, device="cuda")
        for model in (eager, graphed):
            model.zero_grad(set_to_none=True)
        expected, got = train_pass(eager, data), train_pass(graphed, data)
        assert_same(got, expected, 1e-5)
        assert_same(grads(graphed), grads(eager), 1e-4)
    assert len(graphed._graphed.graphs) == 2  # not captured again: the weights did not move after the capture
    if scope == "split":
        assert len(graphed._graphed_backbone.graphs) == 2 and graphed._graphed_backbone is not graphed._graphed
    # BatchNorm running statistics (FROZEN_BN False here) move as in eager steps; captures changed none
    assert_same({k: v for k, v in graphed.state_dict().items() if "running" in k},
                {k: v for k, v in eager.state_dict().items() if "running" in k}, 1e-5)


@needs_cuda
def test_gradients_accumulate_and_pending_backward_falls_back(repo_root, exact_cuda):
    eager, graphed = pair(repo_root, "cuda")
    eager.train(), graphed.train()
    first, second = batch(1, device="cuda"), batch(2, device="cuda")
    for model in (eager, graphed):
        train_pass(model, first)  # captures (graphed) / plain step
        model.zero_grad(set_to_none=True)
        # two micro-batches into the same .grad (gradient accumulation)
        train_pass(model, first)
        train_pass(model, second)
    assert_same(grads(graphed), grads(eager), 1e-4)
    # two forwards before their backwards: the second cannot reuse the graph's activations, it runs eagerly
    for model in (eager, graphed):
        model.zero_grad(set_to_none=True)
        video, whwh, boxes, labels = first
        a = model(video, None, whwh, boxes, labels)
        b = model(*second[:1], None, second[1], second[2], second[3])
        (sum(a.values()) + sum(b.values())).backward()
    assert_same(grads(graphed), grads(eager), 1e-4)


@needs_cuda
@pytest.mark.parametrize("scope", ["model", "split"])
def test_graphed_steps_under_ddp_equal_eager(repo_root, exact_cuda, tmp_path, scope):
    """DistributedDataParallel (one NCCL process on this GPU): the replays' parameter gradients reach DDP's
    reducer through the usual accumulation, and the reduced gradients equal the eager ones. With "split" every
    decoder gradient is final before the backbone's first one (DDP can all-reduce them while the backbone's
    backward replays); "model" hands every gradient over at its end."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        eager, graphed = pair(repo_root, "cuda", scope)
        eager.train(), graphed.train()
        order = []
        for name, p in graphed.named_parameters():
            if p.requires_grad and name.startswith(("backbone.", "stm_head.")):
                p.register_post_accumulate_grad_hook(lambda p, name=name: order.append(name.split(".")[0]))
        wrapped = [DistributedDataParallel(m, device_ids=[torch.cuda.current_device()]) for m in (eager, graphed)]
        for step in range(3):
            data = batch(step, device="cuda")
            for model in wrapped:
                model.zero_grad(set_to_none=True)
            order.clear()
            expected, got = train_pass(wrapped[0], data), train_pass(wrapped[1], data)
            assert_same(got, expected, 1e-5)
            assert_same(grads(graphed), grads(eager), 1e-4)
            assert set(order) == {"backbone", "stm_head"}
            if scope == "split":
                assert order.index("backbone") == order.count("stm_head")  # every decoder gradient first
        assert len(graphed._graphed.graphs) == 1  # DDP adds no module hook: the steps were replays
    finally:
        dist.destroy_process_group()


@needs_cuda
def test_max_graphs_and_eval_replay(repo_root, exact_cuda):
    eager, graphed = pair(repo_root, "cuda", "model", "MODEL.CUDA_GRAPH.MAX_GRAPHS", 1)
    eager.eval(), graphed.eval()
    with torch.no_grad():
        for H, W in [(64, 96), (64, 96), (96, 64)]:
            video, whwh, _, _ = batch(3, H=H, W=W, device="cuda")
            for got, expected in zip(graphed(video, None, whwh), eager(video, None, whwh)):
                assert torch.equal(got["query_indices"], expected["query_indices"])
                torch.testing.assert_close(got["scores"], expected["scores"], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=1e-5, atol=1e-5)
    assert len(graphed._graphed.graphs) == 1  # the second shape ran eagerly


@needs_cuda
def test_bf16_autocast_replay_is_close_to_eager(repo_root):
    eager, graphed = pair(repo_root, "cuda")
    eager.train(), graphed.train()
    for step in range(3):
        data = batch(step, device="cuda")
        for model in (eager, graphed):
            model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected = train_pass(eager, data)
            got = train_pass(graphed, data)
        assert_same(got, expected, 2e-2)
    key = next(iter(graphed._graphed.graphs))
    assert key[-1] == torch.bfloat16  # captured under autocast


@needs_cuda
def test_parameters_given_new_memory_are_captured_again(repo_root, exact_cuda):
    eager, graphed = pair(repo_root, "cuda")
    eager.eval(), graphed.eval()
    video, whwh, _, _ = batch(4, device="cuda")
    with torch.no_grad():
        graphed(video, None, whwh)
        first = next(iter(graphed._graphed.graphs.values()))
        for p in list(graphed.parameters()) + list(eager.parameters()):
            p.data = p.data * 0.5  # new storage: a replay of the old graph would read the old weights
        got, expected = graphed(video, None, whwh), eager(video, None, whwh)
    assert next(iter(graphed._graphed.graphs.values())) is not first
    for g, e in zip(got, expected):
        torch.testing.assert_close(g["scores"], e["scores"], rtol=1e-5, atol=1e-5)


@needs_cuda
def test_module_hooks_make_the_call_eager(repo_root, exact_cuda):
    """A forward hook (feature extraction) sees every call: graphs stand aside while it is registered."""
    _, graphed = pair(repo_root, "cuda")
    graphed.eval()
    video, whwh, _, _ = batch(5, device="cuda")
    seen = []
    handle = graphed.backbone.register_forward_hook(lambda m, i, o: seen.append(o[0].sum().item()))
    with torch.no_grad():
        graphed(video, None, whwh)
        graphed(video * 2, None, whwh)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert graphed._graphed is None or not graphed._graphed.graphs
    handle.remove()
    with torch.no_grad():
        graphed(video, None, whwh)
    assert len(graphed._graphed.graphs) == 1 and len(seen) == 2  # captured now; the removed hook saw nothing


BACKBONES = {  # official configs, made small: (yaml, overrides, slow frames, fast frames)
    "slowonly_tiny": ("synthetic/tiny-slowonly.yaml", [], 4, None),
    "slowfast_r50": ("PySlowfast-R50-K400-8x8.yaml", ["RESNET.WIDTH_PER_GROUP", 8], 8, 32),
    "slowfast_r101_nl": ("PySlowfast-R101-NL-K600-8x8.yaml", ["RESNET.WIDTH_PER_GROUP", 8], 8, 32),
    "vit_b": ("VMAE-ViTB-16x4.yaml", ["ViT.DEPTH", 2], 16, None),
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_the_captured_part_copies_nothing_from_the_host(repo_root, monkeypatch, backbone):
    """A capture may not copy host data to the device nor synchronize: backbone, neck and decoder stages make
    no tensor from Python values and read no value back (checked on the CPU, where the same code runs)."""
    yaml, opts, slow, fast = BACKBONES[backbone]
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / yaml))
    cfg.merge_from_list(opts)
    model = build_detector(cfg).train()
    video, whwh, _, _ = batch(6, T=slow)
    fast_video = torch.randn(2, 3, fast, 64, 96) if fast else None
    whwh = model.stm_head.clip_sizes(whwh, video)

    def refuse(*args, **kwargs):
        raise AssertionError("tensor from host data inside the captured part")

    for name in ("tensor", "as_tensor", "from_numpy"):
        monkeypatch.setattr(torch, name, refuse)
    # nor wait for the device (host synchronizations are not allowed in a capture either)
    for name in ("new_tensor", "item", "tolist", "cpu", "numpy", "nonzero", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    inputs = (video, *([fast_video] if fast else []), whwh)
    with NoHostData():  # the same at the operator level, backward included
        outputs = model._model_outputs(*inputs)
        assert len(outputs) == 3 * len(model.stm_head.decoder_stages)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(sum(o.float().sum() for o in outputs), params, allow_unused=True)
        model.eval()
        with torch.no_grad():  # inference takes other paths (attention's fast path, BatchNorm statistics)
            assert len(model._model_outputs(*inputs)) == 3 * len(model.stm_head.decoder_stages)


def test_the_host_data_check_refuses_what_a_capture_cannot_run():
    x = torch.randn(5)
    refused = [lambda: x.__setitem__(0, 1.0),  # a Python number written by item assignment: a host tensor copied
               lambda: x[x > 0], lambda: x.sum().item(), lambda: x.unique(), lambda: torch.tensor([1.0])]
    for make in refused:
        with pytest.raises(AssertionError, match="inside the captured part"), NoHostData():
            make()
    with NoHostData():  # what the captured code does instead
        x[0].fill_(1.0)
        x[torch.arange(2)] * 2


class NoHostData(TorchDispatchMode):
    """Fails on operators that make a tensor from host data (``aten.lift_fresh``: ``torch.tensor``, or a Python
    number written into a tensor by item assignment, which on CUDA is a pageable host-to-device copy) or read
    a value back to the host."""

    # host-data tensors, values read back, and operators whose output size depends on values (a CUDA kernel
    # then synchronizes with the host to size its output)
    REFUSED = ("aten.lift_fresh", "aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.unique_dim",
               "aten._unique2", "aten.unique_consecutive", "aten.equal", "aten.is_nonzero")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name in self.REFUSED:
            raise AssertionError(f"{func} inside the captured part")
        if name in ("aten.index", "aten.index_put", "aten.index_put_"):  # boolean masks index through nonzero
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                raise AssertionError(f"{func} with a boolean mask inside the captured part")
        if name == "aten.repeat_interleave" and kwargs.get("output_size") is None and (
                len(args) < 3 or args[2] is None) and isinstance(args[1] if len(args) > 1 else None, torch.Tensor):
            raise AssertionError(f"{func} without output_size inside the captured part")
        return func(*args, **kwargs)


def test_scope_choice_and_cpu_fallbacks_of_the_graphed_forward(repo_root):
    """The dispatch the CUDA path takes, run on the CPU, where every GraphedPart declines."""
    video, whwh, _, _ = batch(7)
    eager, graphed = pair(repo_root, "cpu", "model")
    eager.eval(), graphed.eval()
    sizes = graphed.stm_head.clip_sizes(whwh, video)
    with torch.no_grad():
        assert graphed._graphed_forward(video, None, sizes) is None  # "model": the caller runs everything
        assert graphed._graph_scope == "model"
        _, decoder_scope = pair(repo_root, "cpu", "decoder")
        decoder_scope.eval()
        outputs = decoder_scope._graphed_forward(video, None, sizes)  # "decoder": eager decode after the backbone
        expected = eager.stm_head.decode(eager.features(video)[1], sizes)
    assert decoder_scope._graph_scope == "decoder"
    for got, want in zip(outputs.flat(), expected.flat()):
        assert torch.equal(got, want)
    _, split = pair(repo_root, "cpu", "split")
    split.eval()
    with torch.no_grad():
        outputs = split._graphed_forward(video, None, sizes)  # "split": both parts decline, eager after eager
    assert split._graph_scope == "split" and split._graphed_backbone is not None
    for got, want in zip(outputs.flat(), expected.flat()):
        assert torch.equal(got, want)
    _, synced = pair(repo_root, "cpu", "model")
    synced.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(synced.backbone)
    synced.eval()
    with torch.no_grad():
        synced._graphed_forward(video, None, sizes)
    assert synced._graph_scope == "model"  # SyncBatchNorm in eval mode synchronizes nothing


def test_the_graphs_leave_out_a_backbone_whose_syncbatchnorm_synchronizes(repo_root, tmp_path, monkeypatch):
    """Training SyncBatchNorm on several processes holds collectives: the graphs cover the decoder stages only.
    Frozen (eval-mode) SyncBatchNorm, a group of one process or no process group: the whole model."""
    import torch.distributed as dist

    from stmixer.modeling.backbones import bn_act

    _, synced = pair(repo_root, "cpu", "model")
    synced.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(synced.backbone)
    synced.train()
    assert not synced._backbone_synchronizes()  # no process group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert not synced._backbone_synchronizes()  # one process: the module normalizes locally
        monkeypatch.setattr(bn_act, "SYNC_ONE_PROCESS", True)  # as if several processes
        assert synced._backbone_synchronizes()
        synced.backbone.train(False)
        assert not synced._backbone_synchronizes()
        synced.backbone.train()
        synced.backbone.frozen_bn = True
        synced.backbone.train()  # MODEL.BACKBONE.FROZEN_BN keeps every BatchNorm in eval mode
        assert not synced._backbone_synchronizes()
        synced.backbone.frozen_bn = False
        synced.backbone.train()
        group = bn_act.new_sync_group()  # MODEL.CUDA_GRAPH.SYNC_BN: bn_act's collectives, which graphs capture
        for m in synced.backbone.modules():
            if isinstance(m, torch.nn.SyncBatchNorm):
                m.process_group = group
        assert not synced._backbone_synchronizes()
    finally:
        dist.destroy_process_group()


@needs_cuda
@pytest.mark.parametrize("width,scope", [(8, "model"), (32, "model"), (32, "split")])
def test_graphs_capture_the_collectives_of_a_synchronized_backbone(repo_root, exact_cuda, tmp_path, monkeypatch,
                                                                   width, scope):
    """MODEL.CUDA_GRAPH.SYNC_BN on one NCCL process (``SYNC_ONE_PROCESS`` takes the collective path): the whole
    model is captured with the SyncBatchNorm all_gathers and all_reduces in it, under DistributedDataParallel on
    the default group; losses, gradients and running statistics equal the eager steps', and each step runs each
    collective once (the capture's warm-up runs none)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from stmixer.modeling.sync_bn import convert_sync_batchnorm
    from stmixer.modeling.backbones import bn_act

    opts = ["MODEL.BACKBONE.CHANNELS_LAST", True, "MODEL.BACKBONE.FUSED_TRAINING_BN", True,
            "MODEL.CUDA_GRAPH.SYNC_BN", True, "RESNET.WIDTH_PER_GROUP", width]
    monkeypatch.setattr(bn_act, "SYNC_ONE_PROCESS", True)
    calls = []
    real_gather, real_all_reduce = bn_act._all_gather, dist.all_reduce

    def counting_gather(out, tensor, group):
        calls.append(("all_gather", group))
        return real_gather(out, tensor, group)

    def counting_all_reduce(tensor, *args, group=None, **kwargs):
        calls.append(("all_reduce", group))
        return real_all_reduce(tensor, *args, group=group, **kwargs)

    monkeypatch.setattr(bn_act, "_all_gather", counting_gather)
    monkeypatch.setattr(dist, "all_reduce", counting_all_reduce)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        eager, graphed = pair(repo_root, "cuda", scope, *opts)
        cfg = tiny_cfg(repo_root, *opts)
        models = [convert_sync_batchnorm(cfg, m).train() for m in (eager, graphed)]
        syncs = [m for m in models[1].backbone.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
        assert syncs and all(bn_act.kernels_synchronize(bn_act.sync_group(m)) for m in syncs)
        wrapped = [DistributedDataParallel(m, device_ids=[torch.cuda.current_device()]) for m in models]
        for step, (H, W) in enumerate([(64, 96), (64, 96), (96, 64), (64, 96)]):
            data = batch(step, H=H, W=W, device="cuda")
            for model in wrapped:
                model.zero_grad(set_to_none=True)
            expected = train_pass(wrapped[0], data)
            calls.clear()
            got = train_pass(wrapped[1], data)
            torch.cuda.synchronize()
            ours = [name for name, group in calls if group is not None and bn_act.kernels_synchronize(group)]
            if step in (1, 3):  # replays: the graph holds the collectives (no Python call); the capture steps
                assert ours == []  # (0, 2) make one call per layer while capturing, none in the warm-up
            else:
                assert ours == ["all_gather"] * len(syncs) + ["all_reduce"] * len(syncs)
            assert_same(got, expected, 1e-5)
            assert_same(grads(models[1]), grads(models[0]), 1e-4)
        assert models[1]._graph_scope == scope and len(models[1]._graphed.graphs) == 2
        assert_same({k: v for k, v in models[1].state_dict().items() if "running" in k},
                    {k: v for k, v in models[0].state_dict().items() if "running" in k}, 1e-5)
    finally:
        dist.destroy_process_group()


def test_sync_bn_conversion_takes_a_group_of_its_own_only_where_the_graphs_and_kernels_run(repo_root, tmp_path,
                                                                                           caplog):
    """``modeling.sync_bn.convert_sync_batchnorm``: MODEL.CUDA_GRAPH.SYNC_BN gives the SyncBatchNorm layers a
    ``bn_act.new_sync_group`` group; without it, or where the graphs or the kernels are off, the default group."""
    import logging

    import torch.distributed as dist

    from stmixer.modeling.sync_bn import convert_sync_batchnorm
    from stmixer.modeling.backbones import bn_act

    def groups(*opts):
        model = convert_sync_batchnorm(tiny_cfg(repo_root, *opts), build_detector(tiny_cfg(repo_root, *opts)))
        syncs = [m for m in model.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
        assert syncs and not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
        return {m.process_group for m in syncs}

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        on = ["MODEL.CUDA_GRAPH.SYNC_BN", True, "MODEL.BACKBONE.CHANNELS_LAST", True]
        assert groups() == {None}  # PyTorch's SyncBatchNorm on the default group
        (group,) = groups(*on)
        assert group is not None and bn_act.kernels_synchronize(group)
        (group,) = groups(*on, "MODEL.CUDA_GRAPH.SCOPE", "split")  # the backbone's own graph captures them too
        assert group is not None and bn_act.kernels_synchronize(group)
        with caplog.at_level(logging.INFO, logger="stmixer.modeling.sync_bn"):
            assert groups(*on, "MODEL.CUDA_GRAPH.SCOPE", "decoder") == {None}
            assert groups(*on, "MODEL.BACKBONE.FUSED_TRAINING_BN", False) == {None}
        said = [r.getMessage() for r in caplog.records if "MODEL.CUDA_GRAPH.SYNC_BN" in r.getMessage()]
        assert len(said) == 2 and "'decoder'" in said[0] and "FUSED_TRAINING_BN False" in said[1]
    finally:
        dist.destroy_process_group()
