"""Shared by the benchmark scripts' tests: loading a script as a module, and a small synthetic dataset."""

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name):
    """``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A synthetic AVA-layout dataset of 8 videos, 64 x 96 frames, 2 annotated seconds each."""
    from stmixer.data.synthetic import main as make_synthetic

    root = tmp_path_factory.mktemp("bench_data")
    make_synthetic(["--out", str(root), "--videos", "8", "--seconds", "2", "--size", "64", "96", "--workers", "1"])
    return root
