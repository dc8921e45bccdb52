"""Video Vision Transformer (VideoMAE / VideoMAEv2 ViT-B and ViT-L) as used by STMixer.

Keys follow the official model: ``patch_embed.proj``, ``blocks.<i>.{norm1,
attn.{qkv.weight,q_bias,v_bias,proj},norm2,mlp.{fc1,fc2}}``, ``norm`` (and
``pos_embed`` only for the learnable position table, ``blocks.<i>.gamma_{1,2}``
only with layer scale). Reference quirks B6, B7, P2, T2, T5.

The fixed sine-cosine position table is not a parameter and not in the state
dict: it is computed in float64, rounded to float32, resized in float32 when
the token grid differs from the pre-training grid (bicubic per temporal
slice; stmixer addition: then linear in time when the number of temporal
tokens differs, where the official code fails), and only then cast to the
model dtype.
"""

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..build import BACKBONE_REGISTRY
from ..layers.compiled import CompiledFunction

# Frames of the clips the VideoMAE checkpoints were pre-trained on (sets the position grid, 16 // tubelet).
PRETRAIN_NUM_FRAMES = 16
# Values of ViT.RECOMPUTE (which blocks USE_CHECKPOINT recomputes).
RECOMPUTE_CHOICES = ("all", "auto")
# Resized fixed position tables kept per (grid, dtype, device); multi-scale training sees a few grids.
_TABLE_CACHE_SIZE = 8


