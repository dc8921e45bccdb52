"""The Sparse R-CNN head: learned proposals refined by a series of dynamic-instance-interaction stages.

One stage (``RCNNHead``, Sun et al. 2021): RoIAlign features of the current boxes
(``MultiLevelRoIPooler``), self-attention among the proposal features of each image,
``DynamicConv`` (the proposal feature generates two 1x1 convolutions applied to its own
RoI features), an FFN, a classification tower and a regression tower; the box deltas
``(dx, dy, dw, dh)`` (divided by ``bbox_weights`` (2, 2, 1, 1), dw / dh clamped) refine the
input boxes. The stage series (``SparseRCNNHead``) starts from learned boxes (normalized
cxcywh, scaled by the image size) and learned proposal features and feeds each stage's
boxes (detached) and features to the next; every stage's predictions are returned
(deep supervision).

Module and parameter names are the official ones (``head_series.{i}.self_attn``,
``inst_interact.dynamic_layer``, ``cls_module``, ``class_logits``, ``bboxes_delta``,
``init_proposal_features``, ``init_proposal_boxes``), so official state dicts map key for key.
Boxes are absolute xyxy pixels of the padded input throughout.
"""

import dataclasses
import math

import torch
from torch import nn

from ..layers.detr import activation_fn, clones, detr_layer_modules
from ..trace import record
from .pooler import MultiLevelRoIPooler

DEFAULT_SCALE_CLAMP = math.log(100000.0 / 16)
DEFAULT_BBOX_WEIGHTS = (2.0, 2.0, 1.0, 1.0)
# EVAD's box jitter (after AlphAction): eval widens by (x, y); train draws uniform offsets
# (x out, x in, y out, y in) of the box width / height.
JITTER_EVAL_SCALE = (0.1, 0.05)
JITTER_TRAIN_RANGE = (0.2, 0.1, 0.1, 0.05)
JITTER_CLAMPS = ("official", "columns")


def box_cxcywh_to_xyxy(boxes):
    """``[..., 4]`` (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def apply_deltas(deltas, boxes, bbox_weights=DEFAULT_BBOX_WEIGHTS, scale_clamp=DEFAULT_SCALE_CLAMP):
    """Refined boxes ``[M, 4]`` from deltas ``[M, 4]`` (dx, dy, dw, dh) and boxes ``[M, 4]`` (absolute xyxy).

    ``cx' = dx / wx * w + cx``, ``w' = exp(min(dw / ww, scale_clamp)) * w`` (same for y / h).
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = bbox_weights
    dw = torch.clamp(deltas[:, 2] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3] / wh, max=scale_clamp)
    cx = deltas[:, 0] / wx * widths + ctr_x
    cy = deltas[:, 1] / wy * heights + ctr_y
    w = torch.exp(dw) * widths
    h = torch.exp(dh) * heights
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clip_to_image(boxes, whwh):
    """``boxes`` ``[Q, 4]`` with x clamped into ``[0, w - 1]`` and y into ``[0, h - 1]`` (a new tensor)."""
    w, h = whwh[0], whwh[1]
    x = boxes[:, 0::2].clamp(min=0.0).minimum(w - 1)
    y = boxes[:, 1::2].clamp(min=0.0).minimum(h - 1)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=-1)


