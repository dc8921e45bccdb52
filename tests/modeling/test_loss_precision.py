"""Targets and matching stay float32 under autocast; all matchings of a step cost one host round trip."""

import contextlib

import pytest
import torch

from stmixer.modeling.losses import AccumulatedBatch, SetCriterion, accumulate, reduce_losses, stacks_losses
from stmixer.modeling.matcher import HungarianMatcher
from stmixer.modeling.stmixer import build_stm_decoder
from stmixer.modeling.stmixer.decoder import DecoderOutputs

from test_decoder import small_cfg, small_inputs


def spy_criterion(decoder):
    """Wrap ``decoder.criterion.forward``; the returned dict receives the targets and the matches."""
    seen = {}
    forward = decoder.criterion.forward

    def spy(outputs, targets, trace=None):
        trace = {}
        seen["targets"] = targets
        seen["trace"] = trace
        return forward(outputs, targets, trace)

    decoder.criterion.forward = spy
    return seen


def test_targets_and_whwh_stay_float32_under_bf16_autocast():
    """A width of 455 is 456 in bf16 and a box edge of 10.3 is 10.3125: the loss must see the float32 values."""
    cfg = small_cfg()
    torch.manual_seed(0)
    decoder = build_stm_decoder(cfg).train()
    features, _, _, labels = small_inputs(cfg)
    whwh = torch.tensor([[455.0, 256.0, 455.0, 256.0], [449.0, 255.0, 449.0, 255.0]])
    boxes = [torch.tensor([[10.3, 50.9, 200.7, 250.1]]), torch.tensor([[0.0, 0.0, 30.0, 30.0], [20, 10.3, 70, 40]])]
    seen = spy_criterion(decoder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = decoder([f.bfloat16() for f in features], whwh, boxes, labels)
    for i, target in enumerate(seen["targets"]):
        assert target["boxes"].dtype == target["whwh"].dtype == target["actions"].dtype == torch.float32
        assert torch.equal(target["boxes"], boxes[i])
        assert torch.equal(target["whwh"], whwh[i])
        assert torch.equal(target["actions"], labels[i])
    for name, (matches,) in seen["trace"].items():
        if name.startswith("match/"):
            assert all(m.cost.dtype == torch.float32 for m in matches)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    reduce_losses(losses).backward()


def test_bf16_autocast_does_not_flip_an_assignment_by_rounding_the_targets(monkeypatch):
    """Query 0 sits exactly on the ground truth (x1 = 10.3), query 1 on its bf16 rounding (10.3125).

    In float32 query 0 is the match; with the targets rounded to bf16 it would be query 1.
    """
    cfg = small_cfg(NUM_QUERIES=2, NUM_STAGES=1)
    torch.manual_seed(0)
    decoder = build_stm_decoder(cfg).train()
    features, _, _, _ = small_inputs(cfg, batch=1)
    whwh = torch.tensor([[455.0, 300.0, 455.0, 300.0]])
    gt = torch.tensor([[10.3, 20.0, 150.0, 260.0]])
    predicted = torch.stack([gt[0], torch.tensor([10.3125, 20.0, 150.0, 260.0])])[None]
    assert predicted[0, 1, 0] == gt.bfloat16().float()[0, 0] and predicted[0, 0, 0] != predicted[0, 1, 0]
    A = cfg.MODEL.STM.ACTION_CLASSES

    def decode(features, whwh, trace=None):  # fixed predictions: only the targets' precision matters
        cls = torch.zeros(1, 2, 2, dtype=features[0].dtype)
        return DecoderOutputs([cls], [torch.zeros(1, 2, A, dtype=features[0].dtype)], [predicted.clone()])

    monkeypatch.setattr(decoder, "decode", decode)
    labels = [torch.ones(1, A)]
    seen = spy_criterion(decoder)
    fp32 = decoder(features, whwh, [gt], labels)
    fp32_match = seen["trace"]["match/stage0"][0][0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = decoder([f.bfloat16() for f in features], whwh, [gt], labels)
    bf16_match = seen["trace"]["match/stage0"][0][0]
    assert fp32_match.src.tolist() == [0]
    assert bf16_match.src.tolist() == fp32_match.src.tolist()
    assert torch.equal(bf16_match.cost, fp32_match.cost)
    for name in ("loss_giou", "loss_bbox"):
        assert bf16[name].item() == fp32[name].item()


def fixture_losses_and_grads(load_decoder, decoder_inputs, dtype, batched, boxes_fn=None, stacked=False,
                             accumulated=False):
    """Losses and gradients of the fixture decoder; ``batched``: batched matching; ``stacked``: stacked
    stage losses; ``accumulated``: as a micro-batch of a batch with one more box per clip."""
    decoder = load_decoder(dtype).train()
    decoder.criterion.batched_matching = batched
    decoder.criterion.batched_losses = stacked
    features, whwh, boxes, labels = decoder_inputs(dtype)
    if boxes_fn is not None:
        boxes, labels = boxes_fn(boxes, labels)
    features = [f.requires_grad_() for f in features]
    context = accumulate(AccumulatedBatch.from_counts([len(b) + 1 for b in boxes], "cpu")) if accumulated \
        else contextlib.nullcontext()
    with context:
        losses = decoder(features, whwh, boxes, labels)
    reduce_losses(losses).backward()
    grads = {n: p.grad for n, p in decoder.named_parameters() if p.grad is not None}
    grads.update({f"features{i}": f.grad for i, f in enumerate(features)})
    return losses, grads


def uneven(boxes, labels):
    """Clip 0 without ground truth, clip 1 with one more box: padding and empty clips in one batch."""
    extra_box = boxes[1][:1] + 3
    return ([boxes[0][:0]] + [torch.cat([boxes[1], extra_box])] + list(boxes[2:]),
            [labels[0][:0]] + [torch.cat([labels[1], labels[1][:1]])] + list(labels[2:]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("boxes_fn", [None, uneven], ids=["fixture", "uneven"])
def test_batched_matching_equals_the_per_clip_path_bit_for_bit(load_decoder, decoder_inputs, dtype, boxes_fn):
    ref_losses, ref_grads = fixture_losses_and_grads(load_decoder, decoder_inputs, dtype, False, boxes_fn)
    losses, grads = fixture_losses_and_grads(load_decoder, decoder_inputs, dtype, True, boxes_fn)
    assert list(losses) == list(ref_losses)
    for name in ref_losses:
        assert torch.equal(losses[name], ref_losses[name]), name
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert torch.equal(grads[name], ref_grads[name]), name


def test_one_step_copies_the_costs_to_the_host_once(load_decoder, decoder_inputs, monkeypatch):
    """6 stages x B clips of matching: one device-to-host copy (the per-clip path makes one per stage and clip)."""
    calls = []
    cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    decoder = load_decoder(torch.float32).train()
    features, whwh, boxes, labels = decoder_inputs(torch.float32)
    num_stages, B, Q = len(decoder.decoder_stages), whwh.size(0), decoder.num_queries
    decoder(features, whwh, boxes, labels)
    assert calls == [(num_stages * B, Q, max(len(b) for b in boxes))]
    calls.clear()
    decoder.criterion.batched_matching = False
    decoder(features, whwh, boxes, labels)
    assert len(calls) == num_stages * B


def test_batched_costs_equal_the_single_clip_costs():
    gen = torch.Generator().manual_seed(0)
    B, Q = 3, 5
    xy = torch.rand(B, Q, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(B, Q, 2, generator=gen) * 30], -1)
    logits = torch.randn(B, Q, 2, generator=gen)
    targets = []
    for n in (2, 0, 4):
        gxy = torch.rand(n, 2, generator=gen) * 50
        targets.append({"boxes": torch.cat([gxy, gxy + 10], -1), "whwh": torch.tensor([120.0, 90.0, 120.0, 90.0])})
    matcher = HungarianMatcher(2.0, 5.0, 2.0)
    for batched, single in zip(matcher(logits, boxes, targets), matcher.match_per_clip(logits, boxes, targets)):
        assert torch.equal(batched.cost, single.cost)
        assert torch.equal(batched.src, single.src) and torch.equal(batched.tgt, single.tgt)


def no_boxes(boxes, labels):
    return [b[:0] for b in boxes], [x[:0] for x in labels]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)], ids=["f64", "f32"])
