"""Section ``tuber_jhmdb`` of ``make_query_detector_fixtures.py``: TubeR's JHMDB / UCF101-24 model in float64.

Imported by the driver (``--sections tuber_jhmdb``); ``--tuber`` is a checkout of
amazon-science/tubelet-transformer, put first on ``sys.path`` (nothing is copied). The model is the one
TubeR's ``train_tuber_jhmdb.py`` / ``eval_tuber_jhmdb.py`` build: ``models.tuber_ava.build_model(cfg)``
with ``DATA.DATASET_NAME "jhmdb"`` -> ``(DETR, SetCriterion, PostProcess)`` (``models/criterion.py``,
``models/detr/matcher_ucf.py``). ``models/tuber_jhmdb.py`` is the same network but cannot be imported
(it imports ``models.transformer.transformer_refined``, which the repository does not have). Per case:

1. the official config (``configuration/Tuber_CSN152_JHMDB.yaml`` merged onto ``get_cfg_defaults()``) with
   the case's overrides: CSN-50 instead of CSN-152 (the builder has no reduced CSN-152), 2 + 2 layers,
   3 queries per frame, a 16-frame clip; ``TEMPORAL_DS_STRATEGY: decoder`` (the yaml's value: not
   "decode", so TubeR takes the centre frame of layer4);
2. every state-dict entry from ``tuber/recipe.py`` (``tuber_state``); model and criterion in float64, eval mode;
3. three clips (the second and third padded by ``nested_tensor_from_tensor_list``), ground truth on the key
   frame (``key_pos = TEMP_LEN // 2``, boxes ``[n, 5]`` = key_pos + normalized cxcywh, int64 labels, ``vis``);
   the third clip has no ground truth (``vis`` 0);
4. hooks record the CSN output, the pooled map, the positions, the encoder memory, the decoder outputs and
   the context tokens (stored as channel slices ``[:, ::8]`` / ``[..., ::8]``, statistics in full); the outputs of every layer (all ``QUERY_NUM * TEMP_LEN`` queries); the official
   matcher's indices on the key frame's queries of every layer; the criterion's loss dict; gradients of a
   few parameters of the weighted sum;
5. ``PostProcess`` (softmax scores, boxes, the clip switch) and what TubeR's evaluation reads of it: the
   key frame's queries written as ``validate_tuber_ucf_detection`` writes them and read back by the official
   ``STDetectionEvaluaterUCF.load_detection_from_path`` (its PASCAL evaluator's ``add_single_detected_image_info``
   recorded instead of evaluated): per clip the kept (box, label, score) rows.

Shim: none in the model or criterion (``SetCriterion`` has no float32 hard-code besides ``num_boxes``, the
quirk being measured). ``cv2`` (imported, unused) stands in as an empty module when missing.
"""

import contextlib
import importlib.util
import io
import json
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

CASES = {
    # name: seed, overrides of CONFIG.MODEL, clip sizes (T, H, W), gt boxes per clip
    "tuber_jhmdb_csn50": (5, {"BACKBONE_NAME": "CSN-50", "ENC_LAYERS": 2, "DEC_LAYERS": 2, "QUERY_NUM": 3,
                              "TEMP_LEN": 16}, [(16, 64, 64), (16, 48, 64), (16, 64, 48)], [2, 1, 0]),
}
GRAD_PARAMS = ("query_embed.weight", "class_fc.bias", "class_embed_b.weight", "class_embed_b.bias",
               "bbox_embed.layers.2.weight", "transformer.decoder.layers.1.linear2.bias",
               "encoder.layers.0.norm2.weight", "cross_attn.in_proj_bias", "input_proj.bias",
               "backbone.body.layer4.2.bn4.bias")
SLICE = 8


def stats(value):
    value = np.asarray(value, dtype=np.float64)
    return {"shape": list(value.shape), "sum": float(value.sum()), "sum_sq": float((value * value).sum())}


def official_cfg(root, overrides):
    from pipelines.video_action_recognition_config import get_cfg_defaults

    cfg = get_cfg_defaults()
    cfg.merge_from_file(str(root / "configuration" / "Tuber_CSN152_JHMDB.yaml"))
    for key, value in overrides.items():
        setattr(cfg.CONFIG.MODEL, key, value)
    cfg.CONFIG.DATA.TEMP_LEN = cfg.CONFIG.MODEL.TEMP_LEN
    cfg.CONFIG.MODEL.PRETRAINED = False
    return cfg


