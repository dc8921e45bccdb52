"""Recognizer3D: registry, head, losses, eval scores, and PySlowFast classifier checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from stmixer.checkpoint import load_weights, read_checkpoint, save_checkpoint
from stmixer.config import ConfigError, get_cfg
from stmixer.modeling import HEAD_REGISTRY, Recognizer3D, build_detector
from stmixer.modeling.losses import AccumulatedBatch, accumulate, active_accumulation
from stmixer.modeling.recognizer import ClassifierHead, LinearHead


def tiny_cfg(opts=()):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "Recognizer3D", "MODEL.RECOGNIZER.NUM_CLASSES", 5,
        "MODEL.RECOGNIZER.DROPOUT_RATE", 0.0, "RESNET.DEPTH", 18, "RESNET.TRANS_FUNC", "basic_transform",
        "RESNET.WIDTH_PER_GROUP", 4, "RESNET.NUM_BLOCK_TEMP_KERNEL", [[2], [2], [2], [2]], "DATA.NUM_FRAMES", 4,
        *opts,
    ])
    return cfg


def test_build_detector_builds_the_recognizer_and_eval_gives_probabilities():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg()).eval()
    assert isinstance(model, Recognizer3D) and isinstance(model.head, LinearHead)
    assert set(k.split(".", 1)[0] for k in model.state_dict()) == {"backbone", "head"}
    scores = model(torch.randn(2, 3, 4, 32, 32))
    assert scores.shape == (2, 5) and torch.allclose(scores.sum(1), torch.ones(2))


def test_train_loss_is_cross_entropy_of_the_head_logits():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(["MODEL.RECOGNIZER.LABEL_SMOOTHING", 0.1])).train()
    video, labels = torch.randn(3, 3, 4, 32, 32), torch.tensor([0, 4, 2])
    losses = model(video, None, None, None, [lab.view(1) for lab in labels])
    assert list(losses) == ["loss_cls"]
    maps = model.backbone.last_stage([video])
    logits = model.head.projection(maps[0].mean(dim=(2, 3, 4)))
    assert torch.allclose(losses["loss_cls"], F.cross_entropy(logits, labels, label_smoothing=0.1), atol=1e-6)


def test_slowfast_head_pools_each_pathway_then_concatenates(repo_root):
    torch.manual_seed(0)
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "PySlowfast-R50-K400-8x8.yaml"))
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Recognizer3D", "RESNET.WIDTH_PER_GROUP", 8])
    model = build_detector(cfg).eval()
    slow, fast = torch.randn(1, 3, 1, 32, 32), torch.randn(1, 3, 4, 32, 32)
    s, f = model.backbone.last_stage([slow, fast])
    assert model.head.projection.in_features == s.shape[1] + f.shape[1]
    expected = model.head.projection(torch.cat([s.mean((2, 3, 4)), f.mean((2, 3, 4))], 1)).softmax(1)
    assert torch.allclose(model(slow, fast), expected, atol=1e-6)


def test_heads_are_looked_up_by_name():
    class ConstantHead(ClassifierHead):
        def __init__(self, k):
            super().__init__()
            self.k = k
            self.bias = torch.nn.Parameter(torch.zeros(k))

        def backbone_features(self, backbone, videos):  # a head may read other levels: here res4
            return [backbone(videos)[2]]

        def forward(self, maps):
            self.seen = maps[0].shape
            return {"logits": self.bias.expand(maps[0].shape[0], self.k), "extra": maps[0]}

    name = "test-constant-head"
    if name not in HEAD_REGISTRY:
        HEAD_REGISTRY.register(name)(lambda cfg, backbone: ConstantHead(cfg.MODEL.RECOGNIZER.NUM_CLASSES))
    model = build_detector(tiny_cfg(["MODEL.RECOGNIZER.HEAD", name])).eval()
    assert torch.allclose(model(torch.randn(2, 3, 4, 32, 32)), torch.full((2, 5), 0.2))
    assert model.head.seen == (2, 64, 4, 2, 2)  # res4 of width 4: 64 channels, stride 16
    with pytest.raises(ConfigError, match="MODEL.RECOGNIZER.HEAD = 'nope'"):
        build_detector(tiny_cfg(["MODEL.RECOGNIZER.HEAD", "nope"]))


def test_accumulated_micro_batches_add_up_to_the_whole_batch_mean():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(["MODEL.BACKBONE.FROZEN_BN", True])).train()  # no batch statistics
    video, labels = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 1])
    whole = model(video, labels=labels)["loss_cls"]
    with accumulate(AccumulatedBatch.from_counts([0, 0, 0, 0], "cpu")):  # 4 clips, no boxes
        assert len(active_accumulation().gt_counts) == 4
        parts = [model(video[i:i + 2], labels=labels[i:i + 2])["loss_cls"] for i in (0, 2)]
    assert torch.allclose(parts[0] + parts[1], whole, atol=1e-6)


def _pyslowfast_file(model, path, classes):
    """A PySlowFast-style ``{"model_state": ...}`` file: bare backbone keys and ``head.projection.*``."""
    state = {k[len("backbone."):]: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state["head.projection.weight"] = torch.randn(classes, model.head.projection.in_features)
    state["head.projection.bias"] = torch.randn(classes)
    torch.save({"model_state": state}, path)
    return state


def test_pyslowfast_classifier_loads_into_the_recognizer_and_is_dropped_by_detectors(tmp_path):
    torch.manual_seed(0)
    source = build_detector(tiny_cfg())
    state = _pyslowfast_file(source, tmp_path / "k400.pyth", 5)
    target = build_detector(tiny_cfg())
    report = load_weights(target, str(tmp_path / "k400.pyth"))
    assert "head.projection.weight" in report.loaded and not report.dropped
    assert torch.equal(target.head.projection.weight, state["head.projection.weight"])
    contents = read_checkpoint(str(tmp_path / "k400.pyth"))  # a detector's view is unchanged: dropped classifier
    assert sorted(contents.dropped["classifier head"]) == ["head.projection.bias", "head.projection.weight"]
    assert "head.projection.weight" not in contents.state_dict

    # another class count: the mismatch table names the head; --no-head leaves it at its init
    other = build_detector(tiny_cfg(["MODEL.RECOGNIZER.NUM_CLASSES", 7]))
    with pytest.raises(Exception, match="head.projection.weight"):
        load_weights(other, str(tmp_path / "k400.pyth"))
    report = load_weights(other, str(tmp_path / "k400.pyth"), no_head=True)
    assert "head (--no-head)" in report.left_at_init


def test_recognizer_checkpoint_round_trips_in_the_project_format(tmp_path):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg())
    save_checkpoint(tmp_path / "r.pth", model.state_dict())
    copy = build_detector(tiny_cfg())
    report = load_weights(copy, str(tmp_path / "r.pth"))
    assert report.ok and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))


@pytest.mark.parametrize("name, detector", [("PySlowonly-R50-K400-4x16", "PySlowonly-R50-K400-4x16"),
                                            ("PySlowfast-R50-K400-8x8", "PySlowfast-R50-K400-8x8")])
def test_kinetics_configs_keep_the_detector_backbone_and_run(repo_root, name, detector):
    from stmixer.config import load_config
    from stmixer.data.descriptions import describe

    cfg = load_config(str(repo_root / "config_files" / "kinetics400" / f"{name}.yaml"), freeze=False)
    official = load_config(str(repo_root / "config_files" / f"{detector}.yaml"))
    assert describe(cfg).evaluator == "recognition" and cfg.MODEL.RECOGNIZER.NUM_CLASSES == 400
    for node in ("RESNET", "SLOWFAST", "NONLOCAL"):
        assert cfg[node] == official[node], node
    for key in ("CONV_BODY", "PATHWAYS"):
        assert cfg.MODEL.BACKBONE[key] == official.MODEL.BACKBONE[key]
    assert cfg.DATA.NUM_FRAMES == official.DATA.NUM_FRAMES
    cfg.merge_from_list(["RESNET.WIDTH_PER_GROUP", 8])
    model = build_detector(cfg).eval()
    frames = [cfg.DATA.NUM_FRAMES] if cfg.MODEL.BACKBONE.PATHWAYS == 1 else [8, 32]
    with torch.no_grad():
        scores = model(*[torch.randn(1, 3, t, 32, 32) for t in frames])
    assert scores.shape == (1, 400)


def test_vit_backbone_feeds_the_linear_head_its_averaged_map(repo_root):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "config_files" / "VMAE-ViTB-16x4.yaml"))
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "Recognizer3D", "ViT.EMBED_DIM", 32, "ViT.DEPTH", 2,
                         "ViT.NUM_HEADS", 4, "ViT.DROP_PATH_RATE", 0.0, "MODEL.RECOGNIZER.NUM_CLASSES", 3])
    model = build_detector(cfg).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model.head.projection(model.backbone([video])[-1].mean((2, 3, 4))).softmax(1)
        assert torch.allclose(model(video), expected, atol=1e-6) and expected.shape == (1, 3)
