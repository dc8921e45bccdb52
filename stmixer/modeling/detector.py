"""The STMixer detector: backbone -> neck -> decoder, as the official ``STMDetector``.

Attribute names (``backbone``, ``lateral_convs``, ``stm_head``) are the
official ones, so official checkpoints map onto this model key for key.
"""

from torch import nn

from .build import DETECTOR_REGISTRY, build_backbone
from .necks import build_neck
from .stmixer import build_stm_decoder
from .trace import record


class STMDetector(nn.Module):
    """One-stage sparse action detector.

    Args:
        backbone: video backbone; ``backbone(videos)`` -> 4 maps ``[B, C_l, T, H_l, W_l]``
            (strides 4, 8, 16, 32), with ``num_pathways`` and ``out_channels``.
        neck: maps the 4 levels to ``[B, D, T, H_l, W_l]``.
        decoder: the STMixer decoder (``stmixer.modeling.stmixer``).
    """

    def __init__(self, backbone, neck, decoder):
        super().__init__()
        self.backbone = backbone
        self.lateral_convs = neck
        self.stm_head = decoder

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
        backbone_maps, mapped = self.features(slow_video, fast_video)
        for i, (level, out) in enumerate(zip(backbone_maps, mapped)):
            record(trace, f"backbone_l{i}", level)
            record(trace, f"mapped_l{i}", out)
        return self.stm_head(mapped, whwh, gt_boxes, gt_labels, trace=trace)


@DETECTOR_REGISTRY.register("STMDetector")
def build_stm_detector(cfg):
    """STMDetector from MODEL.BACKBONE.*, RESNET.*/SLOWFAST.*/NONLOCAL.*/ViT.* and MODEL.STM.*."""
    backbone = build_backbone(cfg)
    return STMDetector(backbone, build_neck(cfg, backbone.out_channels), build_stm_decoder(cfg))
