"""Batching of clip samples: zero padding to a common size and the batch dict the engine consumes."""

import math
import mmap
import warnings

import torch


def padded_size(sizes, size_divisibility):
    """Common (H, W) of a batch: the largest H and W, each rounded up to a multiple of ``size_divisibility`` (0: no rounding)."""
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 0:
        height = int(math.ceil(height / size_divisibility) * size_divisibility)
        width = int(math.ceil(width / size_divisibility) * size_divisibility)
    return height, width


# Batches at least this large (bytes) are backed by transparent huge pages where the system allows it.
_HUGE_PAGE_MIN_BYTES = 8 << 20


def _huge_page_tensor(shape, dtype):
    """An uninitialized tensor in anonymous memory advised for 2 MB pages (Linux), or None.

    Filling a fresh batch of 4 KB pages costs one page fault per 4 KB (about half the time of
    padding a 32-frame batch on some virtual machines); huge pages make that 512 times fewer.
    """
    itemsize = torch.empty(0, dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer keeps the mmap alive as long as the tensor
        return torch.frombuffer(buffer, dtype=dtype).view(shape)


def _new_tensor(shape, dtype):
    """An uninitialized tensor for a batch: in a DataLoader worker it lives in shared memory
    already (handing it to the main process costs no copy); in the main process it uses huge
    pages when it is large."""
    if torch.utils.data.get_worker_info() is not None:
        numel = math.prod(shape)
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)
    tensor = _huge_page_tensor(shape, dtype)
    return tensor if tensor is not None else torch.empty(shape, dtype=dtype)


def pad_clips(clips, size_divisibility):
    """Stack clips of different spatial sizes into one zero-padded tensor.

    Args:
        clips: list of B float32 ``[C, T, H_i, W_i]`` tensors (same C and T), or of ClipPixels
            (written straight into the batch).
        size_divisibility: padded H and W are rounded up to a multiple of it (0: none).

    Returns:
        float32 ``[B, C, T, H_pad, W_pad]``; clip i fills the top-left ``H_i x W_i`` corner
        and the rest (bottom and right) is 0.
    """
    channels, frames = clips[0].shape[:2]
    for clip in clips:
        if tuple(clip.shape[:2]) != (channels, frames):
            raise ValueError(
                f"clips of one batch must share channels and frames; got {tuple(clips[0].shape)} and {tuple(clip.shape)}"
            )
    height, width = padded_size([tuple(c.shape[-2:]) for c in clips], size_divisibility)
    out = _new_tensor((len(clips), channels, frames, height, width), torch.float32)
    for b, clip in enumerate(clips):
        h, w = clip.shape[-2:]
        if isinstance(clip, torch.Tensor):
            out[b, :, :, :h, :w].copy_(clip)
        else:
            clip.to_tensor(out=out[b, :, :, :h, :w])
        out[b, :, :, h:, :].zero_()
        out[b, :, :, :h, w:].zero_()
    return out


class BatchCollator:
    """Turns a list of AvaDataset samples into the batch dict.

    Args:
        size_divisibility: ``DATALOADER.SIZE_DIVISIBILITY``.

    The batch:
        "videos": list (one per pathway) of float32 ``[B, 3, T_p, H_pad, W_pad]``,
        "whwh": float32 ``[B, 4]`` (w, h, w, h) of each unpadded clip,
        "boxes": list of B float32 ``[n_i, 4]`` absolute x1, y1, x2, y2 pixels of the resized clip,
        "labels": list of B float32 ``[n_i, A]`` multi-hot,
        "metadata": list of B dicts (video_id, timestamp, orig_size),
        "indices": int64 ``[B]`` dataset indices,
    and when the samples carry proposals (``PROPOSALS.*_FILE`` set):
        "proposals": list of B float32 ``[m_i, 4]`` absolute x1, y1, x2, y2 pixels (the frame of "boxes"),
        "proposal_scores": list of B float32 ``[m_i]``.
    """

    def __init__(self, size_divisibility):
        self.size_divisibility = int(size_divisibility)

    def __call__(self, samples):
        num_pathways = len(samples[0]["videos"])
        batch = {
            "videos": [pad_clips([s["videos"][p] for s in samples], self.size_divisibility) for p in range(num_pathways)],
            "whwh": torch.stack([s["whwh"] for s in samples]),
            "boxes": [s["boxes"] for s in samples],
            "labels": [s["labels"] for s in samples],
            "metadata": [s["metadata"] for s in samples],
            "indices": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
        }
        if "proposals" in samples[0]:
            batch["proposals"] = [s["proposals"] for s in samples]
            batch["proposal_scores"] = [s["proposal_scores"] for s in samples]
        return batch
