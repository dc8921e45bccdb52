"""What ``train_net.py`` and ``test_net.py`` run: build the parts from the config and join them.

Training resumes by itself: when ``OUTPUT_DIR`` holds a checkpoint (the
newest intact one, see ``Checkpointer.resume_latest``), the run continues from
it exactly (model, optimizer, scheduler, iteration, random states; the data
sampler is a function of the iteration), whatever ``MODEL.WEIGHT`` says.
Otherwise ``MODEL.WEIGHT`` is loaded: with ``--transfer`` its weights only;
without it, a stmixer training checkpoint with optimizer state also restores
optimizer, scheduler and iteration (a weights-only ``model_final.pth`` gives its
weights).
"""

import logging
import os

import torch

from ..checkpoint import load_weights, read_checkpoint
from ..data.build import build_data_loader, build_dataset, dataset_path, resolve_epoch_length, tube_groundtruth_path
from ..data.descriptions import describe
from ..evaluation.evaluator import AVAEvaluator
from ..evaluation.tube_evaluator import TubeEvaluator
from ..modeling import build_detector
from ..modeling.sync_bn import convert_sync_batchnorm
from ..solver import build_lr_scheduler, build_optimizer
from ..errors import UserError, UserFileNotFoundError
from ..utils import distributed as comm
from .checkpointer import Checkpointer, unwrap_model
from .events import MetricsFile
from .hooks import EvalHook, LRSchedulerHook, MetricsWriterHook, PeriodicCheckpointHook, ProgressBarHook
from .inference import predict
from .trainer import Trainer

logger = logging.getLogger(__name__)


class Evaluation:
    """Runs the detector over the test split and computes its metrics (all processes call ``run``).

    The evaluator is the dataset description's (``stmixer.data.descriptions``): AVA
    frame-mAP (``AVAEvaluator``) or, for datasets with tubes, frame-mAP and video-mAP
    (``TubeEvaluator``). The test dataset and the evaluator are built once and reused by
    every periodic evaluation; each process hands the evaluator its own shard with dataset
    indices, and the evaluator gathers them (only rank 0 reads the ground truth).
    """

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.device = device
        self.dataset = build_dataset(cfg, is_train=False, defer_pixels=True)
        self.dataset_name = cfg.DATA.DATASETS[0]
        self.kind = describe(cfg).evaluator
        if self.kind == "tubes":
            self.evaluator = TubeEvaluator(
                tube_groundtruth_path(cfg), split="test", fold=cfg.TUBES.SPLIT,
                output_folder=self.output_folder() if comm.is_main_process() else None,
                num_keyframes=len(self.dataset), detections_per_frame=cfg.TUBES.DETECTIONS_PER_FRAME,
            )
            if comm.is_main_process():
                self.evaluator.annotations()
            return
        annotations = "ANNOTATION_DIR"
        self.evaluator = AVAEvaluator(
            groundtruth=dataset_path(cfg, annotations, cfg.AVA.GROUNDTRUTH_FILE, "AVA.GROUNDTRUTH_FILE"),
            labelmap=dataset_path(cfg, annotations, cfg.AVA.LABEL_MAP_FILE, "AVA.LABEL_MAP_FILE"),
            exclusions=(
                dataset_path(cfg, annotations, cfg.AVA.EXCLUSION_FILE, "AVA.EXCLUSION_FILE")
                if cfg.AVA.EXCLUSION_FILE else None
            ),
            protocol=cfg.TEST.EVAL_PROTOCOL,
            output_folder=self.output_folder() if comm.is_main_process() else None,
            num_keyframes=len(self.dataset),
            strict=cfg.TEST.STRICT_EVAL,
            parts="ava_kinetics" if self.dataset_name == "ava_kinetics" else None,
        )
        if comm.is_main_process():
            self.evaluator.annotations()  # a malformed annotation file stops the run now, not after inference

    def output_folder(self):
        """``OUTPUT_DIR/inference/<dataset>``: detections CSV and metrics JSON."""
        return os.path.join(self.cfg.OUTPUT_DIR, "inference", self.dataset_name)

    def run(self, model):
        """Evaluate ``model`` (unwrapped detector); returns the metrics dict on rank 0, {} elsewhere."""
        cfg = self.cfg
        loader = build_data_loader(cfg, is_train=False, dataset=self.dataset)
        records = predict(model, loader, self.device, amp=cfg.SOLVER.AMP)
        evaluator = self.evaluator
        evaluator.reset()
        indices = sorted(records)
        evaluator.process(
            [records[i]["video_id"] for i in indices],
            [records[i]["timestamp"] for i in indices],
            [records[i]["boxes"] for i in indices],
            [records[i]["scores"] for i in indices],
            indices=indices,
        )
        del records
        metrics = evaluator.evaluate()
        if metrics and self.kind == "tubes":
            logger.info("%s frame-mAP@0.5: %.4f; video-mAP: %s; results in %s", self.dataset_name, metrics["frame_mAP"],
                        ", ".join(f"@{k} {v:.4f}" for k, v in metrics["video_mAP"].items()), self.output_folder())
        elif metrics:
            logger.info("%s frame-mAP (%s protocol): %.4f; results in %s",
                        self.dataset_name, metrics["protocol"], metrics["mAP"], self.output_folder())
        comm.synchronize()
        return metrics


