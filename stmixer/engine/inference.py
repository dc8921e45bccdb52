"""Distributed inference: every process runs its shard and keeps its predictions by dataset index.

Test samplers may pad their shards (the same clip on two processes) to equal
lengths; the evaluator (``AVAEvaluator.evaluate``) gathers the shards on rank 0,
keeps one copy of each dataset index and checks that no clip is missing.
"""

import logging
import time

import numpy as np
import torch

from ..utils import distributed as comm
from .trainer import autocast_context, detector_inputs, detector_kwargs, move_batch

logger = logging.getLogger(__name__)


def model_outputs(model, data_loader, device, amp="off", progress=True):
    """Yield ``(batch on device, model outputs)`` for every batch of this process's shard: the model in eval
    mode under ``torch.no_grad`` and ``amp``, with a tqdm bar and ETA on rank 0 when ``progress``; the
    detectors' and the recognizers' inference loops (``predict``, ``recognition.predict_scores``)."""
    model.eval()
    iterator = data_loader
    if progress and comm.is_main_process():
        from tqdm import tqdm

        iterator = tqdm(data_loader, desc="inference", unit="batch", dynamic_ncols=True)
    with torch.no_grad():
        for batch in iterator:
            batch = move_batch(batch, device)
            with autocast_context(device, amp):
                outputs = model(*detector_inputs(batch), **detector_kwargs(batch))
            yield batch, outputs


def predict(model, data_loader, device, amp="off", progress=True):
    """Run the detector in eval mode over this process's shard.

    Args:
        model: the detector (unwrapped); in eval mode ``model(slow, fast, whwh)`` returns,
            per clip, a dict with "scores" ``[n, A]`` action probabilities and "boxes" ``[n, 4]``
            normalized x1,y1,x2,y2.
        data_loader: test loader yielding batch dicts with "indices" and "metadata".
        device: model device.
        amp: "off" | "bf16" | "fp16".
        progress: show a tqdm bar with ETA on rank 0.

    Returns:
        dict dataset index -> {"video_id", "timestamp", "boxes" float32 numpy [n, 4], "scores" float32 numpy [n, A]}.
    """
    records = {}
    nonfinite = []  # "video_id@timestamp" of the clips whose boxes or scores hold NaN / inf
    start = time.perf_counter()
    for batch, outputs in model_outputs(model, data_loader, device, amp, progress):
        for index, meta, detections in zip(batch["indices"].tolist(), batch["metadata"], outputs):
            record = {
                "video_id": meta["video_id"],
                "timestamp": int(meta["timestamp"]),
                "boxes": detections["boxes"].float().cpu().numpy(),
                "scores": detections["scores"].float().cpu().numpy(),
            }
            if not (np.isfinite(record["boxes"]).all() and np.isfinite(record["scores"]).all()):
                nonfinite.append(f"{record['video_id']}@{record['timestamp']}")
            records[index] = record
    logger.info("Inference over %d clips took %.1f s on this process", len(records), time.perf_counter() - start)
    if nonfinite:
        logger.warning("%d of %d clips have non-finite (NaN / inf) boxes or scores, first %s: the model's weights "
                       "or inputs are broken (an untrained backbone's BatchNorm statistics, a diverged run, "
                       "MODEL.WEIGHT not loaded?); their detections are kept as they are",
                       len(nonfinite), len(records), nonfinite[0])
    return records
