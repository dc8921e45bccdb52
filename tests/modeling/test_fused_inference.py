"""MODEL.BACKBONE.FUSED_INFERENCE (stmixer/modeling/backbones/conv_bn.py): eval-mode conv + BN (+ residual) + ReLU
as one folded convolution. On the CPU (True) it is checked against the unfused modules; on CUDA ("auto", cuDNN's
fused kernels) too, when a GPU is present."""

import pytest
import torch
from torch import nn

from stmixer.config import ConfigError, get_cfg, load_config
from stmixer.modeling import build_backbone
from stmixer.modeling.backbones.conv_bn import conv_bn_act, fold_conv_bn, fused_path, pad_channels

CUDA = torch.cuda.is_available()


def backbone_cfg(repo_root, name="PySlowfast-R50-K400-8x8.yaml", *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / name))
    cfg.merge_from_list(["RESNET.WIDTH_PER_GROUP", 8, "MODEL.STM.HIDDEN_DIM", 16, *opts])
    return cfg


def randomize_batchnorms(module, seed=0):
    """Running statistics and affine parameters away from their identity initialization."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return module


def pair(repo_root, name, *opts, dtype=torch.float64, device="cpu"):
    """(fused, plain) backbones with the same randomized weights, in eval mode."""
    fused = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.FUSED_INFERENCE", True))
    plain = build_backbone(backbone_cfg(repo_root, name, *opts, "MODEL.BACKBONE.FUSED_INFERENCE", False))
    randomize_batchnorms(fused)
    plain.load_state_dict(fused.state_dict())
    return fused.to(device, dtype).eval(), plain.to(device, dtype).eval()


def count_batchnorm_calls(module):
    calls = []
    for m in module.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.register_forward_hook(lambda *_: calls.append(1))
    return calls


def videos_for(backbone, dtype=torch.float64, device="cpu", batch=2):
    slow = torch.randn(batch, 3, 2, 32, 32, dtype=dtype, device=device)
    if backbone.num_pathways == 1:
        return [slow]
    return [slow, torch.randn(batch, 3, 8, 32, 32, dtype=dtype, device=device)]


@pytest.mark.parametrize("affine,conv_bias", [(True, False), (False, True), (True, True)])
def test_the_folded_convolution_equals_conv_then_eval_batchnorm(affine, conv_bias):
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 10, (3, 3, 3), stride=(1, 2, 2), padding=1, bias=conv_bias).double()
    bn = randomize_batchnorms(nn.BatchNorm3d(10, eps=1e-3, affine=True).double()).eval()
    if not affine:
        bn = nn.BatchNorm3d(10, eps=1e-3, affine=False).double().eval()
        bn.running_mean.normal_(); bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 4, 9, 9, dtype=torch.float64)
    weight, bias = fold_conv_bn(conv, bn)
    expected = bn(conv(x))
    torch.testing.assert_close(nn.functional.conv3d(x, weight, bias, conv.stride, conv.padding), expected,
                               rtol=1e-12, atol=1e-12)
    residual = torch.randn_like(expected)
    torch.testing.assert_close(conv_bn_act(x, conv, bn, residual=residual), torch.relu(expected + residual),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv_bn_act(x, conv, bn, relu=False), expected, rtol=1e-12, atol=1e-12)


def test_zero_padded_input_channels_give_the_same_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 10, 12, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(5, 3, 3, 7, 7, dtype=torch.float64)
    xp, wp = pad_channels(x, w, 4)
    assert xp.shape[1] == wp.shape[1] == 4 and xp.is_contiguous(memory_format=torch.channels_last_3d)
    args = ((1, 2, 2), (1, 3, 3))
    torch.testing.assert_close(nn.functional.conv3d(xp, wp, None, *args), nn.functional.conv3d(x, w, None, *args),
                               rtol=1e-12, atol=1e-12)
    assert pad_channels(xp, wp, 4)[0] is xp  # already a multiple


# ResNet-18 style blocks (BasicTransform) as well as the bottlenecks of the official configs
BASIC_BLOCKS = ("RESNET.TRANS_FUNC", "basic_transform", "RESNET.DEPTH", 18,
                "RESNET.NUM_BLOCK_TEMP_KERNEL", [[2], [2], [2], [2]])


@pytest.mark.parametrize("name,opts", [("PySlowfast-R50-K400-8x8.yaml", ()), ("PySlowonly-R50-K400-4x16.yaml", ()),
                                       ("PySlowfast-R101-NL-K600-8x8.yaml", ()),
                                       ("PySlowonly-R50-K400-4x16.yaml", BASIC_BLOCKS)])
def test_the_fused_backbone_equals_the_modules_and_skips_their_batchnorms(repo_root, name, opts):
    fused, plain = pair(repo_root, name, *opts)
    total = sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules())
    # the BNs the fused path leaves as they are: shortcut projections (no ReLU to fuse) and non-local outputs
    kept = sum(isinstance(m, nn.BatchNorm3d) for n, m in fused.named_modules()
               if n.endswith("branch1_bn") or "nonlocal" in n)
    fused_calls, plain_calls = count_batchnorm_calls(fused), count_batchnorm_calls(plain)
    videos = videos_for(fused)
    with torch.no_grad():
        outs = fused(videos)
        refs = plain(videos)
    assert len(plain_calls) == total and len(fused_calls) == kept < total / 3
    for a, b in zip(outs, refs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_training_and_gradients_never_take_the_fused_path(repo_root):
    fused, plain = pair(repo_root, "PySlowfast-R50-K400-8x8.yaml")
    total = sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules())
    calls = count_batchnorm_calls(fused)
    videos = videos_for(fused)
    fused(videos)[-1].sum().backward()  # eval mode, gradients wanted: the modules as they are
    assert len(calls) == total
    assert fused.s2.pathway0_res0.branch2.a_bn.weight.grad is not None
    calls.clear()
    fused.train()
    fused(videos)
    assert len(calls) == total
    calls.clear()
    fused.eval().requires_grad_(False)
    fused(videos)  # grad mode on, but nothing requires a gradient: fused
    assert 0 < len(calls) < total


def test_frozen_batchnorm_training_keeps_its_gradients(repo_root):
    cfg = backbone_cfg(repo_root, "PySlowonly-R50-K400-4x16.yaml", "MODEL.BACKBONE.FUSED_INFERENCE", True,
                       "MODEL.BACKBONE.FROZEN_BN", True)
    backbone = build_backbone(cfg).double().train()
    assert not backbone.s2.pathway0_res0.branch2.a_bn.training  # frozen: eval-mode BN inside training
    calls = count_batchnorm_calls(backbone)
    backbone(videos_for(backbone))[-1].sum().backward()
    assert len(calls) == sum(isinstance(m, nn.BatchNorm3d) for m in backbone.modules())
    assert backbone.s1.pathway0_stem.conv.weight.grad is not None


def test_folded_weights_follow_the_current_statistics(repo_root):
    """Nothing is cached: a later change of BN statistics (training, a loaded checkpoint) shows at once."""
    fused, plain = pair(repo_root, "PySlowonly-R50-K400-4x16.yaml")
    videos = videos_for(fused)
    with torch.no_grad():
        before = fused(videos)[-1]
        for m in (fused, plain):
            m.s3.pathway0_res1.branch2.b_bn.running_var.mul_(3.0)
            m.s1.pathway0_stem.bn.running_mean.add_(0.5)
        after, ref = fused(videos)[-1], plain(videos)[-1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, rtol=1e-10, atol=1e-10)


def test_auto_leaves_the_cpu_path_alone(repo_root):
    backbone = build_backbone(backbone_cfg(repo_root)).eval()
    assert backbone.s2.pathway0_res0.fused_inference == "auto"  # the default
    calls = count_batchnorm_calls(backbone)
    with torch.no_grad():
        backbone(videos_for(backbone, torch.float32))
    assert len(calls) == sum(isinstance(m, nn.BatchNorm3d) for m in backbone.modules())
    assert not fused_path("auto", torch.zeros(1), [backbone.s1.pathway0_stem.conv], [backbone.s1.pathway0_stem.bn])


@pytest.mark.parametrize("key", ["FUSED_INFERENCE", "FUSED_TRAINING_BN", "SPATIAL_CONV_2D"])
def test_the_backbone_fast_path_keys_take_auto_and_booleans(tmp_path, key):
    assert get_cfg().MODEL.BACKBONE[key] == "auto"
    for written, expected in (("true", True), ("False", False), ('"auto"', "auto")):
        path = tmp_path / "c.yaml"
        path.write_text(f"MODEL:\n  BACKBONE:\n    {key}: {written}\n")
        assert load_config(str(path)).MODEL.BACKBONE[key] == expected
    with pytest.raises((ConfigError, ValueError), match=f"MODEL.BACKBONE.{key}"):
        load_config(opts=[f"MODEL.BACKBONE.{key}", "always"])


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [True, False])
def test_cudnn_fused_kernels_equal_the_modules_on_cuda(repo_root, channels_last):
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        fused = build_backbone(backbone_cfg(repo_root, "PySlowfast-R50-K400-8x8.yaml",
                                            "MODEL.BACKBONE.CHANNELS_LAST", channels_last)).cuda().eval()
        plain = build_backbone(backbone_cfg(repo_root, "PySlowfast-R50-K400-8x8.yaml",
                                            "MODEL.BACKBONE.CHANNELS_LAST", channels_last,
                                            "MODEL.BACKBONE.FUSED_INFERENCE", False)).cuda().eval()
        randomize_batchnorms(fused)
        plain.load_state_dict(fused.state_dict())
        calls = count_batchnorm_calls(fused)
        videos = videos_for(fused, torch.float32, "cuda")
        with torch.no_grad():
            for a, b in zip(fused(videos), plain(videos)):
                # float32 rounding, associated differently, grows through ~50 layers with these random statistics
                # (up to ~3e-4 seen on an H100); a wrong fold would be off by O(1)
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())
            assert len(calls) < sum(isinstance(m, nn.BatchNorm3d) for m in fused.modules()) / 3
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outs, refs = fused(videos), plain(videos)
        for a, b in zip(outs, refs):
            assert a.dtype == b.dtype == torch.bfloat16
            torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05 * b.float().abs().max().item())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