def build_evaluation(cfg, device):
    """The test-split evaluation of the task: ``RecognitionEvaluation`` (video classification) when the
    dataset's evaluator is "recognition", else the detection ``Evaluation``."""
    if describe(cfg).evaluator == "recognition":
        from .recognition import RecognitionEvaluation

        return RecognitionEvaluation(cfg, device)
    return Evaluation(cfg, device)


def build_model(cfg, device):
    """The detector (or recognizer) of ``MODEL.META_ARCHITECTURE`` on ``device``; it must fit the dataset's
    task. On CUDA, ``CUDNN_BENCHMARK`` and ``TF32_MATMUL`` are applied and the backbone's channels_last_3d weights
    (``MODEL.BACKBONE.CHANNELS_LAST``) are set before any DDP wrapping."""
    model = build_detector(cfg)
    task = "recognition" if describe(cfg).evaluator == "recognition" else "detection"
    if getattr(model, "task", "detection") != task:
        raise UserError(
            f"MODEL.META_ARCHITECTURE = {cfg.MODEL.META_ARCHITECTURE!r} is a {getattr(model, 'task', 'detection')} "
            f"model but DATA.DATASETS = {list(cfg.DATA.DATASETS)} is a {task} dataset "
            "(recognition: \"Recognizer3D\" with kinetics400 / sthv1 / sthv2 / rawframes; see docs/recognition.md)"
        )
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.TF32_MATMUL)
        if getattr(model.backbone, "channels_last", False):
            model.backbone.use_channels_last()
    return model


