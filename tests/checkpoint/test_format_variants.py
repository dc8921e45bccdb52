"""Every file variant FORMATS.md lists maps to exactly the same detector-key tensors as its base format."""

import pytest
import torch

from stmixer.checkpoint import read_checkpoint

# (format, seed, variant options, base options); the base is the kit's default file of that format.
VARIANTS = [
    ("c2_slowonly_r50", 0, {"pickle_style": "py3"}, {}),
    ("c2_slowonly_r50", 0, {"blobs_wrapper": False}, {}),
    ("c2_slowonly_r50", 0, {"names": "pytorch"}, {}),
    ("c2_slowonly_r50", 0, {"with_momentum": True}, {}),
    ("c2_slowonly_r50", 0, {"with_head": False, "with_meta": False}, {}),
    ("pyth_slowonly_r50", 1, {"legacy_format": True}, {}),
    ("pyth_slowonly_r50", 1, {"with_optimizer": False, "with_head": False}, {}),
    ("vmae_ft_vitb_k400", 0, {"wrapper": "model"}, {}),
    ("vmae_ft_vitb_k400", 0, {"dtype": "float16"}, {}),
    ("vmae_ft_vitb_k400", 0, {"dtype": "bfloat16", "wrapper": "model"}, {}),
    ("vmae_pt_vitb_k400", 0, {"with_args": True}, {}),
    ("stmixer_slowonly_r50", 2, {"ddp_prefix": False, "skip_groups": ["stm_head"]}, {"skip_groups": ["stm_head"]}),
    ("stmixer_slowonly_r50", 2, {"with_person_pool": True, "skip_groups": ["stm_head"]}, {"skip_groups": ["stm_head"]}),
    ("stmixer_slowonly_r50", 2, {"with_optimizer": False, "skip_groups": ["stm_head"]}, {"skip_groups": ["stm_head"]}),
]


@pytest.mark.parametrize("fmt, seed, options, base_options", VARIANTS,
                         ids=[f"{v[0]}-{'-'.join(sorted(v[2]))}" for v in VARIANTS])
def test_variant_maps_like_the_base_file(fmt, seed, options, base_options, fake_file):
    base = read_checkpoint(fake_file(fmt, seed, **base_options))
    variant = read_checkpoint(fake_file(fmt, seed, **options))
    assert list(variant.state_dict) == list(base.state_dict)
    assert variant.format == base.format
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(options.get("dtype"))
    for key, value in variant.state_dict.items():
        expected = base.state_dict[key].to(dtype) if dtype else base.state_dict[key]
        assert value.dtype == expected.dtype and torch.equal(value, expected), key


def manifest_keys(make_fake, fmt, group):
    return sorted(e["key"] for e in make_fake.load_manifest(fmt)["entries"] if e["group"] == group)


def test_dropped_entries_are_reported_by_reason(fake_file, make_fake):
    contents = read_checkpoint(fake_file("c2_slowonly_r50", 0, with_momentum=True))
    assert contents.format == "pyslowfast_caffe2"
    assert sorted(contents.dropped["training metadata"]) == manifest_keys(make_fake, "c2_slowonly_r50", "meta")
    assert sorted(contents.dropped["classifier head"]) == manifest_keys(make_fake, "c2_slowonly_r50", "head")
    assert sorted(contents.dropped["SGD momentum"]) == manifest_keys(make_fake, "c2_slowonly_r50", "momentum")
    pretrain = read_checkpoint(fake_file("vmae_pt_vitb_k400", 0, with_args=True))
    decoder = pretrain.dropped["VideoMAE decoder (pre-training only)"]
    assert sorted(decoder) == manifest_keys(make_fake, "vmae_pt_vitb_k400", "decoder")
    assert pretrain.extras["args"].class_path == "argparse.Namespace"
    assert pretrain.extras["args"].state["mask_ratio"] == 0.9


def test_official_stmixer_extras_are_handed_back_untouched(fake_file, make_fake):
    contents = read_checkpoint(fake_file("stmixer_slowonly_r50", 2, with_person_pool=True, skip_groups=["stm_head"]))
    container = make_fake.load_manifest("stmixer_slowonly_r50")["container"]
    assert contents.format == "official_stmixer"
    assert set(contents.extras) == {"optimizer", "scheduler", "iteration", "person_pool"}
    assert contents.extras["iteration"] == container["iteration"]
    assert contents.extras["scheduler"] == container["scheduler_state"]
    groups = contents.extras["optimizer"]["param_groups"]
    assert [len(g["params"]) for g in groups] == container["optimizer_group_sizes"]
    pool = contents.extras["person_pool"]
    assert pool.class_path == "alphaction.structures.memory_pool.MemoryPool" and pool.state == {"cache": {}}
    assert all(k.split(".")[0] in ("backbone", "lateral_convs") for k in contents.state_dict)


@pytest.mark.parametrize("fake, config", [("c2_slowonly_r50", "PySlowonly-R50-K400-4x16"),
                                          ("pyth_slowfast_r50", "PySlowfast-R50-K400-8x8")])
def test_pyslowfast_kinetics_files_load_whole_into_a_recognizer(fake_file, repo_root, fake, config):
    """The classifier the detectors drop (pred_w / pred_b, head.projection.*) loads into Recognizer3D's head."""
    from stmixer.checkpoint import load_weights
    from stmixer.config import load_config
    from stmixer.modeling import build_detector

    path = fake_file(fake, 0)
    contents = read_checkpoint(path)
    model = build_detector(load_config(str(repo_root / "config_files" / "kinetics400" / f"{config}.yaml")))
    report = load_weights(model, contents)
    assert report.ok and "classifier head" not in report.dropped
    assert {"head.projection.weight", "head.projection.bias"} <= set(report.loaded)
    assert torch.equal(model.head.projection.weight, contents.classifier["head.projection.weight"].float())
