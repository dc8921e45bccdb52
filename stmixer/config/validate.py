"""``validate_config(cfg)``: every impossible value of a merged config, reported at once.

``load_config`` runs it after the file and the overrides are merged, so a run
never starts on ``SOLVER.ITER_PER_EPOCH -1`` or a ``MODEL.STM.HIDDEN_DIM`` the
decoder cannot split. All bad keys are collected into one ``ConfigError``: a
first line counting them, then one line per key (``KEY = value: expected ...``,
with the file:line or "command line" that set it when known).

The backbone name (``MODEL.BACKBONE.CONV_BODY``) is checked by the builder,
which sees the registry; this module imports nothing from the model.
"""

import numbers

from .config import ConfigError

# Values of the string keys that the code accepts (lower-cased where the code ignores case).
CHOICES = {
    "DATA.TRAIN_SCALE_SAMPLING": ("choice", "range"),
    "DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES": (True, False),
    "DATA.DECODING_BACKEND": ("pyav", "torchvision"),
    "DATA.BOX_TRANSFORM": ("stmixer", "mmaction2"),
    "PROPOSALS.TRAIN_FALLBACK": ("whole_frame", "gt"),
    "DATA.SLOW_PATHWAY_FRAMES": ("linspace", "stride"),
    "RESNET.TRANS_FUNC": ("bottleneck_transform", "basic_transform"),
    "RESNET.DEPTH": (18, 50, 101, 152),
    "NONLOCAL.INSTANTIATION": ("dot_product", "softmax"),
    "NONLOCAL.STYLE": ("pyslowfast", "mmaction2"),
    "SLOWFAST.FUSION_BN_RELU": (True, False),
    "MODEL.BACKBONE.PATHWAYS": (1, 2),
    "MODEL.BACKBONE.FUSED_INFERENCE": ("auto", True, False),
    "MODEL.BACKBONE.FUSED_TRAINING_BN": ("auto", True, False),
    "MODEL.BACKBONE.SPATIAL_CONV_2D": ("auto", True, False),
    "ViT.RECOMPUTE": ("all", "auto"),
    "ViT.COMPILE": ("auto", True, False),
    "MODEL.CSN.FROZEN_STAGES": (-1, 0, 1, 2, 3, 4),
    "MODEL.LFB.DTYPE": ("", "float16", "float32", "float64"),
    "MODEL.LFB.TEMPORAL_POOL": ("avg", "max"),
    "MODEL.LFB.SPATIAL_POOL": ("avg", "max"),
    "MODEL.STM.LOSS_REDUCTION": ("mean", "sum"),
    "MODEL.STM.SAMPLER": ("auto", "reference", "folded", "triton"),
    "MODEL.STM.STACKED_LOSSES": ("auto", True, False),
    "MODEL.CUDA_GRAPH.SCOPE": ("off", "decoder", "model", "split"),
    "MODEL.STM.MEM_ACTIVE": (False,),
    "SOLVER.SCHEDULER": ("warmup_multi_step", "warmup_cosine"),
    "SOLVER.WARMUP_METHOD": ("linear", "constant", "mmengine_linear"),
    "SOLVER.WARMUP_BY_EPOCH": (True, False),
    "SOLVER.NESTEROV": (True, False),
    "SOLVER.AMP": ("off", "bf16", "fp16"),
    "SOLVER.NONFINITE_LOSS": ("error", "skip"),
    "TEST.EVAL_PROTOCOL": ("stmixer", "activitynet", "mmaction2"),
    "MODEL.ROI_HEAD.TEMPORAL_POOL_MODE": ("avg", "max"),
    "MODEL.ROI_HEAD.HEAD_TEMPORAL_POOL": ("avg", "max"),
    "MODEL.ROI_HEAD.HEAD_SPATIAL_POOL": ("avg", "max"),
    "MODEL.ROI_HEAD.ACRN.NORM": ("BN3d", "none"),
    "MODEL.ROI_HEAD.ACRN.NORM_REQUIRES_GRAD": (True, False),
    "MODEL.ROI_HEAD.ACRN.ACT": ("ReLU", "none"),
    "RECOGNITION.SAMPLING": ("dense", "segments"),
    "RECOGNITION.TEST_NUM_CROPS": (1, 3),
    "RECOGNITION.OUT_OF_BOUND": ("loop", "repeat_last"),
    "MODEL.SPARSE_RCNN.TEMPORAL_POOL": ("max", "mean", "keyframe"),
    "MODEL.SPARSE_RCNN.CLASS_LOSS": ("focal", "bce"),
    "MODEL.SPARSE_RCNN.MATCH_CLASS_COST": ("per_target", "batch_union"),
    "MODEL.TUBER.TEMPORAL_POOL": ("decode", "avg", "max", "center"),
    "MODEL.TUBER.CLASS_LOSS": ("bce", "focal"),
    "MODEL.CSN.TEMPORAL_STRIDE": (1, 2),
    "MODEL.TUBER.DEFORMABLE.VARIANT": ("D2", "D3", "D4"),
    "MODEL.TUBER.DEFORMABLE.NUM_FEATURE_LEVELS": (4,),
    "MODEL.TUBER.DEFORMABLE.BATCH_TIME_MIX": (True, False),
    "MODEL.TUBER.DEFORMABLE.SWITCH_GATE": (True, False),
    "MODEL.TUBER.HEAD": ("ava", "frame"),
    "MODEL.SEQFORMER.BOX_REFINE": (True, False),
    "MODEL.SEQFORMER.DEEP_SUPERVISION": (True, False),
    "MODEL.SEQFORMER.MATCH_CLASS_COST": ("batch_union", "per_target"),
    "MODEL.SEQFORMER.BATCH_TIME_MIX": ("train", "always", "never"),
}
# String keys compared without case.
CASELESS_CHOICES = {
    "MODEL.STM.ACTIVATION": ("relu", "gelu"),
    "SOLVER.OPTIMIZING_METHOD": ("adamw", "sgd"),
    "MODEL.SPARSE_RCNN.ACTIVATION": ("relu", "gelu"),
}
POSITIVE = [
    "PROPOSALS.NUM_MAX",
    "DATA.NUM_FRAMES", "DATA.SAMPLING_RATE", "DATA.TARGET_FPS", "DATA.TRAIN_MAX_SCALE", "DATA.TEST_MAX_SCALE",
    "DATALOADER.SIZE_DIVISIBILITY", "MODEL.BACKBONE.BN_EPSILON", "MODEL.CSN.BN_EPSILON", "TUBES.SPLIT", "TUBES.DETECTIONS_PER_FRAME",
    "RESNET.NUM_GROUPS", "RESNET.WIDTH_PER_GROUP",
    "SLOWFAST.BETA_INV", "SLOWFAST.ALPHA", "SLOWFAST.FUSION_CONV_CHANNEL_RATIO", "SLOWFAST.FUSION_KERNEL_SZ",
    "ViT.TUBELET_SIZE", "ViT.PATCH_SIZE", "ViT.IN_CHANS", "ViT.EMBED_DIM", "ViT.PRETRAIN_IMG_SIZE", "ViT.DEPTH",
    "ViT.NUM_HEADS", "ViT.MLP_RATIO",
    "MODEL.LFB.CHANNELS", "MODEL.LFB.WINDOW_SIZE", "MODEL.LFB.MAX_NUM_SAMPLED_FEAT", "MODEL.LFB.LATENT_CHANNELS",
    "MODEL.LFB.NUM_NL_LAYERS",
    "MODEL.STM.NUM_QUERIES", "MODEL.STM.HIDDEN_DIM", "MODEL.STM.NUM_STAGES", "MODEL.STM.ACTION_CLASSES",
    "MODEL.STM.OBJECT_CLASSES", "MODEL.STM.NUM_HEADS", "MODEL.STM.DIM_FEEDFORWARD", "MODEL.STM.NUM_FCS",
    "MODEL.STM.SPATIAL_POINTS", "MODEL.STM.TEMPORAL_POINTS", "MODEL.STM.OUT_MULTIPLIER", "MODEL.STM.N_GROUPS",
    "SOLVER.MAX_EPOCH", "SOLVER.BASE_LR", "SOLVER.GAMMA", "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.EVAL_PERIOD", "SOLVER.VIDEOS_PER_BATCH", "SOLVER.GRAD_ACCUM_STEPS", "SOLVER.LOG_PERIOD",
    "TEST.VIDEOS_PER_BATCH", "MODEL.CUDA_GRAPH.MAX_GRAPHS",
    "MODEL.ROI_HEAD.FEATMAP_STRIDE", "MODEL.ROI_HEAD.OUTPUT_SIZE", "MODEL.ROI_HEAD.NUM_CLASSES",
    "MODEL.ROI_HEAD.SAMPLER_NUM",
    "MODEL.ROI_HEAD.ACRN.STRIDE", "MODEL.ROI_HEAD.ACRN.NUM_CONVS",
    "RECOGNITION.NUM_SEGMENTS", "RECOGNITION.TEST_NUM_CLIPS", "RECOGNITION.TRAIN_CROP_SIZE",
    "RECOGNITION.TEST_CROP_SIZE", "MODEL.RECOGNIZER.NUM_CLASSES",
]
NON_NEGATIVE = [
    "DATALOADER.NUM_WORKERS", "SOLVER.ITER_PER_EPOCH", "ViT.INIT_VALUES", "ViT.WEIGHT_DECAY",
    "MODEL.STM.NUM_CLS", "MODEL.STM.NUM_ACT", "MODEL.STM.NUM_REG", "MODEL.STM.OBJECT_WEIGHT",
    "MODEL.STM.ACTION_WEIGHT", "MODEL.STM.GIOU_WEIGHT", "MODEL.STM.L1_WEIGHT", "MODEL.STM.BACKGROUND_WEIGHT",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BN", "SOLVER.WARMUP_FACTOR", "SOLVER.WARMUP_EPOCH",
    "SOLVER.EVAL_AFTER", "SOLVER.CLIP_GRAD_NORM", "SOLVER.CHECKPOINTS_KEPT",
    "SOLVER.BASE_BATCH_SIZE", "SOLVER.COSINE_ETA_MIN", "DATA.TRAIN_CROP_SIZE",
    "MODEL.ROI_HEAD.SAMPLING_RATIO", "MODEL.ROI_HEAD.FOCAL_GAMMA", "MODEL.ROI_HEAD.ACTION_THR",
    "MODEL.ROI_HEAD.ACRN.OUT_CHANNELS", "RECOGNITION.START_INDEX",
]
# Probabilities and fractions: values in [0, 1].
UNIT_INTERVAL = [
    "PROPOSALS.DET_SCORE_THR",
    "AVA.DETECTION_SCORE_THRESH", "MODEL.BACKBONE.BN_MOMENTUM", "ViT.DROP_RATE", "ViT.ATTN_DROP_RATE",
    "ViT.DROP_PATH_RATE", "ViT.LAYER_DECAY", "ViT.RECOMPUTE_MEMORY_FRACTION", "MODEL.STM.DROPOUT",
    "MODEL.STM.PERSON_THRESHOLD",
    "SOLVER.MOMENTUM",
    "MODEL.ROI_HEAD.POS_IOU_THR", "MODEL.ROI_HEAD.NEG_IOU_THR", "MODEL.ROI_HEAD.MIN_POS_IOU",
    "MODEL.ROI_HEAD.SAMPLER_POS_FRACTION", "MODEL.ROI_HEAD.ACTION_THR",
    "MODEL.RECOGNIZER.DROPOUT_RATE", "MODEL.RECOGNIZER.LABEL_SMOOTHING",
]
UNIT_INTERVAL += ["MODEL.LFB.ST_FEAT_DROPOUT", "MODEL.LFB.LT_FEAT_DROPOUT", "MODEL.LFB.NL_DROPOUT"]
UNIT_INTERVAL += ["MODEL.STABN.ATT_DROPOUT_RATE"]
NON_NEGATIVE += ["MODEL.STABN.ATT_LOSS_WEIGHT"]
POSITIVE += ["MODEL.STABN.BLOCK_BN_UPDATES"]
# Per-stage lists of the ResNet backbones: 4 stages, one entry per pathway.
RESNET_STAGE_LISTS = [
    "RESNET.NUM_BLOCK_TEMP_KERNEL", "RESNET.SPATIAL_STRIDES", "RESNET.SPATIAL_DILATIONS",
    "NONLOCAL.LOCATION", "NONLOCAL.GROUP",
]


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _value_problems(cfg):
    """(key, expectation) for every key whose value alone is impossible."""
    for key in POSITIVE:
        value = _get(cfg, key)
        if not _is_number(value) or value <= 0:
            yield key, "expected a number > 0"
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if not _is_number(value) or value < 0:
            yield key, "expected a number >= 0"
    for key in UNIT_INTERVAL:
        value = _get(cfg, key)
        if not _is_number(value) or not 0 <= value <= 1:
            yield key, "expected a number in [0, 1]"
    for key, choices in CHOICES.items():
        if _get(cfg, key) not in choices:
            yield key, "expected one of " + ", ".join(repr(c) for c in choices)
    for key, choices in CASELESS_CHOICES.items():
        value = _get(cfg, key)
        if not isinstance(value, str) or value.lower() not in choices:
            yield key, "expected one of " + ", ".join(repr(c) for c in choices) + " (any case)"
    for key in ("DATA.TRAIN_MIN_SCALES", "DATA.TEST_MIN_SCALES"):
        sizes = _get(cfg, key)
        if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            yield key, "expected a non-empty list of positive integers (pixels)"
    for key in ("DATA.MEAN", "DATA.STD"):
        values = _get(cfg, key)
        if len(values) != 3 or not all(_is_number(v) for v in values):
            yield key, "expected 3 numbers (one per colour channel)"
    if all(_is_number(v) for v in cfg.DATA.STD) and any(v <= 0 for v in cfg.DATA.STD):
        yield "DATA.STD", "expected standard deviations > 0"
    betas = cfg.SOLVER.BETAS
    if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
        yield "SOLVER.BETAS", "expected (beta1, beta2), each in [0, 1)"
    batch, accum = cfg.SOLVER.VIDEOS_PER_BATCH, cfg.SOLVER.GRAD_ACCUM_STEPS
    if _is_number(batch) and _is_number(accum) and accum > 0 and batch % accum:
        yield "SOLVER.GRAD_ACCUM_STEPS", f"expected a divisor of SOLVER.VIDEOS_PER_BATCH = {batch}"
    if _is_number(accum) and accum > 1 and cfg.MODEL.META_ARCHITECTURE != "STMDetector":
        # equal-to-the-whole-batch accumulation needs the loss's whole-step normalizers (STMixer's set loss has them)
        yield "SOLVER.GRAD_ACCUM_STEPS", (f"expected 1 for MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} "
                                          "(gradient accumulation is implemented for STMDetector only)")
    steps = list(cfg.SOLVER.STEPS)
    if not all(_is_number(s) and s >= 0 for s in steps) or steps != sorted(steps):
        yield "SOLVER.STEPS", "expected non-decreasing epochs >= 0"
    yield from _solver_problems(cfg.SOLVER)
    crop, scales = cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TRAIN_MIN_SCALES
    if _is_number(crop) and crop > 0 and scales and all(_is_number(s) for s in scales) and crop > min(scales):
        yield "DATA.TRAIN_CROP_SIZE", f"expected at most the smallest DATA.TRAIN_MIN_SCALES entry ({min(scales)} pixels)"


