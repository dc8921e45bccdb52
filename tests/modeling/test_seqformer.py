"""SeqFormer (MODEL.META_ARCHITECTURE "SeqFormer"), held to the TubeR fork's SeqFormer.

Fixtures: tests/reference/tuber/seqformer (made by tests/reference/make_query_detector_fixtures.py --sections
seqformer from the fork at 50cd09b^, its CUDA op replaced by its own pure-PyTorch reference function; README
there). Every weight, clip and target is regenerated from tests/reference/tuber/recipe.py; float64 results must
agree within F64_TOL x max|value|.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.config import ConfigError, get_cfg, load_config
from stmixer.modeling import build_detector
from stmixer.modeling.seqformer import SeqFormer
from stmixer.modeling.seqformer.parity import run_case, seqformer_config

REPO = Path(__file__).resolve().parents[2]
TUBER = REPO / "tests" / "reference" / "tuber"
FIXTURES = TUBER / "seqformer"
CONFIG = REPO / "config_files" / "tuber" / "SeqFormer_CSN50_AVA21.yaml"
F64_TOL = 1e-9
CASES = ["seqformer_refine", "seqformer_shared"]


def _recipe():
    spec = importlib.util.spec_from_file_location("tuber_fixture_recipe", TUBER / "recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _recipe()


def _load(case):
    return json.loads((FIXTURES / f"{case}.json").read_text()), np.load(FIXTURES / f"{case}.npz")


def _close(ours, expected, name, meta):
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    step = meta.get("sampled", {}).get(name)
    if step:
        ours = ours.reshape(-1)[::step]
    assert ours.shape == expected.shape, (name, ours.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-300)
    err = float(np.abs(ours - expected).max()) / scale
    assert err <= F64_TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.tuber
@pytest.mark.parametrize("case", CASES)
def test_whole_detector_matches_the_fork(case):
    """The fork's SeqFormer (``seqformer_ava.build_model``: CSN-50 variant, SeqFormer transformer 1 + 2 layers, 5
    queries, two 4-frame clips; ``seqformer_shared`` with one clip padded and no box refinement), loaded as a fork
    checkpoint: every layer's predictions, the losses (float32 L1 / GIoU as the fork), every Hungarian match, the
    gradients, ``PostProcessAVA``'s detections and a training-mode forward (BatchNorm batch statistics)."""
    meta, exp = _load(case)
    result = run_case(meta, recipe, torch.float64)
    for key in exp.files:
        if key.startswith("target/"):
            continue
        answer = np.clip(exp[key], 0, 1) if key == "det/boxes_normalized" else exp[key]
        _close(result[key], answer, key, meta)
    assert set(meta["losses"]) == {k[len("loss/"):] for k in result if k.startswith("loss/")}
    for key, value in meta["losses"].items():
        ours = result[f"loss/{key}"]
        assert str(ours.dtype) == meta["loss_dtypes"][key], key
        # float32 terms: 2 ulp (their rounding depends on the summation order; measured: equal or 1 ulp)
        tol = 2 * torch.finfo(torch.float32).eps if ours.dtype == torch.float32 else F64_TOL
        assert abs(float(ours) - value) <= tol * abs(value), key
    checked = 0
    for layer, matches in meta["matches"].items():
        if f"match/{layer}_src_b0" not in result:  # without deep supervision only the last layer is matched
            continue
        for i, (src, tgt) in enumerate(matches):
            assert result[f"match/{layer}_src_b{i}"].tolist() == src, (layer, i)
            assert result[f"match/{layer}_tgt_b{i}"].tolist() == tgt, (layer, i)
            checked += 1
    assert checked == len(meta["gt_counts"]) * (len(meta["matches"]) if meta["aux_loss"] else 1)


