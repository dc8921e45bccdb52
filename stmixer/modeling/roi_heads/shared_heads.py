"""Registry of the "shared heads" of two-stage detectors: modules between RoI extraction and the bbox head.

mmaction2's ``AVARoIHead`` optionally runs a shared head on the pooled RoI features before
classifying them: ACRN (actor-centric relations with the global feature map) and LFB's
feature-bank operators (non-local / max / avg over a long-term feature bank) are such heads.

A builder registered here is called as ``builder(cfg, in_channels)`` and returns an
``nn.Module`` with

* ``out_channels`` (int): channels of the RoI features it returns, what the bbox head reads;
* ``forward(roi_feats, feat, rois, img_keys)`` -> ``roi_feats'`` where
    - ``roi_feats``: ``[K, C, T', oh, ow]`` from ``RoIExtractor3D`` (``C = in_channels``);
    - ``feat``: ``[B, C_map, T', H, W]``, the extractor's pooled, concatenated feature map;
    - ``rois``: ``[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``, absolute pixels of the padded input;
    - ``img_keys``: B strings ``"<video_id>,<timestamp>"`` (timestamp in whole seconds, as AVA's
      CSVs and mmaction2's ``img_key``), what feature-bank heads look the clip up by;
    - returns ``[K, out_channels, T'', oh', ow']``.
"""

from ...utils.registry import Registry

# MODEL.ROI_HEAD.SHARED_HEAD -> builder(cfg, in_channels) returning the shared-head module ("" = none).
SHARED_HEAD_REGISTRY = Registry("shared head", config_key="MODEL.ROI_HEAD.SHARED_HEAD")
