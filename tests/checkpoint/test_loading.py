"""Loading by exact keys: the report, wrong architectures, --no-head, the project format, convert, bad files."""

import os

import pytest
import torch
from torch import nn

from stmixer.checkpoint import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    checkpoint_from_object,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from stmixer.checkpoint.convert import main as convert_main
from stmixer.tools.backbone_features import build_model

TINY_VIT = ["ViT.EMBED_DIM", 32, "ViT.DEPTH", 2, "ViT.NUM_HEADS", 4, "MODEL.STM.HIDDEN_DIM", 16]


def official_model(repo_root, name, *opts):
    return build_model(repo_root / "config_files" / f"{name}.yaml", opts)


class ToyDetector(nn.Module):
    """backbone + lateral_convs (a narrow SlowOnly) and a stand-in ``stm_head``, under the detector's names."""

    def __init__(self, repo_root):
        super().__init__()
        features = official_model(repo_root, "PySlowonly-R50-K400-4x16", "RESNET.WIDTH_PER_GROUP", 8,
                                  "MODEL.STM.HIDDEN_DIM", 16)
        self.backbone, self.lateral_convs = features.backbone, features.lateral_convs
        self.stm_head = nn.Linear(16, 4)


def perturbed_state(model):
    return {k: (v + 1 if v.is_floating_point() else v + 7) for k, v in model.state_dict().items()}


def test_wrong_architecture_fails_with_the_table_and_changes_nothing(repo_root, fake_file):
    model = official_model(repo_root, "PySlowfast-R50-K400-8x8")
    before = model.backbone.s1.pathway0_stem.conv.weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_weights(model, fake_file("c2_slowfast_r101_nl", 0))
    message = str(info.value)
    assert "does not fit the model" in message
    for row in ("loaded", "missing", "unexpected", "shape mismatch"):
        assert f"\n  {row}" in message
    report = info.value.report
    assert report.unexpected and report.mismatched and not report.ok
    assert ("backbone.s1_fuse.conv_f2s.weight", (16, 8, 5, 1, 1), (16, 8, 7, 1, 1)) in report.mismatched
    assert torch.equal(model.backbone.s1.pathway0_stem.conv.weight, before)


def test_file_of_another_backbone_family_loads_nothing_and_fails(repo_root, fake_file):
    model = official_model(repo_root, "PySlowonly-R50-K400-4x16", "RESNET.WIDTH_PER_GROUP", 8)
    with pytest.raises(CheckpointMismatchError, match="no tensor of the file fits the model"):
        load_weights(model, fake_file("vmae2_dl_vitb_k710", 0))


def test_non_strict_load_copies_what_fits(repo_root, tmp_path):
    model = ToyDetector(repo_root)
    state = perturbed_state(model)
    del state["backbone.s1.pathway0_stem.bn.weight"]
    state["backbone.extra"] = torch.zeros(1)
    save_checkpoint(tmp_path / "c.pth", state)
    report = load_weights(model, tmp_path / "c.pth", strict=False)
    assert report.missing == ["backbone.s1.pathway0_stem.bn.weight"] and report.unexpected == ["backbone.extra"]
    assert torch.equal(model.stm_head.weight, state["stm_head.weight"])


def test_project_format_round_trip_and_no_head(repo_root, tmp_path):
    source = ToyDetector(repo_root)
    state = perturbed_state(source)
    optimizer = torch.optim.AdamW(source.parameters()).state_dict()
    save_checkpoint(tmp_path / "model.pth", state, optimizer=optimizer, iteration=12, config="MODEL:\n  WEIGHT: ''\n")
    assert not [p for p in os.listdir(tmp_path) if p != "model.pth"]  # atomic write leaves no temporary file
    contents = read_checkpoint(tmp_path / "model.pth")
    assert contents.format == "stmixer" and list(contents.state_dict) == list(state)
    assert contents.extras["iteration"] == 12 and contents.extras["optimizer"] == optimizer

    target = ToyDetector(repo_root)
    head_before = target.stm_head.weight.clone()
    report = load_weights(target, contents, no_head=True)
    assert report.ok
    assert torch.equal(target.stm_head.weight, head_before)
    assert torch.equal(target.backbone.s2.pathway0_res0.branch2.a.weight, state["backbone.s2.pathway0_res0.branch2.a.weight"])
    assert sorted(report.skipped["stm_head (--no-head)"]) == ["stm_head.bias", "stm_head.weight"]
    assert sorted(report.left_at_init["stm_head (--no-head)"]) == ["stm_head.bias", "stm_head.weight"]
    assert "skipped" in report.table() and "left at init" in report.table()

    load_weights(target, contents)
    assert torch.equal(target.stm_head.weight, state["stm_head.weight"])


