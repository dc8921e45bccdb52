"""Fixtures for checkpoint tests: the kit's fake-checkpoint writer and a per-session cache of fakes."""

import importlib.util
import json

import pytest


@pytest.fixture(scope="session")
def make_fake(shared_dir):
    """The kit's ``make_fake`` module (writes full-size fake checkpoints)."""
    spec = importlib.util.spec_from_file_location("make_fake", shared_dir / "pretrained" / "make_fake.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake_file(make_fake, tmp_path_factory):
    """``fake_file(format, seed=0, **options)`` -> path of that fake, written once per session and
    deleted at its end (fakes are 0.1-1 GB each)."""
    written = {}

    def write(fmt, seed=0, **options):
        key = (fmt, seed, json.dumps(options, sort_keys=True))
        if key not in written:
            written[key] = make_fake.write_fake(fmt, tmp_path_factory.mktemp(fmt), seed=seed, **options)
        return written[key]

    yield write
    for path in written.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def case_loader(shared_dir):
    """``case_loader(case_id)`` -> (case folder, case.json as a dict)."""

    def load(case_id):
        folder = shared_dir / "pretrained" / "expected" / case_id
        return folder, json.loads((folder / "case.json").read_text())

    return load
