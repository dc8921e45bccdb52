"""Decoder behaviour beyond the fixture: gradients, switches, official defects fixed, input errors."""

import math

import pytest
import torch

from stmixer.config import get_cfg
from stmixer.modeling.losses import reduce_losses
from stmixer.modeling.stmixer import build_stm_decoder
from stmixer.modeling.stmixer.mixing import initial_offset_bias


def small_cfg(**overrides):
    cfg = get_cfg()
    cfg.MODEL.STM.merge_from_other_cfg(dict(
        NUM_QUERIES=6, HIDDEN_DIM=32, NUM_STAGES=2, NUM_HEADS=4, DIM_FEEDFORWARD=64, SPATIAL_POINTS=4,
        TEMPORAL_POINTS=2, OUT_MULTIPLIER=2, N_GROUPS=2, ACTION_CLASSES=5,
    ))
    cfg.MODEL.STM.merge_from_other_cfg(overrides)
    return cfg


def small_inputs(cfg, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    stm = cfg.MODEL.STM
    features = [torch.randn(batch, stm.HIDDEN_DIM, stm.TEMPORAL_POINTS, 64 // s, 96 // s, generator=gen)
                for s in (4, 8, 16, 32)]
    whwh = torch.tensor([[96.0, 64.0, 96.0, 64.0], [80.0, 48.0, 80.0, 48.0]])[:batch]
    boxes = [torch.tensor([[10.0, 5.0, 40.0, 60.0]]), torch.tensor([[0.0, 0.0, 30.0, 30.0], [20, 10, 70, 40]])]
    labels = [torch.eye(stm.ACTION_CLASSES)[: len(b)] for b in boxes]
    return features, whwh, boxes[:batch], labels[:batch]


def test_gradients_reach_every_parameter(load_decoder, decoder_inputs):
    """Every parameter gets a gradient from the official total loss, except stage 0's IoF temperature.

    ``decoder_stages.0.iof_tau`` is trained in the official model too, but its gradient is zero there
    as well: every stage-0 proposal is the whole clip, so its IoF bias is constant along each row of
    the attention logits, which the softmax ignores.
    """
    decoder = load_decoder(torch.float64).train()
    features, whwh, boxes, labels = decoder_inputs(torch.float64)
    trace = {}
    reduce_losses(decoder(features, whwh, boxes, labels, trace=trace)).backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None]
    zero = [n for n, p in decoder.named_parameters() if p.grad is not None and p.grad.abs().max() < 1e-12]
    assert no_grad == []
    assert zero == ["decoder_stages.0.iof_tau"]
    stage0_bias = trace["detail/attn_bias_s"][0]
    assert torch.equal(stage0_bias, stage0_bias[..., :1].expand_as(stage0_bias))


def test_loss_reduction_key_defaults_to_the_official_mean(load_decoder, decoder_inputs):
    assert get_cfg().MODEL.STM.LOSS_REDUCTION == "mean"
    decoder = load_decoder(torch.float64).train()
    losses = decoder(*decoder_inputs(torch.float64))
    assert len(losses) == 12
    total = sum(v.item() for v in losses.values())
    assert reduce_losses(losses, get_cfg().MODEL.STM.LOSS_REDUCTION).item() == pytest.approx(total / 12, rel=1e-15)


def test_without_intermediate_supervision(load_decoder, decoder_inputs):
    """The official code raises NotImplementedError here; we supervise the final stage only."""
    inputs = decoder_inputs(torch.float64)
    full = load_decoder(torch.float64).train()(*inputs)
    final_only = load_decoder(torch.float64, INTERMEDIATE_SUPERVISION=False).train()(*inputs)
    assert list(final_only) == ["loss_bce", "loss_ce", "loss_giou", "loss_bbox"]
    for name, value in final_only.items():
        assert value.item() == full[name].item()


@pytest.mark.parametrize("points", [4, 9, 16])
def test_perfect_square_points_build_a_grid_and_run(points):
    """The official initialization crashes for square point counts; ours starts them on a grid."""
    cfg = small_cfg(SPATIAL_POINTS=points)
    torch.manual_seed(0)
    decoder = build_stm_decoder(cfg)
    side = int(points ** 0.5)
    bias = decoder.decoder_stages[0].samplingmixing.offset_generator[0].bias.view(2, points, 3)
    centres = (torch.arange(side) + 0.5) / side - 0.5
    torch.testing.assert_close(bias[1, :, 0], centres.repeat_interleave(side))
    torch.testing.assert_close(bias[1, :, 1], centres.repeat(side))
    assert (bias[..., 2] == 0).all()
    features, whwh, boxes, labels = small_inputs(cfg)
    losses = decoder.train()(features, whwh, boxes, labels)
    assert all(torch.isfinite(v) for v in losses.values())
    detections = decoder.eval()(features, whwh)
    assert [d["boxes"].shape[1] for d in detections] == [4, 4]


def test_official_initialization():
    """Xavier matrices, zero box head and mixing generators, 1% action prior, PyTorch-default biases."""
    torch.manual_seed(0)
    stage = build_stm_decoder(small_cfg()).decoder_stages[1]
    mixing = stage.samplingmixing.adaptive_mixing_s
    for linear, zero_weight in ((mixing.parameter_generator[0], True), (mixing.out_proj, False),
                                (stage.samplingmixing.adaptive_mixing_t.parameter_generator[0], True)):
        fan_out, fan_in = linear.weight.shape
        if zero_weight:
            assert (linear.weight == 0).all()
        else:
            assert 0.5 < linear.weight.abs().max() / (6 / (fan_in + fan_out)) ** 0.5 <= 1
        assert 0.5 < linear.bias.abs().max() * fan_in**0.5 <= 1  # uniform in +-1/sqrt(fan_in)
    ffn = stage.ffn_s.layers[0][0].weight
    assert 0.5 < ffn.abs().max() / (6 / sum(ffn.shape)) ** 0.5 <= 1
    assert (stage.fc_reg.weight == 0).all() and (stage.fc_reg.bias == 0).all()
    torch.testing.assert_close(stage.fc_action.bias, torch.full((5,), -math.log(99.0)))
    assert ((stage.iof_tau >= 0) & (stage.iof_tau < 4)).all()


def test_non_square_offsets_start_uniform_in_the_box():
    torch.manual_seed(0)
    bias = initial_offset_bias(4, 32).view(4, 32, 3)
    assert bias[..., :2].abs().max() <= 0.5 and bias[..., :2].std() > 0.2
    assert (bias[..., 2] == 0).all()


def test_eval_keeps_top_scoring_queries_when_none_passes_the_threshold():
    cfg = small_cfg(NUM_QUERIES=2, PERSON_THRESHOLD=1.5)
    torch.manual_seed(0)
    decoder = build_stm_decoder(cfg).eval()
    trace = {}
    features, whwh, _, _ = small_inputs(cfg)
    detections = decoder(features, whwh, trace=trace)
    person = trace["person_scores"][0]
    for i, det in enumerate(detections):
        assert det["query_indices"].tolist() == torch.argsort(person[i], descending=True).tolist()
        assert det["scores"].shape == (2, 5)
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 1).all()


