"""Backbones and necks: shapes and strides, config-driven widths, frozen BN, ViT details."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stmixer.config import get_cfg
from stmixer.modeling import build_backbone, build_detector, build_neck
from stmixer.modeling.backbones.resnet3d import NonLocalBlock, BatchNormSpec, _grouped_nonlocal
from stmixer.modeling.backbones.vit import (
    Attention,
    VisionTransformer3D,
    _TABLE_CACHE_SIZE,
    position_embedding,
    resize_position_table,
    sinusoid_position_table,
)
from stmixer.modeling.necks import ChannelLayerNorm


def official_cfg(repo_root, name, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / f"{name}.yaml"))
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_vit_opts(*extra):
    return ("ViT.EMBED_DIM", 32, "ViT.DEPTH", 2, "ViT.NUM_HEADS", 4, "ViT.DROP_PATH_RATE", 0.0,
            "MODEL.STM.HIDDEN_DIM", 16, *extra)


# ----------------------------------------------------------------------------- ResNets
@pytest.mark.parametrize("name, frames", [("PySlowonly-R50-K400-4x16", [4]), ("PySlowfast-R50-K400-8x8", [2, 8]),
                                          ("PySlowfast-R101-NL-K600-8x8", [2, 8])])
def test_resnet_levels_have_strides_4_to_32_and_config_widths(repo_root, name, frames):
    cfg = official_cfg(repo_root, name, "RESNET.WIDTH_PER_GROUP", 8, "MODEL.STM.HIDDEN_DIM", 16)
    backbone = build_backbone(cfg).eval()
    neck = build_neck(cfg, backbone.out_channels)
    slowfast = len(frames) == 2
    expected_channels = [32 + 4, 64 + 8, 128 + 16, 256 + 32] if slowfast else [32, 64, 128, 256]
    assert backbone.out_channels == expected_channels
    videos = [torch.randn(1, 3, t, 64, 32) for t in frames]
    with torch.no_grad():
        levels = backbone(videos)
        mapped = neck(levels)
    for i, (level, out) in enumerate(zip(levels, mapped)):
        stride = 4 * 2**i
        assert level.shape == (1, expected_channels[i], frames[0], 64 // stride, 32 // stride)
        assert out.shape == (1, 16, frames[0], 64 // stride, 32 // stride)


def test_slowfast_levels_are_slow_joined_with_time_pooled_fast_before_fusion(repo_root):
    cfg = official_cfg(repo_root, "PySlowfast-R50-K400-8x8", "RESNET.WIDTH_PER_GROUP", 8)
    model = build_backbone(cfg).eval()
    videos = [torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 8, 32, 32)]
    with torch.no_grad():
        levels = model(videos)
        x = model.s2(model.s1_fuse(model.s1(videos)))
    slow, fast = x
    expected = torch.cat([slow, F.max_pool3d(fast, (4, 1, 1), (4, 1, 1))], dim=1)
    torch.testing.assert_close(levels[0], expected, rtol=0, atol=0)


def test_temporal_kernels_follow_num_block_temp_kernel(repo_root):
    cfg = official_cfg(repo_root, "PySlowfast-R101-NL-K600-8x8", "RESNET.WIDTH_PER_GROUP", 8)
    model = build_backbone(cfg)
    s4 = [getattr(model.s4, f"pathway0_res{i}").branch2.a.kernel_size[0] for i in range(23)]
    assert s4 == [3] * 6 + [1] * 17
    assert model.s1.pathway1_stem.conv.kernel_size == (5, 7, 7)
    assert model.s2_fuse.conv_f2s.kernel_size == (5, 1, 1) and model.s2_fuse.conv_f2s.stride == (4, 1, 1)
    assert [i for i in range(23) if hasattr(model.s4, f"pathway0_nonlocal{i}")] == [6, 13, 20]
    bad = official_cfg(repo_root, "PySlowonly-R50-K400-4x16", "RESNET.NUM_BLOCK_TEMP_KERNEL", [[3], [5], [6], [3]])
    with pytest.raises(ValueError, match="NUM_BLOCK_TEMP_KERNEL"):
        build_backbone(bad)


def test_frozen_bn_keeps_batchnorm_in_eval_but_trainable(repo_root):
    frozen = build_backbone(official_cfg(repo_root, "PySlowonly-R50-K400-4x16", "RESNET.WIDTH_PER_GROUP", 8))
    assert frozen.frozen_bn  # the official SlowOnly config sets FROZEN_BN
    frozen.train()
    bns = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm3d)]
    assert bns and not any(m.training for m in bns)
    assert all(m.weight.requires_grad for m in bns)
    stats = [m.running_mean.clone() for m in bns]
    frozen([torch.randn(2, 3, 2, 32, 32)])
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns))
    free = build_backbone(official_cfg(repo_root, "PySlowfast-R50-K400-8x8", "RESNET.WIDTH_PER_GROUP", 8)).train()
    assert all(m.training for m in free.modules() if isinstance(m, nn.BatchNorm3d))


def test_zero_init_final_bn(repo_root):
    model = build_backbone(official_cfg(repo_root, "PySlowonly-R50-K400-4x16", "RESNET.WIDTH_PER_GROUP", 8))
    assert model.s3.pathway0_res1.branch2.c_bn.weight.abs().sum() == 0
    assert (model.s3.pathway0_res1.branch2.a_bn.weight == 1).all()


def test_wrong_number_of_pathways_is_a_clear_error(repo_root):
    model = build_backbone(official_cfg(repo_root, "PySlowfast-R50-K400-8x8", "RESNET.WIDTH_PER_GROUP", 8))
    with pytest.raises(ValueError, match="list of 2 video"):
        model([torch.randn(1, 3, 2, 32, 32)])


def test_grouped_nonlocal_equals_the_block_on_each_temporal_chunk():
    torch.manual_seed(0)
    block = NonLocalBlock(8, 4, (1, 2, 2), "dot_product", BatchNormSpec()).eval()
    x = torch.randn(2, 8, 4, 4, 4)
    with torch.no_grad():
        grouped = _grouped_nonlocal(block, x, 2)
        chunks = torch.cat([block(x[:, :, :2]), block(x[:, :, 2:])], dim=2)
    torch.testing.assert_close(grouped, chunks)


# ----------------------------------------------------------------------------- ViT
def test_vit_returns_one_map_four_times_and_pyramid_strides(repo_root):
    cfg = official_cfg(repo_root, "VMAE-ViTB-16x4", *tiny_vit_opts())
    model = build_detector(cfg).eval()
    with torch.no_grad():
        levels, mapped = model.features(torch.randn(1, 3, 16, 64, 96))
    assert model.backbone.out_channels == [32] * 4
    assert all(level is levels[0] for level in levels) and levels[0].shape == (1, 32, 8, 4, 6)
    assert [tuple(m.shape) for m in mapped] == [(1, 16, 8, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    keys = {k.rsplit(".", 1)[0] for k in model.lateral_convs.state_dict()}
    assert keys == {"0.0", "0.1", "0.3", "0.4", "0.5", "0.6", "1.0", "1.1", "1.2", "1.3", "2.0", "2.1", "2.2",
                    "3.1", "3.2", "3.3"}


def test_vit_l_dimensions_come_from_the_config(repo_root):
    cfg = official_cfg(repo_root, "VMAE-ViTB-16x4", "MODEL.BACKBONE.CONV_BODY", "MAE-ViT-L", "ViT.EMBED_DIM", 1024,
                       "ViT.DEPTH", 24, "ViT.NUM_HEADS", 16)
    with torch.device("meta"):  # shapes only
        model = build_backbone(cfg)
    assert len(model.blocks) == 24 and model.blocks[0].attn.num_heads == 16
    assert model.patch_embed.proj.weight.shape == (1024, 3, 2, 16, 16)
    assert model.layer_id("blocks.23.mlp.fc1.weight") == 24 and model.layer_id("norm.weight") == 25


def test_sdpa_attention_matches_the_explicit_formula():
    torch.manual_seed(0)
    attn = Attention(32, 4).double().eval()
    nn.init.normal_(attn.q_bias)
    nn.init.normal_(attn.v_bias)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    bias = torch.cat([attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias])
    q, k, v = F.linear(x, attn.qkv.weight, bias).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = ((q * 8**-0.5) @ k.transpose(-2, -1)).softmax(-1)
    reference = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x), reference, rtol=1e-12, atol=1e-12)


def test_activation_checkpointing_changes_nothing_numerically(repo_root):
    results = []
    for use_checkpoint in (False, True):
        cfg = official_cfg(repo_root, "VMAE-ViTB-16x4", *tiny_vit_opts("ViT.DROP_PATH_RATE", 0.3,
                                                                        "ViT.USE_CHECKPOINT", use_checkpoint))
        torch.manual_seed(0)
        model = build_backbone(cfg).train()
        x = torch.randn(2, 3, 4, 32, 32)
        torch.manual_seed(1)
        out = model([x])[0]
        out.square().sum().backward()
        results.append((out.detach(), model.blocks[0].attn.qkv.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-6, atol=1e-7)


def test_drop_path_rates_and_per_sample_dropping(repo_root):
    model = build_backbone(official_cfg(repo_root, "VMAE-ViTB-16x4", *tiny_vit_opts("ViT.DEPTH", 3,
                                                                                  "ViT.DROP_PATH_RATE", 0.2)))
    assert [b.drop_path_rate for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    block = model.blocks[2].train()
    block.drop_path_rate = 0.5
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32)
    unchanged = (block(x) == x).all(dim=2).all(dim=1)  # both residual branches dropped for that sample
    assert 0 < unchanged.sum().item() < 64
    assert torch.equal(block.eval()(x) == x, torch.zeros_like(x, dtype=torch.bool))


def test_position_table_formula_and_resizing():
    table = sinusoid_position_table(8 * 14 * 14, 64)
    p, j = 1000, 37
    assert table[p, j].item() == pytest.approx(math.cos(p / 10000 ** (2 * (j // 2) / 64)), abs=1e-6)
    assert table.dtype == torch.float32
    assert torch.equal(resize_position_table(table, (8, 14, 14), (8, 14, 14)), table)
    resized = resize_position_table(table, (8, 14, 14), (8, 3, 4))
    slice3 = F.interpolate(table.reshape(8, 14, 14, 64)[3].permute(2, 0, 1)[None], size=(3, 4), mode="bicubic",
                           align_corners=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(resized.reshape(8, 3, 4, 64)[3], slice3, rtol=0, atol=0)
    assert resize_position_table(table, (8, 14, 14), (4, 3, 4)).shape == (4 * 3 * 4, 64)


def test_position_tables_read_by_a_graph_capture_outlive_the_cache(monkeypatch):
    """A CUDA graph replays reads of the table's memory: a table used while a capture runs stays referenced
    after the least-recently-used cache evicted it (else a replay would read freed, reused memory)."""
    model = VisionTransformer3D(embed_dim=16, depth=1, num_heads=2, pretrain_img_size=32, pretrain_num_frames=4)
    grids = [(2, h, 2) for h in range(1, _TABLE_CACHE_SIZE + 3)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    captured = position_embedding(model, grids[0], torch.float32, "cpu")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    later = [position_embedding(model, grid, torch.float32, "cpu") for grid in grids[1:]]
    assert len(model._table_cache) == _TABLE_CACHE_SIZE
    assert (grids[0], torch.float32, "cpu") not in model._table_cache  # evicted from the cache ...
    assert list(model._captured_tables.values()) == [captured]  # ... but kept (and only it)
    assert all(t.shape == (1, 2 * g[1] * 2, 16) for t, g in zip(later, grids[1:]))


def test_vit_accepts_other_frame_counts(repo_root):
    model = build_backbone(official_cfg(repo_root, "VMAE-ViTB-16x4", *tiny_vit_opts())).eval()
    with torch.no_grad():
        assert model([torch.randn(1, 3, 8, 32, 48)])[0].shape == (1, 32, 4, 2, 3)
    with pytest.raises(ValueError, match="multiple"):
        model([torch.randn(1, 3, 8, 40, 48)])


def test_layer_ids_and_no_weight_decay_names():
    model = VisionTransformer3D(embed_dim=32, depth=2, num_heads=4, use_learnable_pos_emb=True)
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["pos_embed"] == 0 and ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.norm2.bias"] == 2 and ids["norm.weight"] == 3
    assert model.num_layers == 4 and model.no_weight_decay() == {"pos_embed"}


def test_learned_position_table_is_resized_when_loaded():
    model = VisionTransformer3D(embed_dim=32, depth=1, num_heads=4, pretrain_img_size=64, use_learnable_pos_emb=True)
    assert model.pos_embed.shape == (1, 8 * 4 * 4, 32)
    stored = torch.randn(1, 8 * 2 * 2, 32)
    state = {"backbone.pos_embed": stored}
    model.adapt_loaded_state(state, "backbone.")
    expected = resize_position_table(stored[0], (8, 2, 2), (8, 4, 4))[None]
    torch.testing.assert_close(state["backbone.pos_embed"], expected, rtol=0, atol=0)


def test_channel_layer_norm_equals_layer_norm_over_channels():
    norm = ChannelLayerNorm(6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    norm = norm.double()
    reference = F.layer_norm(x.movedim(1, -1), (6,), norm.weight, norm.bias, eps=1e-6).movedim(-1, 1)
    torch.testing.assert_close(norm(x), reference, rtol=1e-12, atol=1e-12)
