"""Fixtures for the parity-tool tests: the reference kit, its answers, and recipe weights built once."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from stmixer.tools.reference_parity import load_recipe


@pytest.fixture(scope="session")
def reference_dir(shared_dir):
    """``shared/reference``: the fixtures made with the official code."""
    return shared_dir / "reference"


@pytest.fixture(scope="session")
def expected_answers(reference_dir):
    """``expected_answers(name)`` -> the answers of fixture ``name`` (``expected.npz``; only tests read it)."""

    def load(name):
        with np.load(reference_dir / name / "expected.npz") as data:
            return dict(data)

    return load


@pytest.fixture(scope="session")
def recipe(reference_dir):
    """The kit's ``recipe.py`` module, found the way the parity tool finds it."""
    return load_recipe(reference_dir / "decoder")


@pytest.fixture(scope="module")
def recipe_weights(reference_dir, recipe):
    """``recipe_weights(name)`` -> the float32 state dict of detector fixture ``name``: the recipe over its
    ``manifest.json`` with the salt of its ``weights.json``, bit-identical to ``recipe.build_state_dict``
    (asserted with the fixture's ``state_dict_crc32``).

    Recipe values depend only on (key, shape, salt), and the detector fixtures share most of them (all
    SlowFast backbone keys but R101's extra blocks; the decoder of every T' = 8 config), so entries of the
    previously requested fixture are reused instead of recomputed. Only that one fixture is kept (~1 GB),
    until the end of the requesting test module. Request fixtures in an order where neighbours share much
    (slowfast_r50, slowfast_r101_nl, vit_b).
    """
    last = {}

    def build(name):
        if last.get("name") == name:
            return last["weights"]
        folder = reference_dir / name
        info = json.loads((folder / "weights.json").read_text())
        salt = info.get("salt", "")
        reusable = last["weights"] if last.get("salt") == salt else {}
        last.clear()  # free the previous weights as soon as this build no longer needs them
        weights = OrderedDict()
        for key, shape, dtype in recipe.load_manifest(folder / info.get("manifest", "manifest.json")):
            old = reusable.get(key)
            if old is not None and tuple(old.shape) == shape and old.dtype == getattr(torch, dtype):
                weights[key] = old
            else:
                weights[key] = recipe.recipe_tensor(key, shape, salt=salt, kind_dtype=dtype)
        del reusable
        assert recipe.state_dict_crc32(weights) == info["state_dict_crc32"], f"{name}: recipe weights differ"
        last.update(name=name, salt=salt, weights=weights)
        return weights

    yield build
    last.clear()