def wrap_distributed(cfg, model, device):
    """``model`` as ``train_net.py`` trains it on several processes: its BatchNorm layers made SyncBatchNorm
    (``MODEL.BACKBONE.SYNC_BN``, CUDA), inside DistributedDataParallel; ``model`` itself on one process."""
    if comm.get_world_size() == 1:
        return model
    if cfg.MODEL.BACKBONE.SYNC_BN and device.type == "cuda":
        model = convert_sync_batchnorm(cfg, model)
    elif cfg.MODEL.BACKBONE.SYNC_BN:
        logger.info("MODEL.BACKBONE.SYNC_BN: SyncBatchNorm needs CUDA; on %s each process keeps its own BatchNorm",
                    device.type)
    model.train()  # re-applies MODEL.BACKBONE.FROZEN_BN to the converted layers
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _start_state(cfg, model, checkpointer, max_iter, transfer=False, no_head=False):
    """Resume from OUTPUT_DIR, or load MODEL.WEIGHT; returns the first iteration to run.

    Files left in OUTPUT_DIR by interrupted writes are removed first (main process).
    """
    if comm.is_main_process():
        checkpointer.remove_stale_temporaries()
    start = checkpointer.resume_latest(max_iter)
    if start is not None:
        if cfg.MODEL.WEIGHT:
            logger.info("OUTPUT_DIR holds a checkpoint: resuming from it, not from MODEL.WEIGHT %s", cfg.MODEL.WEIGHT)
        return start
    if not cfg.MODEL.WEIGHT:
        logger.info("No MODEL.WEIGHT: every weight starts from its initialization")
        return 0
    contents = read_checkpoint(cfg.MODEL.WEIGHT)
    resumable = contents.format == "stmixer" and "iteration" in contents.extras and "optimizer" in contents.extras
    if not transfer and resumable:
        logger.info("Continuing the training run of %s (use --transfer for its weights only)", cfg.MODEL.WEIGHT)
        return checkpointer.resume(contents, max_iter)
    load_weights(unwrap_model(model), contents, no_head=no_head)
    if not transfer and contents.extras.get("optimizer") is not None:
        logger.warning("%s (%s) holds optimizer state in another layout; only its weights were loaded",
                       cfg.MODEL.WEIGHT, contents.description)
    return 0


def train(cfg, *, transfer=False, no_head=False, seed=2, skip_val=False, skip_test=False, use_tensorboard=False,
          dist_info=None):
    """Train as configured; returns the unwrapped model (final weights).

    Args:
        cfg: the frozen config.
        transfer: take only the weights of MODEL.WEIGHT (iteration, optimizer, scheduler start fresh).
        no_head: leave the decoder and classifiers at their initialization when loading MODEL.WEIGHT.
        seed: seed of the training sampler (the process's random state is seeded by the caller).
        skip_val: no periodic evaluation.
        skip_test: no evaluation of the final model.
        use_tensorboard: also write TensorBoard scalars to OUTPUT_DIR/tb.
        dist_info: ``comm.DistInfo`` of this process (default: read from the process group).
    """
    local_rank = dist_info.local_rank if dist_info is not None else comm.get_local_rank()
    device = comm.resolve_device(cfg.MODEL.DEVICE, local_rank)
    cfg, train_dataset = resolve_epoch_length(cfg)
    if train_dataset is not None:
        logger.info("SOLVER.ITER_PER_EPOCH 0: an epoch is the training split, %d samples = %d iterations",
                    len(train_dataset), cfg.SOLVER.ITER_PER_EPOCH)
    check_micro_batches(cfg, comm.get_world_size())
    model = build_model(cfg, device)
    vit_layer_id = getattr(model.backbone, "layer_id", None)
    optimizer = build_optimizer(cfg, model, vit_layer_id=vit_layer_id)
    scheduler = build_lr_scheduler(cfg, optimizer)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=cfg.SOLVER.AMP == "fp16")
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, model, optimizer, scheduler, grad_scaler,
                                keep_last=cfg.SOLVER.CHECKPOINTS_KEPT)
    per_epoch = cfg.SOLVER.ITER_PER_EPOCH
    max_iter = per_epoch * cfg.SOLVER.MAX_EPOCH
    start_iter = _start_state(cfg, model, checkpointer, max_iter, transfer=transfer, no_head=no_head)
    model = wrap_distributed(cfg, model, device)
    checkpointer.model = model

    metrics_file = MetricsFile(cfg.OUTPUT_DIR) if comm.is_main_process() else None
    if metrics_file is not None:
        metrics_file.trim(start_iter)  # records of iterations the run will replay go
    evaluation = None if skip_val and skip_test else build_evaluation(cfg, device)
    if start_iter < max_iter:
        loader = build_data_loader(cfg, is_train=True, start_iter=start_iter, max_iter=max_iter, seed=seed,
                                   dataset=train_dataset, pin_memory=device.type == "cuda")
        trainer = Trainer(model, loader, optimizer, device, amp=cfg.SOLVER.AMP, grad_scaler=grad_scaler,
                          loss_reduction=cfg.MODEL.STM.LOSS_REDUCTION, clip_grad_norm=cfg.SOLVER.CLIP_GRAD_NORM,
                          nonfinite_loss=cfg.SOLVER.NONFINITE_LOSS, grad_accum_steps=cfg.SOLVER.GRAD_ACCUM_STEPS)
        trainer.register_hooks([
            LRSchedulerHook(scheduler),
            PeriodicCheckpointHook(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD * per_epoch),
            None if skip_val else EvalHook(
                cfg.SOLVER.EVAL_PERIOD * per_epoch, cfg.SOLVER.EVAL_AFTER * per_epoch,
                lambda: _scalar_metrics(evaluation.run(unwrap_model(model))),
            ),
            MetricsWriterHook(cfg.OUTPUT_DIR, cfg.SOLVER.LOG_PERIOD, use_tensorboard, device),
            ProgressBarHook(),
        ])
        trainer.train(start_iter, max_iter)
    else:
        logger.info("Training already finished (iteration %d of %d)", start_iter, max_iter)
    if not skip_test:
        results = _scalar_metrics(evaluation.run(unwrap_model(model)))
        if metrics_file is not None and results:
            metrics_file.add_evaluation(max_iter, {f"eval/{k}": v for k, v in results.items()})
    return unwrap_model(model)