def _solver_problems(solver):
    """SGD and warm-up settings that cannot run together."""
    if solver.NESTEROV is True and _is_number(solver.MOMENTUM) and solver.MOMENTUM <= 0:
        yield "SOLVER.NESTEROV", "expected False unless SOLVER.MOMENTUM > 0 (Nesterov momentum needs momentum)"
    if not (solver.WARMUP_ON and _is_number(solver.WARMUP_EPOCH) and solver.WARMUP_EPOCH > 0):
        return
    steps = None  # warm-up steps; per iteration they are known once ITER_PER_EPOCH is
    if solver.WARMUP_BY_EPOCH is True:
        steps = solver.WARMUP_EPOCH
    elif _is_number(solver.ITER_PER_EPOCH) and solver.ITER_PER_EPOCH > 0:
        steps = round(solver.WARMUP_EPOCH * solver.ITER_PER_EPOCH)
    if solver.WARMUP_METHOD == "mmengine_linear" and steps is not None and steps < 2:
        yield "SOLVER.WARMUP_EPOCH", ("expected a warm-up of at least 2 steps with WARMUP_METHOD 'mmengine_linear' "
                                      "(mmengine's one-step LinearLR keeps the rate at WARMUP_FACTOR x BASE_LR)")


def _model_problems(cfg):
    """(key, expectation) for keys that do not fit the others (what the model and the clip sampler need)."""
    stm, body = cfg.MODEL.STM, cfg.MODEL.BACKBONE.CONV_BODY
    D = stm.HIDDEN_DIM
    if _is_number(D) and D > 0:
        for key in ("NUM_HEADS", "N_GROUPS"):
            divisor = stm[key]
            if _is_number(divisor) and divisor > 0 and D % divisor:
                yield "MODEL.STM.HIDDEN_DIM", f"expected a multiple of MODEL.STM.{key} = {divisor}"
        if D % 8:
            yield "MODEL.STM.HIDDEN_DIM", "expected a multiple of 8 (box positional embedding)"
    rh = cfg.MODEL.ROI_HEAD
    if cfg.MODEL.META_ARCHITECTURE == "FastRCNN" and _is_number(stm.ACTION_CLASSES):
        # the datasets' labels have MODEL.STM.ACTION_CLASSES columns; the head adds the background column
        expected = stm.ACTION_CLASSES + (1 if rh.BACKGROUND_CLASS else 0)
        if rh.NUM_CLASSES != expected:
            yield "MODEL.ROI_HEAD.NUM_CLASSES", (
                f"expected {expected}: MODEL.STM.ACTION_CLASSES = {stm.ACTION_CLASSES} actions (the datasets' label "
                "columns)" + (" + the background column" if rh.BACKGROUND_CLASS else ""))
    if str(body).startswith("CSN-") and cfg.MODEL.META_ARCHITECTURE == "STMDetector":
        yield "MODEL.BACKBONE.CONV_BODY", (
            "a backbone whose 4 levels share their frame count for STMDetector: the ir-CSN levels have temporal "
            "strides 1, 2, 4, 8 (CSN is TubeR's backbone)")
    if cfg.MODEL.META_ARCHITECTURE == "EVAD" and not str(body).startswith("EVAD-"):
        yield "MODEL.BACKBONE.CONV_BODY", "expected an EVAD backbone (EVAD-ViT-B / EVAD-ViT-L) for the EVAD detector"
    vit = cfg.ViT
    if "vit" in str(body).lower():
        if _is_number(vit.NUM_HEADS) and vit.NUM_HEADS > 0 and vit.EMBED_DIM % vit.NUM_HEADS:
            yield "ViT.EMBED_DIM", f"expected a multiple of ViT.NUM_HEADS = {vit.NUM_HEADS}"
        frames = _frames_after(cfg.DATA.NUM_FRAMES, vit.TUBELET_SIZE, "DATA.NUM_FRAMES", exact=True)
        if str(body).startswith("EVAD"):
            yield from _evad_problems(cfg, frames)
    else:
        yield from _pathway_problems(cfg)
        frames = cfg.DATA.NUM_FRAMES
        if cfg.MODEL.BACKBONE.PATHWAYS == 2:
            frames = _frames_after(cfg.DATA.NUM_FRAMES, cfg.SLOWFAST.ALPHA, "DATA.NUM_FRAMES")
    if isinstance(frames, tuple):
        yield frames
    elif (_is_number(frames) and frames > 0 and frames != stm.TEMPORAL_POINTS
          and cfg.MODEL.META_ARCHITECTURE == "STMDetector"):  # the two-stage detectors have no decoder
        yield "MODEL.STM.TEMPORAL_POINTS", f"expected {frames}, the frames of the backbone features for this clip"


