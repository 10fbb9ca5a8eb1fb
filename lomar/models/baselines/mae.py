"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners"), exactly as
docs/method.md#baselines describes it, with the parameter names of the
authors' checkpoints so their weights load with strict=True.

Encoder: ViT on the visible 25% of the patches (per-sample random masking by
argsort of uniform noise), fixed 2-D sin-cos position embeddings; decoder:
linear to 512, 8 blocks of width 512 with 16 heads, on all L + 1 tokens, then a
linear map to p*p*3 pixels; loss on the masked patches (norm_pix_loss option).
Any image size whose sides are multiples of the patch size: the fixed position
embeddings are recomputed for another grid.

Attention runs through lomar_ops.window_attention (plain, rpe=None), as in the LoMaR
and BEiT models, so that a throughput comparison measures the methods, not the
attention kernels; ``ops_backend`` moves it to one backend (e.g. "torch"). The
blocks are lomar_vit's, whose parameter names are timm's (``attn.qkv``,
``mlp.fc1``, ...), so the authors' checkpoints still load with strict=True."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from torch import nn

from ..layers import Block, init_weights, sincos_2d


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = False, ops_backend: str | None = None):
        super().__init__()
        self.ops_backend = ops_backend
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      strict_img_size=False)
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, *grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, None, mlp_ratio)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_2d(decoder_embed_dim, *grid)[None],
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, None,
                                                   mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        init_weights(self)

    # -- helpers -------------------------------------------------------------------
    def grid(self, imgs: torch.Tensor) -> tuple[int, int]:
        if imgs.dim() != 4 or imgs.shape[1] != self.in_chans:
            raise ValueError(f"imgs must be (B, {self.in_chans}, H, W), got {tuple(imgs.shape)}")
        h, w = imgs.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"imgs: H and W must be multiples of the patch size {p}, got {h}x{w}")
        return h // p, w // p

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), pixels in (row, column, channel) order."""
        gh, gw = self.grid(imgs)
        p, c = self.patch_size, self.in_chans
        x = imgs.reshape(imgs.shape[0], c, gh, p, gw, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], gh * gw, p * p * c)

    def _pos(self, table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if table.shape[1] == grid[0] * grid[1] + 1 and tuple(self.patch_embed.grid_size) == grid:
            return table
        return sincos_2d(table.shape[-1], *grid)[None].to(table)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep int(L * (1 - mask_ratio)) patches per sample, those with the smallest noise.
        Returns (kept tokens, mask (B, L) with 1 = masked, ids_restore)."""
        B, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(B, L, device=x.device)
        elif noise.shape != (B, L):
            raise ValueError(f"noise must be (B, L) = ({B}, {L}), got {tuple(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    # -- the three stages ------------------------------------------------------------
    def forward_encoder(self, imgs, mask_ratio, noise=None):
        grid = self.grid(imgs)
        x = self.patch_embed(imgs)
        pos = self._pos(self.pos_embed, grid)
        x = x + pos[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x, None, self.ops_backend)
        return self.norm(x), mask, ids_restore, grid

    def forward_decoder(self, x, ids_restore, grid):
        x = self.decoder_embed(x)
        B, L = ids_restore.shape
        masks = self.mask_token.expand(B, L + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], masks], dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1)
        x = x + self._pos(self.decoder_pos_embed, grid)
        for blk in self.decoder_blocks:
            x = blk(x, None, self.ops_backend)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = (pred - target).pow(2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                noise: torch.Tensor | None = None):
        """(loss, pred (B, L, p*p*C), mask (B, L), 1 = masked)."""
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        latent, mask, ids_restore, grid = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(imgs, pred, mask), pred, mask