def test_reference_parity_tool_accepts_the_fixtures(tmp_path):
    """``python -m stmixer.tools.reference_parity --fixture DIR`` runs a SeqFormer folder (one case copied with the
    kit's recipe) and writes every fixture array under the case's name."""
    from stmixer.tools.reference_parity import main

    kit = tmp_path / "kit"
    (kit / "seqformer").mkdir(parents=True)
    shutil.copy(TUBER / "recipe.py", kit / "recipe.py")
    for suffix in (".json", ".npz"):
        shutil.copy(FIXTURES / f"seqformer_shared{suffix}", kit / "seqformer" / f"seqformer_shared{suffix}")
    out = tmp_path / "out.npz"
    assert main(["--fixture", str(kit / "seqformer"), "--out", str(out), "--precision", "f64"]) == 0
    _, exp = _load("seqformer_shared")
    written = np.load(out)
    for key in exp.files:
        if key.startswith("target/"):
            continue
        answer = np.clip(exp[key], 0, 1) if key == "det/boxes_normalized" else exp[key]
        _close(written[f"f64/seqformer_shared/{key}"], answer, key, {})  # written as stored (sampled)


def _tiny_cfg(*extra):
    cfg = load_config(str(CONFIG), ["MODEL.TUBER.D_MODEL", 32, "MODEL.TUBER.NHEAD", 4, "MODEL.TUBER.ENC_LAYERS", 1,
                                    "MODEL.TUBER.DEC_LAYERS", 2, "MODEL.TUBER.DIM_FEEDFORWARD", 64,
                                    "MODEL.TUBER.NUM_QUERIES", 3, "DATA.NUM_FRAMES", 2,
                                    "MODEL.BACKBONE.CHANNELS_LAST", False, *extra])
    return cfg


def _clips(batch=2, frames=2, size=(32, 48)):
    g = torch.Generator().manual_seed(0)
    video = torch.randn(batch, 3, frames, *size, generator=g)
    whwh = torch.tensor([[size[1], size[0]] * 2] * batch, dtype=torch.float32)
    return video, whwh


def test_config_builds_and_runs_on_cpu():
    """config_files/tuber/SeqFormer_CSN50_AVA21.yaml merges, builds a SeqFormer with the fork's layout and runs a
    tiny forward (eval: STMDetector-contract detections; train: the three loss terms)."""
    cfg = load_config(str(CONFIG), [])
    assert cfg.MODEL.META_ARCHITECTURE == "SeqFormer" and cfg.MODEL.CSN.TEMPORAL_STRIDE == 1
    assert cfg.MODEL.TUBER.NUM_QUERIES == 20 and cfg.MODEL.SEQFORMER.BOX_REFINE
    torch.manual_seed(0)
    model = build_detector(_tiny_cfg())
    assert isinstance(model, SeqFormer)
    head = model.tuber_head
    assert head.transformer.decoder.bbox_embed is head.bbox_embed  # box refinement: per-layer heads
    assert head.class_embed[0] is not head.class_embed[1]
    assert head.bbox_embed[0].layers[-1].bias[2].item() == -2.0 and head.bbox_embed[1].layers[-1].bias[2].item() == 0
    video, whwh = _clips()
    model.eval()
    with torch.no_grad():
        dets = model(video, None, whwh)
    assert len(dets) == 2
    for d in dets:
        assert d["scores"].shape == (3, 80) and d["boxes"].shape == (3, 4)
        assert d["query_indices"].tolist() == [0, 1, 2]
        assert torch.equal(d["person_scores"], d["scores"].max(-1).values)
        assert float(d["boxes"].min()) >= 0 and float(d["boxes"].max()) <= 1
    model.train()
    losses = model(video, None, whwh, [torch.tensor([[4.0, 4.0, 30.0, 28.0]]), torch.tensor([[1.0, 2.0, 9.0, 9.0]])],
                   [torch.eye(80)[:1], torch.eye(80)[3:4]])
    assert list(losses) == ["loss_ce", "loss_bbox", "loss_giou"]
    sum(losses.values()).backward()
    # every parameter takes part in the graph, also the earlier layers' heads without deep supervision (the yaml's
    # default): our DistributedDataParallel has no find_unused_parameters (the fork's has)
    assert not model.criterion.deep_supervision
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.tuber_head.transformer.decoder.layers[1].time_attention_weights.weight.grad.abs().sum() > 0