def sinusoid_position_table(num_positions, dim):
    """The VideoMAE sine-cosine table ``[num_positions, dim]`` float32.

    angle(p, j) = p / 10000 ** (2 * (j // 2) / dim); even j -> sin, odd j -> cos;
    computed in float64 with numpy exactly as the official code, then rounded to float32.
    """
    denominators = np.array([np.power(10000, 2 * (j // 2) / dim) for j in range(dim)])
    table = np.arange(num_positions, dtype=np.float64)[:, None] / denominators[None, :]
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.from_numpy(table.astype(np.float32))


def resize_position_table(table, src_grid, dst_grid):
    """Resize a position table ``[t0*h0*w0, C]`` (token order t, y, x) to ``dst_grid`` ``(t, h, w)``.

    Each temporal slice is resized spatially with bicubic interpolation
    (align_corners False), as the official code; when t != t0 the result is then
    linearly interpolated along time (align_corners False; stmixer addition).
    Computed in the dtype of ``table``. Returns ``[t*h*w, C]``.
    """
    t0, h0, w0 = src_grid
    t, h, w = dst_grid
    channels = table.shape[-1]
    if table.shape[0] != t0 * h0 * w0:
        raise ValueError(f"position table has {table.shape[0]} rows, expected {t0}x{h0}x{w0}")
    grid = table.reshape(t0, h0, w0, channels)
    if (h, w) != (h0, w0):
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1)
    if t != t0:
        per_position = grid.permute(1, 2, 3, 0).reshape(h * w, channels, t0)
        per_position = F.interpolate(per_position, size=t, mode="linear", align_corners=False)
        grid = per_position.reshape(h, w, channels, t).permute(3, 0, 1, 2)
    return grid.reshape(t * h * w, channels)


def position_embedding(module, grid, dtype, device):
    """Position table of ``module`` for a token grid ``(t, h, w)``: ``[1, t*h*w, D]`` in ``dtype`` on ``device``.

    ``module`` has ``pos_embed`` (learnable ``[1, N, D]``, or None), ``pos_grid`` (the table's grid) and, when
    ``pos_embed`` is None, ``_fixed_table`` (the sinusoid table ``[N, D]``), ``_table_cache`` (an
    ``OrderedDict``, least recently used entry evicted beyond ``_TABLE_CACHE_SIZE``) and ``_captured_tables``
    (every table read inside a CUDA graph capture, kept for the graph's replays). A grid other than
    ``pos_grid`` is resized trilinearly; the fixed table on the CPU in float32 (as the official code), then
    cast and moved. Shared by the ViT backbone and EVAD's context decoder.
    """
    if module.pos_embed is not None:
        table = module.pos_embed[0]
        if tuple(grid) != module.pos_grid:
            table = resize_position_table(table, module.pos_grid, grid)
        return table.unsqueeze(0).to(dtype)
    cache = module._table_cache
    key = (tuple(grid), dtype, str(device))
    if key in cache:
        cache.move_to_end(key)
    else:
        table = module._fixed_table
        if tuple(grid) != module.pos_grid:
            table = resize_position_table(table, module.pos_grid, grid)
        cache[key] = table.unsqueeze(0).to(device=device, dtype=dtype)
        if len(cache) > _TABLE_CACHE_SIZE:
            cache.popitem(last=False)
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        # a CUDA graph replays reads of this memory: keep the table alive after the LRU cache lets it go
        module._captured_tables[key] = cache[key]
    return cache[key]


def drop_path(x, rate, training):
    """Stochastic depth: zero whole samples of ``x`` ``[B, ...]`` with probability ``rate``, scale the
    rest by ``1 / (1 - rate)``; identity in eval mode or at rate 0."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d kernel = stride = (tubelet, patch, patch) with bias.

    ``[B, C_in, T, H, W]`` -> ``[B, D, T/tubelet, H/patch, W/patch]``.
    """

    def __init__(self, in_chans, embed_dim, patch_size, tubelet_size):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def _check(self, x):
        _, _, t, h, w = x.shape
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"ViT input [B, C, T, H, W] = {tuple(x.shape)}: T must be a multiple of the tubelet size "
                f"{self.tubelet_size} and H, W multiples of the patch size {self.patch_size}"
            )

    def forward(self, x):
        self._check(x)
        return self.proj(x)

    def tokens(self, x, as_matmul=False):
        """``[B, C_in, T, H, W]`` -> (tokens ``[B, N, D]`` in (t, h, w) order, the grid ``(t, h, w)``).

        ``as_matmul``: the patches (non-overlapping, stride = kernel) copied out as rows of ``C_in * tubelet *
        patch^2`` values and multiplied by the flattened kernel, one matrix product instead of the convolution
        (the same sums in another order). With 3 input channels cuDNN has no tensor-core kernel for the
        bfloat16 convolution (2.7 ms for 8 ViT-B clips of 256x448 on an H100)."""
        if not as_matmul:
            y = self(x)
            return y.flatten(2).transpose(1, 2), tuple(y.shape[2:])
        self._check(x)
        b, c, frames, height, width = x.shape
        k, p = self.tubelet_size, self.patch_size
        t, h, w = frames // k, height // p, width // p
        patches = x.reshape(b, c, t, k, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t * h * w, -1)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(patches, weight, self.proj.bias), (t, h, w)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    The input projection ``qkv`` has no bias tensor; with ``qkv_bias`` its bias is
    ``cat(q_bias, 0, v_bias)`` (no key bias). Queries are scaled by ``scale``
    (default head_dim ** -0.5). ``[B, N, D]`` -> ``[B, N, D]``.
    """

    def __init__(self, dim, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ViT.EMBED_DIM {dim} is not divisible by ViT.NUM_HEADS {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, return_weights=False):
        """``[B, N, D]`` -> ``[B, N, D]``; with ``return_weights`` also the attention probabilities
        ``[B, heads, N(query), N(key)]`` after attention dropout, computed explicitly (``(q * scale) @ k^T``,
        softmax, dropout, ``@ v``, as the official VideoMAE code) instead of through the fused kernel."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if return_weights:
            weights = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            weights = F.dropout(weights, self.attn_drop, self.training)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
            )
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))
        return (out, weights) if return_weights else out


