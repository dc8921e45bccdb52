"""Readable frame-mAP results: the JSON dict, a per-class table, a per-class AP bar chart."""

import math
import os

from ..utils.io import atomic_open


def metrics_dict(result, labelmap, counts=False):
    """The result as a JSON-ready dict.

    Args:
        result: FrameMAP.
        labelmap: LabelMap (class names).
        counts: also include ``num_gt`` and ``num_detections`` per class name.

    Returns:
        ``{"mAP": float, "per_class": {name: AP or None}, "protocol": str}`` (+ counts).
    """
    out = {
        "mAP": result.mean_ap,
        "per_class": {labelmap.names[c]: result.ap[c] for c in labelmap.ids},
        "protocol": result.protocol,
    }
    if counts:
        out["num_gt"] = {labelmap.names[c]: result.num_gt[c] for c in labelmap.ids}
        out["num_detections"] = {labelmap.names[c]: result.num_detections[c] for c in labelmap.ids}
    return out


def _ranked(result, labelmap):
    """Class ids by AP, best first; classes without ground truth last (label-map order)."""
    with_gt = [c for c in labelmap.ids if result.ap[c] is not None]
    without = [c for c in labelmap.ids if result.ap[c] is None]
    return sorted(with_gt, key=lambda c: -result.ap[c]) + without


def format_table(result, labelmap):
    """Text table of every class (rank, id, name, AP, #GT, #detections) sorted by AP, with the mAP."""
    ids = _ranked(result, labelmap)
    width = max([len("class")] + [len(labelmap.names[c]) for c in ids])
    lines = [f"{'rank':>4}  {'id':>3}  {'class':<{width}}  {'AP':>7}  {'#GT':>7}  {'#detections':>11}"]
    for rank, c in enumerate(ids, start=1):
        ap = "-" if result.ap[c] is None else f"{result.ap[c]:.4f}"
        lines.append(
            f"{rank:>4}  {c:>3}  {labelmap.names[c]:<{width}}  {ap:>7}  {result.num_gt[c]:>7}  {result.num_detections[c]:>11}"
        )
    evaluated = sum(1 for c in ids if result.ap[c] is not None)
    counted = "classes with ground truth and a detection" if result.protocol == "mmaction2" else "classes with ground truth"
    lines.append(f"frame-mAP@0.5IoU ({result.protocol} protocol, {evaluated} {counted}): {result.mean_ap:.6f}")
    return "\n".join(lines)


def plot_ap(result, labelmap, path):
    """Save a horizontal bar chart of per-class AP (sorted, mAP marked) to ``path`` (format from the suffix).

    Raises:
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib (or pip install 'stmixer[plot]')") from e
    ids = [c for c in _ranked(result, labelmap) if result.ap[c] is not None][::-1]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(ids) + 1.2)))
    ax.barh(range(len(ids)), [result.ap[c] for c in ids], color="#4878a8")
    ax.set_yticks(range(len(ids)))
    ax.set_yticklabels([labelmap.names[c] for c in ids], fontsize=7)
    ax.set_ylim(-0.6, len(ids) - 0.4)
    if not math.isnan(result.mean_ap):
        ax.axvline(result.mean_ap, color="#c44e52", linestyle="--", label=f"mAP {result.mean_ap:.4f}")
        ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP@0.5IoU")
    ax.set_title(f"AVA frame AP per class ({result.protocol} protocol)")
    fig.tight_layout()
    suffix = os.path.splitext(str(path))[1].lstrip(".").lower() or "png"
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=suffix, dpi=120)
    plt.close(fig)
