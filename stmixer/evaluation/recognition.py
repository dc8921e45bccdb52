"""Video classification metrics: top-k accuracy and mean-class accuracy over videos, and the
engine's evaluator (reset / process / evaluate) that averages every video's views first.

The metric functions equal mmaction2's ``top_k_accuracy`` and ``mean_class_accuracy``
(``mmaction.evaluation.functional.accuracy``) numerically, including mmaction2's definition of
mean-class accuracy: the mean, over every class that occurs among the labels *or the
predictions*, of the class's recall (a class that is only predicted counts as 0).
"""

import json
import logging
import os

import numpy as np

from ..utils.io import atomic_open

logger = logging.getLogger("stmixer.evaluation")

METRICS_FILE = "recognition_metrics.json"
SCORES_FILE = "video_scores.npz"


def top_k_accuracy(scores, labels, topk=(1, 5)):
    """Share of videos whose label is among the ``k`` highest scores, for each ``k`` in ``topk``.

    Args:
        scores: float ``[N, K]``.
        labels: int ``[N]`` 0-based classes.

    Returns:
        list of floats, one per k (mmaction2: ``np.argsort`` order for ties).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)[:, np.newaxis]
    out = []
    for k in topk:
        best = np.argsort(scores, axis=1)[:, -k:][:, ::-1]
        out.append(float(np.logical_or.reduce(best == labels, axis=1).sum() / best.shape[0]))
    return out


def mean_class_accuracy(scores, labels):
    """Mean per-class recall of the top-1 predictions (mmaction2's definition, see the module docstring).

    Args:
        scores: float ``[N, K]``; labels: int ``[N]``.
    """
    pred = np.argmax(np.asarray(scores), axis=1).astype(np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(np.concatenate([pred, labels]))
    recalls = []
    for c in classes:
        mask = labels == c
        count = int(mask.sum())
        recalls.append(float((pred[mask] == c).sum()) / count if count else 0.0)
    return float(np.mean(recalls))


def video_scores(view_scores, views):
    """Average the views of each video: ``[N * V, K]`` (video-major) -> float64 ``[N, K]``."""
    view_scores = np.asarray(view_scores, dtype=np.float64)
    return view_scores.reshape(-1, views, view_scores.shape[-1]).mean(axis=1)


class RecognitionEvaluator:
    """Accumulates per-view class scores and computes the accuracy metrics over videos.

    Every process ``process``-es the views of its shard with their dataset indices
    (``index = video * views + view``); ``evaluate`` gathers them once onto rank 0, keeps one
    copy of each index (sampler padding repeats items across processes), checks that every
    index ``0 .. num_videos * views - 1`` is present, averages each video's views and returns
    the metrics there (``{}`` on other ranks). The result depends only on the indices, not on
    the number of processes.

    Args:
        labels: int ``[num_videos]`` classes of the test videos (dataset order).
        views: views per video (clips x crops).
        topk: the k of the top-k accuracies.
        output_folder: rank 0 writes ``recognition_metrics.json`` and ``video_scores.npz``
            (per-video averaged scores and labels) there when given.
    """

    def __init__(self, labels, views, topk=(1, 5), output_folder=None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.views = int(views)
        self.topk = tuple(topk)
        self.output_folder = output_folder
        self.reset()

    @property
    def num_items(self):
        return len(self.labels) * self.views

    def reset(self):
        """Forget every processed view."""
        self._indices, self._scores = [], []

    def process(self, indices, scores):
        """Add the scores of a batch of views.

        Args:
            indices: int sequence ``[n]`` of dataset item indices.
            scores: float ``[n, K]`` (array or tensor) class probabilities of those items.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if hasattr(scores, "detach"):
            scores = scores.detach().float().cpu().numpy()
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != indices.shape[0]:
            raise ValueError(f"process() got {indices.shape[0]} indices and scores of shape {scores.shape}: "
                             "expected scores [n, K], one row per index")
        self._indices.append(indices)
        self._scores.append(scores)

    def _local(self):
        if not self._indices:
            return np.zeros(0, dtype=np.int64), None
        return np.concatenate(self._indices), np.concatenate(self._scores)

    def gathered_scores(self):
        """Every process's views on rank 0 as float32 ``[num_items, K]`` in index order; None elsewhere."""
        from ..utils import distributed

        parts = distributed.all_gather_object(self._local())
        if distributed.get_rank() != 0:
            return None
        width = {s.shape[1] for _, s in parts if s is not None}
        if len(width) != 1:
            raise RuntimeError(f"the processes' scores have {sorted(width) or 'no'} class counts; expected one")
        out = np.zeros((self.num_items, width.pop()), dtype=np.float32)
        seen = np.zeros(self.num_items, dtype=bool)
        for indices, scores in parts:
            if scores is None:
                continue
            bad = indices[(indices < 0) | (indices >= self.num_items)]
            if bad.size:
                raise RuntimeError(
                    f"unknown dataset indices {bad[:10].tolist()} (the test set has {self.num_items} views)")
            fresh = ~seen[indices]
            # the first copy of an index wins (later ones are sampler padding of the same item)
            first = np.unique(indices[fresh], return_index=True)[1]
            keep = np.flatnonzero(fresh)[first]
            out[indices[keep]] = scores[keep]
            seen[indices[keep]] = True
        missing = np.flatnonzero(~seen)
        if missing.size:
            raise RuntimeError(f"evaluation lost {missing.size} of {self.num_items} views "
                               f"(first missing dataset indices: {missing[:10].tolist()})")
        return out

    def evaluate(self):
        """Metrics on rank 0: ``top1_acc``, ``top5_acc`` (one entry per k), ``mean_class_accuracy``,
        ``num_videos``, ``views``; ``{}`` elsewhere."""
        view_scores = self.gathered_scores()
        if view_scores is None:
            return {}
        scores = video_scores(view_scores, self.views)
        metrics = {f"top{k}_acc": v for k, v in zip(self.topk, top_k_accuracy(scores, self.labels, self.topk))}
        metrics["mean_class_accuracy"] = mean_class_accuracy(scores, self.labels)
        metrics.update(num_videos=int(len(self.labels)), views=self.views)
        if self.output_folder:
            os.makedirs(self.output_folder, exist_ok=True)
            with atomic_open(os.path.join(self.output_folder, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)
            with atomic_open(os.path.join(self.output_folder, SCORES_FILE), "wb") as f:
                np.savez(f, scores=scores, labels=self.labels)
        return metrics
