"""MODEL.BACKBONE.SPATIAL_CONV_2D (stmixer/modeling/backbones/spatial_conv.py): 1 x k x k convolutions of the ResNet
backbones as 2-D convolutions over the frames folded into the batch. Checked on the CPU (True) against the 3-D
convolutions in training and in fused / unfused inference; on CUDA ("auto", channels_last_3d bf16) when a GPU is
present. The config key's values: tests/modeling/test_fused_inference.py."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmixer.modeling import build_backbone
from stmixer.modeling.backbones import spatial_conv
from stmixer.modeling.backbones.conv_bn import conv_bn_act
from stmixer.modeling.backbones.spatial_conv import Conv3d, conv3d_as_2d, folds
from tests.modeling.test_bn_act import assert_same
from tests.modeling.test_fused_inference import backbone_cfg, randomize_batchnorms, videos_for

CUDA = torch.cuda.is_available()
CL = torch.channels_last_3d


def conv_calls(monkeypatch):
    """Counts of the 2-D and 3-D convolutions run (through torch.nn.functional) while the test runs."""
    counts = {"2d": 0, "3d": 0}
    conv2d, conv3d = F.conv2d, F.conv3d

    def c2(*a, **k):
        counts["2d"] += 1
        return conv2d(*a, **k)

    def c3(*a, **k):
        counts["3d"] += 1
        return conv3d(*a, **k)

    monkeypatch.setattr(F, "conv2d", c2)
    monkeypatch.setattr(F, "conv3d", c3)
    return counts


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    ((1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1), 1),
    ((1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1), 1),
    ((1, 3, 3), (1, 1, 1), (0, 2, 2), (1, 2, 2), 2),
    ((1, 1, 1), (1, 2, 2), (0, 0, 0), (1, 1, 1), 1),
    ((1, 7, 7), (1, 2, 2), (0, 3, 3), (1, 1, 1), 1),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_folded_convolution_equals_the_3d_one_with_gradients(kernel, stride, padding, dilation, groups,
                                                                  channels_last):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, kernel, stride, padding, dilation, groups, bias=True).double()
    x = torch.randn(2, 4, 3, 11, 13, dtype=torch.float64)
    if channels_last:
        conv, x = conv.to(memory_format=CL), x.contiguous(memory_format=CL)
    assert folds(True, x, conv.weight, conv.stride, conv.padding)
    x.requires_grad_()
    want = conv(x)
    got = conv3d_as_2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if channels_last:  # the fold and the unfold are views: the 2-D output keeps the NDHWC layout
        assert got.is_contiguous(memory_format=CL)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, conv.weight, conv.bias], g)
    got_grads = torch.autograd.grad(got, [x, conv.weight, conv.bias], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fold_and_unfold_are_views_on_channels_last_3d():
    x = torch.randn(2, 5, 3, 4, 6).contiguous(memory_format=CL)
    f = spatial_conv.fold(x)
    assert f.shape == (6, 5, 4, 6) and f.data_ptr() == x.data_ptr()
    assert f.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(f[4], x[1, :, 1])  # clip 1, frame 1
    back = spatial_conv.unfold(f, 2)
    assert back.data_ptr() == x.data_ptr() and torch.equal(back, x)


@pytest.mark.parametrize("kernel,stride,padding,ok", [
    ((1, 3, 3), (1, 1, 1), (0, 1, 1), True),
    ((1, 1, 1), (1, 1, 1), (0, 0, 0), True),
    ((3, 1, 1), (1, 1, 1), (1, 0, 0), False),   # a temporal kernel
    ((1, 1, 1), (2, 1, 1), (0, 0, 0), False),   # a temporal stride
    ((1, 3, 3), (1, 1, 1), (1, 1, 1), False),   # temporal padding
])
def test_which_convolutions_fold(kernel, stride, padding, ok):
    w = torch.empty(8, 16, *kernel)
    x = torch.empty(2, 16, 4, 8, 8)
    assert folds(True, x, w, stride, padding) is ok
    assert folds(False, x, w, stride, padding) is False
    assert folds(True, x, w, stride, "same") is False
    # "auto": CUDA channels_last_3d inputs of at most MAX_CHANNELS channels per group only
    assert folds("auto", x, w, stride, padding) is False  # a CPU tensor


def test_auto_folds_cuda_channels_last_inputs_of_few_channels(monkeypatch):
    class FakeCuda(torch.Tensor):
        is_cuda = True

    x = torch.empty(2, 64, 4, 8, 8).contiguous(memory_format=CL).as_subclass(FakeCuda)
    w = torch.empty(8, 64, 1, 3, 3)
    assert folds("auto", x, w, (1, 1, 1), (0, 1, 1))
    assert not folds("auto", x.contiguous(), w, (1, 1, 1), (0, 1, 1))  # NCDHW: the fold would copy
    wide = torch.empty(8, spatial_conv.MAX_CHANNELS + 1, 1, 3, 3)
    assert not folds("auto", x, wide, (1, 1, 1), (0, 1, 1))
    grouped = torch.empty(8, 32, 1, 3, 3)  # 2 groups of 32 input channels
    assert folds("auto", x, grouped, (1, 1, 1), (0, 1, 1))


def test_the_conv3d_module_folds_only_where_set(monkeypatch):
    counts = conv_calls(monkeypatch)
    conv = Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)).double()
    x = torch.randn(1, 4, 2, 5, 5, dtype=torch.float64)
    plain = conv(x)
    assert counts == {"2d": 0, "3d": 1}
    conv.as_2d = True
    torch.testing.assert_close(conv(x), plain, rtol=1e-12, atol=1e-12)
    assert counts == {"2d": 1, "3d": 1}
    assert isinstance(conv, nn.Conv3d) and list(conv.state_dict()) == ["weight", "bias"]


def backbones(repo_root, name, *opts):
    """(folded, plain) backbones with the same randomized weights (float64, CPU)."""
    folded = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.SPATIAL_CONV_2D", True))
    plain = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.SPATIAL_CONV_2D", False))
    randomize_batchnorms(folded)
    plain.load_state_dict(folded.state_dict())
    assert list(folded.state_dict()) == list(plain.state_dict())
    return folded.double(), plain.double()


@pytest.mark.parametrize("name", ["PySlowfast-R50-K400-8x8.yaml", "PySlowonly-R50-K400-4x16.yaml"])
def test_a_training_step_with_folded_convolutions_equals_the_3d_one(repo_root, name, monkeypatch):
    folded, plain = backbones(repo_root, name)
    videos = videos_for(plain)
    results = []
    for model in (folded, plain):
        model.train()
        outs = model([v.clone() for v in videos])
        g = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        results.append((outs, grads, [b.clone() for b in model.buffers()]))
    assert_same(*results, tol=1e-10)  # float64: the 2-D kernels sum in another order
    counts = conv_calls(monkeypatch)
    folded([v.clone() for v in videos])
    assert counts["2d"] > 0


@pytest.mark.parametrize("fused", [True, False])
def test_inference_with_folded_convolutions_equals_the_3d_one(repo_root, fused, monkeypatch):
    folded, plain = backbones(repo_root, "PySlowfast-R50-K400-8x8.yaml", "MODEL.BACKBONE.FUSED_INFERENCE", fused)
    videos = videos_for(plain)
    with torch.no_grad():
        want = plain.eval()(videos)
        counts = conv_calls(monkeypatch)
        got = folded.eval()(videos)
    # the Slow stem, every 1x3x3 and 1x1x1 convolution of the blocks and the shortcut projections fold;
    # the Fast stem (5x7x7), the temporal 3x1x1 convolutions and the lateral connections stay 3-D
    assert counts["2d"] > counts["3d"] > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_conv_bn_act_folds_with_a_residual():
    torch.manual_seed(0)
    conv = Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False).double()
    bn = randomize_batchnorms(nn.BatchNorm3d(6).double()).eval()
    x = torch.randn(2, 4, 3, 9, 9, dtype=torch.float64).contiguous(memory_format=CL)
    residual = torch.randn(2, 6, 3, 5, 5, dtype=torch.float64)
    want = torch.relu(bn(conv(x)) + residual)
    conv.as_2d = True
    got = conv_bn_act(x, conv, bn, residual=residual)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(conv_bn_act(x, conv, bn, relu=False), bn(conv(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("train", [False, True])
def test_auto_on_cuda_is_as_close_to_float32_as_the_3d_convolutions_in_bf16(repo_root, train, monkeypatch):
    """bf16 outputs of the folded and the 3-D backbone against the 3-D backbone's float32 outputs: the folded
    convolutions add no error of their own (training-mode BatchNorm of these tiny maps amplifies bf16 rounding,
    so the bound is relative to the 3-D backbone's own bf16 error)."""
    folded, plain = backbones(repo_root, "PySlowfast-R50-K400-8x8.yaml", "MODEL.BACKBONE.CHANNELS_LAST", True)
    folded, plain = folded.float().cuda(), plain.float().cuda()
    for m in folded.modules():
        if isinstance(m, Conv3d):
            m.as_2d = "auto"
    g = torch.Generator().manual_seed(0)
    videos = [torch.randn(2, 3, t, 64, 64, generator=g).cuda() for t in (2, 8)]
    folds_run = []
    fold = spatial_conv.fold
    monkeypatch.setattr(spatial_conv, "fold", lambda x: folds_run.append(1) or fold(x))

    def run(model, bf16):
        model.train(train)
        with torch.set_grad_enabled(train), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            return [o.float() for o in model([v.clone() for v in videos])]

    truth = run(plain, False)
    assert not folds_run
    got, ref = run(folded, True), run(plain, True)
    assert folds_run
    for a, b, t in zip(got, ref, truth):
        err, ref_err = ((a - t).norm() / t.norm()).item(), ((b - t).norm() / t.norm()).item()
        assert err <= 1.5 * ref_err + 5e-3, f"relative error {err:.2e} (3-D convolutions: {ref_err:.2e})"
