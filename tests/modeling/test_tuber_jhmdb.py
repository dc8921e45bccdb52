"""TubeR's JHMDB / UCF101-24 model (``MODEL.TUBER.HEAD "frame"``) held to the official code.

Fixture: tests/reference/tuber/tuber_jhmdb (``--sections tuber_jhmdb`` of
tests/reference/make_query_detector_fixtures.py): TubeR's ``models.tuber_ava.build_model`` with
``DATASET_NAME "jhmdb"`` (the model of its ``train_tuber_jhmdb.py`` / ``eval_tuber_jhmdb.py``) from
``Tuber_CSN152_JHMDB.yaml`` on CSN-50, 2 + 2 layers, 3 queries x 16 frames, three clips (two padded, one
without ground truth), float64 weights from the seed recipe. Ours runs through
``stmixer.modeling.tuber.parity.run_tuber_fixture`` (what ``reference_parity`` runs): every intermediate,
per-layer output, gradient and detection within F64_TOL x max|value|; matches identical; losses as the
official loss dict (float32 terms, TubeR's float32 ``num_boxes``, within float32 rounding).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stmixer.modeling import build_detector
from stmixer.modeling.tuber import parity

FIXTURES = Path(__file__).resolve().parents[1] / "reference" / "tuber" / "tuber_jhmdb"
CASE = "tuber_jhmdb_csn50"
F64_TOL = 1e-9


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((FIXTURES / f"{CASE}.json").read_text())
    with np.load(FIXTURES / f"{CASE}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


@pytest.fixture(scope="module")
def ours():
    return parity.run_tuber_fixture(FIXTURES, torch.float64)


def rel(ours, expected):
    ours, expected = np.asarray(ours, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    if expected.size == 0:
        return 0.0
    return float(np.abs(ours - expected).max() / max(np.abs(expected).max(), 1e-300))


@pytest.mark.tuber
def test_tuber_jhmdb_checkpoint_loads_every_official_key(fixture):
    meta, _ = fixture
    recipe = parity.load_recipe(FIXTURES)
    model, report = parity.build_loaded(meta, recipe, torch.float64)
    assert report.ok, report.table()
    official = {name for name, _ in meta["official_state_dict"] if not name.startswith("backbone.body.out_fc.")}
    assert len(official) == len(report.loaded)
    head = model.tuber_head
    assert head.query_embed.weight.shape[0] == 3 * 16 and head.class_fc.out_features == 22
    assert head.class_embed_b.in_features == 2048 and head.class_embed_b.out_features == 2


@pytest.mark.tuber
def test_tuber_jhmdb_forward_matches_official_float64(fixture, ours):
    _, arrays = fixture
    names = [k for k in arrays if k.startswith(("trace/", "out/", "det/")) and k != "trace/mask"]
    assert len(names) == 6 + 3 * 2 + 3
    for name in names:
        assert rel(ours[name], arrays[name]) <= F64_TOL, name


@pytest.mark.tuber
def test_tuber_jhmdb_matches_losses_gradients_match_official(fixture, ours):
    meta, arrays = fixture
    L = meta["overrides"]["DEC_LAYERS"]
    for k in range(L):
        got = [[ours[f"match/layer{k}_src_b{i}"].tolist(), ours[f"match/layer{k}_tgt_b{i}"].tolist()]
               for i in range(len(meta["clip_sizes"]))]
        assert got == meta["matches"][f"layer{k}"], k
    assert meta["matches"][f"layer{L - 1}"][2] == [[], []]  # the clip without ground truth
    for name, official in meta["losses"].items():
        if name == "total" or name.startswith("class_error"):  # class_error: TubeR's log only
            continue
        # float32 terms: TubeR's float32 num_boxes (MODEL.TUBER.LOSS_FLOAT32), reproduced
        tol = F64_TOL if official["dtype"] == "float64" else 2 ** -23
        assert abs(float(ours[f"loss/{name}"]) - official["value"]) <= tol * abs(official["value"]), name
    for p in meta["grad_params"]:
        assert rel(ours[f"grad/{p}"], arrays[f"grad/{p}"]) <= F64_TOL, p


@pytest.mark.tuber
def test_tuber_jhmdb_detections_are_the_rows_tuber_evaluates(fixture, ours):
    meta, arrays = fixture
    kept = 0
    for b in range(len(meta["clip_sizes"])):
        assert ours[f"eval/labels_{b}"].tolist() == arrays[f"eval/labels_{b}"].tolist(), b
        assert rel(ours[f"eval/scores_{b}"], arrays[f"eval/scores_{b}"]) <= F64_TOL
        # ours clamped to [0, 1] (the evaluators' normalized boxes), TubeR's written as predicted
        expected = np.clip(arrays[f"eval/boxes_normalized_{b}"], 0, 1)
        assert rel(ours[f"eval/boxes_normalized_{b}"], expected) <= F64_TOL
        kept += len(arrays[f"eval/labels_{b}"])
    assert 0 < kept < 3 * len(meta["clip_sizes"])  # the case has kept and dropped ("no action") queries


@pytest.mark.tuber
def test_tuber_frame_detections_contract():
    """Eval output: the key frame's queries, "no action" winners dropped, one score per kept query."""
    from stmixer.modeling.tuber.detector import TubeR

    logits = torch.full((1, 1, 3, 4), -5.0)
    logits[0, 0, 0, 1] = 3.0   # action 1
    logits[0, 0, 1, 3] = 3.0   # "no action" wins: dropped
    logits[0, 0, 2, 2] = 2.0   # action 2
    out = {"logits": logits, "boxes": torch.full((1, 1, 3, 4), 0.5), "logits_b": torch.tensor([[[0.0, 1.0]]])}
    head = type("H", (), {"switch": "clip"})()
    model = TubeR.__new__(TubeR)
    torch.nn.Module.__init__(model)
    model.tuber_head = head
    det = model.detections(out)[0]
    assert det["query_indices"].tolist() == [0, 2]
    assert det["scores"].shape == (2, 3)
    assert (det["scores"] > 0).sum(1).tolist() == [1, 1] and det["scores"].argmax(1).tolist() == [1, 2]
    assert torch.allclose(det["scores"][0, 1], logits[0, 0, 0].softmax(-1)[1])
    assert torch.allclose(det["person_scores"], torch.tensor([0.0, 1.0]).softmax(-1)[1].expand(2))
    assert torch.allclose(det["boxes"], torch.tensor([[0.25, 0.25, 0.75, 0.75]] * 2))


