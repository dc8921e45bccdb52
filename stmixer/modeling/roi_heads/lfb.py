"""Long-term feature bank heads of mmaction2 (``FBOHead`` with its operators, ``LFBInferHead``).

Two shared heads (see ``shared_heads.py`` for the interface) around a ``LongTermFeatureBank``
(``stmixer.modeling.roi_heads.lfb_bank``):

* ``FBOHead`` ("FBONonLocal" / "FBOMax" / "FBOAvg"): pools each RoI's features to ``[K, C, 1, 1, 1]``
  (temporal then spatial pooling), samples the clip's long-term features from the bank once per RoI
  (mmaction2 draws one ``randperm`` per RoI), runs a feature-bank operator on (short-term, long-term)
  and returns ``cat([short_term, operator_out], channels)``:
  non-local: ``C + latent_channels`` channels; max / avg: ``C + lfb_channels``.
* ``LFBInferHead`` ("LFBInfer"): returns its input untouched and records, per RoI, the pooled feature
  under the clip's img key; ``bank()`` / ``write()`` turn the records into a bank file (rank-aware).

Parameter names equal mmaction2's: a checkpoint's ``roi_head.shared_head.*`` keys load into
``FBOHead`` with that prefix removed (``fbo.st_feat_conv.weight``,
``fbo.non_local_layer_1.st_feat_conv.conv.weight``, ``fbo.non_local_layer_1.ln.weight``, ...).
"""

import logging
import os

import torch
from torch import nn

from .lfb_bank import LongTermFeatureBank, load_banks, parse_img_key, save_bank, load_bank
from ...errors import UserError
from ...utils import distributed as comm
from .shared_heads import SHARED_HEAD_REGISTRY

logger = logging.getLogger(__name__)

POOL_TYPES = ("avg", "max")


def _pools(temporal_pool_type, spatial_pool_type):
    for name, value in (("temporal_pool_type", temporal_pool_type), ("spatial_pool_type", spatial_pool_type)):
        if value not in POOL_TYPES:
            raise UserError(f"{name}: expected one of {POOL_TYPES}, got {value!r}")
    temporal = nn.AdaptiveAvgPool3d((1, None, None)) if temporal_pool_type == "avg" else \
        nn.AdaptiveMaxPool3d((1, None, None))
    spatial = nn.AdaptiveAvgPool3d((None, 1, 1)) if spatial_pool_type == "avg" else nn.AdaptiveMaxPool3d((None, 1, 1))
    return temporal, spatial


def _check_img_keys(img_keys, who):
    if img_keys is None:
        raise ValueError(f"{who} needs the clips' img keys ('video_id,second'): the detector must pass "
                         "img_keys built from the batch metadata")