def test_shared_heads_without_box_refinement():
    model = build_detector(_tiny_cfg("MODEL.SEQFORMER.BOX_REFINE", False))
    head = model.tuber_head
    assert head.transformer.decoder.bbox_embed is None
    assert head.class_embed[0] is head.class_embed[1] and head.bbox_embed[0] is head.bbox_embed[1]
    assert head.bbox_embed[0].layers[-1].bias[3].item() == -2.0


@pytest.mark.parametrize("levels", [3, 5])
def test_other_feature_level_counts_run(levels):
    """NUM_FEATURE_LEVELS 5: the fork applies its extra stride-2 convolution to a regrouped 5-D map and crashes;
    here every extra level is computed from the previous one's frames. 3: the CSN levels alone (as the fork)."""
    model = build_detector(_tiny_cfg("MODEL.SEQFORMER.NUM_FEATURE_LEVELS", levels)).eval()
    video, whwh = _clips(size=(64, 64))
    trace = {}
    with torch.no_grad():
        model.predictions(video, whwh, trace)
    shapes = [tuple(s.shape[-2:]) for s in trace["srcs"]]
    assert shapes == [(8, 8), (4, 4), (4, 4), (2, 2), (1, 1)][:levels]
    assert len(model.tuber_head.input_proj) == levels


def test_batch_without_ground_truth_gives_finite_losses():
    """The fork divides the box terms by the batch's box count: NaN for a batch without boxes; here by at least 1."""
    model = build_detector(_tiny_cfg()).train()
    video, whwh = _clips()
    losses = model(video, None, whwh, [torch.zeros(0, 4)] * 2, [torch.zeros(0, 80)] * 2)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_ce"].item() > 0


def test_batch_time_mix_reproduces_the_fork_regrouping():
    """BATCH_TIME_MIX: with two clips, the fork's "clip" 0 holds frames of both (time-major rows regrouped
    batch-major). "always": also at inference, so clip 0's detections change with clip 1; "train" (default): only
    in training mode, inference is per clip (detections independent of the batch); "never": per clip always."""
    video, whwh = _clips()
    other = video.clone()
    other[1] = torch.flip(other[1], dims=(1,))  # clip 1's frames reversed
    for mix in ("always", "train", "never"):
        torch.manual_seed(0)
        model = build_detector(_tiny_cfg("MODEL.SEQFORMER.BATCH_TIME_MIX", mix)).eval()
        with torch.no_grad():
            a = model.predictions(video, whwh)["logits"][-1, 0]
            b = model.predictions(other, whwh)["logits"][-1, 0]
            single = model.predictions(video[:1], whwh[:1])["logits"][-1, 0]
        assert torch.allclose(a, b, atol=1e-6) != (mix == "always"), mix
        assert torch.allclose(a, single, atol=1e-6) != (mix == "always"), mix
        # the regrouping itself: frame 1 of "clip" 0 is frame 0 of clip 1 when mixing (time-major row 1)
        head = model.tuber_head
        feats = [torch.randn(2, c, 2, 4, 6) for c in (256, 512, 1024, 2048)]
        mask = torch.zeros(2, 32, 48, dtype=torch.bool)
        for training in (True, False):
            head.train(training)
            with torch.no_grad():
                srcs = head.levels(feats, mask)[0]
                proj = head.input_proj[0](feats[1][:, :, 0] if mix == "always" or (mix == "train" and training)
                                          else feats[1][:, :, 1])
            expected = proj[1] if mix == "always" or (mix == "train" and training) else proj[0]
            assert torch.allclose(srcs[0][0, 1], expected, atol=1e-6), (mix, training)