# float32 forward vs the float64 answers, relative to max|value|: measured worst 2.3e-6 (softmax scores; outputs
# <= 1.5e-6, encoder memory 1.0e-6); ~4x margin for other CPUs / BLAS kernels.
F32_TOL = 1e-5


@pytest.mark.tuber
def test_tuber_jhmdb_forward_float32_within_tolerance(fixture):
    _, arrays = fixture
    ours32 = parity.run_tuber_fixture(FIXTURES, torch.float32)
    names = [k for k in arrays if k.startswith(("trace/", "out/", "det/")) and k != "trace/mask"]
    for name in names:
        assert rel(ours32[name], arrays[name]) <= F32_TOL, name


def test_tuber_head_key_is_checked():
    from stmixer.config import ConfigError, get_cfg, validate_config

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "TubeR"
    cfg.MODEL.BACKBONE.CONV_BODY = "CSN-50"
    cfg.MODEL.TUBER.HEAD = "jhmdb"
    with pytest.raises(ConfigError, match="MODEL.TUBER.HEAD"):
        validate_config(cfg)


def test_detr_weight_into_the_frame_head_loads_all_but_the_queries(tmp_path):
    """TubeR's load_detr_weights crashes on its JHMDB model (10 DETR rows into the [10 * 32, D] per-frame queries);
    ours loads the transformer and the box MLP and keeps the per-frame queries' initialization (reported)."""
    from stmixer.modeling.tuber.detr_weights import load_detr_weights

    meta = {"model": parity.FRAME_MODEL_NAME, "overrides": {"ENC_LAYERS": 1, "DEC_LAYERS": 1, "QUERY_NUM": 2,
                                                             "TEMP_LEN": 8}}
    cfg = parity.fixture_config(meta)
    torch.manual_seed(0)
    model = build_detector(cfg)
    gen = torch.Generator().manual_seed(0)  # a COCO DETR layout: 100 queries, its classifier
    sd = {f"{part}.{k}": torch.randn(v.shape, generator=gen, dtype=torch.float64).float()
          for part in ("transformer", "bbox_embed") for k, v in getattr(model.tuber_head, part).state_dict().items()}
    sd.update({"query_embed.weight": torch.randn(100, 256, generator=gen), "class_embed.weight": torch.randn(92, 256),
               "class_embed.bias": torch.randn(92)})
    path = tmp_path / "detr.pth"
    torch.save({"model": sd}, path)
    queries = model.tuber_head.query_embed.weight.detach().clone()
    report = load_detr_weights(model, path, log=None)
    assert report.ok
    assert torch.equal(model.tuber_head.query_embed.weight, queries)  # 16 per-frame queries: not DETR's first 16
    assert torch.equal(model.tuber_head.bbox_embed.layers[2].bias, sd["bbox_embed.layers.2.bias"])
    assert any("query_embed" in reason for reason in report.dropped)