def _kaiming_fan_out(conv):
    """mmengine's ``kaiming_init`` defaults: normal, fan_out, relu gain; bias 0."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _ConvUnit(nn.Module):
    """A 1x1x1 ``Conv3d`` held as ``.conv`` (the parameter layout of mmcv's ``ConvModule`` without norm /
    activation, so state-dict keys read ``<name>.conv.weight``)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class NonLocalLayer(nn.Module):
    """mmaction2's ``NonLocalLayer`` of ``FBONonLocal``: attention of the short-term features over the
    long-term ones.

    Args:
        st_feat_channels, lt_feat_channels, latent_channels: channels of the short-term input, the
            long-term input and the attention space (the output has ``st_feat_channels``).
        num_st_feat, num_lt_feat: number of short-term / long-term feature vectors per RoI.
        use_scale: divide the affinities by ``sqrt(latent_channels)``.
        pre_activate: LayerNorm (if ``pre_activate_with_ln``) + ReLU before ``out_conv``; otherwise
            LayerNorm after it (and ``FBONonLocal`` applies ReLU after the residual sum).
        dropout_ratio: dropout on the output (mmaction2's ``FBONonLocal`` never passes it: 0.2).
        zero_init_out_conv: zero ``out_conv`` in ``init_weights`` (see ``FBONonLocal``).

    Shapes: ``st_feat`` ``[N, st_feat_channels, num_st_feat, 1, 1]``, ``lt_feat``
    ``[N, lt_feat_channels, num_lt_feat, 1, 1]`` -> ``[N, st_feat_channels, num_st_feat, 1, 1]``.
    """

    def __init__(self, st_feat_channels, lt_feat_channels, latent_channels, num_st_feat, num_lt_feat,
                 use_scale=True, pre_activate=True, pre_activate_with_ln=True, dropout_ratio=0.2,
                 zero_init_out_conv=False):
        super().__init__()
        self.latent_channels = latent_channels
        self.num_st_feat, self.num_lt_feat = num_st_feat, num_lt_feat
        self.use_scale, self.pre_activate, self.pre_activate_with_ln = use_scale, pre_activate, pre_activate_with_ln
        self.dropout_ratio = dropout_ratio
        self.zero_init_out_conv = zero_init_out_conv
        self.st_feat_conv = _ConvUnit(st_feat_channels, latent_channels)
        self.lt_feat_conv = _ConvUnit(lt_feat_channels, latent_channels)
        self.global_conv = _ConvUnit(lt_feat_channels, latent_channels)
        ln_channels = latent_channels if pre_activate else st_feat_channels
        self.ln = nn.LayerNorm([ln_channels, num_st_feat, 1, 1])
        self.relu = nn.ReLU()
        self.out_conv = _ConvUnit(latent_channels, st_feat_channels)
        self.dropout = nn.Dropout(dropout_ratio) if dropout_ratio > 0 else None

    def init_weights(self, zero_init_as_mmaction2=True):
        """Kaiming (fan_out) convolutions; ``zero_init_out_conv`` zeroes ``out_conv`` unless
        ``zero_init_as_mmaction2`` (mmaction2's ``constant_init`` is given the ``ConvModule``, which has no
        ``weight`` attribute, so its zero init never happens)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                _kaiming_fan_out(m)
        if self.zero_init_out_conv and not zero_init_as_mmaction2:
            nn.init.zeros_(self.out_conv.conv.weight)
            nn.init.zeros_(self.out_conv.conv.bias)

    def forward(self, st_feat, lt_feat):
        n, c = st_feat.size(0), self.latent_channels
        theta = self.st_feat_conv(st_feat).view(n, c, self.num_st_feat)
        phi = self.lt_feat_conv(lt_feat).view(n, c, self.num_lt_feat)
        g = self.global_conv(lt_feat).view(n, c, self.num_lt_feat)
        affinity = torch.matmul(theta.permute(0, 2, 1), phi)  # [N, num_st, num_lt]
        if self.use_scale:
            affinity = affinity / c ** 0.5
        attention = affinity.softmax(dim=-1)
        out = torch.matmul(g, attention.permute(0, 2, 1)).view(n, c, self.num_st_feat, 1, 1)
        if self.pre_activate:
            if self.pre_activate_with_ln:
                out = self.ln(out)
            out = self.relu(out)
        out = self.out_conv(out)
        if not self.pre_activate:
            out = self.ln(out)
        if self.dropout is not None:
            out = self.dropout(out)
        return out


class FBONonLocal(nn.Module):
    """Non-local feature-bank operator (mmaction2's ``FBONonLocal``).

    Args:
        st_feat_channels: channels of the pooled RoI features (``C``).
        lt_feat_channels: channels of the bank features.
        latent_channels: channels of the non-local layers and of the output.
        num_st_feat: short-term vectors per RoI (1: pooled).
        num_lt_feat: long-term vectors per RoI (``window_size * max_num_sampled_feat``).
        num_non_local_layers: stacked residual non-local layers (>= 1).
        st_feat_dropout_ratio, lt_feat_dropout_ratio: dropout after the input projections.
        pre_activate: see ``NonLocalLayer``.
        zero_init_out_conv: zero every layer's ``out_conv`` at init (effective only with
            ``zero_init_as_mmaction2=False``; mmaction2's flag does nothing, see ``NonLocalLayer``).
        nl_dropout_ratio: the layers' output dropout (mmaction2: its default 0.2, not configurable there).

    Shapes: ``st_feat`` ``[N, C, 1, 1, 1]``, ``lt_feat`` ``[N, lt_feat_channels, num_lt_feat, 1, 1]`` ->
    ``[N, latent_channels, 1, 1, 1]``.
    """

    def __init__(self, st_feat_channels, lt_feat_channels, latent_channels, num_st_feat, num_lt_feat,
                 num_non_local_layers=2, st_feat_dropout_ratio=0.2, lt_feat_dropout_ratio=0.2, pre_activate=True,
                 zero_init_out_conv=False, nl_dropout_ratio=0.2, zero_init_as_mmaction2=True):
        super().__init__()
        if num_non_local_layers < 1:
            raise UserError(f"num_non_local_layers: at least one non-local layer is needed, got "
                            f"{num_non_local_layers}")
        self.out_channels = latent_channels
        self.pre_activate = pre_activate
        self.zero_init_as_mmaction2 = zero_init_as_mmaction2
        self.st_feat_conv = nn.Conv3d(st_feat_channels, latent_channels, kernel_size=1)
        self.lt_feat_conv = nn.Conv3d(lt_feat_channels, latent_channels, kernel_size=1)
        self.st_feat_dropout = nn.Dropout(st_feat_dropout_ratio) if st_feat_dropout_ratio > 0 else None
        self.lt_feat_dropout = nn.Dropout(lt_feat_dropout_ratio) if lt_feat_dropout_ratio > 0 else None
        self.relu = None if pre_activate else nn.ReLU()
        self.non_local_layers = []
        for idx in range(num_non_local_layers):
            name = f"non_local_layer_{idx + 1}"
            self.add_module(name, NonLocalLayer(latent_channels, latent_channels, latent_channels, num_st_feat,
                                                num_lt_feat, pre_activate=pre_activate,
                                                dropout_ratio=nl_dropout_ratio,
                                                zero_init_out_conv=zero_init_out_conv))
            self.non_local_layers.append(name)
        self.init_weights()

    def init_weights(self):
        _kaiming_fan_out(self.st_feat_conv)
        _kaiming_fan_out(self.lt_feat_conv)
        for name in self.non_local_layers:
            getattr(self, name).init_weights(self.zero_init_as_mmaction2)

    def forward(self, st_feat, lt_feat):
        st_feat = self.st_feat_conv(st_feat)
        if self.st_feat_dropout is not None:
            st_feat = self.st_feat_dropout(st_feat)
        lt_feat = self.lt_feat_conv(lt_feat)
        if self.lt_feat_dropout is not None:
            lt_feat = self.lt_feat_dropout(lt_feat)
        for name in self.non_local_layers:
            out = st_feat + getattr(self, name)(st_feat, lt_feat)
            if self.relu is not None:
                out = self.relu(out)
            st_feat = out
        return st_feat


class FBOAvg(nn.Module):
    """Average of the long-term features (zero padding included, as mmaction2):
    ``[N, C_lt, L, 1, 1]`` -> ``[N, C_lt, 1, 1, 1]``."""

    def __init__(self, lt_feat_channels):
        super().__init__()
        self.out_channels = lt_feat_channels
        self.avg_pool = nn.AdaptiveAvgPool3d((1, None, None))

    def forward(self, st_feat, lt_feat):
        return self.avg_pool(lt_feat)


class FBOMax(nn.Module):
    """Maximum over the long-term features (zero padding included, as mmaction2):
    ``[N, C_lt, L, 1, 1]`` -> ``[N, C_lt, 1, 1, 1]``."""

    def __init__(self, lt_feat_channels):
        super().__init__()
        self.out_channels = lt_feat_channels
        self.max_pool = nn.AdaptiveMaxPool3d((1, None, None))

    def forward(self, st_feat, lt_feat):
        return self.max_pool(lt_feat)


class FBOHead(nn.Module):
    """mmaction2's ``FBOHead``: RoI features concatenated with a feature-bank operator's output.

    Args:
        bank: the ``LongTermFeatureBank`` (not a parameter or buffer: never in the state dict).
        fbo: ``FBONonLocal`` / ``FBOMax`` / ``FBOAvg`` (has ``out_channels``).
        in_channels: channels of the RoI features (``C``).
        window_size, max_num_sampled_feat: the bank lookup window (seconds) and features per second.
        temporal_pool_type, spatial_pool_type: pooling of the RoI features to ``[K, C, 1, 1, 1]``.
        generator: torch generator of the bank's ``randperm`` (None: the global one, as mmaction2).

    ``forward(roi_feats, feat, rois, img_keys)``: ``roi_feats`` ``[K, C, T, oh, ow]``; ``rois`` ``[K, 5]``
    (only the batch index column is read); ``img_keys`` B strings ``"video,second"``. Returns
    ``[K, C + fbo.out_channels, 1, 1, 1]`` (the short-term feature first).
    """

    def __init__(self, bank, fbo, in_channels, window_size=60, max_num_sampled_feat=5, temporal_pool_type="avg",
                 spatial_pool_type="max", generator=None):
        super().__init__()
        self.bank = bank
        self.fbo = fbo
        self.window_size, self.max_num_sampled_feat = int(window_size), int(max_num_sampled_feat)
        self.temporal_pool, self.spatial_pool = _pools(temporal_pool_type, spatial_pool_type)
        self.out_channels = in_channels + fbo.out_channels
        self.generator = generator

    def sample_lfb(self, rois, img_keys, dtype, device):
        """``[K, C_lt, window_size * max_num_sampled_feat, 1, 1]``: one bank lookup per RoI, in RoI order
        (the ``randperm`` draws of mmaction2's per-RoI loop)."""
        _check_img_keys(img_keys, "FBOHead")
        clips = [parse_img_key(img_keys[index]) for index in rois[:, 0].to(torch.int64).tolist()]
        feats = self.bank.sample_many(clips, self.window_size, self.max_num_sampled_feat, dtype=dtype,
                                      device=device, generator=self.generator)
        return feats.permute(0, 2, 1).contiguous()[..., None, None]

    def forward(self, roi_feats, feat, rois, img_keys):
        st_feat = self.spatial_pool(self.temporal_pool(roi_feats))
        lt_feat = self.sample_lfb(rois, img_keys, st_feat.dtype, st_feat.device)
        return torch.cat([st_feat, self.fbo(st_feat, lt_feat)], dim=1)


class LFBInferHead(nn.Module):
    """mmaction2's ``LFBInferHead``: records pooled RoI features per img key, returns its input.

    Args:
        in_channels: channels of the RoI features (the output keeps them).
        half_precision: store float16 features (mmaction2's ``use_half_precision``, default True);
            otherwise the features' own dtype (float32 for bfloat16).
        temporal_pool_type, spatial_pool_type: pooling to one ``C``-vector per RoI.

    Each call's RoIs are recorded under their clip's img key, in RoI order; a later call that brings
    the same img key again (a test sampler's padding repeat) replaces its features instead of
    appending duplicates. ``bank()`` builds this process's ``LongTermFeatureBank``; ``write()`` the file.
    """

    def __init__(self, in_channels, half_precision=True, temporal_pool_type="avg", spatial_pool_type="max"):
        super().__init__()
        self.out_channels = in_channels
        self.half_precision = bool(half_precision)
        self.temporal_pool, self.spatial_pool = _pools(temporal_pool_type, spatial_pool_type)
        self.records = {}  # img key -> list of [C] CPU tensors

    def reset(self):
        self.records = {}

    def forward(self, roi_feats, feat, rois, img_keys):
        _check_img_keys(img_keys, "LFBInferHead")
        with torch.no_grad():
            pooled = self.spatial_pool(self.temporal_pool(roi_feats)).flatten(1)
            if self.half_precision:
                pooled = pooled.half()
            elif pooled.dtype not in (torch.float16, torch.float32, torch.float64):
                pooled = pooled.float()  # e.g. bfloat16 under autocast: banks hold float16/32/64
            pooled = pooled.detach().cpu()
            batch = {}
            for row, index in zip(pooled, rois[:, 0].to(torch.int64).tolist()):
                batch.setdefault(img_keys[index], []).append(row.clone())
            self.records.update(batch)
        return roi_feats

    def bank(self):
        """This process's records as a bank (videos and seconds in first-seen order)."""
        videos = {}
        for key, rows in self.records.items():
            video_id, second = parse_img_key(key)
            videos.setdefault(video_id, {})[second] = torch.stack(rows)
        return LongTermFeatureBank(videos, source="<LFBInferHead>")

    def write(self, out_dir, split):
        """Write ``<out_dir>/lfb_<split>.npz`` from every process's records; returns its path.

        Each process saves ``_lfb_<split>_<rank>.npz``; after a barrier rank 0 merges them in rank
        order (per video, later ranks' seconds replace earlier ones, as mmaction2), writes the bank and
        removes the parts. Every process must call it.
        """
        os.makedirs(out_dir, exist_ok=True)
        rank, world = comm.get_rank(), comm.get_world_size()
        part = os.path.join(out_dir, f"_lfb_{split}_{rank}.npz")
        save_bank(self.bank(), part)
        comm.synchronize()
        path = os.path.join(out_dir, f"lfb_{split}.npz")
        if rank == 0:
            merged = {}
            for r in range(world):
                part_r = os.path.join(out_dir, f"_lfb_{split}_{r}.npz")
                for video_id, seconds in load_bank(part_r).videos.items():
                    merged.setdefault(video_id, {}).update(seconds)
                os.remove(part_r)
            bank = LongTermFeatureBank(merged, source=path)
            save_bank(bank, path)
            logger.info("LFB of %d features from %d videos written to %s", bank.num_features(), len(bank), path)
        comm.synchronize()
        return path


# ---------------------------------------------------------------------- builders (read MODEL.LFB)
def bank_paths(cfg):
    """``MODEL.LFB.FILES`` resolved under ``MODEL.LFB.PREFIX_PATH`` (absolute paths stay)."""
    return [os.path.join(cfg.MODEL.LFB.PREFIX_PATH, f) if cfg.MODEL.LFB.PREFIX_PATH else f for f in cfg.MODEL.LFB.FILES]


def build_bank(cfg):
    """The merged bank of ``MODEL.LFB.FILES`` (``MODEL.LFB.DTYPE`` converts it; "" keeps the files')."""
    paths = bank_paths(cfg)
    if not paths:
        raise UserError("MODEL.LFB.FILES is empty: an FBO shared head needs the feature bank files written by "
                        "python -m stmixer.tools.lfb_infer (lfb_train.npz, lfb_val.npz)")
    bank = load_banks(paths, dtype=cfg.MODEL.LFB.DTYPE or None)
    if bank.channels is None:
        raise UserError(f"MODEL.LFB.FILES {paths}: the bank holds no features")
    if bank.channels != cfg.MODEL.LFB.CHANNELS:
        raise UserError(f"MODEL.LFB.CHANNELS = {cfg.MODEL.LFB.CHANNELS} but the bank {paths} holds "
                        f"{bank.channels}-channel features")
    logger.info("Feature bank: %d videos, %d features of %d channels (%s) from %s", len(bank),
                bank.num_features(), bank.channels, bank.dtype, paths)
    return bank


def _fbo_head(cfg, in_channels, fbo):
    c = cfg.MODEL.LFB
    return FBOHead(build_bank(cfg), fbo, in_channels, window_size=c.WINDOW_SIZE,
                   max_num_sampled_feat=c.MAX_NUM_SAMPLED_FEAT, temporal_pool_type=c.TEMPORAL_POOL,
                   spatial_pool_type=c.SPATIAL_POOL)


@SHARED_HEAD_REGISTRY.register("FBONonLocal")
def build_fbo_nonlocal(cfg, in_channels):
    c = cfg.MODEL.LFB
    fbo = FBONonLocal(in_channels, c.CHANNELS, c.LATENT_CHANNELS, num_st_feat=1,
                      num_lt_feat=c.WINDOW_SIZE * c.MAX_NUM_SAMPLED_FEAT, num_non_local_layers=c.NUM_NL_LAYERS,
                      st_feat_dropout_ratio=c.ST_FEAT_DROPOUT, lt_feat_dropout_ratio=c.LT_FEAT_DROPOUT,
                      pre_activate=c.PRE_ACTIVATE, zero_init_out_conv=c.ZERO_INIT_OUT_CONV,
                      nl_dropout_ratio=c.NL_DROPOUT, zero_init_as_mmaction2=c.ZERO_INIT_AS_MMACTION2)
    return _fbo_head(cfg, in_channels, fbo)


@SHARED_HEAD_REGISTRY.register("FBOMax")
def build_fbo_max(cfg, in_channels):
    return _fbo_head(cfg, in_channels, FBOMax(cfg.MODEL.LFB.CHANNELS))


@SHARED_HEAD_REGISTRY.register("FBOAvg")
def build_fbo_avg(cfg, in_channels):
    return _fbo_head(cfg, in_channels, FBOAvg(cfg.MODEL.LFB.CHANNELS))


@SHARED_HEAD_REGISTRY.register("LFBInfer")
def build_lfb_infer(cfg, in_channels):
    c = cfg.MODEL.LFB
    return LFBInferHead(in_channels, half_precision=c.INFER_HALF_PRECISION, temporal_pool_type=c.TEMPORAL_POOL,
                        spatial_pool_type=c.SPATIAL_POOL)
