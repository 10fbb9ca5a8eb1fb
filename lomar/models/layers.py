"""The building blocks shared by LoMaR's models, the ViTDet backbone and the baselines:
iRPE attention through lomar_ops.window_attention, the pre-norm ViT block, the patch
embedding as a linear map, the bucket-map cache, MAE's fixed sin-cos position
embeddings, the weight initialisation and the image-batch check."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

import lomar_ops
from lomar_ops.reference.window_attention import window_attention_reference


class IRPEAttention(nn.Module):
    """Multi-head self-attention with iRPE's contextual term on keys:
    logit_ij = scale q_i.k_j + q_i.R[bucket(i, j)], R (NB, head_dim) shared by all heads
    (``per_head_rpe``: (H, NB, head_dim)), zero-initialised as in iRPE."""

    def __init__(self, dim: int, num_heads: int, num_buckets: int | None, qkv_bias: bool = True,
                 per_head_rpe: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpe_table = None
        if num_buckets:
            shape = (num_heads, num_buckets, self.head_dim) if per_head_rpe else \
                (num_buckets, self.head_dim)
            self.rpe_table = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, bucket_ids: torch.Tensor | None,
                backend: str | None = None) -> torch.Tensor:
        """``bucket_ids``: one (N, N) map for every sequence, or (S, N, N), one per
        sequence (the asymmetric encoder's visible tokens, see
        :class:`LoMaRPretrainAsymmetric`)."""
        S, N, D = x.shape
        qkv = self.qkv(x).view(S, N, 3, self.num_heads, self.head_dim)
        if self.rpe_table is not None and bucket_ids is not None and bucket_ids.dim() == 3:
            # window_attention takes one (N, N) map; a map per sequence goes through the
            # pure-PyTorch reference formula, whose gather broadcasts an (S, 1, N, N) map.
            q, k, v = qkv.unbind(2)
            out = window_attention_reference(q, k, v, self.rpe_table.to(qkv.dtype), "contextual",
                                             bucket_ids[:, None])
        elif self.rpe_table is None:
            out = lomar_ops.window_attention_qkvpacked(qkv, rpe=None, backend=backend)
        else:
            out = lomar_ops.window_attention_qkvpacked(
                qkv, rpe=self.rpe_table.to(qkv.dtype), rpe_mode="contextual",
                bucket_ids=bucket_ids, backend=backend)
        return self.proj(out.reshape(S, N, D))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)), x + mlp(LN(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, num_buckets: int | None, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, per_head_rpe: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = IRPEAttention(dim, num_heads, num_buckets, per_head_rpe=per_head_rpe)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x, bucket_ids, backend=None):
        x = x + self.drop_path(self.attn(self.norm1(x), bucket_ids, backend))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """The p x p stride-p patch embedding (weight (D, C, p, p), the authors' conv
    layout), applied as a linear map to patches already in (row, column, channel)
    pixel order, the layout window_patchify produces."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight  # (D, C, p, p) -> (D, p*p*C) in (row, col, channel) order
        return F.linear(patches, w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), self.proj.bias)


def init_weights(module: nn.Module) -> None:
    """Linear layers xavier-uniform with zero bias, LayerNorms ones and zeros (MAE's)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_image_batch(images, in_chans: int, patch_size: int, name: str = "imgs"
                      ) -> tuple[int, int]:
    """(B, in_chans, H, W) with H and W multiples of the patch size -> the patch grid
    (H/p, W/p); a ValueError naming ``name`` otherwise."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_chans:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be (B, {in_chans}, H, W), got {got}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"{name}: H and W must be multiples of the patch size {patch_size}, "
                         f"got {h}x{w}")
    return h // patch_size, w // patch_size


class BucketMaps:
    """iRPE bucket maps of patch grids (with ``num_cls`` leading tokens), the last
    ``size`` (h, w, device) kept: a model run at many image sizes does not hoard them
    (a 64 x 64 grid's map is 64 MB)."""

    def __init__(self, num_cls: int, ratio: float, size: int = 8):
        self.num_cls, self.ratio, self.size = num_cls, ratio, size
        self._maps: OrderedDict = OrderedDict()

    def get(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key in self._maps:
            self._maps.move_to_end(key)
        else:
            self._maps[key] = lomar_ops.irpe_bucket_ids(h, w, self.num_cls, self.ratio,
                                                        device=device)
            while len(self._maps) > self.size:
                self._maps.popitem(last=False)
        return self._maps[key]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_cls: int = 1) -> torch.Tensor:
    """(num_cls + grid_h * grid_w, dim) float32: half the channels encode the row, half
    the column (MAE's layout: first half from the width axis), zeros for cls tokens."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return torch.cat([torch.zeros(num_cls, dim, dtype=torch.float64), emb]).float()