def _evad_problems(cfg, frames):
    """EVAD's pruning keys against the ViT (one keep rate per block, 4 FPN blocks, even temporal tokens)."""
    depth, rates, fpn = cfg.ViT.DEPTH, list(cfg.EVAD.KEEP_RATES), list(cfg.EVAD.FPN_INDICES)
    if cfg.MODEL.META_ARCHITECTURE in ("STMDetector", "FastRCNN"):
        # EVAD's backbone returns pruned tokens + keyframe maps (EVADFeatures), not the 4 maps these detectors read
        arch = cfg.MODEL.META_ARCHITECTURE
        yield "MODEL.BACKBONE.CONV_BODY", (f"expected a backbone MODEL.META_ARCHITECTURE = {arch!r} can read "
                                           "(MAE-ViT-B / MAE-ViT-L); the EVAD backbones feed EVAD's decoder")
    if _is_number(depth) and len(rates) != depth:
        yield "EVAD.KEEP_RATES", f"expected {depth} rates, one per ViT block (ViT.DEPTH = {depth})"
    if not all(_is_number(r) and 0 < r <= 1 for r in rates):
        yield "EVAD.KEEP_RATES", "expected every rate in (0, 1]"
    if not (_is_number(cfg.EVAD.ENHANCED_WEIGHT) and cfg.EVAD.ENHANCED_WEIGHT > 0):
        yield "EVAD.ENHANCED_WEIGHT", "expected a number > 0"
    if not (len(fpn) == 4 and all(isinstance(i, int) for i in fpn) and fpn == sorted(set(fpn))
            and (not _is_number(depth) or (fpn[0] >= 0 and fpn[-1] < depth))):
        yield "EVAD.FPN_INDICES", f"expected 4 increasing block indices in [0, ViT.DEPTH = {depth})"
    if _is_number(frames) and frames % 2:
        yield "DATA.NUM_FRAMES", ("expected an even number of temporal tokens (DATA.NUM_FRAMES / ViT.TUBELET_SIZE) "
                                  "for EVAD")
    e = cfg.EVAD
    for key in ("DECODER_DIM", "DECODER_DEPTH", "DECODER_HEADS", "DECODER_MLP_RATIO", "ROI_RESOLUTION", "ACT_FC_DIM",
                "NUM_ACT_LAYERS"):
        if not (_is_number(e[key]) and e[key] > 0):
            yield f"EVAD.{key}", "expected a number > 0"
    if _is_number(e.DECODER_DIM) and _is_number(e.DECODER_HEADS) and e.DECODER_HEADS > 0 \
            and e.DECODER_DIM % e.DECODER_HEADS:
        yield "EVAD.DECODER_DIM", f"expected a multiple of EVAD.DECODER_HEADS = {e.DECODER_HEADS}"
    for key in ("DECODER_DROP_RATE", "DECODER_ATTN_DROP_RATE", "DECODER_DROP_PATH_RATE", "PERSON_THRESHOLD",
                "GT_BOXES_PROB"):
        if not (_is_number(e[key]) and 0 <= e[key] <= 1):
            yield f"EVAD.{key}", "expected a number in [0, 1]"
    for key in ("ROI_SAMPLING_RATIO", "NUM_EVAL_ACT_CLASSES", "ACTION_WEIGHT", "HEAD_LR_SCALE"):
        if not (_is_number(e[key]) and e[key] >= 0):
            yield f"EVAD.{key}", "expected a number >= 0"
    if not (len(e.ROI_EXTENSION) in (1, 2) and all(_is_number(v) and v >= 0 for v in e.ROI_EXTENSION)):
        yield "EVAD.ROI_EXTENSION", "expected [x, y] (or one value for both), each >= 0"
    for key in ("NUM_PROPOSALS", "HIDDEN_DIM", "NUM_STAGES", "NHEADS", "DIM_FEEDFORWARD", "DIM_DYNAMIC",
                "NUM_DYNAMIC", "POOLER_RESOLUTION"):
        if not (_is_number(e.PERSON[key]) and e.PERSON[key] > 0):
            yield f"EVAD.PERSON.{key}", "expected a number > 0"
    for key in ("NUM_CLS", "NUM_REG", "POOLER_SAMPLING_RATIO", "CLASS_WEIGHT", "GIOU_WEIGHT", "L1_WEIGHT",
                "NO_OBJECT_WEIGHT", "DROPOUT"):
        if not (_is_number(e.PERSON[key]) and e.PERSON[key] >= 0):
            yield f"EVAD.PERSON.{key}", "expected a number >= 0"
    if e.PERSON.ACTIVATION not in ("relu", "gelu", "glu"):
        yield "EVAD.PERSON.ACTIVATION", "expected one of 'relu', 'gelu', 'glu'"