def test_checkpoint_in_memory_maps_like_the_same_file(repo_root, tmp_path):
    model = ToyDetector(repo_root)
    state = perturbed_state(model)
    obj = {"model": {f"module.{k}": v for k, v in state.items()}, "iteration": 3}
    torch.save(obj, tmp_path / "c.pth")
    from_file = read_checkpoint(tmp_path / "c.pth")
    in_memory = checkpoint_from_object(obj, "recipe weights")
    assert in_memory.format == from_file.format == "official_stmixer"
    assert list(in_memory.state_dict) == list(from_file.state_dict) == list(state)
    assert in_memory.extras == {"iteration": 3} and in_memory.description.endswith("in memory")
    report = load_weights(model, in_memory)
    assert report.ok and len(report.loaded) == len(state) and report.source == "recipe weights"
    with pytest.raises(CheckpointFormatError, match="recipe weights: expected a dict"):
        checkpoint_from_object([state], "recipe weights")


def test_module_and_orig_mod_prefixes_are_removed(tmp_path, repo_root):
    model = official_model(repo_root, "VMAE-ViTB-16x4", *TINY_VIT)
    backbone_state = perturbed_state(model.backbone)
    compiled = {f"_orig_mod.{k}": v for k, v in backbone_state.items()}
    torch.save({"module": compiled}, tmp_path / "vit.pth")
    report = load_weights(model, tmp_path / "vit.pth")
    assert len(report.loaded) == len(backbone_state)
    detector = {f"module.backbone._orig_mod.{k}": v for k, v in backbone_state.items()}
    torch.save({"model": detector}, tmp_path / "ddp.pth")
    contents = read_checkpoint(tmp_path / "ddp.pth")
    assert contents.format == "official_stmixer"
    assert sorted(contents.state_dict) == sorted(f"backbone.{k}" for k in backbone_state)


def test_learned_position_table_of_another_grid_is_resized_on_load(tmp_path, repo_root):
    model = official_model(repo_root, "VMAE-ViTB-16x4", *TINY_VIT, "ViT.USE_LEARNABLE_POS_EMB", True)
    state = dict(model.backbone.state_dict())
    state["pos_embed"] = torch.randn(1, 8 * 7 * 7, 32)
    torch.save({"module": state}, tmp_path / "vit.pth")
    report = load_weights(model, tmp_path / "vit.pth")
    assert "backbone.pos_embed" in report.loaded
    assert model.backbone.pos_embed.shape == (1, 8 * 14 * 14, 32)


def test_convert_writes_the_project_format(tmp_path, fake_file, capsys):
    source = fake_file("pyth_slowonly_r50", 1)
    assert convert_main([str(source), str(tmp_path / "out.pth")]) == 0
    assert "tensors written" in capsys.readouterr().out
    converted = read_checkpoint(tmp_path / "out.pth")
    original = read_checkpoint(source)
    assert converted.format == "stmixer" and converted.extras["converted_from"]["format"] == "pyslowfast_pyth"
    assert list(converted.state_dict) == list(original.state_dict)
    assert all(torch.equal(converted.state_dict[k], v) for k, v in original.state_dict.items())


@pytest.mark.parametrize("content, error, match", [
    (os.urandom(2000), CheckpointFormatError, "not a readable pickle"),
    ({"foo": 1}, CheckpointFormatError, "no weights found"),
    ({"model": {"a.b": torch.zeros(1)}}, CheckpointFormatError, "unrecognised key layout"),
    ({"format": "stmixer", "format_version": 99, "model": {}}, CheckpointFormatError, "newer stmixer"),
])
def test_unreadable_or_unknown_files_fail_clearly(tmp_path, content, error, match):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(error, match=match):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "absent.pth")
