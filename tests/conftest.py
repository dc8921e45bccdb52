"""Shared test fixtures: the ``../shared`` kit and the repository root."""

import os
from pathlib import Path

import pytest

from stmixer.utils.env import find_shared_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root():
    """The repository root (where train_net.py lives)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir():
    """The ``shared`` kit folder; skipped when absent, except under CI=true where absence fails."""
    path = find_shared_dir()
    if path is None:
        message = "the shared kit is absent (set STMIXER_SHARED or place it at ../shared beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