def jitter_boxes(boxes, whwh, training, clamp="official"):
    """EVAD's jittered copy of the refined boxes, used to pool the action features.

    Args:
        boxes: ``[B, Q, 4]`` absolute xyxy pixels.
        whwh: ``[B, 4]`` image sizes (w, h, w, h).
        training: eval widens every box by ``JITTER_EVAL_SCALE`` about its centre; train moves
            each edge by a uniform fraction of the box size (``JITTER_TRAIN_RANGE``, four
            ``torch.rand([B * Q, 1])`` float32 draws in the order x1, y1, x2, y2).
        clamp: train only: "official" reproduces EVAD's clamping, which indexes boxes where it
            means coordinates (box 0 of each image clamped into ``[0, w - 1]``, box 1 into
            ``[0, h - 1]``, boxes 2 / 3 at least box 0 / 1 + 1; needs Q >= 4); "columns" is the
            intended x2 >= x1 + 1, y2 >= y1 + 1. Both then clip into the image.

    Returns:
        ``[B, Q, 4]`` clipped into ``[0, w - 1] x [0, h - 1]``.
    """
    if clamp not in JITTER_CLAMPS:
        raise ValueError(f"jitter clamp {clamp!r}: expected one of {JITTER_CLAMPS}")
    B, Q = boxes.shape[:2]
    flat = boxes.reshape(B * Q, 4)
    w = flat[:, 2] - flat[:, 0]
    h = flat[:, 3] - flat[:, 1]
    cx = flat[:, 0] + 0.5 * w
    cy = flat[:, 1] + 0.5 * h
    if not training:
        sx, sy = JITTER_EVAL_SCALE
        out = torch.stack([cx - 0.5 * w * (1 + sx), cy - 0.5 * h * (1 + sy),
                           cx + 0.5 * w * (1 + sx), cy + 0.5 * h * (1 + sy)], dim=-1).view(B, Q, 4)
        return torch.stack([clip_to_image(out[i], whwh[i]) for i in range(B)])

    x_out, x_in, y_out, y_in = JITTER_TRAIN_RANGE

    def uniform(a, b):
        return (torch.rand(B * Q, 1, dtype=torch.float32, device=boxes.device) * (b - a) + a)[:, 0]

    x1 = cx - 0.5 * w + w * uniform(-x_out, x_in)
    y1 = cy - 0.5 * h + h * uniform(-y_out, y_in)
    x2 = cx + 0.5 * w + w * uniform(-x_in, x_out)
    y2 = cy + 0.5 * h + h * uniform(-y_in, y_out)
    out = torch.stack([x1, y1, x2, y2], dim=-1).view(B, Q, 4)
    if clamp == "official" and Q < 4:
        raise ValueError(f"the official jitter clamping indexes boxes 0..3 of each image; got {Q} proposals "
                         "(use jitter clamp 'columns' or at least 4 proposals)")
    results = []
    for i in range(B):
        img_w, img_h = whwh[i, 0], whwh[i, 1]
        b = out[i]
        if clamp == "official":  # rows 0..3 of the image, as the official code indexes them
            r0 = b[0].clamp(min=0.0).minimum(img_w - 1)
            r1 = b[1].clamp(min=0.0).minimum(img_h - 1)
            r2 = torch.max(b[2].minimum(img_w - 1), r0 + 1)
            r3 = torch.max(b[3].minimum(img_h - 1), r1 + 1)
            b = torch.cat([torch.stack([r0, r1, r2, r3]), b[4:]])
        else:
            bx1 = b[:, 0].clamp(min=0.0).minimum(img_w - 1)
            by1 = b[:, 1].clamp(min=0.0).minimum(img_h - 1)
            bx2 = torch.max(b[:, 2].minimum(img_w - 1), bx1 + 1)
            by2 = torch.max(b[:, 3].minimum(img_h - 1), by1 + 1)
            b = torch.stack([bx1, by1, bx2, by2], dim=-1)
        results.append(clip_to_image(b, whwh[i]))
    return torch.stack(results)