def check_micro_batches(cfg, world_size):
    """``SOLVER.VIDEOS_PER_BATCH`` must split into processes x ``SOLVER.GRAD_ACCUM_STEPS`` equal micro-batches."""
    total, accum = cfg.SOLVER.VIDEOS_PER_BATCH, cfg.SOLVER.GRAD_ACCUM_STEPS
    if total % (world_size * accum):
        raise UserError(
            f"SOLVER.VIDEOS_PER_BATCH = {total} must be a multiple of the number of processes ({world_size}) times "
            f"SOLVER.GRAD_ACCUM_STEPS = {accum}: each process runs VIDEOS_PER_BATCH / (processes x GRAD_ACCUM_STEPS) "
            "clips per micro-batch"
        )
    if accum > 1:
        logger.info("SOLVER.GRAD_ACCUM_STEPS %d: micro-batches of %d clips per process, one optimizer step per %d",
                    accum, total // (world_size * accum), accum)


def _scalar_metrics(metrics):
    """The numbers logged per evaluation: mAP (AVA frame-mAP; tube datasets: frame-mAP@0.5) and the video-mAPs;
    recognition: the top-k and mean-class accuracies."""
    if not metrics:
        return {}
    if "mAP" not in metrics:
        return {k: v for k, v in metrics.items() if k.endswith("_acc") or k == "mean_class_accuracy"}
    scalars = {"mAP": metrics["mAP"]}
    for threshold, value in metrics.get("video_mAP", {}).items():
        scalars[f"video_mAP@{threshold}"] = value
    return scalars


def test(cfg, *, dist_info=None):
    """Evaluate ``MODEL.WEIGHT`` (or the last checkpoint in OUTPUT_DIR); returns the metrics on rank 0."""
    local_rank = dist_info.local_rank if dist_info is not None else comm.get_local_rank()
    device = comm.resolve_device(cfg.MODEL.DEVICE, local_rank)
    model = build_model(cfg, device)
    weight = cfg.MODEL.WEIGHT or Checkpointer(cfg.OUTPUT_DIR, model).last_checkpoint()
    if not weight:
        raise UserFileNotFoundError(
            "test_net.py needs weights: give MODEL.WEIGHT path/to/checkpoint.pth "
            f"(OUTPUT_DIR {cfg.OUTPUT_DIR} holds no last_checkpoint either)"
        )
    load_weights(model, weight)
    return build_evaluation(cfg, device).run(model)