def test_degenerate_ground_truth_names_the_clip():
    cfg = small_cfg()
    features, whwh, boxes, labels = small_inputs(cfg)
    boxes[1] = torch.tensor([[0.0, 0.0, 30.0, 30.0], [70.0, 10.0, 20.0, 40.0]])
    with pytest.raises(ValueError, match=r"clip 1 of the batch: ground-truth box 1 .* x1 <= x2"):
        build_stm_decoder(cfg).train()(features, whwh, boxes, labels)


def test_input_errors_are_explained():
    cfg = small_cfg()
    decoder = build_stm_decoder(cfg)
    features, whwh, boxes, labels = small_inputs(cfg)
    with pytest.raises(ValueError, match="TEMPORAL_POINTS is 2"):
        decoder([f[:, :, :1] for f in features], whwh)
    with pytest.raises(ValueError, match="HIDDEN_DIM=32"):
        decoder([f[:, :16] for f in features], whwh)
    with pytest.raises(ValueError, match="needs gt_boxes and gt_labels"):
        decoder.train()(features, whwh)
    with pytest.raises(ValueError, match="gt_labels has shape"):
        decoder.train()(features, whwh, boxes, [labels[0], labels[1][:1]])


@pytest.mark.parametrize("key, value, message", [
    ("MEM_ACTIVE", True, "MEM_ACTIVE"),
    ("SAMPLER", "fast", "MODEL.STM.SAMPLER = 'fast'"),
    ("N_GROUPS", 3, "divisible by MODEL.STM.N_GROUPS"),
    ("NUM_FCS", 1, "NUM_FCS = 1"),
    ("ACTIVATION", "Swish", "ACTIVATION = 'Swish'"),
])
def test_bad_config_is_explained(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_stm_decoder(small_cfg(**{key: value}))