def test_match_class_cost_sums_over_the_batch_union():
    """The fork's matching class cost (MATCH_CLASS_COST "batch_union") sums the focal terms over the action classes
    present anywhere in the batch, the same for every target; "per_target": each target's own actions."""
    from stmixer.modeling.seqformer.detector import build_seqformer_criterion

    targets = [{"actions": torch.tensor([[1.0, 0, 0, 0, 0]])},
               {"actions": torch.tensor([[0.0, 0, 1, 0, 0], [0.0, 0, 0, 0, 1]])}]
    union = build_seqformer_criterion(_tiny_cfg()).match_labels(targets)
    assert [u.tolist() for u in union] == [[[1, 0, 1, 0, 1]], [[1, 0, 1, 0, 1]] * 2]
    own = build_seqformer_criterion(_tiny_cfg("MODEL.SEQFORMER.MATCH_CLASS_COST", "per_target")).match_labels(targets)
    assert [o.tolist() for o in own] == [t["actions"].tolist() for t in targets]
    matcher = build_seqformer_criterion(_tiny_cfg("MODEL.SEQFORMER.COST_BBOX", 0.0, "MODEL.SEQFORMER.COST_GIOU",
                                                  0.0)).matcher
    logits = torch.randn(1, 3, 5, dtype=torch.float64)
    boxes = torch.tensor([0.1, 0.1, 0.5, 0.5], dtype=torch.float64).expand(1, 3, 4)
    gt = torch.tensor([[[0.2, 0.2, 0.6, 0.7], [0.0, 0.1, 0.3, 0.3]]], dtype=torch.float64)
    p = logits.sigmoid()
    focal = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p ** 2 * -torch.log(1 - p + 1e-8)
    ones = torch.ones(1, 4, dtype=torch.float64)
    cost = matcher.batched_cost(logits, boxes, gt, ones, union[1][None])
    assert torch.allclose(cost, 2.0 * focal[..., [0, 2, 4]].sum(-1, keepdim=True).expand(1, 3, 2), rtol=1e-12)
    cost = matcher.batched_cost(logits, boxes, gt, ones, own[1][None])
    assert torch.allclose(cost, 2.0 * focal[..., [2, 4]], rtol=1e-12)


def test_fork_checkpoint_loads(tmp_path):
    """A fork SeqFormer checkpoint (DDP ``module.`` keys, CSN below ``backbone.0.body.``, the wrapper's unused
    temporal pooling, the encoder attentions' never-called ``output_proj_box``) loads through ``load_weights``."""
    from stmixer.checkpoint import load_weights

    source = build_detector(_tiny_cfg())
    fork = {}
    for key, value in source.state_dict().items():
        value = value + 1 if value.is_floating_point() else value
        if key.startswith("backbone."):
            fork["backbone.0.body." + key[len("backbone."):]] = value
        elif key.startswith("tuber_head."):
            fork[key[len("tuber_head."):]] = value
    fork["backbone.0.query_pool.weight"] = torch.zeros(1, 2048)
    fork["backbone.0.pool_decoder.layers.0.linear1.weight"] = torch.zeros(2048, 2048)
    fork["transformer.encoder.layers.0.self_attn.output_proj_box.weight"] = torch.zeros(32, 32)
    fork["transformer.encoder.layers.0.self_attn.output_proj_box.bias"] = torch.zeros(32)
    path = tmp_path / "fork.pth"
    torch.save({"model": {"module." + k: v for k, v in fork.items()}, "epoch": 3}, path)
    model = build_detector(_tiny_cfg())
    report = load_weights(model, str(path), log=None)
    assert report.ok, report.table()
    expected = source.tuber_head.state_dict()
    for key in ("query_embed.weight", "input_proj.3.0.weight", "transformer.level_embed",
                "transformer.decoder.layers.1.cross_attn.output_proj_box.weight", "bbox_embed.1.layers.2.bias"):
        assert torch.equal(model.tuber_head.state_dict()[key], expected[key] + 1), key


def test_config_errors_name_the_key():
    for extra, key in ((("MODEL.CSN.TEMPORAL_STRIDE", 2), "MODEL.CSN.TEMPORAL_STRIDE"),
                       (("MODEL.SEQFORMER.NUM_FEATURE_LEVELS", 2), "MODEL.SEQFORMER.NUM_FEATURE_LEVELS"),
                       (("MODEL.TUBER.D_MODEL", 48), "MODEL.TUBER.D_MODEL")):
        with pytest.raises(ConfigError, match=key):
            build_detector(_tiny_cfg(*extra))
    with pytest.raises(ConfigError, match="MODEL.SEQFORMER.BATCH_TIME_MIX"):
        load_config(str(CONFIG), ["MODEL.SEQFORMER.BATCH_TIME_MIX", "sometimes"])


