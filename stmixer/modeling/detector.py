"""The STMixer detector: backbone -> neck -> decoder, as the official ``STMDetector``.

Attribute names (``backbone``, ``lateral_convs``, ``stm_head``) are the
official ones, so official checkpoints map onto this model key for key.
"""

import contextlib
import logging

import torch
from torch import nn

from .backbones import bn_act
from .build import DETECTOR_REGISTRY, build_backbone
from .cuda_graphs import GraphedPart
from .necks import build_neck
from .stmixer import build_stm_decoder
from .stmixer.decoder import DecoderOutputs
from .trace import record

logger = logging.getLogger(__name__)

# MODEL.CUDA_GRAPH.SCOPE values: what a CUDA graph covers.
CUDA_GRAPH_SCOPES = ("off", "decoder", "model", "split")
# The scopes whose graphs hold the backbone (and can capture its SyncBatchNorm kernels' collectives).
BACKBONE_GRAPH_SCOPES = ("model", "split")


class STMDetector(nn.Module):
    """One-stage sparse action detector.

    Args:
        backbone: video backbone; ``backbone(videos)`` -> 4 maps ``[B, C_l, T, H_l, W_l]``
            (strides 4, 8, 16, 32), with ``num_pathways`` and ``out_channels``.
        neck: maps the 4 levels to ``[B, D, T, H_l, W_l]``.
        decoder: the STMixer decoder (``stmixer.modeling.stmixer``).
        cuda_graph: ``MODEL.CUDA_GRAPH.SCOPE``: on CUDA, replay CUDA graphs (``modeling.cuda_graphs``) of
            the decoder stages ("decoder"), of backbone, neck and decoder stages as one graph ("model") or as
            two, backbone + neck and decoder stages ("split": the decoder's parameter gradients are final,
            and DistributedDataParallel can all-reduce them, while the backbone's backward replays);
            "off": eager.
            The loss, the matching and the selection of detections always run eagerly.
        max_graphs: ``MODEL.CUDA_GRAPH.MAX_GRAPHS``, input shapes captured at most.
        tf32_matmul: ``TF32_MATMUL``: on CUDA, the forward (and a captured backward) runs float32
            matmuls on TF32 tensor cores; PyTorch's setting is restored afterwards.
    """

    def __init__(self, backbone, neck, decoder, cuda_graph="off", max_graphs=8, tf32_matmul=False):
        super().__init__()
        if cuda_graph not in CUDA_GRAPH_SCOPES:
            raise ValueError(f"MODEL.CUDA_GRAPH.SCOPE = {cuda_graph!r}; expected one of {CUDA_GRAPH_SCOPES}")
        self.backbone = backbone
        self.lateral_convs = neck
        self.stm_head = decoder
        self.cuda_graph = cuda_graph
        self.max_graphs = max_graphs
        self.tf32_matmul = tf32_matmul
        self._graphed = None  # the GraphedPart of the latest CUDA forward that gives the decoder's outputs
        self._graphed_backbone = None  # with "split": the GraphedPart of backbone + neck before it
        self._graph_scope = None  # what it covers: cuda_graph, or "decoder" where the backbone holds collectives
        self._graphed_parts = {}  # scope -> GraphedPart, each made on its first use
        self._sync_bns = None  # the backbone's SyncBatchNorm modules, listed once

    def __getstate__(self):
        # copies and pickles start without graphs (captured again on their first CUDA forward): a graph
        # replays the kernels of this module's memory, and its part holds this module by weak reference
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_graphed": None, "_graphed_backbone": None, "_graph_scope": None, "_graphed_parts": {},
                "_sync_bns": None}

    def features(self, slow_video, fast_video=None):
        """Backbone levels and neck outputs of a clip batch.

        Args:
            slow_video: ``[B, 3, T_slow, H, W]`` normalized, zero-padded clips (the only
                pathway of single-pathway backbones).
            fast_video: ``[B, 3, T_fast, H, W]`` for SlowFast, else None.

        Returns:
            (backbone maps, neck maps), each a list of 4 tensors ``[B, C, T, H_l, W_l]``.
        """
        videos = [slow_video] if self.backbone.num_pathways == 1 else [slow_video, fast_video]
        backbone_maps = self.backbone(videos)
        return backbone_maps, self.lateral_convs(backbone_maps)

    def forward(self, slow_video, fast_video, whwh, gt_boxes=None, gt_labels=None, trace=None):
        """Detections (eval mode) or the weighted loss dict (train mode).

        Args:
            slow_video, fast_video: see ``features``.
            whwh: ``[B, 4]`` unpadded clip sizes (w, h, w, h) in pixels.
            gt_boxes: train mode: list of B tensors ``[n_i, 4]``, absolute xyxy pixels of the resized clip.
            gt_labels: train mode: list of B tensors ``[n_i, A]`` multi-hot actions.
            trace: optional dict collecting intermediate tensors (``modeling.trace``): backbone level
                ``backbone_l{i}`` and neck output ``mapped_l{i}`` for i = 0..3, then the decoder's.

        Returns:
            eval: per clip ``{"scores": [n, A], "boxes": [n, 4] normalized xyxy, "query_indices": [n],
            "person_scores": [n]}`` (see ``STMDecoder.forward``);
            train: ordered dict of loss terms.
        """
        if self.tf32_matmul and slow_video.is_cuda and not torch.backends.cuda.matmul.allow_tf32:
            with tf32_matmuls():
                return self.forward(slow_video, fast_video, whwh, gt_boxes, gt_labels, trace)
        if self.cuda_graph != "off" and trace is None and slow_video.is_cuda:
            sizes = self.stm_head.clip_sizes(whwh, slow_video)
            outputs = self._graphed_forward(slow_video, fast_video, sizes)
            if outputs is not None:
                return self.stm_head.finish(outputs, sizes, gt_boxes, gt_labels)
        backbone_maps, mapped = self.features(slow_video, fast_video)
        for i, (level, out) in enumerate(zip(backbone_maps, mapped)):
            record(trace, f"backbone_l{i}", level)
            record(trace, f"mapped_l{i}", out)
        return self.stm_head(mapped, whwh, gt_boxes, gt_labels, trace=trace)

    def _graphed_forward(self, slow_video, fast_video, whwh):
        """``DecoderOutputs`` from replayed CUDA graphs, or None where they cannot run (the caller runs eagerly).

        ``whwh``: the clip sizes as ``STMDecoder.clip_sizes`` gives them."""
        scope = self.cuda_graph
        if scope in BACKBONE_GRAPH_SCOPES and self._backbone_synchronizes():
            scope = "decoder"
        if scope not in self._graphed_parts:
            self._graphed_parts[scope] = self._make_parts(scope)
        (self._graphed_backbone, self._graphed), self._graph_scope = self._graphed_parts[scope], scope
        videos = (slow_video,) if fast_video is None else (slow_video, fast_video)
        if scope in BACKBONE_GRAPH_SCOPES and getattr(self.backbone, "channels_last", False) and slow_video.is_cuda:
            # NDHWC weights before a capture, not inside it (parameters are stand-ins there, see cuda_graphs)
            self.backbone.use_channels_last()
        if scope == "model":
            flat = self._graphed(*videos, whwh)
            return None if flat is None else DecoderOutputs.from_flat(flat)
        mapped = self._graphed_backbone(*videos) if self._graphed_backbone is not None else None
        if mapped is None:
            mapped = self.features(slow_video, fast_video)[1]
        flat = self._graphed(*mapped, whwh)
        if flat is None:
            return self.stm_head.decode(mapped, whwh)
        return DecoderOutputs.from_flat(flat)

    def _make_parts(self, scope):
        """(GraphedPart of backbone + neck or None, GraphedPart giving the decoder's outputs) of ``scope``.

        A part holding the backbone skips bn_act's collectives in a capture's warm-up (see skip_collectives). The
        backbone part differentiates the backbone's and the neck's parameters only: handed the decoder's too, its
        backward would hold back their gradients (see GraphedPart's ``submodules``)."""
        if scope == "model":
            return None, GraphedPart(self._model_outputs, self, self.max_graphs, name="backbone+decoder",
                                     warmup=bn_act.skip_collectives)
        decoder = GraphedPart(self._decoder_outputs, self.stm_head, self.max_graphs, name="decoder")
        if scope == "split":
            return GraphedPart(self._feature_outputs, self, self.max_graphs, name="backbone+neck",
                               warmup=bn_act.skip_collectives, submodules=("backbone", "lateral_convs")), decoder
        if self.cuda_graph in BACKBONE_GRAPH_SCOPES:
            logger.info("MODEL.CUDA_GRAPH.SCOPE %s: the backbone's SyncBatchNorm layers synchronize with PyTorch's "
                        "collectives (training on several processes, MODEL.CUDA_GRAPH.SYNC_BN False), so the CUDA "
                        "graphs of training steps cover the decoder stages only", self.cuda_graph)
        return None, decoder

    def _backbone_synchronizes(self):
        """Whether the backbone's forward holds collectives that the graphs cannot capture: PyTorch's, of a
        SyncBatchNorm in training mode on several processes (``bn_act.sync_group``) on a process group that
        DistributedDataParallel may share. In eval mode (validation, ``MODEL.BACKBONE.FROZEN_BN``) SyncBatchNorm
        uses its running statistics and synchronizes nothing; on a ``bn_act.new_sync_group`` group
        (``MODEL.CUDA_GRAPH.SYNC_BN``) it runs bn_act's kernels, whose collectives the graphs capture."""
        if self._sync_bns is None:
            self._sync_bns = [m for m in self.backbone.modules() if isinstance(m, nn.SyncBatchNorm)]
        groups = (bn_act.sync_group(m) for m in self._sync_bns)
        return any(g is not None and not bn_act.kernels_synchronize(g) for g in groups)

    def _feature_outputs(self, *videos):
        return tuple(self.features(*videos)[1])

    def _model_outputs(self, *videos_and_whwh):
        *videos, whwh = videos_and_whwh
        mapped = self.features(*videos)[1]
        return self.stm_head.decode(mapped, whwh).flat()

    def _decoder_outputs(self, *mapped_and_whwh):
        *mapped, whwh = mapped_and_whwh
        return self.stm_head.decode(mapped, whwh).flat()


@contextlib.contextmanager
def tf32_matmuls():
    """CUDA float32 matmuls on TF32 tensor cores inside; the previous setting restored on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@DETECTOR_REGISTRY.register("STMDetector")
def build_stm_detector(cfg):
    """STMDetector from MODEL.BACKBONE.*, RESNET.*/SLOWFAST.*/NONLOCAL.*/ViT.* and MODEL.STM.*."""
    backbone = build_backbone(cfg)
    graph = cfg.MODEL.CUDA_GRAPH
    return STMDetector(backbone, build_neck(cfg, backbone.out_channels), build_stm_decoder(cfg),
                       cuda_graph=graph.SCOPE, max_graphs=graph.MAX_GRAPHS, tf32_matmul=cfg.TF32_MATMUL)