def official_eval_rows(root, scores, boxes, key_pos, num_queries, num_classes):
    """Per clip the (box, label, score) rows TubeR's evaluation keeps of the key frame's queries."""
    from evaluates.evaluate_ucf import STDetectionEvaluaterUCF

    evaluator = STDetectionEvaluaterUCF(class_num=num_classes)
    recorded = {}

    def record(image_key, info):
        recorded[image_key] = {k.split("/")[-1] if "/" in k else k: np.asarray(v) for k, v in info.items()}

    evaluator.lst_pascal_evaluator[0].add_single_detected_image_info = record
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "0.txt"
        with open(path, "w") as f:  # validate_tuber_ucf_detection's writer
            for b in range(scores.shape[0]):
                sl = slice(key_pos * num_queries, (key_pos + 1) * num_queries)
                for box, score in zip(boxes[b, sl], scores[b, sl]):
                    f.write("{} {}\n".format(f"clip{b}", np.concatenate([box, score]).tolist()))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.load_detection_from_path([str(path)])
    return recorded


def run_case(root, name, seed, overrides, sizes, counts, out_dir, versions):
    import torch
    from recipe import GEN_VERSION, fake_input, fake_value, tuber_state, tuber_targets

    cfg = official_cfg(root, overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        from models.tuber_ava import build_model

        model, criterion, postprocess = build_model(cfg)
    state = model.state_dict()
    entries = [[k, list(v.shape)] for k, v in state.items() if not k.endswith("num_batches_tracked")]
    values = tuber_state(seed, entries)
    model.load_state_dict({k: torch.from_numpy(values[k]).to(v.dtype) if k in values else v
                           for k, v in state.items()})
    model.double().eval()
    criterion.double()
    clips = [torch.from_numpy(fake_input(seed, (3,) + tuple(s)) if i == 0 else
                              fake_value(seed, f"input_{i}", (3,) + tuple(s), "input")) for i, s in enumerate(sizes)]
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, o: captured.update(
        pooled=o[0][0].tensors, mask=o[0][0].mask, pos=o[1][0], backbone=o[2]))
    model.transformer.register_forward_hook(lambda m, i, o: captured.update(hs=o[0], memory=o[1]))
    model.encoder.register_forward_hook(lambda m, i, o: captured.update(context=o[0]))
    num_classes = cfg.CONFIG.DATA.NUM_CLASSES
    num_queries = cfg.CONFIG.MODEL.QUERY_NUM
    key_pos = cfg.CONFIG.MODEL.TEMP_LEN // 2  # datasets/jhmdb_frame.py: p_t = clip_len // 2
    gts = tuber_targets(seed, counts, num_classes)
    targets, labels_int = [], []
    for i, (boxes, labels) in enumerate(gts):
        label = labels.argmax(1).astype(np.int64) if len(labels) else np.zeros(0, np.int64)
        one_hot = np.zeros_like(labels)
        one_hot[np.arange(len(label)), label] = 1.0
        gts[i] = (boxes, one_hot)
        labels_int.append(label)
        b = torch.from_numpy(np.concatenate([np.full((len(boxes), 1), float(key_pos)), boxes], axis=1))
        targets.append({"boxes": b.reshape(-1, 5), "labels": torch.from_numpy(label),
                        "vis": torch.as_tensor([int(len(boxes) > 0)]), "key_pos": torch.as_tensor(key_pos)})

    arrays, out_stats, losses = {}, {}, {}
    outputs = model(clips)
    for key in ("backbone", "pooled", "memory", "pos", "context", "hs"):  # channel slices (statistics in full)
        value = captured[key].detach().numpy()
        out_stats[f"trace/{key}"] = stats(value)
        arrays[f"trace/{key}"] = value[..., ::SLICE] if key in ("context", "hs") else value[:, ::SLICE]
    arrays["trace/mask"] = captured["mask"].numpy()
    layers = [*outputs.get("aux_outputs", []), {k: outputs[k] for k in ("pred_logits", "pred_boxes", "pred_logits_b")}]
    for k, layer in enumerate(layers):
        for key, ours in (("pred_logits_b", "logits_b"), ("pred_boxes", "boxes"), ("pred_logits", "logits")):
            arrays[f"out/{ours}/layer{k}"] = layer[key].detach().numpy()
    key_frames = torch.arange(num_queries) + key_pos * num_queries
    matches = {}
    for k, layer in enumerate(layers):
        picked = {key: (v[:, key_frames] if key in ("pred_boxes", "pred_logits") else v) for key, v in layer.items()}
        idx = criterion.matcher(picked, targets)
        matches[f"layer{k}"] = [[i.tolist(), j.tolist()] for i, j in idx]
    loss_dict = criterion(outputs, targets)
    weight_dict = criterion.weight_dict
    for key, value in loss_dict.items():
        if not torch.is_tensor(value) or key.startswith("class_error"):  # logging only
            losses[key] = {"value": float(value)}
            continue
        losses[key] = {"value": float(value.detach()), "dtype": str(value.dtype).replace("torch.", ""),
                       "shape": list(value.shape)}
    total = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)
    model.zero_grad()
    total.backward()
    params = dict(model.named_parameters())
    for p in GRAD_PARAMS:
        arrays[f"grad/{p}"] = params[p].grad.numpy()
    losses["total"] = {"value": float(total.detach()), "dtype": str(total.dtype).replace("torch.", "")}
    with torch.no_grad():
        sizes_hw = torch.tensor([[s[1], s[2]] for s in sizes], dtype=torch.float64)
        scores, boxes, output_b = postprocess["bbox"](model(clips), sizes_hw)
    whwh = np.stack([sizes_hw[:, 1], sizes_hw[:, 0]] * 2, axis=1)[:, None]
    arrays["det/scores"] = scores
    arrays["det/boxes_normalized"] = boxes / whwh
    arrays["det/switch"] = output_b
    rows = official_eval_rows(root, scores, boxes, key_pos, num_queries, num_classes)
    for b in range(len(sizes)):
        info = rows.get(f"clip{b}")
        if info is None:
            arrays[f"eval/boxes_normalized_{b}"] = np.zeros((0, 4))
            arrays[f"eval/labels_{b}"] = np.zeros(0, np.int64)
            arrays[f"eval/scores_{b}"] = np.zeros(0)
            continue
        arrays[f"eval/boxes_normalized_{b}"] = info["detection_boxes"] / whwh[b]
        arrays[f"eval/labels_{b}"] = info["detection_classes"].astype(np.int64) - 1  # TubeR: 1-based
        arrays[f"eval/scores_{b}"] = info["detection_scores"]
    for i, (b, lab) in enumerate(gts):
        arrays[f"target/boxes_cxcywh_{i}"] = b.reshape(-1, 4)
        arrays[f"target/labels_{i}"] = lab.reshape(-1, num_classes)
    meta = {
        "case": name, "seed": seed, "gen_version": GEN_VERSION, "model": "TubeR-frame",
        "clip_sizes": [list(s) for s in sizes], "gt_counts": counts, "overrides": overrides, "slice": SLICE,
        "num_classes": num_classes, "key_pos": key_pos,
        "official_config": "configuration/Tuber_CSN152_JHMDB.yaml",
        "official_call": "models.tuber_ava.build_model(cfg) with DATA.DATASET_NAME 'jhmdb' -> model(list of clips), "
                         "criterion(outputs, targets), PostProcess(outputs, sizes), "
                         "STDetectionEvaluaterUCF.load_detection_from_path",
        "official_state_dict": entries, "weight_dict": {k: float(v) for k, v in weight_dict.items()},
        "losses": losses, "matches": matches, "stats": out_stats, "grad_params": list(GRAD_PARAMS),
        "mode": "eval (no dropout, BatchNorm running statistics), float64", "versions": versions,
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=0) + "\n")
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    print(name, {k: v["value"] for k, v in losses.items()}, matches[f"layer{len(layers) - 1}"])


def run(tuber_root, out_root, versions):
    """Write ``<out_root>/tuber_jhmdb/<case>.{json,npz}`` for every case."""
    root = Path(tuber_root).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "cv2" not in sys.modules and importlib.util.find_spec("cv2") is None:  # imported, never used
        sys.modules["cv2"] = types.ModuleType("cv2")
    out = Path(out_root) / "tuber_jhmdb"
    out.mkdir(parents=True, exist_ok=True)
    for name, (seed, overrides, sizes, counts) in CASES.items():
        run_case(root, name, seed, overrides, sizes, counts, out, versions)
