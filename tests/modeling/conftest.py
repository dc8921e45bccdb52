"""Fixtures for the decoder tests: the reference decoder fixture, loaded as tensors."""

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.modeling.stmixer import build_stm_decoder


@pytest.fixture(scope="session")
def decoder_fixture_dir(shared_dir):
    """``shared/reference/decoder``: the official decoder alone, small sizes, stored weights."""
    return shared_dir / "reference" / "decoder"


@pytest.fixture(scope="session")
def decoder_cfg(decoder_fixture_dir):
    """Our defaults with the decoder fixture's config.yaml merged on top."""
    cfg = get_cfg()
    cfg.merge_from_file(str(decoder_fixture_dir / "config.yaml"))
    return cfg


@pytest.fixture(scope="session")
def decoder_expected(decoder_fixture_dir):
    """The fixture's answers (only tests read them)."""
    with np.load(decoder_fixture_dir / "expected.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def decoder_arrays(decoder_fixture_dir):
    """The fixture's inputs.npz as numpy arrays."""
    with np.load(decoder_fixture_dir / "inputs.npz") as data:
        return dict(data)


@pytest.fixture(scope="session")
def decoder_weights(decoder_fixture_dir):
    """The fixture's float32 state dict."""
    return torch.load(decoder_fixture_dir / "weights.pth", weights_only=True)


@pytest.fixture
def load_decoder(decoder_cfg, decoder_weights):
    """``load_decoder(dtype, **overrides)``: the fixture's decoder with its weights, in ``dtype``."""

    def make(dtype=torch.float64, **overrides):
        cfg = decoder_cfg.clone()
        for key, value in overrides.items():
            cfg.MODEL.STM[key] = value
        decoder = build_stm_decoder(cfg)
        decoder.load_state_dict(decoder_weights, strict=True)
        return decoder.to(dtype)

    return make


@pytest.fixture
def decoder_inputs(decoder_arrays):
    """``decoder_inputs(dtype)`` -> (features, whwh, gt_boxes, gt_labels) of the fixture in ``dtype``."""

    def make(dtype=torch.float64):
        features = [torch.from_numpy(decoder_arrays[f"features_l{i}"]).to(dtype) for i in range(4)]
        whwh = torch.from_numpy(decoder_arrays["whwh"]).to(dtype)
        batch = int(decoder_arrays["batch_size"])
        boxes = [torch.from_numpy(decoder_arrays[f"gt_boxes_b{i}"]).to(dtype) for i in range(batch)]
        labels = [torch.from_numpy(decoder_arrays[f"gt_labels_b{i}"]).to(dtype) for i in range(batch)]
        return features, whwh, boxes, labels

    return make
