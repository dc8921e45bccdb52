"""ST-ABN (Spatio-Temporal Attention Branch Network) as a recognition head of ``Recognizer3D``.

The official model (machine-perception-robotics-group/ST-ABN_PyTorch, MMAction 0.x ``TSN3D`` with
``ResNet_SlowFast`` + the ``Att_head`` neck) is a SlowOnly-style R50 (stem and res2/res3 without
temporal kernels, res4/res5 with 3x1x1 first convolutions; no temporal stride anywhere: our
``PySlowonly`` backbone, same mathematics) whose res4 output ``x`` feeds two branches:

attention branch (``head.att_*``, ``head.temporal_*``, ``head.spatial_*``)::

    a  = BN(res5'(x))                      res5' = a stride-1 copy of res5 (own weights)
    a  = ReLU(BN(conv1x1(a)))              [B, K, T, h, w]   (K = classes: the attention map)
    temporal:  ReLU(BN(conv3x3x3(a))) -> [B, T, h, w] -> ReLU(conv2d 1x1 over T) -> mean over h, w
               -> fc -> ReLU -> fc -> sigmoid                          t_att [B, 1, T, 1, 1]
    spatial:   sigmoid(BN(conv1x1(a)))                                  s_att [B, 1, T, h, w]
    logits:    conv1x1(a) -> mean over h, w -> [B, K*T] -> dropout -> fc     att_logits [B, K]

perception branch::

    r = ReLU(BN(conv1x1(cat([x * s_att + x, x * t_att], channels))))   2*C4 -> C4
    r = res5(r)  (the backbone's own res5)  -> mean over T, h, w -> dropout -> fc   logits [B, K]

BatchNorm: the official residual blocks run under activation checkpointing (``with_cp=True``), which
recomputes them in the backward pass and so updates their running statistics twice per training
step; ``MODEL.STABN.BLOCK_BN_UPDATES 2`` (default) reproduces that with the equivalent momentum.

Losses: ``loss_cls`` = CE(logits) and ``loss_att`` = CE(att_logits) x w, where the official code
declares ``loss_weight=0.5`` for the attention loss and never applies it: w = 1 by default
(``MODEL.STABN.APPLY_ATT_LOSS_WEIGHT False``), ``ATT_LOSS_WEIGHT`` when applied.

Differences from the official code, none of them numerical at its own setting: it hard-codes a
224-pixel input (``AvgPool2d(14)``, ``AvgPool3d((1, 14, 14))`` on res4 and ``AvgPool3d((32, 7, 7))``
on res5), 32 frames and 174 classes (``Linear(174 * 32, 174)``); we average over the whole map
(identical at 224) and take T and K from the config, so other crop sizes (the 256-pixel three-crop
test) and frame counts work.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ..backbones.resnet3d import ResStage, resnet_spec_from_cfg
from ..recognizer import HEAD_REGISTRY, ClassifierHead


class STABNHead(ClassifierHead):
    """The attention and perception branches of ST-ABN on top of a single-pathway ResNet.

    Args:
        res5_spec: ``PathwayStageSpec`` of the backbone's res5; the attention branch builds a copy of it
            with stride 1 (its own weights, ``att_res5``).
        resnet_spec: ``ResNetSpec`` of the backbone (block type, BatchNorm settings).
        num_classes: K (the attention map has K channels).
        num_frames: T of the res4 map (the input frames: no temporal stride) - the temporal attention's
            frame mixing and fully connected layers, and the attention classifier ``Linear(K*T, K)``.
        dropout_rate: before the perception classifier ``fc_cls`` (official ClsHead: 0.5).
        att_dropout_rate: before the attention classifier ``att_fc`` (official Att_branch: 0.5).
        att_loss_weight: factor of the attention cross entropy (1 reproduces the official training).

    ``backbone_features(backbone, videos)`` -> ``{"res4": [B, C4, T, h, w], "res5": the backbone's res5
    stage}``; ``forward`` of that -> dict of "logits" ``[B, K]`` (perception branch), "att_logits"
    ``[B, K]``, "spatial_attention" ``[B, 1, T, h, w]`` and "temporal_attention" ``[B, 1, T, 1, 1]``
    (both in (0, 1); h, w = the res4 grid: input / 16).
    """

    def __init__(self, res5_spec, resnet_spec, num_classes, num_frames, dropout_rate=0.5, att_dropout_rate=0.5,
                 att_loss_weight=1.0):
        super().__init__()
        c4, c5 = res5_spec.dim_in, res5_spec.dim_out
        k, t = num_classes, num_frames
        self.num_classes, self.num_frames = k, t
        self.att_loss_weight = float(att_loss_weight)
        bn = resnet_spec.bn
        # attention branch
        self.att_res5 = ResStage([dataclasses.replace(res5_spec, stride=1)], resnet_spec)
        self.att_bn = bn.make(c5)
        self.att_conv = nn.Conv3d(c5, k, kernel_size=1, bias=False)
        self.att_conv_bn = bn.make(k)
        self.temporal_conv = nn.Conv3d(k, 1, kernel_size=3, padding=1, bias=False)
        self.temporal_bn = bn.make(1)
        self.temporal_frame_conv = nn.Conv2d(t, t, kernel_size=1, bias=False)
        self.temporal_fc1 = nn.Linear(t, t)
        self.temporal_fc2 = nn.Linear(t, t)
        self.spatial_conv = nn.Conv3d(k, 1, kernel_size=1, bias=False)
        self.spatial_bn = bn.make(1)
        self.att_cls_conv = nn.Conv3d(k, k, kernel_size=1, bias=False)
        self.att_dropout = nn.Dropout(att_dropout_rate) if att_dropout_rate > 0 else nn.Identity()
        self.att_fc = nn.Linear(k * t, k)
        # perception branch
        self.fuse_conv = nn.Conv3d(2 * c4, c4, kernel_size=1, bias=False)
        self.fuse_bn = bn.make(c4)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        self.fc_cls = nn.Linear(c5, k)
        # The official initialization when the backbone starts from ImageNet: PyTorch's defaults for the
        # attention modules (absent from the 2-D ResNet, so left as built), N(0, 0.01) for both classifiers.
        for fc in (self.att_fc, self.fc_cls):
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def backbone_features(self, backbone, videos):
        """Stem .. res4 of ``backbone`` on ``videos`` (``[[B, 3, T, H, W]]``), and its res5 stage."""
        backbone._check_inputs(videos)
        x = backbone.s1(backbone._prepare(videos))
        for stage in (backbone.s2, backbone.s3, backbone.s4):
            x = stage(x)
        return {"res4": x[0], "res5": backbone.s5}

    def attention(self, x):
        """Attention branch on res4 ``x`` ``[B, C4, T, h, w]`` -> (spatial ``[B,1,T,h,w]``,
        temporal ``[B,1,T,1,1]``, attention logits ``[B, K]``)."""
        if x.shape[2] != self.num_frames:
            raise ValueError(f"ST-ABN: the res4 map has {x.shape[2]} frames, the head was built for "
                             f"{self.num_frames} (DATA.NUM_FRAMES)")
        a = self.att_bn(self.att_res5([x])[0])
        a = F.relu(self.att_conv_bn(self.att_conv(a)))
        b, _, t = a.shape[:3]
        ta = F.relu(self.temporal_bn(self.temporal_conv(a)))            # [B, 1, T, h, w]
        ta = F.relu(self.temporal_frame_conv(ta.flatten(1, 2)))         # [B, T, h, w]
        ta = ta.mean(dim=(2, 3))                                        # [B, T]
        ta = torch.sigmoid(self.temporal_fc2(F.relu(self.temporal_fc1(ta))))
        temporal = ta.view(b, 1, t, 1, 1)
        spatial = torch.sigmoid(self.spatial_bn(self.spatial_conv(a)))  # [B, 1, T, h, w]
        att_logits = self.att_fc(self.att_dropout(self.att_cls_conv(a).mean(dim=(3, 4)).flatten(1)))
        return spatial, temporal, att_logits

    def forward(self, features):
        x, res5 = features["res4"], features["res5"]
        spatial, temporal, att_logits = self.attention(x)
        r = torch.cat([x * spatial + x, x * temporal], dim=1)
        r = F.relu(self.fuse_bn(self.fuse_conv(r)))
        r = res5([r])[0]
        logits = self.fc_cls(self.dropout(r.mean(dim=(2, 3, 4))))
        return {"logits": logits, "att_logits": att_logits, "spatial_attention": spatial,
                "temporal_attention": temporal}

    def loss(self, outputs, labels, label_smoothing=0.0, normalizer=None):
        """``{"loss_cls": CE of the perception logits, "loss_att": att_loss_weight x CE of the attention
        logits}`` against ``labels`` ``[B]`` (means over the batch, or sums / ``normalizer``)."""

        def ce(logits):
            if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
                logits = logits.float()
            losses = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")
            return losses.mean() if normalizer is None else losses.sum() / normalizer

        return {"loss_cls": ce(outputs["logits"]), "loss_att": self.att_loss_weight * ce(outputs["att_logits"])}


@HEAD_REGISTRY.register("stabn")
def build_stabn_head(cfg, backbone):
    """STABNHead on a single-pathway ResNet (``PySlowonly``) from MODEL.RECOGNIZER.* and MODEL.STABN.*."""
    stages = [getattr(backbone, f"s{i}", None) for i in range(1, 6)]
    if getattr(backbone, "num_pathways", None) != 1 or any(s is None for s in stages) \
            or not isinstance(stages[-1], ResStage):
        raise ConfigError(
            f"MODEL.RECOGNIZER.HEAD = 'stabn' needs a single-pathway 3-D ResNet backbone with stages s1..s5 "
            f"(MODEL.BACKBONE.CONV_BODY 'PySlowonly'), got {cfg.MODEL.BACKBONE.CONV_BODY!r}"
        )
    st = cfg.MODEL.STABN
    weight = st.ATT_LOSS_WEIGHT if st.APPLY_ATT_LOSS_WEIGHT else 1.0
    head = STABNHead(
        res5_spec=backbone.s5.pathways[0],
        resnet_spec=resnet_spec_from_cfg(cfg),
        num_classes=cfg.MODEL.RECOGNIZER.NUM_CLASSES,
        num_frames=cfg.DATA.NUM_FRAMES,
        dropout_rate=cfg.MODEL.RECOGNIZER.DROPOUT_RATE,
        att_dropout_rate=st.ATT_DROPOUT_RATE,
        att_loss_weight=weight,
    )
    set_block_bn_updates([backbone.s2, backbone.s3, backbone.s4, backbone.s5, head.att_res5],
                         cfg.MODEL.BACKBONE.BN_MOMENTUM, st.BLOCK_BN_UPDATES)
    return head


def set_block_bn_updates(stages, momentum, updates):
    """Give every BatchNorm of ``stages`` the momentum of ``updates`` successive updates with the same batch
    statistics, ``1 - (1 - momentum) ** updates``: the official blocks run under reentrant
    ``torch.utils.checkpoint``, whose recomputation in the backward pass updates their running
    statistics a second time per step (``MODEL.STABN.BLOCK_BN_UPDATES 2``)."""
    effective = float(momentum) if updates == 1 else 1.0 - (1.0 - float(momentum)) ** int(updates)
    for stage in stages:
        for m in stage.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = effective
