"""The parity tool end to end: its npz against the fixture's expected.npz (compared here, never in the tool)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stmixer.tools import parity_check
from stmixer.tools.reference_parity import FixtureError, run_fixture


def check_against_expected(ours, expected):
    """Same keys, shapes and dtypes as expected.npz for the run's precision; values within tolerance of f64/."""
    result = parity_check.compare(ours, expected)
    assert result.ok, "\n".join(result.problems)


@pytest.fixture(scope="module")
def expected(expected_answers):
    return expected_answers("decoder")


@pytest.mark.parametrize("precision", ["f64", "f32"])
def test_command_line_on_the_decoder_fixture(precision, shared_dir, expected, repo_root, tmp_path):
    out = tmp_path / "out.npz"
    result = subprocess.run(
        [sys.executable, "-m", "stmixer.tools.reference_parity", "--fixture", str(shared_dir / "reference" / "decoder"),
         "--out", str(out), "--precision", precision],
        cwd=repo_root, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        check_against_expected(dict(data), expected)


def recipe_fixture(shared_dir, tmp_path, salt):
    """A copy of the decoder fixture that asks for recipe weights (no weights.pth, no expected.npz)."""
    source = shared_dir / "reference" / "decoder"
    fixture = tmp_path / "decoder"
    fixture.mkdir(parents=True)
    for name in ("config.yaml", "inputs.npz", "manifest.json"):
        shutil.copy(source / name, fixture / name)
    (fixture / "weights.json").write_text(json.dumps({"source": "recipe", "manifest": "manifest.json", "salt": salt}))
    shutil.copy(shared_dir / "reference" / "recipe.py", tmp_path / "recipe.py")
    return fixture


def test_recipe_weights_and_salt_come_from_the_fixture(shared_dir, expected, tmp_path):
    """weights.pth is the recipe over the manifest, so the recipe route gives the same answers; a salt changes them."""
    check_against_expected(run_fixture(recipe_fixture(shared_dir, tmp_path / "plain", ""), "f64"), expected)
    salted = run_fixture(recipe_fixture(shared_dir, tmp_path / "salted", "other-"), "f64")
    assert not np.allclose(salted["f64/eval/cls_logits"], expected["f64/eval/cls_logits"])


def test_incomplete_fixture_is_reported(shared_dir, tmp_path, repo_root):
    fixture = recipe_fixture(shared_dir, tmp_path, "")
    (fixture / "weights.json").unlink()
    with pytest.raises(FixtureError, match="no weights.pth and no weights.json"):
        run_fixture(fixture, "f64")
    (fixture / "inputs.npz").unlink()
    result = subprocess.run(
        [sys.executable, "-m", "stmixer.tools.reference_parity", "--fixture", str(fixture), "--out",
         str(tmp_path / "x.npz")], cwd=repo_root, capture_output=True, text=True,
    )
    assert result.returncode == 2 and "missing inputs.npz" in result.stderr
    assert not (tmp_path / "x.npz").exists()
