"""``MODEL.BACKBONE.SYNC_BN``: BatchNorm converted to SyncBatchNorm for training on several processes."""

import logging

import torch

from .backbones import bn_act

logger = logging.getLogger(__name__)


def convert_sync_batchnorm(cfg, model):
    """``model`` with every BatchNorm converted to SyncBatchNorm (``MODEL.BACKBONE.SYNC_BN``; every process calls
    this).

    With ``MODEL.BACKBONE.SYNC_BN_KERNELS`` or ``MODEL.CUDA_GRAPH.SYNC_BN`` (and the Triton BatchNorm kernels and
    channels_last_3d, which the kernels need) the layers share a process group of their own
    (``bn_act.new_sync_group``) and the kernels synchronize them. ``MODEL.CUDA_GRAPH.SYNC_BN`` with graphs of the
    backbone (``MODEL.CUDA_GRAPH.SCOPE`` model or split) lets the graphs capture their collectives; otherwise they
    run eagerly, and so does the backbone in training."""
    graph = cfg.MODEL.CUDA_GRAPH
    if not (cfg.MODEL.BACKBONE.SYNC_BN_KERNELS or graph.SYNC_BN):
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    asked = "MODEL.CUDA_GRAPH.SYNC_BN" if graph.SYNC_BN else "MODEL.BACKBONE.SYNC_BN_KERNELS"
    reasons = []
    if cfg.MODEL.BACKBONE.FUSED_TRAINING_BN is False:
        reasons.append("MODEL.BACKBONE.FUSED_TRAINING_BN False")
    if not cfg.MODEL.BACKBONE.CHANNELS_LAST:
        reasons.append("MODEL.BACKBONE.CHANNELS_LAST False")
    if reasons:
        logger.info("%s: PyTorch's SyncBatchNorm instead (%s)", asked, ", ".join(reasons))
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    captured = bool(graph.SYNC_BN) and graph.SCOPE in ("model", "split")
    if graph.SYNC_BN and not captured:
        logger.info("MODEL.CUDA_GRAPH.SYNC_BN: the SyncBatchNorm kernels' collectives run eagerly "
                    "(MODEL.CUDA_GRAPH.SCOPE %r has no graph of the backbone)", graph.SCOPE)
    group = bn_act.new_sync_group(captured=captured)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
