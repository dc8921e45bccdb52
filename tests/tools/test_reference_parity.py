"""The parity tool end to end: its npz against the fixture's expected.npz (compared here, never in the tool)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stmixer.tools.reference_parity import FixtureError, run_fixture

# Per-tensor tolerance on max|ours - official f64| as a multiple of max|official f64| (shared/reference/README.md).
TOLERANCE = {"f64": 1e-9, "f32": 2e-4}


def check_against_expected(ours, expected, precision):
    """Same keys, shapes and dtypes as expected.npz for ``precision``; values within tolerance of f64/."""
    prefix = f"{precision}/"
    wanted = {k for k in expected if k.startswith(prefix)}
    assert set(ours) == wanted
    for key in sorted(wanted):
        got, want = ours[key], expected[key]
        assert got.shape == want.shape and got.dtype == want.dtype, key
        if want.dtype.kind in "iuU":
            np.testing.assert_array_equal(got, want, err_msg=key)
            continue
        reference = expected["f64/" + key[len(prefix):]]
        if reference.size:
            err = np.abs(got.astype(np.float64) - reference).max()
            assert err <= TOLERANCE[precision] * np.abs(reference).max(), f"{key}: max error {err:.3e}"


@pytest.fixture(scope="module")
def expected(shared_dir):
    with np.load(shared_dir / "reference" / "decoder" / "expected.npz") as data:
        return dict(data)


@pytest.mark.parametrize("precision", ["f64", "f32"])
def test_command_line_on_the_decoder_fixture(precision, shared_dir, expected, repo_root, tmp_path):
    out = tmp_path / "out.npz"
    result = subprocess.run(
        [sys.executable, "-m", "stmixer.tools.reference_parity", "--fixture", str(shared_dir / "reference" / "decoder"),
         "--out", str(out), "--precision", precision],
        cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        check_against_expected(dict(data), expected, precision)


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
    check_against_expected(run_fixture(recipe_fixture(shared_dir, tmp_path / "plain", ""), "f64"), expected, "f64")
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
         str(tmp_path / "x.npz")], cwd=repo_root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "missing inputs.npz" in result.stderr
    assert not (tmp_path / "x.npz").exists()
