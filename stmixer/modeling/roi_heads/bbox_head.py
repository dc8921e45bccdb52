"""The AVA RoI classification head of mmaction2's two-stage detectors (``BBoxHeadAVA``).

RoI features ``[K, C, T, H, W]`` are pooled over time and space, optionally dropped out, and
classified by a linear layer or a two-layer MLP. The loss is the multi-label sigmoid BCE (or a
soft-target softmax cross entropy for single-label heads) with mmaction2's focal weighting
``alpha * (1 - exp(-bce)) ** gamma * bce``, averaged over the positive RoIs and classes. Class 0
is the "background" column when ``background_class`` is set: it is dropped from the loss and
from the scores' meaning (mmaction2 keeps it in the logits).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import UserError

POOL_TYPES = ("avg", "max")


class BBoxHeadAVA(nn.Module):
    """Pooling + linear (or MLP) action classifier over RoI features, with mmaction2's loss.

    Args:
        in_channels: channels ``C`` of the RoI features (2048 SlowOnly-R50, 2304 SlowFast-R50,
            twice that with the extractor's ``with_global``).
        num_classes: logits per RoI, including the background column 0 when
            ``background_class`` (AVA: 81).
        background_class: column 0 of the logits and labels is ignored by the loss.
        temporal_pool_type: ``'avg'`` or ``'max'`` over T.
        spatial_pool_type: ``'avg'`` or ``'max'`` over H, W (mmaction2 default ``'max'``).
        dropout_ratio: dropout probability (0 disables it).
        dropout_before_pool: dropout on the ``[K, C, T, H, W]`` input (True) or on the pooled
            ``[K, C, 1, 1, 1]`` vector (False).
        mlp_head: ``Linear(C, C) -> ReLU -> Linear(C, num_classes)`` instead of one ``Linear``
            (the "nonlinear head" of the AVA-Kinetics K700 rows).
        focal_alpha, focal_gamma: focal weighting; ``alpha=1, gamma=0`` is plain BCE.
        multilabel: sigmoid BCE (True) or softmax cross entropy with soft targets (False).
        topk: the k of the ``recall@topk`` / ``prec@topk`` metrics returned by ``loss``
            (each k < num_classes); ``None`` or ``()`` for none.

    Parameter names equal mmaction2's (``fc_cls.weight`` or ``fc_cls.0.*`` / ``fc_cls.2.*``), so
    its checkpoints load with the ``roi_head.bbox_head.`` prefix removed. Weights start as
    mmaction2's ``init_weights`` leaves them: xavier-normal weights, zero biases.
    """

    def __init__(self, in_channels: int = 2048, num_classes: int = 81, background_class: bool = True,
                 temporal_pool_type: str = "avg", spatial_pool_type: str = "max",
                 dropout_ratio: float = 0.0, dropout_before_pool: bool = True, mlp_head: bool = False,
                 focal_alpha: float = 1.0, focal_gamma: float = 0.0, multilabel: bool = True,
                 topk: Union[None, int, Sequence[int]] = (3, 5)):
        super().__init__()
        for name, value in (("temporal_pool_type", temporal_pool_type), ("spatial_pool_type", spatial_pool_type)):
            if value not in POOL_TYPES:
                raise UserError(f"{name}: expected one of {POOL_TYPES}, got {value!r}")
        if in_channels <= 0 or num_classes <= 1:
            raise UserError(f"in_channels / num_classes: expected > 0 / > 1, got {in_channels} / {num_classes}")
        if not 0.0 <= dropout_ratio < 1.0:
            raise UserError(f"dropout_ratio: expected a value in [0, 1), got {dropout_ratio!r}")
        if topk is None:
            topk = ()
        elif isinstance(topk, int):
            topk = (topk,)
        topk = tuple(topk)
        if not all(isinstance(k, int) and 0 < k < num_classes for k in topk):
            raise UserError(f"topk: expected ints in [1, num_classes={num_classes}), got {topk!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.background_class = bool(background_class)
        self.temporal_pool_type = temporal_pool_type
        self.spatial_pool_type = spatial_pool_type
        self.dropout_ratio = float(dropout_ratio)
        self.dropout_before_pool = bool(dropout_before_pool)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.multilabel = bool(multilabel)
        self.topk = topk

        pool3d = {"avg": nn.AdaptiveAvgPool3d, "max": nn.AdaptiveMaxPool3d}
        self.temporal_pool = pool3d[temporal_pool_type]((1, None, None))
        self.spatial_pool = pool3d[spatial_pool_type]((None, 1, 1))
        self.dropout = nn.Dropout(self.dropout_ratio) if self.dropout_ratio > 0 else nn.Identity()
        if mlp_head:
            self.fc_cls = nn.Sequential(nn.Linear(in_channels, in_channels), nn.ReLU(),
                                        nn.Linear(in_channels, num_classes))
        else:
            self.fc_cls = nn.Linear(in_channels, num_classes)
        self.init_weights()

    def init_weights(self):
        """Xavier-normal weights and zero biases for every linear layer (mmaction2's init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[K, num_classes]`` of RoI features ``x`` ``[K, in_channels, T, H, W]``."""
        if not torch.is_tensor(x) or x.dim() != 5 or x.shape[1] != self.in_channels:
            raise UserError(f"BBoxHeadAVA input: expected [K, {self.in_channels}, T, H, W], got "
                            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if self.dropout_before_pool:
            x = self.dropout(x)
        x = self.spatial_pool(self.temporal_pool(x))
        if not self.dropout_before_pool:
            x = self.dropout(x)
        return self.fc_cls(x.view(x.shape[0], -1))

    # ------------------------------------------------------------------ loss
    @staticmethod
    def recall_prec(pred: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """Mean over RoIs of per-RoI recall and precision of boolean ``[N, C]`` predictions.

        Recall is float32 (mmaction2 casts the denominator with ``.float()``); precision has the
        default dtype, with 1e-6 added to its denominator.
        """
        correct = pred & target
        recall = correct.sum(1) / target.sum(1).float()
        prec = correct.sum(1) / (pred.sum(1) + 1e-6)
        return recall.mean(), prec.mean()

    @staticmethod
    def topk_to_matrix(probs: Tensor, k: int) -> Tensor:
        """Boolean ``[N, C]`` marking each row's k largest entries."""
        index = probs.topk(k, 1, True, True)[1]
        return torch.zeros_like(probs, dtype=torch.bool).scatter_(1, index, True)

    def topk_metrics(self, logits: Tensor, target: Tensor, thr: float = 0.5):
        """``(recall@thr, prec@thr, [recall@k], [prec@k])`` as mmaction2's ``topk_accuracy``.

        At the threshold: multi-label heads predict every class with sigmoid > thr; single-label
        heads their top-1 class. Targets are ``target > 0.5``.
        """
        target = target > 0.5
        probs = logits.sigmoid() if self.multilabel else logits.softmax(dim=1)
        pred = probs > thr if self.multilabel else self.topk_to_matrix(probs, 1)
        recall_thr, prec_thr = self.recall_prec(pred, target)
        recalls, precs = [], []
        for k in self.topk:
            recall, prec = self.recall_prec(self.topk_to_matrix(probs, k), target)
            recalls.append(recall)
            precs.append(prec)
        return recall_thr, prec_thr, recalls, precs

    def loss(self, cls_score: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """mmaction2's ``loss_and_target`` on logits ``[K, num_classes]`` and labels ``[K, num_classes]``.

        ``labels`` holds multi-hot (or soft) targets, all zeros for negative RoIs (see
        ``bbox_targets``). Only RoIs with a positive label (outside the background column when
        ``background_class``) enter the loss and metrics. Returns ``loss_action_cls`` (the mean of
        ``focal_alpha * (1 - exp(-l)) ** focal_gamma * l`` over the positive RoIs and classes, where
        ``l`` is the element-wise BCE-with-logits, or the per-RoI soft-target cross entropy of a
        single-label head) and the metrics ``recall@thr=0.5``, ``prec@thr=0.5``,
        ``recall@top{k}``, ``prec@top{k}`` (no gradient).

        Where no RoI is positive mmaction2's mean is NaN; here the loss is 0 (still connected
        to the graph) and the metrics are NaN.
        """
        if cls_score.dim() != 2 or cls_score.shape[1] != self.num_classes or labels.shape != cls_score.shape:
            raise UserError(f"loss: expected cls_score and labels of shape [K, {self.num_classes}], got "
                            f"{tuple(cls_score.shape)} and {tuple(labels.shape)}")
        labels = labels.to(cls_score.dtype)
        if self.background_class:
            labels = labels[:, 1:]
            cls_score = cls_score[:, 1:]
        positive = labels.sum(dim=-1) > 0
        cls_score = cls_score[positive]
        labels = labels[positive]

        losses = {}
        with torch.no_grad():
            recall_thr, prec_thr, recalls, precs = self.topk_metrics(cls_score, labels, thr=0.5)
        losses["recall@thr=0.5"] = recall_thr
        losses["prec@thr=0.5"] = prec_thr
        for k, recall, prec in zip(self.topk, recalls, precs):
            losses[f"recall@top{k}"] = recall
            losses[f"prec@top{k}"] = prec

        if not self.multilabel and self.background_class:
            labels = labels / labels.sum(dim=1, keepdim=True)
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(cls_score, labels, reduction="none")
        else:
            loss = F.cross_entropy(cls_score, labels, reduction="none")
        pt = torch.exp(-loss)
        focal = self.focal_alpha * (1 - pt) ** self.focal_gamma * loss
        if focal.numel() == 0:
            losses["loss_action_cls"] = cls_score.sum() * 0.0
        else:
            losses["loss_action_cls"] = focal.mean()
        return losses

    # ------------------------------------------------------------- inference
    def predict(self, rois: Tensor, cls_score: Tensor, img_shape: Tuple[int, int], flip: bool = False,
                crop_quadruple: Optional[Sequence[float]] = None) -> Tuple[Tensor, Tensor]:
        """Boxes and scores of one clip, as mmaction2's ``_predict_by_feat_single``.

        Args:
            rois: ``[K, 5]`` ``(batch_index, x1, y1, x2, y2)``, absolute pixels of the network
                input (not modified; mmaction2 divides its rois in place).
            cls_score: logits ``[K, num_classes]``.
            img_shape: ``(height, width)`` of the network input in pixels.
            flip: the input was flipped horizontally: ``x1' = w - 1 - x2``, ``x2' = w - 1 - x1``
                (mmaction2's "-1" convention) before normalising.
            crop_quadruple: ``(x1, y1, w, h)`` of the crop in normalised coordinates of the
                original frame (mmaction2's ``crop_quadruple``); boxes map back with
                ``x * w + x1``, ``y * h + y1``. None = ``(0, 0, 1, 1)``.

        Returns:
            ``(boxes [K, 4], scores [K, num_classes])``: boxes normalised ``[0, 1]`` xyxy of the
            original frame; scores are sigmoid (multi-label) or softmax probabilities, column 0
            being the background column when ``background_class``.
        """
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise UserError(f"predict: rois must be [K, 5], got {tuple(rois.shape)}")
        scores = cls_score.sigmoid() if self.multilabel else cls_score.softmax(dim=-1)
        boxes = rois[:, 1:].clone()
        img_h, img_w = img_shape
        if flip:
            boxes = torch.stack([img_w - 1 - boxes[:, 2], boxes[:, 1], img_w - 1 - boxes[:, 0], boxes[:, 3]], 1)
        boxes[:, 0::2] /= img_w
        boxes[:, 1::2] /= img_h
        if crop_quadruple is not None:
            x1, y1, tw, th = (float(v) for v in crop_quadruple)
            boxes[:, 0::2] = boxes[:, 0::2] * tw + x1
            boxes[:, 1::2] = boxes[:, 1::2] * th + y1
        return boxes, scores


def bbox_targets(pos_labels: List[Tensor], num_neg: List[int], pos_weight: float = -1.0) -> Tuple[Tensor, Tensor]:
    """Labels and label weights of sampled RoIs, as mmaction2's ``bbox_target``.

    Per clip the RoIs are ordered positives first, then negatives (as the sampler returns
    them and as the rois tensor must be built).

    Args:
        pos_labels: per clip, ``[P_i, num_classes]`` multi-hot labels of its positive RoIs.
        num_neg: per clip, the number ``N_i`` of its negative RoIs (their labels are zeros).
        pos_weight: weight of positive RoIs; ``<= 0`` means 1.0 (the ``train_cfg.rcnn.pos_weight``
            option).

    Returns:
        ``(labels [sum(P_i + N_i), num_classes], label_weights [sum(P_i + N_i)])``. As in
        mmaction2, a clip without negatives gets weight 1 on all its RoIs (its
        ``weight[-0:] = 1`` covers the whole clip), and ``BBoxHeadAVA.loss`` does not read the
        weights (mmaction2's loss ignores them too).
    """
    if len(pos_labels) != len(num_neg):
        raise UserError(f"bbox_targets: {len(pos_labels)} label tensors for {len(num_neg)} negative counts")
    pos_weight = 1.0 if pos_weight <= 0 else pos_weight
    labels, weights = [], []
    for label, n in zip(pos_labels, num_neg):
        labels.append(F.pad(label, (0, 0, 0, n)))
        weight = label.new_zeros(label.shape[0] + n)
        weight[: label.shape[0]] = pos_weight
        weight[-n:] = 1.0
        weights.append(weight)
    return torch.cat(labels, 0), torch.cat(weights, 0)


def class_detections(boxes: Tensor, scores: Tensor, thr: Union[float, Sequence[float]] = 0.002) -> List[Tensor]:
    """Per-class detections of one clip, as mmaction2's ``bbox2result`` (its AVA metric's input).

    Args:
        boxes: ``[K, 4]`` boxes (any convention; mmaction2 passes the normalised ``[0, 1]`` xyxy
            boxes of ``BBoxHeadAVA.predict``).
        scores: ``[K, num_classes]`` probabilities, column 0 the background column.
        thr: a number ``>= 0``: multi-label, class ``c`` keeps the boxes with ``scores[:, c] > thr``
            (mmaction2's AVA metric uses ``action_thr=0.002``); a negative number: single-label, each
            box goes to its arg-max class among columns 1.. (ties: the first); a sequence of
            ``num_classes`` thresholds: multi-label with ``thr[c]`` for class ``c`` (``thr[0]`` unused).

    Returns:
        ``num_classes - 1`` tensors, one per class 1..num_classes-1, each ``[m, 5]`` rows
        ``(x1, y1, x2, y2, score)`` in the input order and dtype.
    """
    if scores.dim() != 2 or scores.shape[1] < 2 or boxes.shape != (scores.shape[0], 4):
        raise UserError(f"class_detections: expected boxes [K, 4] and scores [K, C>1], got "
                        f"{tuple(boxes.shape)} and {tuple(scores.shape)}")
    num_classes = scores.shape[1]
    if isinstance(thr, (int, float)):
        multilabel = thr >= 0
        thr = (float(thr),) * num_classes
    else:
        multilabel = True
        thr = tuple(float(t) for t in thr)
        if len(thr) != num_classes:
            raise UserError(f"class_detections: {len(thr)} thresholds for {num_classes} classes")
    boxes = boxes.detach()
    scores = scores.detach()
    best = scores[:, 1:].argmax(dim=1) if not multilabel else None
    out = []
    for i in range(num_classes - 1):
        keep = scores[:, i + 1] > thr[i + 1] if multilabel else best == i
        out.append(torch.cat([boxes[keep], scores[keep, i + 1:i + 2]], dim=1))
    return out
