"""End to end: every fake pretrained / official file of the kit loads into our detector and its backbone
and neck reproduce the official outputs of its case; the feature tool does the same from the command line."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from stmixer.checkpoint import load_weights
from stmixer.tools.backbone_features import build_model, pathway_inputs
from stmixer.utils.env import find_shared_dir

# Official STMixer fakes whose decoder part is left out of the file (it does not change the features;
# saves ~0.6 GB per file). stmixer_slowonly_r50 is written whole, so a whole official file is exercised.
WITHOUT_HEAD = {"stmixer_slowfast_r50", "stmixer_slowfast_r101_nl", "stmixer_vit_b"}
FULL_CASE = "stmixer_slowonly_r50/seed2_48x64_t2"
# A pretrained backbone file (no neck, no decoder), as train_net --transfer loads it.
BACKBONE_CASE = "c2_slowonly_r50/seed0_48x64_t4"


def expected_case_ids():
    """``<format>/<case>`` of every end-to-end case in the kit (a placeholder id when the kit is absent,
    so that the test asks for ``shared_dir``, which skips or, under CI, fails)."""
    shared = find_shared_dir()
    if shared is None:
        return ["<shared kit absent>"]
    root = shared / "pretrained" / "expected"
    return sorted(str(p.parent.relative_to(root)) for p in root.glob("*/*/case.json"))


def case_fake(case, fake_file):
    options = dict(case["fake"]["options"])
    if case["fake"]["format"] in WITHOUT_HEAD:
        options["skip_groups"] = ["stm_head"]
    return fake_file(case["fake"]["format"], case["fake"]["seed"], **options)


def assert_matches_expected(outputs, folder, case):
    expected = np.load(folder / "expected.npz")
    rtol = case["suggested_tolerance"]["rtol"]
    for key in expected.files:
        ref = expected[key]
        assert outputs[key].shape == ref.shape, key
        error = np.abs(outputs[key] - ref).max() / np.abs(ref).max()
        assert error <= rtol, f"{key}: relative error {error:.2e} > {rtol}"


@pytest.mark.parametrize("case_id", expected_case_ids())
def test_fake_checkpoint_reproduces_the_official_features(case_id, shared_dir, repo_root, case_loader, fake_file):
    folder, case = case_loader(case_id)
    path = case_fake(case, fake_file)
    model = build_model(repo_root / case["official_config"]).eval()
    report = load_weights(model, path)
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    fmt = case["fake"]["format"]
    if fmt.startswith(("vmae_ft", "vmae2")):
        # norm is not filled from fc_norm (official behaviour): it stays at its initialization.
        assert {"backbone.norm.weight", "backbone.norm.bias"} <= set(report.not_stored)
        assert torch.equal(model.backbone.norm.weight, torch.ones(768))
    if fmt.startswith("vmae_pt"):
        assert "backbone.norm.weight" in report.loaded
    # Parts of the detector that the file does not hold are reported as left at their initialization.
    if fmt.startswith("stmixer_"):
        absent = set() if case_id == FULL_CASE else {"stm_head"}
    else:
        absent = {"lateral_convs", "stm_head"}
    assert set(report.left_at_init) == {f"{part}.* (not in the file)" for part in absent}
    assert not report.skipped
    if case_id == FULL_CASE:
        assert sum(k.startswith("stm_head.") for k in report.loaded) == 345
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 / bf16 files are cast
    with np.load(folder / "inputs.npz") as arrays:
        videos = pathway_inputs(dict(arrays), model.backbone.num_pathways)
    with torch.no_grad():
        features, laterals = model.features(*videos)
    outputs = {f"feat{i}": f.numpy() for i, f in enumerate(features)}
    outputs.update({f"lateral{i}": f.numpy() for i, f in enumerate(laterals)})
    assert_matches_expected(outputs, folder, case)


def test_feature_tool_end_to_end(shared_dir, repo_root, case_loader, fake_file, tmp_path):
    folder, case = case_loader(BACKBONE_CASE)
    out = tmp_path / "features.npz"
    command = [sys.executable, "-m", "stmixer.tools.backbone_features", "--config-file",
               str(repo_root / case["official_config"]), "--weights", str(case_fake(case, fake_file)),
               "--inputs", str(folder / "inputs.npz"), "--out", str(out)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # The load table was printed; the parts a backbone file lacks are reported, not an error.
    left = [line for line in result.stdout.splitlines() if line.strip().startswith("left at init")]
    assert "loaded" in result.stdout and len(left) == 1
    assert "lateral_convs.* (not in the file)" in left[0] and "stm_head.* (not in the file)" in left[0]
    with np.load(out) as arrays:
        outputs = dict(arrays)
    assert sorted(outputs) == [f"feat{i}" for i in range(4)] + [f"lateral{i}" for i in range(4)]
    assert all(a.dtype == np.float32 for a in outputs.values())
    assert_matches_expected(outputs, folder, case)


# The stored answers are float64 computations rounded to float32, so a float64 run must agree to within
# float32 rounding (< 6e-8 of each value); typical small deviations from the official computation (e.g. the
# ViT position table kept in float64, reference quirk P2: ~4e-7) would show.
FLOAT64_CASES = ["vmae_ft_vitb_k400/seed0_48x64_t16", "c2_slowfast_r101_nl/seed0_48x64_t2"]


@pytest.mark.parametrize("case_id", FLOAT64_CASES)
def test_float64_run_matches_to_float32_rounding(case_id, shared_dir, repo_root, case_loader, fake_file):
    folder, case = case_loader(case_id)
    model = build_model(repo_root / case["official_config"])
    load_weights(model, case_fake(case, fake_file))
    model.double().eval()
    with np.load(folder / "inputs.npz") as arrays:
        videos = [v.double() for v in pathway_inputs(dict(arrays), model.backbone.num_pathways)]
    with torch.no_grad():
        features, _ = model.features(*videos)
    expected = np.load(folder / "expected.npz")
    for key in expected.files:
        ref = expected[key].astype(np.float64)
        error = np.abs(features[int(key[len("feat"):])].numpy() - ref).max() / np.abs(ref).max()
        assert error <= 1e-7, f"{key}: relative error {error:.2e}"