class DynamicConv(nn.Module):
    """Instance interaction: each proposal feature generates two 1x1 convolutions applied to its RoI features.

    Args:
        hidden_dim: d. dim_dynamic: the inner width of the generated convolutions.
        num_dynamic: how many parameter sets ``dynamic_layer`` generates (the official 2).
        pooler_resolution: R (the RoI features have R * R positions).
    """

    def __init__(self, hidden_dim, dim_dynamic, num_dynamic, pooler_resolution):
        super().__init__()
        if num_dynamic < 2:
            raise ValueError(f"DynamicConv: num_dynamic = {num_dynamic}; the two generated convolutions need 2")
        self.hidden_dim = hidden_dim
        self.dim_dynamic = dim_dynamic
        self.num_dynamic = num_dynamic
        self.num_params = hidden_dim * dim_dynamic
        self.dynamic_layer = nn.Linear(hidden_dim, num_dynamic * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.activation = nn.ReLU(inplace=True)
        self.out_layer = nn.Linear(hidden_dim * pooler_resolution ** 2, hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)

    def forward(self, pro_features, roi_features):
        """``pro_features`` ``[M, d]`` and ``roi_features`` ``[M, R*R, d]`` -> ``[M, d]``."""
        params = self.dynamic_layer(pro_features)
        param1 = params[:, :self.num_params].view(-1, self.hidden_dim, self.dim_dynamic)
        param2 = params[:, self.num_params:2 * self.num_params].view(-1, self.dim_dynamic, self.hidden_dim)
        x = self.activation(self.norm1(torch.bmm(roi_features, param1)))
        x = self.activation(self.norm2(torch.bmm(x, param2)))
        return self.activation(self.norm3(self.out_layer(x.flatten(1))))


@dataclasses.dataclass
class StageOutput:
    """One stage for B images and Q proposals: class_logits ``[B, Q, C]``, boxes ``[B, Q, 4]`` (refined,
    absolute xyxy), features ``[B, Q, d]`` (proposal features for the next stage), jitter_boxes ``[B, Q, 4]``
    or None (``with_jitter``)."""

    class_logits: torch.Tensor
    boxes: torch.Tensor
    features: torch.Tensor
    jitter_boxes: torch.Tensor = None


class RCNNHead(nn.Module):
    """One dynamic-instance-interaction stage (see the module docstring).

    Args:
        d_model: d. num_classes: C. dim_feedforward: FFN hidden width. nhead: attention heads.
        dropout: dropout probability (attention weights and the residual branches).
        activation: FFN activation ("relu", "gelu", "glu").
        dim_dynamic, num_dynamic, pooler_resolution: see ``DynamicConv``.
        num_cls, num_reg: depths of the classification and regression towers
            (Linear without bias, LayerNorm, ReLU each).
        use_focal: sigmoid classifier with C outputs; else softmax with C + 1 (last: no object).
        scale_clamp, bbox_weights: box decoding (see ``apply_deltas``).
        with_jitter: also return EVAD's jittered boxes (``jitter_boxes``); jitter_clamp: its clamping.
    """

    def __init__(self, d_model, num_classes, dim_feedforward=2048, nhead=8, dropout=0.0, activation="relu",
                 dim_dynamic=64, num_dynamic=2, pooler_resolution=7, num_cls=1, num_reg=3, use_focal=True,
                 scale_clamp=DEFAULT_SCALE_CLAMP, bbox_weights=DEFAULT_BBOX_WEIGHTS, with_jitter=False,
                 jitter_clamp="official"):
        super().__init__()
        if jitter_clamp not in JITTER_CLAMPS:
            raise ValueError(f"jitter clamp {jitter_clamp!r}: expected one of {JITTER_CLAMPS}")
        self.d_model = d_model
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.inst_interact = DynamicConv(d_model, dim_dynamic, num_dynamic, pooler_resolution)
        (self.linear1, self.dropout, self.linear2, self.norm1, self.norm2, self.norm3, self.dropout1, self.dropout2,
         self.dropout3) = detr_layer_modules(d_model, dim_feedforward, dropout, 3)
        self.activation = activation_fn(activation, "Sparse R-CNN head")
        self.cls_module = nn.ModuleList(_tower(d_model, num_cls))
        self.reg_module = nn.ModuleList(_tower(d_model, num_reg))
        self.use_focal = use_focal
        self.class_logits = nn.Linear(d_model, num_classes if use_focal else num_classes + 1)
        self.bboxes_delta = nn.Linear(d_model, 4)
        self.scale_clamp = scale_clamp
        self.bbox_weights = tuple(bbox_weights)
        self.with_jitter = with_jitter
        self.jitter_clamp = jitter_clamp

    def forward(self, features, boxes, pro_features, pooler, whwh=None):
        """Run the stage.

        Args:
            features: list of maps ``[B, d, H_l, W_l]`` (the pooler's levels).
            boxes: ``[B, Q, 4]`` absolute xyxy pixels.
            pro_features: ``[B, Q, d]`` proposal features.
            pooler: a ``MultiLevelRoIPooler``.
            whwh: ``[B, 4]`` image sizes; needed with ``with_jitter``.

        Returns:
            StageOutput.
        """
        B, Q = boxes.shape[:2]
        d = self.d_model
        roi = pooler(features, boxes).view(B * Q, d, -1).transpose(1, 2)  # [B*Q, R*R, d]
        x = pro_features.reshape(B, Q, d).transpose(0, 1)  # [Q, B, d]
        x = self.norm1(x + self.dropout1(self.self_attn(x, x, x, need_weights=False)[0]))
        x = x.transpose(0, 1).reshape(B * Q, d)
        x = self.norm2(x + self.dropout2(self.inst_interact(x, roi)))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x))))))
        cls_feature = x
        for layer in self.cls_module:
            cls_feature = layer(cls_feature)
        reg_feature = x
        for layer in self.reg_module:
            reg_feature = layer(reg_feature)
        class_logits = self.class_logits(cls_feature)
        deltas = self.bboxes_delta(reg_feature)
        pred = apply_deltas(deltas, boxes.reshape(B * Q, 4), self.bbox_weights, self.scale_clamp).view(B, Q, 4)
        jitter = None
        if self.with_jitter:
            if whwh is None:
                raise ValueError("RCNNHead with_jitter needs the image sizes whwh")
            jitter = jitter_boxes(pred, whwh, self.training, self.jitter_clamp)
        return StageOutput(class_logits.view(B, Q, -1), pred, x.view(B, Q, d), jitter)


def _tower(d_model, depth):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(d_model, d_model, bias=False), nn.LayerNorm(d_model), nn.ReLU(inplace=True)]
    return layers


