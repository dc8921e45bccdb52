"""EVAD's ViT backbone: VideoMAE ViT with keyframe-centric token pruning (KTP).

EVAD (Chen et al., ICCV 2023; official code MCG-NJU/EVAD ``projects/evad/models``) runs the
VideoMAE ViT of ``vit.py`` (same blocks, same weights and keys) with two changes:

* The tokens of the keyframe (temporal token ``t // 2``) are moved to the front of the sequence:
  ``[keyframe (h*w tokens), frames 0 .. t/2-1, frames t/2+1 .. t-1]``, each frame in (y, x) order.
  The non-keyframe tokens are numbered ``0 .. (t-1)*h*w - 1`` in that order ("non-keyframe index").
* In every block whose keep rate r < 1, after the attention residual and before the MLP residual,
  only ``ceil(r * N)`` of the current N tokens stay: all keyframe tokens, plus the
  ``ceil(r * N) - h*w`` non-keyframe tokens with the highest score, where the score of a
  non-keyframe token is the attention probability it receives (after attention dropout), the rows
  of the keyframe queries multiplied by the enhanced weight, averaged over all N queries and then
  over the heads. The kept non-keyframe tokens follow the keyframe in descending score
  (``torch.topk`` order), in training and in evaluation alike.

The FPN reads the keyframe tokens (un-normalized block outputs) after four blocks
(``fpn_indices``), resized with nearest interpolation by 4, 2, 1 and 0.5 (strides 4, 8, 16, 32 of
the input); the decoder reads the final normalized tokens and where they came from.

Differences from the official code (values are equal wherever the official code runs):
* its backward pass fails without activation checkpointing (the enhanced weight is applied in place
  to the attention probabilities saved for backward); here the ranking works on a detached copy,
  so ``use_checkpoint`` on and off give the same values and gradients;
* a layer whose ``ceil(r * N)`` equals N keeps every token (the official code then gathers the
  tokens with the global indices, which is the identity before the first pruning and wrong or an
  index error after it).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..build import BACKBONE_REGISTRY
from .vit import VisionTransformer3D

# Nearest-neighbour scale factors applied to the keyframe maps of the four FPN layers (strides 4, 8, 16, 32).
FPN_SCALES = (4.0, 2.0, None, 0.5)


@dataclass
class EVADFeatures:
    """What EVAD's backbone hands to its neck and decoder (token grid ``(t, h, w)``, S = h * w).

    Attributes:
        features: 4 keyframe maps for the FPN, ``[B, D, 4h, 4w]``, ``[B, D, 2h, 2w]``, ``[B, D, h, w]``,
            ``[B, D, floor(h/2), floor(w/2)]`` (official ``res2`` .. ``res5``; block outputs before ``norm``).
        tokens: ``[B, S + K, D]`` final tokens after ``norm``: the S keyframe tokens in (y, x) order, then the
            K kept non-keyframe tokens in the order of ``kept_index``.
        kept_index: ``[B, K]`` int64 non-keyframe index (see the module docstring) of each kept token, in the
            official order (descending score of the last pruning layer).
        dropped_mask: ``[B, (t-1)*S]`` bool, True where a non-keyframe token was dropped (official ``mask``).
        grid: the token grid ``(t, h, w)``.
        keyframe: the temporal token index of the keyframe (``t // 2``).
    """

    features: list
    tokens: torch.Tensor
    kept_index: torch.Tensor
    dropped_mask: torch.Tensor
    grid: tuple
    keyframe: int


def keyframe_centric_scores(weights, num_key_tokens, enhanced_weight):
    """Score of each non-keyframe token for keyframe-centric pruning.

    Args:
        weights: ``[B, heads, N, N]`` attention probabilities (query, key) with the keyframe's
            ``num_key_tokens`` tokens first; not modified.
        num_key_tokens: S, the keyframe's tokens.
        enhanced_weight: factor on the rows of the keyframe queries.

    Returns:
        ``[B, N - S]``: attention received by each non-keyframe key, keyframe query rows times
        ``enhanced_weight``, mean over the N queries, then mean over the heads (the official order).
    """
    scores = weights[..., num_key_tokens:].detach().clone()
    scores[:, :, :num_key_tokens] *= enhanced_weight
    return scores.mean(dim=2).mean(dim=1)


class EVADVisionTransformer(VisionTransformer3D):
    """VideoMAE ViT with EVAD's keyframe-centric token pruning (see the module docstring).

    Input: ``[video]``, video ``[B, C_in, T, H, W]`` with ``T / tubelet`` even. Output: ``EVADFeatures``.
    ``out_channels`` = [D] * 4 (the FPN inputs).

    Args:
        keep_rates: one keep rate in (0, 1] per block (1 = no pruning in that block).
        enhanced_weight: factor on the keyframe queries' attention in the ranking (1 = none).
        fpn_indices: the 4 blocks (0-based, increasing) whose keyframe tokens feed the FPN.
        **vit_kwargs: the arguments of ``VisionTransformer3D``.
    """

    def __init__(self, keep_rates, enhanced_weight=1.0, fpn_indices=(2, 5, 8, 11), **vit_kwargs):
        super().__init__(**vit_kwargs)
        keep_rates = [float(r) for r in keep_rates]
        if len(keep_rates) != self.depth:
            raise ValueError(f"EVAD.KEEP_RATES has {len(keep_rates)} entries, expected one per block "
                             f"(ViT.DEPTH = {self.depth})")
        if not all(0.0 < r <= 1.0 for r in keep_rates):
            raise ValueError(f"EVAD.KEEP_RATES {keep_rates}: expected every rate in (0, 1]")
        fpn_indices = [int(i) for i in fpn_indices]
        if len(fpn_indices) != 4 or fpn_indices != sorted(set(fpn_indices)) or not (
                0 <= fpn_indices[0] and fpn_indices[-1] < self.depth):
            raise ValueError(f"EVAD.FPN_INDICES {fpn_indices}: expected 4 increasing block indices in "
                             f"[0, {self.depth})")
        self.keep_rates = keep_rates
        self.enhanced_weight = float(enhanced_weight)
        self.fpn_indices = fpn_indices

    def forward(self, videos):
        """``[video [B, C, T, H, W]]`` -> ``EVADFeatures`` (see its docstring for the shapes)."""
        if not isinstance(videos, (list, tuple)) or len(videos) != 1:
            raise ValueError("EVADVisionTransformer expects a list with one video tensor [B, 3, T, H, W]")
        x = self.patch_embed(videos[0])
        b, d, t, h, w = x.shape
        if t % 2:
            raise ValueError(f"EVAD needs an even number of temporal tokens (T / ViT.TUBELET_SIZE), got {t}")
        x = x.flatten(2).transpose(1, 2)
        x = self.pos_drop(x + self.position_embedding((t, h, w), x.dtype, x.device))
        s, key = h * w, t // 2
        x = x.reshape(b, t, s, d)
        x = torch.cat([x[:, key:key + 1], x[:, :key], x[:, key + 1:]], dim=1).reshape(b, t * s, d)
        index = torch.arange(t * s - s, device=x.device).unsqueeze(0).repeat(b, 1)
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        features = []
        for i, block in enumerate(self.blocks):
            x, index = self._block_forward(block, x, index, self.keep_rates[i], s, recompute)
            if i in self.fpn_indices:
                scale = FPN_SCALES[self.fpn_indices.index(i)]
                level = x[:, :s].reshape(b, h, w, d).permute(0, 3, 1, 2)
                if scale is not None:
                    level = F.interpolate(level, scale_factor=scale, mode="nearest")
                features.append(level)
        dropped = torch.ones(b, t * s - s, dtype=torch.bool, device=x.device)
        dropped.scatter_(1, index, False)
        return EVADFeatures(features, self.norm(x), index, dropped, (t, h, w), key)

    def _block_forward(self, block, x, index, keep_rate, num_key_tokens, recompute):
        """One block on ``x`` ``[B, N, D]`` (keyframe first) with pruning at ``keep_rate``.

        ``index`` ``[B, N - S]`` is the non-keyframe index of each current non-keyframe token.
        Returns the block output ``[B, N', D]`` and the index of its non-keyframe tokens ``[B, N' - S]``.
        """
        n = x.shape[1]
        num_keep = math.ceil(keep_rate * n) if keep_rate < 1 else n
        if num_keep >= n:
            return (checkpoint(block, x, use_reentrant=False) if recompute else block(x)), index
        num_keep -= num_key_tokens
        if num_keep < 0:
            raise ValueError(f"EVAD keep rate {keep_rate} keeps {num_keep + num_key_tokens} of {n} tokens, fewer "
                             f"than the keyframe's {num_key_tokens}: raise EVAD.KEEP_RATES")
        if recompute:
            x, weights = checkpoint(block.attention_part, x, True, use_reentrant=False)
        else:
            x, weights = block.attention_part(x, return_weights=True)
        scores = keyframe_centric_scores(weights, num_key_tokens, self.enhanced_weight)
        top = torch.topk(scores, num_keep, dim=1, largest=True).indices  # [B, K] into the current non-key tokens
        kept = torch.gather(x[:, num_key_tokens:], 1, top.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :num_key_tokens], kept], dim=1)
        index = torch.gather(index, 1, top)
        x = checkpoint(block.mlp_part, x, use_reentrant=False) if recompute else block.mlp_part(x)
        return x, index


@BACKBONE_REGISTRY.register("EVAD-ViT-B", "EVAD-ViT-L")
def build_evad_vit(cfg):
    """EVAD's ViT from the ``ViT.*`` keys (as ``MAE-ViT-B`` / ``MAE-ViT-L``) and the ``EVAD.*`` pruning keys.

    As the official EVAD, the fixed position table is made for ``DATA.NUM_FRAMES`` frames (16 in every
    model-zoo config, where this equals the ``MAE-ViT-*`` table)."""
    v, e = cfg.ViT, cfg.EVAD
    return EVADVisionTransformer(
        keep_rates=e.KEEP_RATES, enhanced_weight=e.ENHANCED_WEIGHT, fpn_indices=e.FPN_INDICES,
        embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO,
        qkv_bias=v.QKV_BIAS, qk_scale=v.QK_SCALE, init_values=v.INIT_VALUES, patch_size=v.PATCH_SIZE,
        tubelet_size=v.TUBELET_SIZE, in_chans=v.IN_CHANS, pretrain_img_size=v.PRETRAIN_IMG_SIZE,
        pretrain_num_frames=cfg.DATA.NUM_FRAMES, use_learnable_pos_emb=v.USE_LEARNABLE_POS_EMB,
        drop_rate=v.DROP_RATE, attn_drop_rate=v.ATTN_DROP_RATE, drop_path_rate=v.DROP_PATH_RATE,
        use_checkpoint=v.USE_CHECKPOINT, no_weight_decay_names=v.NO_WEIGHT_DECAY,
    )