@pytest.mark.parametrize("boxes_fn", [None, uneven, no_boxes], ids=["fixture", "uneven", "no_boxes"])
@pytest.mark.parametrize("accumulated", [False, True], ids=["whole", "micro_batch"])
def test_stacked_stage_losses_equal_the_per_stage_path(load_decoder, decoder_inputs, dtype, tol, boxes_fn,
                                                        accumulated):
    """All stages' losses as one stack (the default) = one stage_losses call per stage, values and gradients."""
    ref_losses, ref_grads = fixture_losses_and_grads(load_decoder, decoder_inputs, dtype, True, boxes_fn, False,
                                                     accumulated)
    losses, grads = fixture_losses_and_grads(load_decoder, decoder_inputs, dtype, True, boxes_fn, True, accumulated)
    assert list(losses) == list(ref_losses) and len(losses) >= 8  # several stages supervised
    for name in ref_losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=tol, atol=tol * 1e-3, msg=name)
    assert grads.keys() == ref_grads.keys()
    # relative to each tensor's own scale, with a floor at 1e-9 of the largest gradient (some are ~0: 1e-23)
    floor = 1e-9 * max(g.abs().max().item() for g in ref_grads.values())
    for name in ref_grads:
        scale = max(ref_grads[name].abs().max().item(), floor)
        err = (grads[name] - ref_grads[name]).abs().max().item()
        assert err <= tol * scale, (name, err, scale)


