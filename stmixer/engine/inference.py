"""Distributed inference: every process runs its shard, rank 0 gets every clip exactly once.

Test samplers may pad their shards (the same clip on two processes) to equal
lengths; predictions carry their dataset index, so rank 0 keeps one copy of
each and checks that no clip is missing before evaluating.
"""

import logging
import time

import torch

from ..utils import distributed as comm
from .trainer import autocast_context, detector_inputs, move_batch

logger = logging.getLogger(__name__)


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
    model.eval()
    records = {}
    iterator = data_loader
    if progress and comm.is_main_process():
        from tqdm import tqdm

        iterator = tqdm(data_loader, desc="inference", unit="batch", dynamic_ncols=True)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in iterator:
            batch = move_batch(batch, device)
            with autocast_context(device, amp):
                outputs = model(*detector_inputs(batch))
            for index, meta, detections in zip(batch["indices"].tolist(), batch["metadata"], outputs):
                records[index] = {
                    "video_id": meta["video_id"],
                    "timestamp": int(meta["timestamp"]),
                    "boxes": detections["boxes"].float().cpu().numpy(),
                    "scores": detections["scores"].float().cpu().numpy(),
                }
    logger.info("Inference over %d clips took %.1f s on this process", len(records), time.perf_counter() - start)
    return records


def gather_predictions(records, num_clips):
    """Collect every process's predictions on rank 0, one per dataset index.

    Args:
        records: this process's ``predict`` output.
        num_clips: dataset length; every index in ``range(num_clips)`` must be present.

    Returns:
        On rank 0 the list of records ordered by dataset index; ``None`` elsewhere.

    Raises:
        RuntimeError on rank 0 if a clip is missing (a sharding bug would otherwise lower the mAP silently).
    """
    shards = comm.all_gather_object(records)
    if not comm.is_main_process():
        return None
    merged = {}
    duplicates = 0
    for shard in shards:
        for index, record in shard.items():
            if index in merged:
                duplicates += 1
                continue
            merged[index] = record
    missing = sorted(set(range(num_clips)) - set(merged))
    if missing:
        raise RuntimeError(
            f"inference lost {len(missing)} of {num_clips} clips (first missing dataset indices: {missing[:10]})"
        )
    extra = sorted(set(merged) - set(range(num_clips)))
    if extra:
        raise RuntimeError(f"inference returned unknown dataset indices {extra[:10]} (dataset has {num_clips} clips)")
    if duplicates:
        logger.info("Dropped %d duplicate predictions from sampler padding", duplicates)
    return [merged[i] for i in range(num_clips)]
