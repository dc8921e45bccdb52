"""Box conversions and overlaps on plain tensors.

Conventions:
    xyxy: ``(x1, y1, x2, y2)`` absolute pixels of the resized, unpadded clip
        (inside the model), or normalized to [0, 1] at the dataset/evaluation
        boundary (``clip_and_normalize`` makes the latter from the former).
    xyzr: the decoder's proposal form ``(x, y, z, r)``: centre ``(x, y)`` in
        pixels, scale ``z = log2(sqrt(w * h))`` and aspect ``r = log2(h / w)``.

Every function works on any leading shape ``[..., 4]`` and broadcasts, so a
pairwise matrix is ``f(a[:, None], b[None])`` and a paired one ``f(a, b)``.
The formulas keep the official operation order, so float64 results agree
with the official code to the last bits.
"""

import torch


def xyzr_to_wh(xyzr):
    """Width and height ``[..., 2]`` (pixels) of proposals ``[..., 4]`` in xyzr form.

    ``w = 2^z * 2^(-r/2)``, ``h = 2^z * 2^(r/2)``.
    """
    scale = 2.0 ** xyzr[..., 2:3]
    ratio = 2.0 ** torch.cat([xyzr[..., 3:4] * -0.5, xyzr[..., 3:4] * 0.5], dim=-1)
    return scale * ratio


def xyzr_to_xyxy(xyzr):
    """Proposals ``[..., 4]`` (x, y, z, r) -> boxes ``[..., 4]`` absolute xyxy pixels."""
    wh = xyzr_to_wh(xyzr)
    xy = xyzr[..., 0:2]
    return torch.cat([xy - wh * 0.5, xy + wh * 0.5], dim=-1)


def xyxy_to_xyzr(boxes):
    """Boxes ``[..., 4]`` absolute xyxy pixels (positive size) -> proposals ``[..., 4]`` (x, y, z, r)."""
    xy = 0.5 * (boxes[..., 0:2] + boxes[..., 2:4])
    wh = boxes[..., 2:4] - boxes[..., 0:2]
    z = wh.prod(-1, keepdim=True).sqrt().log2()
    r = (wh[..., 1:2] / wh[..., 0:1]).log2()
    return torch.cat([xy, z, r], dim=-1)


def box_area(boxes):
    """Area ``[...]`` of xyxy boxes ``[..., 4]`` (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection(boxes1, boxes2):
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iof(boxes1, boxes2, eps=1e-6):
    """Intersection over the area of ``boxes1`` (the "foreground"), broadcasting ``[..., 4]`` -> ``[...]``.

    The denominator is ``max(area(boxes1), eps)``; boxes are xyxy in any common unit.
    """
    return _intersection(boxes1, boxes2) / box_area(boxes1).clamp(min=eps)


def generalized_box_iou(boxes1, boxes2):
    """Generalized IoU (Rezatofighi et al. 2019), broadcasting xyxy ``[..., 4]`` pairs -> ``[...]`` in [-1, 1].

    No epsilon: boxes must have positive area where their union would
    otherwise be 0 (predicted boxes always do; see ``check_boxes``).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter = _intersection(boxes1, boxes2)
    union = area1 + area2 - inter
    iou = inter / union
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def clip_and_normalize(boxes, whwh):
    """Clip absolute xyxy boxes ``[n, 4]`` into the clip and normalize them to [0, 1].

    Args:
        boxes: ``[n, 4]`` absolute xyxy pixels.
        whwh: ``[4]`` the clip's unpadded size ``(w, h, w, h)`` in pixels.

    x is clamped into ``[0, w - 1]`` and y into ``[0, h - 1]`` (the official
    ``- 1``), then x is divided by w and y by h. Returns a new ``[n, 4]`` tensor.
    """
    return torch.minimum(boxes.clamp(min=0), whwh - 1) / whwh


def find_degenerate_boxes(boxes):
    """Indices ``[k]`` of xyxy boxes ``[n, 4]`` that are not finite or have x2 < x1 or y2 < y1."""
    bad = ~torch.isfinite(boxes).all(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return torch.nonzero(bad).flatten()
