"""The whole detector: official state-dict layout, gradient coverage, recorded features."""

import json

import pytest
import torch
from torch import nn

from stmixer.config import get_cfg
from stmixer.modeling import STMDetector, build_detector
from stmixer.modeling.losses import reduce_losses
from stmixer.tools.reference_parity import load_recipe

OFFICIAL_CONFIGS = [
    "PySlowonly-R50-K400-4x16",
    "PySlowfast-R50-K400-8x8",
    "PySlowfast-R101-NL-K600-8x8",
    "VMAE-ViTB-16x4",
    "VMAEv2-ViTB-16x4",
]


def official_cfg(repo_root, name, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / f"{name}.yaml"))
    cfg.merge_from_list(list(opts))
    return cfg


def state_entries(model):
    """``[key, shape, dtype name]`` of every state-dict entry, in order (the manifests' layout)."""
    return [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", OFFICIAL_CONFIGS)
def test_state_dict_maps_one_to_one_onto_reference_manifest(repo_root, shared_dir, name):
    """Every key of the official STMDetector (backbone, neck, decoder) with its shape and dtype, in order."""
    manifest = json.loads((shared_dir / "reference" / "manifests" / f"{name}.json").read_text())["keys"]
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        model = build_detector(official_cfg(repo_root, name))
    assert isinstance(model, STMDetector)
    ours = {k: (shape, dtype) for k, shape, dtype in state_entries(model)}
    reference = {k: (shape, dtype) for k, shape, dtype in manifest}
    only_ours = sorted(set(ours) - set(reference))
    only_reference = sorted(set(reference) - set(ours))
    differ = sorted(f"{k}: ours {ours[k]} vs {reference[k]}"
                    for k in set(ours) & set(reference) if ours[k] != reference[k])
    assert not (only_ours or only_reference or differ), (
        f"in our model only {only_ours[:5]} ({len(only_ours)}); in the manifest only {only_reference[:5]} "
        f"({len(only_reference)}); shape or dtype differs {differ[:5]} ({len(differ)})"
    )
    assert list(ours) == list(reference), "state_dict order differs from the official one"
    assert {k.split(".", 1)[0] for k in ours} == {"backbone", "lateral_convs", "stm_head"}


# ----------------------------------------------------------------------------- gradients
# Small decoder: D = 32 keeps the official 8 heads and 4 groups.
SMALL_STM = ("MODEL.STM.HIDDEN_DIM", 32, "MODEL.STM.NUM_QUERIES", 6, "MODEL.STM.NUM_STAGES", 2,
             "MODEL.STM.DIM_FEEDFORWARD", 64, "MODEL.STM.SPATIAL_POINTS", 4, "MODEL.STM.OUT_MULTIPLIER", 2,
             "MODEL.STM.ACTION_CLASSES", 5, "MODEL.STM.TEMPORAL_POINTS", 2)
# (config, extra options, frames per pathway): narrow ResNets (R101 with its non-local blocks), a 2-block ViT.
SMALL_DETECTORS = {
    "slowonly": ("PySlowonly-R50-K400-4x16", ("RESNET.WIDTH_PER_GROUP", 8), [2]),
    "slowfast_nl": ("PySlowfast-R101-NL-K600-8x8", ("RESNET.WIDTH_PER_GROUP", 8), [2, 8]),
    "vit": ("VMAE-ViTB-16x4", ("ViT.EMBED_DIM", 32, "ViT.DEPTH", 2, "ViT.NUM_HEADS", 4), [4]),
}

# Parameters the official model trains whose gradient is nevertheless zero there too, with the reason.
ZERO_GRADIENT = {
    # Every stage-0 proposal is its whole clip, so the stage-0 IoF bias is constant along each row of the
    # attention logits and the softmax ignores it (tests/modeling/test_decoder.py shows the constant rows).
    "stm_head.decoder_stages.0.iof_tau": "stage-0 IoF bias is constant per attention row",
}
# SlowFast configs train with BatchNorm batch statistics: the bias of the non-local output conv, which
# feeds a BatchNorm directly, is removed again by the mean subtraction (R101-NL: res4 blocks 6, 13, 20).
ZERO_GRADIENT_BATCH_STATISTICS = {
    f"backbone.s4.pathway0_nonlocal{i}.conv_out.bias": "bias right before a batch-statistics BatchNorm"
    for i in (6, 13, 20)
}


@pytest.fixture(scope="module")
def recipe(shared_dir):
    """The kit's weight recipe: deterministic, well-scaled values for any state dict (no zero-initialized
    layers, which would block gradients for reasons of initialization only)."""
    return load_recipe(shared_dir / "reference" / "decoder")


@pytest.mark.parametrize("kind", sorted(SMALL_DETECTORS))
def test_gradients_reach_every_trained_parameter(kind, repo_root, recipe):
    """The official total loss (mean of the 4·S terms) gives every parameter a nonzero gradient except
    those in ZERO_GRADIENT (and ZERO_GRADIENT_BATCH_STATISTICS where BatchNorm uses batch statistics). Train
    mode as the official trainer: frozen-BN statistics for SlowOnly, batch statistics for SlowFast (running
    statistics are buffers, not parameters)."""
    name, opts, frames = SMALL_DETECTORS[kind]
    model = build_detector(official_cfg(repo_root, name, *opts, *SMALL_STM)).double()
    model.load_state_dict(recipe.build_state_dict(
        [(k, tuple(shape), dtype) for k, shape, dtype in state_entries(model)], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randn(2, 3, t, 64, 64, generator=gen, dtype=torch.float64) for t in frames]
    if len(videos) == 1:
        videos.append(None)
    whwh = torch.tensor([[64.0, 64.0, 64.0, 64.0], [48.0, 32.0, 48.0, 32.0]], dtype=torch.float64)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 60.0]]), torch.tensor([[0.0, 0.0, 20.0, 30.0], [10.0, 4.0, 47.0, 20.0]])]
    labels = [torch.eye(5)[:1], torch.eye(5)[1:3]]
    model.train()
    losses = model(*videos, whwh, boxes, labels)
    assert len(losses) == 4 * 2
    reduce_losses(losses, "mean").backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    zero = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() < 1e-12}
    expected = set(ZERO_GRADIENT)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
        expected |= set(ZERO_GRADIENT_BATCH_STATISTICS) & {n for n, _ in model.named_parameters()}
    assert no_grad == [] and zero == expected
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trace_records_backbone_and_neck_maps(repo_root):
    name, opts, _ = SMALL_DETECTORS["vit"]
    model = build_detector(official_cfg(repo_root, name, *opts, *SMALL_STM)).eval()
    video = torch.randn(1, 3, 4, 64, 96)
    trace = {}
    with torch.no_grad():
        model(video, None, torch.tensor([[96.0, 64.0, 96.0, 64.0]]), trace=trace)
        levels, mapped = model.features(video)
    for i in range(4):
        assert torch.equal(trace[f"backbone_l{i}"][0], levels[i]) and torch.equal(trace[f"mapped_l{i}"][0], mapped[i])
    assert [tuple(m.shape) for m in mapped] == [(1, 32, 2, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
