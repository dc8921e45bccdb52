"""The whole detector against the official reference fixtures (slowonly_r50, slowfast_r50, slowfast_r101_nl,
vit_b), through the parity tool; answers are compared here (``stmixer.tools.parity_check``), never in the tool.

Every fixture runs in float64 and must match the official float64 answers to 1e-9 x max|value| per tensor
with identical selected queries and matches. float32 runs against the float64 answers (2e-4, and 1e-2
for SlowFast train mode) for slowfast_r50: the fixture exercising most of the model (two pathways,
fusion, BatchNorm batch statistics in train mode, both tolerances). slowonly_r50 runs through the
command line (its own recipe build in the subprocess); the others share recipe weights in-process.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from stmixer.config import get_cfg
from stmixer.modeling import build_detector
from stmixer.tools import parity_check
from stmixer.tools.reference_parity import FixtureError, run_fixture

# In-process runs, ordered so that consecutive fixtures share most recipe weights (see recipe_weights).
IN_PROCESS_RUNS = [("slowfast_r50", "f64"), ("slowfast_r50", "f32"), ("slowfast_r101_nl", "f64"), ("vit_b", "f64")]
# Runs first, while this process holds no weights (the subprocess builds its own).
COMMAND_LINE_RUN = ("slowonly_r50", "f64")
MAX_THREADS = 4  # the fixtures are small: more threads mostly add overhead


@pytest.fixture(scope="module", autouse=True)
def threads():
    """At most MAX_THREADS intra-op threads for this module (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, MAX_THREADS))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def assert_parity(outputs, expected):
    result = parity_check.compare(outputs, expected)
    assert result.ok, "\n".join(result.problems)
    return result


def test_recipe_reproduces_its_check_values(reference_dir, recipe):
    check = json.loads((reference_dir / "recipe_check.json").read_text())
    for entry in check["entries"]:
        tensor = recipe.recipe_tensor(entry["key"], entry["shape"], salt=check["salt"], kind_dtype=entry["dtype"])
        assert recipe.crc32_of(tensor) == entry["crc32"], entry["key"]


def test_command_line_on_a_detector_fixture(reference_dir, expected_answers, repo_root, tmp_path, threads):
    name, precision = COMMAND_LINE_RUN
    out = tmp_path / "out.npz"
    command = [sys.executable, "-m", "stmixer.tools.reference_parity", "--fixture", str(reference_dir / name),
               "--out", str(out), "--precision", precision, "--threads", str(threads)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with np.load(out) as data:
        outputs = dict(data)
    assert_parity(outputs, expected_answers(name))
    # Whole maps stand for the answers' samples; the tool never saw the indices.
    assert outputs[f"{precision}/eval/backbone_l0/full"].shape == tuple(outputs[f"{precision}/eval/backbone_l0/shape"])
    assert parity_check.main(["--fixture", str(reference_dir / name), "--outputs", str(out)]) == 0


@pytest.mark.parametrize("name, precision", IN_PROCESS_RUNS)
def test_detector_fixture_matches_the_official_model(name, precision, reference_dir, recipe_weights,
                                                     expected_answers):
    outputs = run_fixture(reference_dir / name, precision, state_dict=recipe_weights(name))
    result = assert_parity(outputs, expected_answers(name))
    assert len(result.deviations) > 50  # the comparison saw the tensors (decoder, features, losses, costs)


# ----------------------------------------------------------------------------- fixtures of other sizes
TINY = ["RESNET.WIDTH_PER_GROUP", 8, "MODEL.STM.HIDDEN_DIM", 32, "MODEL.STM.NUM_QUERIES", 5,
        "MODEL.STM.NUM_STAGES", 2, "MODEL.STM.DIM_FEEDFORWARD", 64, "MODEL.STM.SPATIAL_POINTS", 4,
        "MODEL.STM.TEMPORAL_POINTS", 2]


def tiny_fixture(folder, repo_root, reference_dir, config, salt, frames, batch=1, drop_key=False):
    """A detector fixture of another size, batch and salt (narrow model, 1 clip of 64x96): config.yaml,
    manifest.json (our model's keys, official layout), weights.json, inputs.npz, and recipe.py beside it."""
    folder.mkdir(parents=True)
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / f"{config}.yaml"))
    cfg.merge_from_list(TINY)
    cfg.merge_from_list(["DATA.NUM_FRAMES", frames[-1]])  # the clip of inputs.npz (the fast pathway's, if any)
    (folder / "config.yaml").write_text(cfg.dump())
    with torch.device("meta"):
        state = build_detector(cfg).state_dict()
    keys = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()]
    (folder / "manifest.json").write_text(json.dumps({"keys": keys[:-1] if drop_key else keys}))
    (folder / "weights.json").write_text(json.dumps({"source": "recipe", "manifest": "manifest.json", "salt": salt}))
    shutil.copy(reference_dir / "recipe.py", folder.parent / "recipe.py")
    rng = np.random.default_rng(0)
    arrays = {"video_offset": np.float32(128), "video_scale": np.float32(64), "batch_size": np.int64(batch),
              "whwh": np.array([[96, 64, 96, 64]] * batch, dtype=np.float32)}
    for pathway, t in zip(("slow", "fast"), frames):
        arrays[f"{pathway}_video_u8"] = rng.integers(0, 256, (batch, 3, t, 64, 96), dtype=np.uint8)
    for i in range(batch):
        arrays[f"gt_boxes_b{i}"] = np.array([[10, 8, 50, 60]], dtype=np.float32)
        arrays[f"gt_labels_b{i}"] = np.eye(80, dtype=np.int32)[[3]]
    np.savez(folder / "inputs.npz", **arrays)
    return folder