class Mlp(nn.Module):
    """Linear -> GELU (erf) -> Linear -> dropout. ``[B, N, D]`` -> ``[B, N, D]``."""

    def __init__(self, dim, hidden_dim, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


def _layer_scaled(y, gamma):
    """``gamma * y`` with a layer scale ``gamma`` ``[D]``, ``y`` unchanged without one (None)."""
    return y if gamma is None else gamma * y


def _attention_branch(block, x):
    """``g1 * attn(norm1(x))`` of ``block`` (before drop path and the residual): ``[B, N, D]`` -> same."""
    return _layer_scaled(block.attn(block.norm1(x)), block.gamma_1)


def _mlp_branch(block, x):
    """``g2 * mlp(norm2(x))`` of ``block`` (before drop path and the residual): ``[B, N, D]`` -> same."""
    return _layer_scaled(block.mlp(block.norm2(x)), block.gamma_2)


# The two residual branches, compiled where ``Block.compile_mode`` asks (``ViT.COMPILE``); one compilation serves
# every block. Drop path and the residual addition stay outside (each block has its own rate).
ATTENTION_BRANCH = CompiledFunction(_attention_branch, "ViT attention branch")
MLP_BRANCH = CompiledFunction(_mlp_branch, "ViT MLP branch")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + dp(g1 * attn(norm1(x)))``, ``x + dp(g2 * mlp(norm2(x)))``.

    ``dp`` is per-sample drop path at ``drop_path_rate``; the layer scales g1, g2
    exist only when ``init_values`` > 0. LayerNorm eps 1e-6. ``[B, N, D]`` -> same.
    ``compile_mode`` ("auto", True, False; set by the backbone from ``ViT.COMPILE``) runs the two
    branches through ``torch.compile`` (``ATTENTION_BRANCH``, ``MLP_BRANCH``).
    """

    compile_mode = False

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path_rate=0.0, init_values=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path_rate = drop_path_rate
        if init_values > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _residual(self, x, branch):
        """``x + dp(branch)``: the residual addition after this block's drop path."""
        return x + drop_path(branch, self.drop_path_rate, self.training)

    def attention_part(self, x, return_weights=False):
        """``x + dp(g1 * attn(norm1(x)))`` ``[B, N, D]``; with ``return_weights`` also the attention
        probabilities ``[B, heads, N, N]`` (see ``Attention.forward``)."""
        if not return_weights:
            return self._residual(x, ATTENTION_BRANCH(self.compile_mode, self, x))
        y, weights = self.attn(self.norm1(x), return_weights=True)
        return self._residual(x, _layer_scaled(y, self.gamma_1)), weights

    def mlp_part(self, x):
        """``x + dp(g2 * mlp(norm2(x)))`` ``[B, N, D]``."""
        return self._residual(x, MLP_BRANCH(self.compile_mode, self, x))

    def forward(self, x):
        return self.mlp_part(self.attention_part(x))


class VisionTransformer3D(nn.Module):
    """VideoMAE ViT backbone returning its single 1/16 map as all four levels.

    Input: ``[video]``, video ``[B, C_in, T, H, W]`` (T a multiple of the tubelet
    size, H and W of the patch size). Output: 4 references to the same map
    ``[B, D, T/tubelet, H/patch, W/patch]``; ``out_channels`` = [D] * 4.

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale, init_values: the transformer.
        patch_size, tubelet_size, in_chans: the tubelet embedding.
        pretrain_img_size, pretrain_num_frames: the grid of the position table.
        use_learnable_pos_emb: learn the table (parameter ``pos_embed`` ``[1, N, D]``) instead of the fixed one.
        drop_rate, attn_drop_rate: dropout after the position embedding / in MLPs, on attention weights.
        drop_path_rate: stochastic depth of the last block; block i uses linspace(0, rate, depth)[i].
        use_checkpoint: recompute blocks in the backward pass instead of keeping their activations (training
            with grad only); which ones ``recompute`` says.
        no_weight_decay_names: parameter names exempt from weight decay (besides 1-D / bias ones).
        recompute: with ``use_checkpoint``: "all" (every block, the official behaviour) or "auto" (on CUDA, the
            fewest blocks, the first ones, that keep the other blocks' activations within
            ``recompute_memory_fraction`` of the GPU's memory; on the CPU every block). Values and gradients
            are the same either way (the recomputation redraws the same random numbers).
        recompute_memory_fraction: the "auto" budget, a fraction of the GPU's total memory.
        compile_mode: ``torch.compile`` of the blocks' residual branches ("auto" = CUDA, True, False; see
            ``stmixer/modeling/layers/compiled.py``).
    """

    num_pathways = 1
    # MODEL.BACKBONE.CHANNELS_LAST: on CUDA, the tubelet embedding runs as one matrix product over the patches
    # (``PatchEmbed.tokens``) and the maps are returned in channels_last_3d (NDHWC, the tokens' own layout: no
    # copy), so the neck's 3-D convolutions run without layout transposes.
    channels_last_output = False

    def __init__(self, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 init_values=0.0, patch_size=16, tubelet_size=2, in_chans=3, pretrain_img_size=224,
                 pretrain_num_frames=PRETRAIN_NUM_FRAMES, use_learnable_pos_emb=False, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False, no_weight_decay_names=("pos_embed",),
                 recompute="all", recompute_memory_fraction=0.25, compile_mode=False):
        super().__init__()
        if recompute not in RECOMPUTE_CHOICES:
            raise ValueError(f"ViT.RECOMPUTE must be one of {RECOMPUTE_CHOICES}, got {recompute!r}")
        self.depth = depth
        self.mlp_ratio = mlp_ratio
        self.use_checkpoint = use_checkpoint
        self.recompute = recompute
        self.recompute_memory_fraction = recompute_memory_fraction
        self._no_weight_decay = set(no_weight_decay_names)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, tubelet_size)
        side = pretrain_img_size // patch_size
        self.pos_grid = (pretrain_num_frames // tubelet_size, side, side)
        num_positions = math.prod(self.pos_grid)
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.02, b=0.02)
        else:
            self.pos_embed = None
            self._fixed_table = sinusoid_position_table(num_positions, embed_dim)
            self._table_cache = OrderedDict()
            self._captured_tables = {}  # tables read by CUDA graph captures (kept alive)
        self.pos_drop = nn.Dropout(drop_rate)
        # float32 as the official code; on the CPU also when the model is built under another default device
        rates = torch.linspace(0, drop_path_rate, depth, dtype=torch.float32, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, rates[i],
                  init_values)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.out_channels = [embed_dim] * 4
        self.apply(init_vit_weights)
        self.set_compile_mode(compile_mode)

    def set_compile_mode(self, mode):
        """``torch.compile`` the blocks' residual branches: "auto" (CUDA), True or False (``ViT.COMPILE``)."""
        for block in self.blocks:
            block.compile_mode = mode

    def recomputed_blocks(self, x):
        """How many blocks, from the first, recompute their activations in the backward for tokens ``x``
        ``[B, N, D]``: none unless ``use_checkpoint`` in training with grad; all with ``recompute`` "all" or
        on the CPU; else the fewest that keep the other blocks' estimated saved activations
        (``saved_bytes_per_block``) within ``recompute_memory_fraction`` of the GPU's memory."""
        if not (self.use_checkpoint and self.training and torch.is_grad_enabled()):
            return 0
        if self.recompute == "all" or not x.is_cuda:
            return self.depth
        budget = self.recompute_memory_fraction * torch.cuda.get_device_properties(x.device).total_memory
        kept = int(budget // max(self.saved_bytes_per_block(x), 1))
        return max(self.depth - kept, 0)

    def saved_bytes_per_block(self, x):
        """Estimated bytes one block keeps for its backward for tokens ``x`` ``[B, N, D]``: ``(9 + 2 * mlp_ratio)``
        values per token and channel (the LayerNorm inputs and their casts, q/k/v, the attention output and
        the projection input, the MLP's hidden activations before and after GELU) of ``x``'s element size
        (a ViT-B at 8 clips of 256x448 in bfloat16: 0.73 GiB measured on an H100, 0.70 GiB estimated)."""
        return x.numel() * (9 + 2 * self.mlp_ratio) * x.element_size()

    def position_embedding(self, grid, dtype, device):
        """Position table for a token grid ``(t, h, w)``: ``[1, t*h*w, D]`` in ``dtype`` on ``device``
        (``position_embedding``)."""
        return position_embedding(self, grid, dtype, device)

    def forward(self, videos):
        """``[video [B, C, T, H, W]]`` -> 4 x the same map ``[B, D, T/tubelet, H/patch, W/patch]``."""
        if not isinstance(videos, (list, tuple)) or len(videos) != 1:
            raise ValueError("VisionTransformer3D expects a list with one video tensor [B, 3, T, H, W]")
        video = videos[0]
        x, (t, h, w) = self.patch_embed.tokens(video, as_matmul=self.channels_last_output and video.is_cuda)
        b, d = x.shape[0], x.shape[2]
        x = self.pos_drop(x + self.position_embedding((t, h, w), x.dtype, x.device))
        recomputed = self.recomputed_blocks(x)
        if recomputed:  # a first compilation inside a checkpointed block must not initialize CUDA there
            for branch in (ATTENTION_BRANCH, MLP_BRANCH):
                branch.prepare(self.blocks[0].compile_mode, x)
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if i < recomputed else block(x)
        x = self.norm(x).reshape(b, t, h, w, d).permute(0, 4, 1, 2, 3)  # a channels_last_3d view
        if not (self.channels_last_output and x.is_cuda):
            x = x.contiguous()
        return [x, x, x, x]

    def adapt_loaded_state(self, state_dict, prefix):
        """Resize a learned position table ``[1, t0*s*s, D]`` stored for another spatial grid to this model's
        (same temporal tokens assumed, as VideoMAE's fine-tuning code); called by the checkpoint loader.
        Tables that cannot be interpreted are left as they are (and reported as a shape mismatch)."""
        key = prefix + "pos_embed"
        if self.pos_embed is None or key not in state_dict:
            return
        table = state_dict[key]
        if table.shape == self.pos_embed.shape or table.dim() != 3 or table.shape[0] != 1 \
                or table.shape[2] != self.pos_embed.shape[2]:
            return
        t0 = self.pos_grid[0]
        side = math.isqrt(table.shape[1] // t0)
        if t0 * side * side != table.shape[1]:
            return
        state_dict[key] = resize_position_table(table[0].float(), (t0, side, side), self.pos_grid).unsqueeze(0)

    @property
    def num_layers(self):
        """Number of layer-decay groups: patch embedding, each block, the rest (depth + 2)."""
        return self.depth + 2

    def layer_id(self, name):
        """Layer-decay group of a parameter name (relative to the backbone), as the official solver:
        0 = ``patch_embed.*`` and ``pos_embed``, i + 1 = ``blocks.<i>.*``, depth + 1 = anything else."""
        if name == "pos_embed" or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def no_weight_decay(self):
        """Parameter names (relative to the backbone) listed in ``ViT.NO_WEIGHT_DECAY``; the official solver
        also exempts every 1-D parameter and every name ending in ``.bias``."""
        return set(self._no_weight_decay)


def init_vit_weights(m):
    """VideoMAE initialization: Linear xavier-uniform with zero bias, LayerNorm weight 1 and bias 0."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@BACKBONE_REGISTRY.register("MAE-ViT-B", "MAE-ViT-L")
def build_vit(cfg):
    """ViT backbone from the ``ViT.*`` keys (ViT-L: EMBED_DIM 1024, DEPTH 24, NUM_HEADS 16)."""
    v = cfg.ViT
    backbone = VisionTransformer3D(
        embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS, mlp_ratio=v.MLP_RATIO,
        qkv_bias=v.QKV_BIAS, qk_scale=v.QK_SCALE, init_values=v.INIT_VALUES, patch_size=v.PATCH_SIZE,
        tubelet_size=v.TUBELET_SIZE, in_chans=v.IN_CHANS, pretrain_img_size=v.PRETRAIN_IMG_SIZE,
        use_learnable_pos_emb=v.USE_LEARNABLE_POS_EMB, drop_rate=v.DROP_RATE, attn_drop_rate=v.ATTN_DROP_RATE,
        drop_path_rate=v.DROP_PATH_RATE, use_checkpoint=v.USE_CHECKPOINT, no_weight_decay_names=v.NO_WEIGHT_DECAY,
        recompute=v.RECOMPUTE, recompute_memory_fraction=v.RECOMPUTE_MEMORY_FRACTION, compile_mode=v.COMPILE,
    )
    backbone.channels_last_output = cfg.MODEL.BACKBONE.CHANNELS_LAST
    return backbone
