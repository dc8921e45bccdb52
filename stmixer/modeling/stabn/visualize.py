"""Attention maps of a recognizer as arrays (.npz) and overlaid images (.png), without OpenCV.

What the official ``tools/test_recognizer.py -s`` writes per frame (a jet-coloured spatial attention
resized to the frame and blended 0.6 frame + 0.4 map, and a strip coloured by the temporal
attention), here one image per view: the clip's frames side by side, each with its temporal-attention
strip above it (value printed as colour; the strip's colour scale is the raw sigmoid value in [0, 1],
not the official per-clip min-max), and the arrays in a ``.npz`` beside it.

``AttentionWriter`` is what ``TEST.SAVE_ATTENTION`` (test_net.py) and ``demo.py --attention`` use.
"""

import os
import re
import struct
import zlib

import numpy as np
import torch
import torch.nn.functional as F


def jet(values):
    """The jet colormap: float ``[...]`` in [0, 1] -> uint8 RGB ``[..., 3]`` (blue - cyan - yellow - red)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peaks
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def write_png(path, image):
    """Write uint8 ``[H, W, 3]`` RGB as an 8-bit PNG (zlib; no image library needed)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w, c = image.shape
    if c != 3:
        raise ValueError(f"write_png expects [H, W, 3] RGB, got shape {image.shape}")
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), image.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def denormalize(video, mean, std, bgr=False):
    """Model input ``[3, T, H, W]`` (normalized, RGB or BGR) -> uint8 RGB frames ``[T, H, W, 3]``."""
    v = video.detach().float().cpu()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
    v = (v * std_t + mean_t).clamp(0, 1) * 255.0
    if bgr:
        v = v.flip(0)
    return v.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def attention_panel(frames, spatial, temporal, alpha=0.4):
    """One image of a clip and its attention.

    Args:
        frames: uint8 RGB ``[T, H, W, 3]``.
        spatial: ``[T, h, w]`` in [0, 1] (the res4 grid), upsampled bilinearly to H x W.
        temporal: ``[T]`` in [0, 1].
        alpha: weight of the colour map in the blend (official: 0.4).

    Returns:
        uint8 ``[H + H // 8, T * W, 3]``: per frame a strip of ``jet(temporal[t])`` above the frame blended
        with ``jet(spatial[t])``.
    """
    t, h, w, _ = frames.shape
    up = F.interpolate(torch.as_tensor(np.asarray(spatial), dtype=torch.float32)[None], size=(h, w),
                       mode="bilinear", align_corners=False)[0].numpy()
    blended = (1.0 - alpha) * frames.astype(np.float32) + alpha * jet(up).astype(np.float32)
    strip = np.broadcast_to(jet(np.asarray(temporal, dtype=np.float64))[:, None, None, :], (t, max(h // 8, 1), w, 3))
    tiles = np.concatenate([strip, np.round(blended).astype(np.uint8)], axis=1)   # [T, H', W, 3]
    return np.ascontiguousarray(tiles.transpose(1, 0, 2, 3).reshape(tiles.shape[1], t * w, 3))


def safe_name(text):
    """A file-name stem of ``text`` (a video folder such as ``abseiling/xyz_000010``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "video"


class AttentionWriter:
    """Writes ``<out_dir>/<name>.npz`` (``spatial_attention`` ``[T, h, w]``, ``temporal_attention`` ``[T]``,
    ``scores`` ``[K]`` when given, float32) and ``<name>.png`` (``attention_panel``) per view.

    Args:
        out_dir: created if missing.
        mean, std: DATA.MEAN / DATA.STD (to turn the model input back into pixels).
        bgr: the model input is BGR (DATA.REVERSE_INPUT_CHANNEL).
    """

    def __init__(self, out_dir, mean, std, bgr=False):
        self.out_dir = str(out_dir)
        self.mean, self.std, self.bgr = list(mean), list(std), bool(bgr)
        os.makedirs(self.out_dir, exist_ok=True)
        self.written = 0

    def write(self, name, video, spatial, temporal, scores=None):
        """One view: ``video`` ``[3, T, H, W]`` (normalized model input), ``spatial`` ``[1, T, h, w]``,
        ``temporal`` ``[1, T, 1, 1]`` (a head's "spatial_attention" / "temporal_attention" of one clip)."""
        s = spatial.detach().float().cpu().reshape(spatial.shape[-3:]).numpy()
        t = temporal.detach().float().cpu().reshape(-1).numpy()
        arrays = {"spatial_attention": s, "temporal_attention": t}
        if scores is not None:
            arrays["scores"] = scores.detach().float().cpu().numpy()
        stem = os.path.join(self.out_dir, safe_name(name))
        np.savez_compressed(stem + ".npz", **arrays)
        frames = denormalize(video, self.mean, self.std, self.bgr)
        write_png(stem + ".png", attention_panel(frames, s, t))
        self.written += 1


def capture_head_outputs(model):
    """Register a forward hook on ``model.head`` keeping its latest output; returns (store dict, handle).
    ``store["outputs"]`` is the head's dict of the last forward (None until one ran)."""
    store = {"outputs": None}
    handle = model.head.register_forward_hook(lambda m, i, o: store.__setitem__("outputs", o))
    return store, handle


def has_attention(outputs):
    """True when a head's outputs carry ST-ABN-style attention maps."""
    return isinstance(outputs, dict) and "spatial_attention" in outputs and "temporal_attention" in outputs
