"""Run the SeqFormer fixtures (tests/reference/tuber/seqformer) through our code.

``python -m stmixer.tools.reference_parity --fixture tests/reference/tuber/seqformer --out OUT.npz`` comes here
(``is_seqformer_fixture``): the folder holds one ``<case>.json`` (``"model": "SeqFormer"``) + ``<case>.npz`` per
case, made by tests/reference/make_query_detector_fixtures.py --sections seqformer from the TubeR fork (README
there). The fork's weights are rebuilt from the kit's ``recipe.py`` (``DIR/../recipe.py``) by the json's
``official_state_dict`` and loaded as a fork checkpoint (``stmixer.checkpoint.load_weights``, format ``tuber``);
clips and ground truth come from the recipe too. Written as ``<precision>/<case>/<name>``: every name of
``<case>.npz`` except ``target/*`` (``out/{logits,boxes}/layer{k}``, ``grad/<fork parameter>``, ``det/scores``,
``det/boxes_normalized`` (clamped to [0, 1], as our detections), ``train/...``), plus ours only:
``loss/<name>`` (unweighted) and ``match/layer{k}_{src,tgt}_b{i}`` (the fork's are in the json). The ``.npz``
answers are never read here.
"""

import torch

from ..tuber.parity import (cxcywh_targets, fixture_inputs, fork_detector_outputs, json_cases, load_fork_detector,
                            run_fork_fixture)


class SeqFormerFixtureError(RuntimeError):
    """A SeqFormer fixture folder that is incomplete or does not fit the model."""


def case_files(fixture):
    """``[(case name, json path)]`` of the SeqFormer cases in ``fixture`` (a folder)."""
    return [(meta["case"], path) for meta, path in
            json_cases(fixture, lambda meta: meta.get("model") == "SeqFormer" and isinstance(meta.get("case"), str))]


def is_seqformer_fixture(fixture):
    return bool(case_files(fixture))


def seqformer_config(meta):
    """Our config of a case: config_files/tuber/SeqFormer_CSN50_AVA21.yaml's values with the case's overrides (the
    fork's ``CONFIG.MODEL`` / ``CONFIG.MODEL.SeqFormer`` / ``TRAIN.AUX_LOSS``)."""
    from ...config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SeqFormer"
    cfg.MODEL.BACKBONE.CONV_BODY = "CSN-50"
    cfg.MODEL.BACKBONE.CHANNELS_LAST = False
    cfg.MODEL.BACKBONE.FUSED_INFERENCE = False
    cfg.MODEL.BACKBONE.FUSED_TRAINING_BN = False
    cfg.MODEL.BACKBONE.SPATIAL_CONV_2D = False
    cfg.ViT.COMPILE = False
    cfg.MODEL.CSN.LAST_STRIDE = False
    cfg.MODEL.CSN.TEMPORAL_STRIDE = 1
    cfg.MODEL.STM.ACTION_CLASSES = 80
    cfg.DATA.NUM_FRAMES = meta["clip_sizes"][0][0]
    t, s = cfg.MODEL.TUBER, cfg.MODEL.SEQFORMER
    t.NUM_QUERIES = 20
    over = meta["model_overrides"]
    for ours, fork in (("ENC_LAYERS", "ENC_LAYERS"), ("DEC_LAYERS", "DEC_LAYERS"), ("NUM_QUERIES", "QUERY_NUM"),
                       ("D_MODEL", "D_MODEL"), ("NHEAD", "NHEAD"), ("DIM_FEEDFORWARD", "DIM_FEEDFORWARD")):
        if fork in over:
            t[ours] = over[fork]
    sf = meta["seqformer_overrides"]
    for ours, fork in (("BOX_REFINE", "BOX_REFINE"), ("NUM_FEATURE_LEVELS", "NUM_FEATURE_LEVELS"),
                       ("ENC_N_POINTS", "NUM_ENC_N_POINTS"), ("DEC_N_POINTS", "NUM_DEC_N_POINTS")):
        if fork in sf:
            s[ours] = sf[fork]
    s.DEEP_SUPERVISION = meta["aux_loss"]
    s.BATCH_TIME_MIX = "always"  # the fork's code: its eval-mode forward of two clips mixes them too
    costs = meta["official_costs"]
    s.COST_CLASS, s.COST_BBOX, s.COST_GIOU = (costs[f"LOSS_COFS.{k}"] for k in ("DICE_COF", "BBOX_COF", "GIOU_COF"))
    s.CLASS_WEIGHT, s.L1_WEIGHT, s.GIOU_WEIGHT = (costs[f"MATCHER.{k}"] for k in ("COST_CLASS", "COST_BBOX",
                                                                                  "COST_GIOU"))
    t.MATCHED_WEIGHT = 10.0  # SetCriterionAVA(weight=10): the fork's SeqFormer hard-codes it
    t.BACKBONE_LR_FACTOR = 0.05  # LR_BACKBONE / LR of the fork's yaml (training only)
    return cfg


def run_case(meta, recipe, dtype=torch.float64):
    """Our full-size results of one case ``{name: tensor}`` (module docstring)."""
    from ...checkpoint.csn import tuber_key

    values = recipe.tuber_state(meta["seed"], meta["official_state_dict"])
    for k in values:  # one value for the box heads the decoder shares (as the fixture)
        if k.startswith("transformer.decoder.bbox_embed."):
            values[k] = values["bbox_embed." + k[len("transformer.decoder.bbox_embed."):]]
    if not meta["seqformer_overrides"].get("BOX_REFINE", True):  # one head shared by every layer
        for k in values:
            for head in ("class_embed.", "bbox_embed."):
                if k.startswith(head):
                    values[k] = values[head + "0." + k[len(head):].split(".", 1)[1]]
    model = load_fork_detector(seqformer_config(meta), values, meta["case"], SeqFormerFixtureError, dtype)
    video, whwh = fixture_inputs(meta, recipe, dtype)
    boxes, labels = cxcywh_targets(recipe.tuber_targets(meta["seed"], meta["gt_counts"], 80), whwh)
    return fork_detector_outputs(model, meta, video, whwh, boxes, labels, tuber_key, ("logits", "boxes"),
                                 switch=False)


def run_seqformer_fixture(fixture, dtype=torch.float64, device="cpu"):
    """``{"<case>/<name>": array}`` for every case of the folder (see the module docstring)."""
    return run_fork_fixture(fixture, case_files, run_case, SeqFormerFixtureError, "SeqFormer", dtype, device)