@dataclasses.dataclass
class SparseRCNNOutputs:
    """Per-stage predictions, stage 0 first: ``class_logits`` and ``boxes`` are lists of S tensors
    ``[B, Q, C]`` (C + 1 with softmax) and ``[B, Q, 4]`` (absolute xyxy pixels); ``features`` ``[B, Q, d]``
    the last stage's proposal features; ``jitter_boxes`` ``[B, Q, 4]`` the last stage's jittered boxes
    (EVAD's ``with_jitter``) or None.

    ``cls_logits`` is an alias of ``class_logits`` (the name ``losses.SetCriterion.match`` reads).
    """

    class_logits: list
    boxes: list
    features: torch.Tensor = None
    jitter_boxes: torch.Tensor = None

    @property
    def cls_logits(self):
        return self.class_logits


class SparseRCNNHead(nn.Module):
    """Learned proposals + the stage series.

    Args:
        num_proposals: Q. hidden_dim: d. num_classes: C. num_stages: S (``NUM_HEADS`` officially).
        featmap_strides: strides of the feature levels the pooler reads (e.g. ``(4, 8, 16, 32)``).
        pooler_resolution: R. sampling_ratio: RoIAlign sampling ratio.
        use_focal: sigmoid / focal classifier; prior_prob: its bias initialization
            ``-log((1 - p) / p)``.
        **stage_args: the remaining ``RCNNHead`` arguments (dim_feedforward, nhead, dropout,
            activation, dim_dynamic, num_dynamic, num_cls, num_reg, scale_clamp, bbox_weights,
            with_jitter, jitter_clamp).

    Initialization (the official one): every matrix of the stages xavier-uniform; with focal, every
    stage parameter whose last dimension equals C is set to the prior bias (officially a shape test,
    which also hits any other parameter of last dimension C); learned boxes cxcywh (0.5, 0.5, 1, 1)
    (whole image); proposal features N(0, 1).
    """

    def __init__(self, num_proposals, hidden_dim, num_classes, num_stages, featmap_strides=(4, 8, 16, 32),
                 pooler_resolution=7, sampling_ratio=2, use_focal=True, prior_prob=0.01, **stage_args):
        super().__init__()
        self.num_proposals = num_proposals
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.use_focal = use_focal
        self.box_pooler = MultiLevelRoIPooler(pooler_resolution, featmap_strides, sampling_ratio)
        self.init_proposal_features = nn.Embedding(num_proposals, hidden_dim)
        self.init_proposal_boxes = nn.Embedding(num_proposals, 4)
        with torch.no_grad():
            self.init_proposal_boxes.weight[:, :2] = 0.5
            self.init_proposal_boxes.weight[:, 2:] = 1.0
        stage = RCNNHead(hidden_dim, num_classes, pooler_resolution=pooler_resolution, use_focal=use_focal,
                         **stage_args)
        self.head_series = clones(stage, num_stages)
        self.prior_prob = prior_prob
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """The official initialization of the stages (see the class docstring)."""
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        for p in self.head_series.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            if self.use_focal and p.shape[-1] == self.num_classes:
                nn.init.constant_(p, bias)

    def initial_boxes(self, whwh):
        """The learned proposals of every image: ``[B, Q, 4]`` absolute xyxy for image sizes ``whwh`` ``[B, 4]``."""
        return box_cxcywh_to_xyxy(self.init_proposal_boxes.weight)[None] * whwh[:, None, :]

    def forward(self, features, whwh, trace=None):
        """Run the S stages.

        Args:
            features: list of maps ``[B, d, H_l, W_l]`` with the strides ``featmap_strides``.
            whwh: ``[B, 4]`` unpadded image sizes (w, h, w, h) in pixels (the learned proposals are
                fractions of them).
            trace: optional dict: ``init_boxes``, then per stage ``stage{k}/class_logits``,
                ``stage{k}/boxes`` (``modeling.trace``).

        Returns:
            SparseRCNNOutputs.
        """
        whwh = whwh.to(features[0].dtype)
        B = whwh.size(0)
        boxes = self.initial_boxes(whwh)
        record(trace, "init_boxes", boxes)
        pro = self.init_proposal_features.weight[None].expand(B, -1, -1)
        outputs = SparseRCNNOutputs([], [])
        out = None
        for k, stage in enumerate(self.head_series):
            out = stage(features, boxes, pro, self.box_pooler, whwh)
            outputs.class_logits.append(out.class_logits)
            outputs.boxes.append(out.boxes)
            record(trace, f"stage{k}/class_logits", out.class_logits)
            record(trace, f"stage{k}/boxes", out.boxes)
            boxes, pro = out.boxes.detach(), out.features
        outputs.features = out.features
        outputs.jitter_boxes = out.jitter_boxes
        return outputs