def test_stacked_losses_is_a_config_switch(decoder_cfg):
    assert build_stm_decoder(decoder_cfg).criterion.batched_losses == "auto"  # default
    for value in (True, False):
        cfg = decoder_cfg.clone()
        cfg.MODEL.STM.STACKED_LOSSES = value
        assert build_stm_decoder(cfg).criterion.batched_losses is value
    assert [stacks_losses("auto", d) for d in ("cpu", "cuda", torch.device("cuda", 1))] == [False, True, True]
    assert [stacks_losses(v, "cpu") for v in (True, False)] == [True, False]
    criterion = build_stm_decoder(decoder_cfg).criterion
    with pytest.raises(ValueError, match="batched_losses"):
        SetCriterion(criterion.matcher, 1, criterion.weights, 0.1, batched_losses="yes")


def test_stacked_losses_accepts_booleans_and_auto_from_files_and_the_command_line(tmp_path):
    from stmixer.config import load_config
    from stmixer.config.config import ConfigError

    for written, expected in (("true", True), ("False", False), ("auto", "auto")):
        path = tmp_path / f"{written}.yaml"
        path.write_text(f"MODEL:\n  STM:\n    STACKED_LOSSES: {written}\n")
        assert load_config(str(path)).MODEL.STM.STACKED_LOSSES == expected
    assert load_config(opts=["MODEL.STM.STACKED_LOSSES", "True"]).MODEL.STM.STACKED_LOSSES is True
    with pytest.raises((ConfigError, ValueError), match="MODEL.STM.STACKED_LOSSES"):
        load_config(opts=["MODEL.STM.STACKED_LOSSES", "sometimes"])
    with pytest.raises((ConfigError, ValueError), match="MODEL.STM.STACKED_LOSSES"):
        load_config(opts=["MODEL.STM.STACKED_LOSSES", "1"])


def test_auto_keeps_the_official_per_stage_losses_on_the_cpu(load_decoder, decoder_inputs, monkeypatch):
    calls = []
    original = SetCriterion.stacked_losses
    monkeypatch.setattr(SetCriterion, "stacked_losses", lambda self, *a: calls.append(1) or original(self, *a))
    ref_losses, ref_grads = fixture_losses_and_grads(load_decoder, decoder_inputs, torch.float32, True)
    auto_losses, auto_grads = fixture_losses_and_grads(load_decoder, decoder_inputs, torch.float32, True,
                                                       stacked="auto")
    assert not calls
    assert all(torch.equal(auto_losses[n], ref_losses[n]) for n in ref_losses)
    assert all(torch.equal(auto_grads[n], ref_grads[n]) for n in ref_grads)
    fixture_losses_and_grads(load_decoder, decoder_inputs, torch.float32, True, stacked=True)
    assert calls
