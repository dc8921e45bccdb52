"""The recognition task in the engine: inference over the test views and its evaluation.

``runner.Evaluation`` hands over to ``RecognitionEvaluation`` when the dataset's evaluator is
"recognition" (``stmixer.data.descriptions``); training itself runs through the same
``Trainer`` as detection (the recognition batch has the detectors' layout: "boxes" empty,
"labels" the class of each clip).
"""

import logging
import os
import time

import torch

from ..data.build import build_data_loader, build_dataset
from ..errors import UserError
from ..evaluation.recognition import RecognitionEvaluator
from ..utils import distributed as comm
from .inference import model_outputs

logger = logging.getLogger(__name__)


def predict_scores(model, data_loader, device, amp="off", progress=True, on_batch=None):
    """Run the recognizer in eval mode over this process's shard of test views.

    Args:
        model: the recognizer (unwrapped); in eval mode ``model(slow, fast, whwh)`` -> ``[B, K]`` probabilities.
        data_loader: test loader yielding batch dicts with "indices".
        on_batch: optional ``on_batch(batch, scores)`` called after each forward (attention maps).

    Returns:
        (int64 tensor ``[n]`` dataset indices, float32 tensor ``[n, K]`` scores), in loader order
        (sampler padding included; the evaluator drops it by index).
    """
    indices, scores = [], []
    start = time.perf_counter()
    for batch, out in model_outputs(model, data_loader, device, amp, progress):
        indices.append(batch["indices"].cpu())
        scores.append(out.float().cpu())
        if on_batch is not None:
            on_batch(batch, out)
    logger.info("Inference over %d views took %.1f s on this process", sum(len(i) for i in indices),
                time.perf_counter() - start)
    if not indices:
        return torch.zeros(0, dtype=torch.int64), None
    return torch.cat(indices), torch.cat(scores)


class RecognitionEvaluation:
    """Runs a recognizer over the test views and computes top-1 / top-5 / mean-class accuracy
    (all processes call ``run``; the metrics come back on rank 0). Results go to
    ``OUTPUT_DIR/inference/<dataset>/`` (``recognition_metrics.json``, ``video_scores.npz``)."""

    kind = "recognition"

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.device = device
        self.dataset = build_dataset(cfg, is_train=False, defer_pixels=True)
        self.dataset_name = cfg.DATA.DATASETS[0]
        folder = os.path.join(cfg.OUTPUT_DIR, "inference", self.dataset_name)
        self.evaluator = RecognitionEvaluator(self.dataset.labels(), self.dataset.views,
                                              output_folder=folder if comm.is_main_process() else None)

    def run(self, model):
        loader = build_data_loader(self.cfg, is_train=False, dataset=self.dataset)
        on_batch, handle = attention_saver(self.cfg, self.dataset, model)
        try:
            indices, scores = predict_scores(model, loader, self.device, amp=self.cfg.SOLVER.AMP, on_batch=on_batch)
        finally:
            if handle is not None:
                handle.remove()
        self.evaluator.reset()
        if scores is not None:
            self.evaluator.process(indices, scores)
        metrics = self.evaluator.evaluate()
        if metrics:
            logger.info("%s: top-1 %.4f, top-5 %.4f, mean-class accuracy %.4f over %d videos x %d views; results in %s",
                        self.dataset_name, metrics["top1_acc"], metrics["top5_acc"], metrics["mean_class_accuracy"],
                        metrics["num_videos"], metrics["views"], self.evaluator.output_folder)
        comm.synchronize()
        return metrics


def attention_saver(cfg, dataset, model):
    """``(on_batch, hook handle)`` writing every test view's attention maps to ``TEST.SAVE_ATTENTION``
    (under ``OUTPUT_DIR`` when relative) as ``<video>_clip<c>_crop<k>.npz`` / ``.png``
    (``stmixer.modeling.stabn.visualize.AttentionWriter``); ``(None, None)`` when the key is empty.
    ``dataset``: the test RawFrameDataset (names the views); remove the handle when done."""
    folder = cfg.TEST.SAVE_ATTENTION
    if not folder:
        return None, None
    from ..modeling.stabn.visualize import AttentionWriter, capture_head_outputs, has_attention

    if not hasattr(model, "head"):
        raise UserError(f"TEST.SAVE_ATTENTION is set but MODEL.META_ARCHITECTURE = "
                        f"{cfg.MODEL.META_ARCHITECTURE!r} has no recognition head")
    writer = AttentionWriter(os.path.join(cfg.OUTPUT_DIR, folder), cfg.DATA.MEAN, cfg.DATA.STD,
                             bgr=cfg.DATA.REVERSE_INPUT_CHANNEL)
    store, handle = capture_head_outputs(model)

    def on_batch(batch, scores):
        outputs = store["outputs"]
        if not has_attention(outputs):
            raise UserError(f"TEST.SAVE_ATTENTION is set but MODEL.RECOGNIZER.HEAD = "
                            f"{cfg.MODEL.RECOGNIZER.HEAD!r} gives no attention maps (use 'stabn')")
        for j, index in enumerate(batch["indices"].tolist()):
            video, clip, crop = dataset.locate(index)
            name = f"{dataset.videos[video].frame_dir}_clip{clip}_crop{crop}"
            writer.write(name, batch["videos"][0][j], outputs["spatial_attention"][j],
                         outputs["temporal_attention"][j], scores[j])

    logger.info("Writing attention maps of every test view to %s", writer.out_dir)
    return on_batch, handle
