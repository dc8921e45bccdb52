"""The GPU fast paths chosen by the config (MODEL.BACKBONE.CHANNELS_LAST, SOLVER.FUSED_OPTIMIZER): off the CPU
path, equal to the plain path on CUDA (skipped without CUDA)."""

import pytest
import torch

from stmixer.config import get_cfg
from stmixer.modeling import build_backbone
from stmixer.solver import build_optimizer

CUDA = torch.cuda.is_available()


def slowfast_cfg(repo_root, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "PySlowfast-R50-K400-8x8.yaml"))
    cfg.merge_from_list(["RESNET.WIDTH_PER_GROUP", 8, "MODEL.STM.HIDDEN_DIM", 16, *opts])
    return cfg


def five_d_weights(module):
    return [p for p in module.parameters() if p.dim() == 5]


def test_channels_last_leaves_the_cpu_path_alone(repo_root):
    backbone = build_backbone(slowfast_cfg(repo_root)).eval()
    assert backbone.channels_last  # the default
    videos = [torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 8, 32, 32)]
    with torch.no_grad():
        backbone(videos)
    assert all(p.is_contiguous() for p in five_d_weights(backbone))


def test_use_channels_last_converts_weights_in_place_once(repo_root):
    backbone = build_backbone(slowfast_cfg(repo_root))
    params = list(backbone.parameters())
    backbone.use_channels_last()
    assert list(backbone.parameters()) == params  # same Parameter objects: an optimizer built before keeps them
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five_d_weights(backbone))
    assert sum(not p.is_contiguous() for p in five_d_weights(backbone)) > 10
    videos = [torch.randn(1, 3, 2, 32, 32, dtype=torch.float64), torch.randn(1, 3, 8, 32, 32, dtype=torch.float64)]
    plain = build_backbone(slowfast_cfg(repo_root)).double().eval()
    plain.load_state_dict(backbone.state_dict())
    backbone.double().eval()
    with torch.no_grad():
        for a, b in zip(backbone(videos), plain(videos)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_adamw_only_when_every_parameter_is_on_cuda(repo_root):
    model = build_backbone(slowfast_cfg(repo_root))
    optimizer = build_optimizer(slowfast_cfg(repo_root), model)
    assert not optimizer.defaults.get("fused")
    if CUDA:
        optimizer = build_optimizer(slowfast_cfg(repo_root), model.cuda())
        assert optimizer.defaults.get("fused")
        optimizer = build_optimizer(slowfast_cfg(repo_root, "SOLVER.FUSED_OPTIMIZER", False), model)
        assert not optimizer.defaults.get("fused")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_channels_last_equals_the_contiguous_path_on_cuda(repo_root):
    torch.backends.cudnn.allow_tf32 = False
    fast = build_backbone(slowfast_cfg(repo_root)).cuda().eval()
    plain = build_backbone(slowfast_cfg(repo_root, "MODEL.BACKBONE.CHANNELS_LAST", False)).cuda().eval()
    plain.load_state_dict(fast.state_dict())
    videos = [torch.randn(2, 3, 2, 64, 64, device="cuda"), torch.randn(2, 3, 8, 64, 64, device="cuda")]
    with torch.no_grad():
        for a, b in zip(fast(videos), plain(videos)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five_d_weights(fast))


def test_float32_stem_is_set_on_every_stem_and_leaves_the_cpu_alone(repo_root):
    backbone = build_backbone(slowfast_cfg(repo_root)).eval()
    stems = [backbone.s1.pathway0_stem, backbone.s1.pathway1_stem]
    assert all(s.float32_under_autocast for s in stems)  # the default
    off = build_backbone(slowfast_cfg(repo_root, "MODEL.BACKBONE.FLOAT32_STEM", False))
    assert not any(s.float32_under_autocast for s in (off.s1.pathway0_stem, off.s1.pathway1_stem))
    off.load_state_dict(backbone.state_dict())
    off.eval()
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = stems[0](x), off.s1.pathway0_stem(x)
    assert out.dtype == ref.dtype and torch.equal(out, ref)  # CPU autocast: the stems autocast as before


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("float32_stem", [True, False])
def test_float32_stem_under_cuda_autocast(repo_root, float32_stem):
    backbone = build_backbone(slowfast_cfg(repo_root, "MODEL.BACKBONE.FLOAT32_STEM", float32_stem)).cuda()
    stem = backbone.s1.pathway1_stem
    x = torch.randn(2, 3, 8, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = stem(x)
        assert y.dtype == (torch.float32 if float32_stem else torch.bfloat16)
        levels = backbone([torch.randn(2, 3, 2, 64, 64, device="cuda"), x])
    assert all(level.dtype == torch.bfloat16 for level in levels)  # the rest autocasts as before
    levels[-1].float().sum().backward()
    assert stem.conv.weight.grad is not None and stem.conv.weight.grad.dtype == torch.float32
    with torch.no_grad():
        expected = stem.pool(stem.relu(stem.bn(stem.conv(x))))
    if float32_stem:  # eval-mode check against plain float32 (BN in train mode uses the batch statistics)
        torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=1e-2)
