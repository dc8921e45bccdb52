"""``MODEL.BACKBONE.SYNC_BN``: BatchNorm converted to SyncBatchNorm for training on several processes."""

import logging

import torch

from .backbones import bn_act
from .detector import BACKBONE_GRAPH_SCOPES

logger = logging.getLogger(__name__)


def convert_sync_batchnorm(cfg, model):
    """``model`` with every BatchNorm converted to SyncBatchNorm (``MODEL.BACKBONE.SYNC_BN``; every process calls
    this). With ``MODEL.CUDA_GRAPH.SYNC_BN`` (and graphs of the backbone, ``MODEL.CUDA_GRAPH.SCOPE`` model or
    split, the Triton BatchNorm kernels and channels_last_3d, which they need) the layers share a process group of
    their own (``bn_act.new_sync_group``): the kernels synchronize them and the CUDA graphs capture their
    collectives."""
    group = None
    if cfg.MODEL.CUDA_GRAPH.SYNC_BN:
        reasons = []
        if cfg.MODEL.CUDA_GRAPH.SCOPE not in BACKBONE_GRAPH_SCOPES:
            reasons.append(f"MODEL.CUDA_GRAPH.SCOPE {cfg.MODEL.CUDA_GRAPH.SCOPE!r}")
        if cfg.MODEL.BACKBONE.FUSED_TRAINING_BN is False:
            reasons.append("MODEL.BACKBONE.FUSED_TRAINING_BN False")
        if not cfg.MODEL.BACKBONE.CHANNELS_LAST:
            reasons.append("MODEL.BACKBONE.CHANNELS_LAST False")
        if reasons:
            logger.info("MODEL.CUDA_GRAPH.SYNC_BN: PyTorch's SyncBatchNorm instead (%s)", ", ".join(reasons))
        else:
            group = bn_act.new_sync_group()
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