def _frames_after(num_frames, divisor, key, exact=False):
    """Frames after a temporal division, or a (key, expectation) problem."""
    if not (_is_number(num_frames) and num_frames > 0 and _is_number(divisor) and divisor > 0):
        return num_frames
    if exact and num_frames % divisor:
        return key, f"expected a multiple of ViT.TUBELET_SIZE = {divisor}"
    if num_frames // divisor < 1:
        return key, f"expected at least SLOWFAST.ALPHA = {divisor} frames (the Slow pathway needs one)"
    return num_frames // divisor


def _pathway_problems(cfg):
    pathways = cfg.MODEL.BACKBONE.PATHWAYS
    if pathways not in (1, 2):
        return
    if len(cfg.DATA.INPUT_CHANNEL_NUM) != pathways:
        yield "DATA.INPUT_CHANNEL_NUM", f"expected {pathways} entries (MODEL.BACKBONE.PATHWAYS = {pathways})"
    for key in RESNET_STAGE_LISTS:
        stages = _get(cfg, key)
        if len(stages) != 4 or any(not isinstance(s, (list, tuple)) or len(s) != pathways for s in stages):
            yield key, f"expected 4 stages of {pathways} entries each (MODEL.BACKBONE.PATHWAYS = {pathways})"


def _tuber_problems(cfg):
    """TubeR (``MODEL.META_ARCHITECTURE "TubeR"``): the widths its hard-coded parts need (docs/tuber.md)."""
    if cfg.MODEL.META_ARCHITECTURE != "TubeR":
        return
    t = cfg.MODEL.TUBER
    for key in ("D_MODEL", "NHEAD", "ENC_LAYERS", "DEC_LAYERS", "NUM_QUERIES", "DIM_FEEDFORWARD"):
        value = t[key]
        if not (_is_number(value) and value > 0):
            yield f"MODEL.TUBER.{key}", "expected a number > 0"
            return
    if t.D_MODEL % 8 or t.D_MODEL % t.NHEAD:
        yield "MODEL.TUBER.D_MODEL", f"expected a multiple of 8 (3-D positions) and of MODEL.TUBER.NHEAD = {t.NHEAD}"
    if t.CROSS_ATTN_DIM != t.D_MODEL:
        yield "MODEL.TUBER.CROSS_ATTN_DIM", f"expected MODEL.TUBER.D_MODEL = {t.D_MODEL} (the action cross-attention " \
                                            "reads the decoder outputs)"
    if t.TRANSFORMER == "deformable":  # Deformable TubeR: its own projections of every CSN level
        if t.D_MODEL % 32:
            yield "MODEL.TUBER.D_MODEL", ("expected a multiple of 32 (Deformable TubeR's input projections use "
                                          "GroupNorm(32))")
        return
    if (t.PROJ_IN_CHANNELS or t.DIM_FEEDFORWARD) != 2048:
        key = "MODEL.TUBER.PROJ_IN_CHANNELS" if t.PROJ_IN_CHANNELS else "MODEL.TUBER.DIM_FEEDFORWARD"
        yield key, ("expected 2048, the ir-CSN channels input_proj / class_proj read (TubeR ties their input width "
                    "to DIM_FEEDFORWARD; set MODEL.TUBER.PROJ_IN_CHANNELS 2048 to change DIM_FEEDFORWARD alone)")


def validate_config(cfg):
    """Raise one ConfigError listing every impossible value of ``cfg`` (a merged config tree).

    Each line names the key, its value, what was expected and, when known, the
    file:line or the command line that set it.
    """
    origins = cfg.__dict__.get("_key_origins", {})
    problems = []
    for key, expected in list(_value_problems(cfg)) + list(_model_problems(cfg)) + list(_tuber_problems(cfg)):
        entry = f"{key} = {_get(cfg, key)!r}: {expected}"
        if key in origins:
            entry += " (set on the command line)" if origins[key] == "command line" else f" (set at {origins[key]})"
        if entry not in problems:
            problems.append(entry)
    if problems:
        count = f"{len(problems)} invalid config value" + ("s" if len(problems) > 1 else "")
        raise ConfigError(count + ":\n  " + "\n  ".join(problems))