def test_learning_rate_groups_follow_the_fork():
    """The fork gives names containing "backbone" LR_BACKBONE (1e-5 of 2e-4); everything else LR."""
    model = build_detector(_tiny_cfg())
    assert model.param_optim_overrides("backbone.conv1.weight")[0] == 0.05
    assert model.param_optim_overrides("tuber_head.query_embed.weight")[0] == 1.0
    assert model.param_optim_overrides("tuber_head.transformer.level_embed")[0] == 1.0


def test_fixture_config_is_the_yaml():
    """reference_parity's config of a case is the shipped yaml with the case's overrides."""
    meta, _ = _load("seqformer_refine")
    over = meta["model_overrides"]
    yaml_cfg = load_config(str(CONFIG), [
        "MODEL.TUBER.ENC_LAYERS", over["ENC_LAYERS"], "MODEL.TUBER.DEC_LAYERS", over["DEC_LAYERS"],
        "MODEL.TUBER.NUM_QUERIES", over["QUERY_NUM"], "MODEL.TUBER.D_MODEL", over["D_MODEL"],
        "MODEL.TUBER.NHEAD", over["NHEAD"], "MODEL.TUBER.DIM_FEEDFORWARD", over["DIM_FEEDFORWARD"],
        "MODEL.SEQFORMER.ENC_N_POINTS", 3, "MODEL.SEQFORMER.DEC_N_POINTS", 2,
        "MODEL.SEQFORMER.DEEP_SUPERVISION", True, "MODEL.SEQFORMER.BATCH_TIME_MIX", "always",
        "MODEL.BACKBONE.CHANNELS_LAST", False,
        "DATA.NUM_FRAMES", meta["clip_sizes"][0][0]])
    ours = seqformer_config(meta)
    for node in ("SEQFORMER", "CSN"):
        assert yaml_cfg.MODEL[node].dump() == ours.MODEL[node].dump(), node
    for key in ("D_MODEL", "NHEAD", "ENC_LAYERS", "DEC_LAYERS", "DIM_FEEDFORWARD", "NUM_QUERIES", "MATCHED_WEIGHT",
                "BACKBONE_LR_FACTOR", "LOSS_FLOAT32", "DROPOUT"):
        assert yaml_cfg.MODEL.TUBER[key] == ours.MODEL.TUBER[key], key
    assert get_cfg().MODEL.CSN.TEMPORAL_STRIDE == 2  # TubeR's CSN stays the default


# float32 run vs the float64 answers, relative to max|value| (measured worst, both cases): predictions and
# detections 1.1e-6, losses 1.9e-7, gradients 1.3e-4 (the CSN's layer2 weights: a long float32 accumulation),
# training-mode forward 4.7e-5 (BatchNorm batch statistics of 8 frames); ~15-20x margin.
F32_TOL = {"out": 2e-5, "det": 2e-5, "grad": 2e-3, "train": 1e-3}


@pytest.mark.tuber
def test_whole_detector_float32_matches_the_fork_float64():
    meta, exp = _load("seqformer_refine")
    result = run_case(meta, recipe, torch.float32)
    for key in exp.files:
        if key.startswith("target/"):
            continue
        answer = np.clip(exp[key], 0, 1) if key == "det/boxes_normalized" else exp[key]
        ours = result[key].detach().double().numpy().reshape(-1)[::meta.get("sampled", {}).get(key, 1)]
        err = float(np.abs(ours - answer.reshape(-1)).max()) / float(np.abs(answer).max())
        assert err <= F32_TOL[key.split("/")[0]], f"{key}: relative error {err:.3g}"
    for key, value in meta["losses"].items():
        assert abs(float(result[f"loss/{key}"]) - value) <= 1e-6 * abs(value), key
    for layer, matches in meta["matches"].items():
        for i, (src, tgt) in enumerate(matches):
            assert result[f"match/{layer}_src_b{i}"].tolist() == src, (layer, i)
