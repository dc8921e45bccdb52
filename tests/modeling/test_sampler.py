"""The feature sampler: hand-checked values, and the folded path against the reference path."""

import math

import pytest
import torch

from stmixer.modeling.stmixer.sampling import PyramidSampler, level_weights, make_sample_points

STRIDES = (4, 8, 16, 32)


def pyramid(batch=2, channels=8, frames=3, height=32, width=40, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, channels, frames, height // s * 4, width // s * 4, generator=gen, dtype=dtype)
        for s in STRIDES
    ]


def random_points(batch, queries, n, height=32, width=40, dtype=torch.float64, seed=1):
    """Points over the canvas and a little beyond it (zero padding), levels across and beyond the pyramid."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, queries, n, 2, generator=gen, dtype=dtype) * torch.tensor([width + 8.0, height + 8.0]) - 4
    z = torch.rand(batch, queries, n, 1, generator=gen, dtype=dtype) * 6.0 + 1.5
    return torch.cat([xy, z], dim=-1)


def test_level_weights_by_hand():
    w = level_weights(torch.tensor([4.0], dtype=torch.float64), 4)[0]  # u = z - 3 = 1
    raw = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5), math.exp(-2.0)], dtype=torch.float64)
    torch.testing.assert_close(w, raw / raw.sum(), rtol=0, atol=1e-15)


def test_sample_points_by_hand():
    # Box centred at (50, 40), w = 2^5 * 2^-0.5 ... choose r = 0 so w = h = 2^z = 16.
    xyzr = torch.tensor([[[50.0, 40.0, 4.0, 0.0]]], dtype=torch.float64)
    offsets = torch.tensor([[[0.5, -0.25, 0.3, 0.0, 0.0, -1.0]]], dtype=torch.float64)
    points = make_sample_points(offsets, xyzr, 2)
    expected = torch.tensor([[[[58.0, 36.0, 4.3], [50.0, 40.0, 3.0]]]], dtype=torch.float64)
    torch.testing.assert_close(points, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "folded"])
def test_values_by_hand(impl):
    """Level l constant c_l per group; a pixel-centre point of level 0 reads x-ramp values exactly."""
    B, C, T, G = 1, 4, 2, 2
    features = []
    for level, stride in enumerate(STRIDES):
        h, w = 64 // stride, 64 // stride
        f = torch.full((B, C, T, h, w), float(level + 1), dtype=torch.float64)
        f[:, :2] *= 10.0  # group 0 is ten times group 1
        features.append(f)
    # Level 0 of group 0, frame 1, gets a ramp in x: value = column index.
    features[0][:, 0:2, 1] = torch.arange(16, dtype=torch.float64)
    # One query, group 0 point at pixel centre of column 5 (x = 5.5 * 4 = 22), level z = 3 (mostly level 0).
    points = torch.tensor([[[[22.0, 30.0, 3.0], [16.0, 48.0, 5.0]]]], dtype=torch.float64)
    out = PyramidSampler(features, STRIDES, G, impl)(points)  # [B, G, C/G, T, Q, P]
    w0 = level_weights(torch.tensor(3.0, dtype=torch.float64), 4)
    w1 = level_weights(torch.tensor(5.0, dtype=torch.float64), 4)
    constants = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    frame0 = 10 * (w0 * constants).sum()
    frame1 = w0[0] * 5.0 + 10 * (w0[1:] * constants[1:]).sum()
    torch.testing.assert_close(out[0, 0, :, 0, 0, 0], frame0.expand(2), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0, 0, :, 1, 0, 0], frame1.expand(2), rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0, 1, :, :, 0, 0], (w1 * constants).sum().expand(2, 2), rtol=0, atol=1e-12)


def sample_and_grads(impl, features, points, n_groups, calls):
    features = [f.detach().clone().requires_grad_() for f in features]
    points = points.detach().clone().requires_grad_()
    sampler = PyramidSampler(features, STRIDES, n_groups, impl)
    outs = [sampler(points * (1 + 0.05 * k)) for k in range(calls)]  # several stages share one sampler
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    loss = loss + sum(o.mean(3).square().sum() + o.mean(5).square().sum() for o in outs)
    grads = torch.autograd.grad(loss, [points, *features])
    return outs, grads


def test_folded_equals_reference_values_and_gradients():
    features = pyramid()
    points = random_points(2, 5, 4 * 6)
    ref_out, ref_grads = sample_and_grads("reference", features, points, 4, calls=2)
    fold_out, fold_grads = sample_and_grads("folded", features, points, 4, calls=2)
    for a, b in zip(ref_out, fold_out):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-14)
    for a, b in zip(ref_grads, fold_grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * a.abs().max().item())


def test_folded_gradcheck():
    gen = torch.Generator().manual_seed(3)
    features = [torch.randn(1, 2, 2, 3, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in STRIDES]
    points = random_points(1, 2, 2, height=12, width=12).requires_grad_()

    def fn(p, *f):
        return PyramidSampler(list(f), STRIDES, 2, "folded")(p)

    assert torch.autograd.gradcheck(fn, (points, *features), eps=1e-6, atol=1e-7)


def saved_bytes(impl, features, points, n_groups, calls):
    """Bytes autograd keeps for the backward beyond the inputs."""
    inputs = {t.untyped_storage().data_ptr() for t in [points, *features]}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in inputs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sampler = PyramidSampler(features, STRIDES, n_groups, impl)
        outputs = [sampler(points + k) for k in range(calls)]  # keep every graph alive while counting
    del outputs
    return sum(seen.values())


def test_folded_keeps_no_samples_for_backward():
    """Beyond one shared frame-major copy of the features, the folded path saves nothing that grows with
    the channels (the reference keeps a copy per call and every level's samples)."""
    calls, B, T, Q, P, G = 3, 2, 4, 20, 16, 4
    points = random_points(B, Q, G * P).requires_grad_()
    saved, feature_bytes = {}, {}
    for channels in (8, 32):
        features = [f.requires_grad_() for f in pyramid(batch=B, channels=channels, frames=T)]
        feature_bytes[channels] = sum(f.numel() * f.element_size() for f in features)
        for impl in ("reference", "folded"):
            saved[impl, channels] = saved_bytes(impl, features, points, G, calls)
    extra_features = feature_bytes[32] - feature_bytes[8]
    extra_samples = B * (32 - 8) * T * Q * P * 8  # one level's samples, float64
    assert saved["folded", 32] - saved["folded", 8] == extra_features
    assert saved["reference", 32] - saved["reference", 8] >= calls * (extra_features + 4 * extra_samples)


def test_bad_inputs_raise_clear_errors():
    features = pyramid(channels=6)
    with pytest.raises(ValueError, match="not divisible by N_GROUPS=4"):
        PyramidSampler(features, STRIDES, 4)
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        PyramidSampler(pyramid(), STRIDES, 4, "fast")
    with pytest.raises(ValueError, match="one B, C and T"):
        PyramidSampler([pyramid()[0], pyramid(frames=2)[1]], STRIDES[:2], 4)