@pytest.mark.parametrize("config, frames", [("PySlowonly-R50-K400-4x16", [2]), ("PySlowfast-R50-K400-8x8", [2, 8])])
def test_sizes_batch_and_salt_come_from_the_fixture(config, frames, repo_root, reference_dir, tmp_path):
    outputs = run_fixture(tiny_fixture(tmp_path / "a" / "fx", repo_root, reference_dir, config, "", frames), "f32")
    channels = 32 + 4 if len(frames) == 2 else 32
    assert outputs["f32/eval/backbone_l0/shape"].tolist() == [1, channels, 2, 16, 24]
    assert outputs["f32/eval/mapped_l3/full"].shape == (1, 32, 2, 2, 3)
    assert outputs["f32/eval/mapped_l3_full"].shape == (1, 32, 2, 2, 3)
    assert outputs["f32/eval/cls_logits"].shape == (2, 1, 5, 2)
    assert len(outputs["f32/train/loss_names"]) == 8
    assert {k for k in outputs if "_b1" in k} == set()
    assert {"f32/train/match/stage0_src_b0", "f32/train/match/stage1_src_b0"} <= set(outputs)
    # Train-mode tensors are written when BatchNorm uses batch statistics (SlowFast), not with frozen BN.
    assert ("f32/train/cls_logits" in outputs) == (len(frames) == 2)
    assert ("f32/train/backbone_l2/chan_mean" in outputs) == (len(frames) == 2)
    salted = run_fixture(tiny_fixture(tmp_path / "b" / "fx", repo_root, reference_dir, config, "x-", frames), "f32")
    assert not np.allclose(salted["f32/eval/cls_logits"], outputs["f32/eval/cls_logits"])


def test_weights_that_do_not_fit_are_reported(repo_root, reference_dir, tmp_path):
    fixture = tiny_fixture(tmp_path / "fx", repo_root, reference_dir, "PySlowonly-R50-K400-4x16", "", [2],
                           drop_key=True)
    with pytest.raises(FixtureError, match="do not fit the model built from config.yaml"):
        run_fixture(fixture, "f32")


def test_parity_check_reports_deviations_and_near_ties(expected_answers):
    expected = expected_answers("decoder")
    perfect = {k: v for k, v in expected.items() if k.startswith("f64/")}
    assert parity_check.compare(perfect, expected).ok
    off = dict(perfect, **{"f64/eval/cls_logits": perfect["f64/eval/cls_logits"] * (1 + 1e-6)})
    problems = parity_check.compare(off, expected).problems
    assert len(problems) == 1 and problems[0].startswith("f64/eval/cls_logits: max|ours - f64|")
    f32 = {k: v for k, v in expected.items() if k.startswith("f32/")}
    f32["f32/eval/selected_b0"] = f32["f32/eval/selected_b0"] + 1
    problems = parity_check.compare(f32, expected).problems
    assert any("selected_b0" in p and "near-tie" in p for p in problems)
    del f32["f32/train/loss_names"]
    assert "f32/train/loss_names: missing from the outputs" in parity_check.compare(f32, expected).problems
