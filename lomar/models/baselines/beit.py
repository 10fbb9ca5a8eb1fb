"""BEiT pretraining (Bao et al., "BEiT: BERT Pre-Training of Image Transformers"),
as docs/method.md#baselines describes it, on lomar_ops, and the same objective
on LoMaR windows (the paper's Table 5).

:class:`BEiTPretrain` (``beit_base_patch16``): ViT-B on all L + 1 tokens, masked
positions replaced by a learned mask token (BEiT's block-wise masking, 75 of 196
patches at 224, the same fraction at other sizes), one relative position bias
table of (2h-1)(2w-1)+3 entries per head shared by all layers (applied through
``lomar_ops.window_attention`` in bias mode with BEiT's relative position index),
layer scale 0.1, q and v biases only, no absolute position embedding, a
768 -> 8192 head on the masked tokens and cross-entropy against the visual tokens
of the DALL-E dVAE encoder (:class:`~lomar.models.baselines.dvae.DVAEEncoder`, random
weights unless ``tokenizer_weights`` names a state dict), which runs inside the
step on the half-resolution image: its cost is part of BEiT's.

:class:`BEiTWindowPretrain` (``beit_window_base_patch16``): the paper keeps "all
other experimental settings as the original BEiT" and feeds four random 7x7
windows instead of the image. So: windows drawn as LoMaR draws them
(``lomar_ops.sample_windows``, read by ``window_patchify``), BEiT's block-wise
masking inside each window (40%: 19 of 49 patches), the relative position table
sized for the window, and the tokenizer run on each window's half-resolution
crop (7x7 tokens per window), so that, like the encoder, it does not grow with
the image. (The paper does not say where its tokens came from; tokenizing the
whole image and gathering would cost 26-104 GMAC per image from 224 to 448.)

Both return ``(loss, logits, mask)``: logits (M, vocab) of the M masked patches in
mask order, mask bool, True = masked (B, L) or (B, n, K*K).

State-dict names follow BEiT's code (``blocks.i.attn.q_bias``, ``blocks.i.gamma_1``,
``rel_pos_bias.relative_position_bias_table`` (NB, heads), ``lm_head``); the frozen
tokenizer is the submodule ``tokenizer``. ``ops_backend`` moves every lomar_ops op
to one backend, as in LoMaRPretrain."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from torch import nn

import lomar_ops

from ..layers import PatchEmbed, check_image_batch
from .beit_masking import BlockMaskGenerator
from .dvae import DVAEEncoder

BEIT_MASK_FRACTION = 75 / 196  # BEiT's 75 masked patches of 196 at 224
TOKENIZER_STRIDE = 16  # half resolution, then the dVAE's 8x downsampling


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """BEiT's (1 + h*w, 1 + h*w) map into a table of (2h-1)(2w-1) + 3 entries.

    Patch i to patch j: (di + h-1) * (2w-1) + (dj + w-1), with (di, dj) = position
    of i minus position of j; cls as query: NB-3; cls as key: NB-2; cls to cls: NB-1."""
    if height < 1 or width < 1:
        raise ValueError(f"relative_position_index: grid must be positive, got {height}x{width}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    d_row = rows[:, None] - rows[None, :] + height - 1
    d_col = cols[:, None] - cols[None, :] + width - 1
    num = (2 * height - 1) * (2 * width - 1) + 3
    index = torch.empty(height * width + 1, height * width + 1, dtype=torch.int64)
    index[1:, 1:] = d_row * (2 * width - 1) + d_col
    index[0, :] = num - 3
    index[:, 0] = num - 2
    index[0, 0] = num - 1
    return index


class RelativePositionBias(nn.Module):
    """One (NB, heads) bias table for all layers (BEiT's shared_rel_pos_bias)."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        h, w = grid
        self.grid = (h, w)
        num = (2 * h - 1) * (2 * w - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(h, w),
                             persistent=False)

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        """The table as window_attention's bias mode wants it: (heads, NB)."""
        return self.relative_position_bias_table.t().to(dtype).contiguous()


class BEiTAttention(nn.Module):
    """qkv without a k bias (BEiT's q_bias and v_bias), attention through lomar_ops."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, table, index, backend=None):
        S, N, D = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(S, N, 3, self.num_heads, D // self.num_heads)
        out = lomar_ops.window_attention_qkvpacked(qkv, rpe=table.to(qkv.dtype), rpe_mode="bias",
                                                   bucket_ids=index, backend=backend)
        return self.proj(out.reshape(S, N, D))


class BEiTBlock(nn.Module):
    """Pre-norm block with layer scale: x + gamma_1 * attn(LN(x)), x + gamma_2 * mlp(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale_init: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BEiTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x, table, index, backend=None):
        x = x + self.gamma_1 * self.attn(self.norm1(x), table, index, backend)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class _BEiTEncoder(nn.Module):
    """Patch embedding, mask token, blocks, head and tokenizer, for a fixed token grid."""

    def __init__(self, grid, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                 vocab_size, layer_scale_init, tokenizer_width, tokenizer_weights):
        super().__init__()
        if patch_size != TOKENIZER_STRIDE:
            raise ValueError(f"patch_size must be {TOKENIZER_STRIDE}: BEiT's tokenizer gives one "
                             f"token per {TOKENIZER_STRIDE}x{TOKENIZER_STRIDE} pixels, "
                             f"got {patch_size}")
        if in_chans != 3:
            raise ValueError(f"in_chans must be 3 for BEiT, got {in_chans}: its targets come from "
                             f"a dVAE tokenizer (DALL-E's) that reads RGB images; pretrain other "
                             f"bands with LoMaR or MAE")
        self.patch_size, self.in_chans = patch_size, in_chans
        self.ops_backend: str | None = None
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.rel_pos_bias = RelativePositionBias(grid, num_heads)
        self.blocks = nn.ModuleList([BEiTBlock(embed_dim, num_heads, mlp_ratio, layer_scale_init)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.lm_head = nn.Linear(embed_dim, vocab_size)
        self._init_weights()
        self.tokenizer = DVAEEncoder(n_hid=tokenizer_width, vocab_size=vocab_size,
                                     in_chans=in_chans)
        if tokenizer_weights is not None:
            state = torch.load(tokenizer_weights, map_location="cpu", weights_only=True)
            self.tokenizer.load_state_dict(state.get("model", state))
        self.tokenizer.requires_grad_(False).eval()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.mask_token, std=0.02)
        for layer_id, blk in enumerate(self.blocks, start=1):  # BEiT's fix_init_weight
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: always in inference mode
        return self

    def check_images(self, imgs) -> tuple[int, int]:
        return check_image_batch(imgs, self.in_chans, self.patch_size)

    @torch.no_grad()
    def visual_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """(S, C, H, W) -> (S, H/16 * W/16) dVAE token ids of the half-resolution image."""
        half = F.interpolate(imgs, size=(imgs.shape[-2] // 2, imgs.shape[-1] // 2),
                             mode="bilinear", align_corners=False, antialias=True)
        return self.tokenizer.tokens(half)

    def predict(self, patches, mask, tokens):
        """patches (S, L, p*p*C), mask (S, L) bool, tokens (S, L) -> (loss, logits (M, vocab))."""
        backend = self.ops_backend
        x = self.patch_embed(patches)
        x = lomar_ops.mask_substitute(x, mask, self.mask_token.view(-1).to(x.dtype),
                                      self.cls_token.view(-1).to(x.dtype), backend=backend)
        table = self.rel_pos_bias(x.dtype)
        index = self.rel_pos_bias.relative_position_index
        for blk in self.blocks:
            x = blk(x, table, index, backend)
        x = self.norm(x[:, 1:])
        logits = self.lm_head(x[mask])
        return F.cross_entropy(logits.float(), tokens[mask]), logits

    def _check_mask(self, mask, shape, name):
        if mask.shape != shape or mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor of shape {shape}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")


class BEiTPretrain(_BEiTEncoder):
    """``loss, logits, mask = model(imgs)`` with imgs (B, C, H, W) at the ``img_size``
    the relative position table was built for; ``bool_masked_pos`` (B, L) fixes the
    masks (else BEiT's block-wise generator draws them, with ``generator``)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, vocab_size=8192, layer_scale_init=0.1,
                 num_masking_patches=None, tokenizer_width=256, tokenizer_weights=None):
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(sizes) != 2 or any(s <= 0 or s % patch_size for s in sizes):
            raise ValueError(f"img_size must be positive multiples of patch_size {patch_size}, "
                             f"got {img_size}")
        grid = (sizes[0] // patch_size, sizes[1] // patch_size)
        super().__init__(grid, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                         vocab_size, layer_scale_init, tokenizer_width, tokenizer_weights)
        self.grid = grid
        if num_masking_patches is None:
            num_masking_patches = round(grid[0] * grid[1] * BEIT_MASK_FRACTION)
        self.mask_generator = BlockMaskGenerator(grid, num_masking_patches)

    def sample_masks(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """(B, L) bool block-wise masks (drawn on the CPU, as BEiT's data loader does)."""
        masks = torch.stack([self.mask_generator(generator).flatten() for _ in range(batch)])
        return masks.to(device)

    def forward(self, imgs, bool_masked_pos=None, generator=None):
        gh, gw = self.check_images(imgs)
        if (gh, gw) != self.grid:
            raise ValueError(f"imgs: a {gh}x{gw} patch grid ({imgs.shape[-2]}x{imgs.shape[-1]}), "
                             f"but the relative position table was built for {self.grid[0]}x"
                             f"{self.grid[1]}: create the model with img_size={imgs.shape[-2]}")
        B, p = imgs.shape[0], self.patch_size
        if bool_masked_pos is None:
            bool_masked_pos = self.sample_masks(B, generator, imgs.device)
        self._check_mask(bool_masked_pos, (B, gh * gw), "bool_masked_pos")
        tokens = self.visual_tokens(imgs)
        patches = imgs.reshape(B, self.in_chans, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(B, gh * gw, p * p * self.in_chans)
        loss, logits = self.predict(patches, bool_masked_pos, tokens)
        return loss, logits, bool_masked_pos


class BEiTWindowPretrain(_BEiTEncoder):
    """``loss, logits, mask = model(imgs, num_windows=4)``: BEiT on ``num_windows``
    random ``window_size`` x ``window_size`` windows per image; mask (B, n, K*K).
    ``coords`` (B, n, 2) and ``window_mask`` (B*n, K*K) bool fix windows and masks."""

    def __init__(self, window_size=7, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, vocab_size=8192, layer_scale_init=0.1,
                 num_masking_patches=None, tokenizer_width=256, tokenizer_weights=None):
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size must be a positive int, got {window_size!r}")
        super().__init__((window_size, window_size), patch_size, in_chans, embed_dim, depth,
                         num_heads, mlp_ratio, vocab_size, layer_scale_init, tokenizer_width,
                         tokenizer_weights)
        self.window_size = window_size
        if num_masking_patches is None:
            num_masking_patches = round(window_size ** 2 * BEIT_MASK_FRACTION)
        self.mask_generator = BlockMaskGenerator((window_size, window_size), num_masking_patches)

    def sample_masks(self, num_windows_total: int, generator=None, device=None) -> torch.Tensor:
        """(S, K*K) bool block-wise masks, one per window."""
        masks = [self.mask_generator(generator).flatten() for _ in range(num_windows_total)]
        return torch.stack(masks).to(device)

    def forward(self, imgs, num_windows=4, coords=None, window_mask=None, generator=None):
        gh, gw = self.check_images(imgs)
        K, p, C = self.window_size, self.patch_size, self.in_chans
        if K > gh or K > gw:
            raise ValueError(f"window_size {K} does not fit the patch grid {gh}x{gw} of "
                             f"{imgs.shape[-2]}x{imgs.shape[-1]} images")
        B = imgs.shape[0]
        if coords is None:
            coords = lomar_ops.sample_windows(B, gh, gw, num_windows, K, generator=generator,
                                              device=imgs.device)
        S = B * coords.shape[1]
        if window_mask is None:
            window_mask = self.sample_masks(S, generator, imgs.device)
        self._check_mask(window_mask, (S, K * K), "window_mask")
        patches = lomar_ops.window_patchify(imgs, coords, K, p, backend=self.ops_backend)
        patches = patches.flatten(0, 1)  # (S, K*K, p*p*C)
        crops = patches.reshape(S, K, K, p, p, C).permute(0, 5, 1, 3, 2, 4)
        tokens = self.visual_tokens(crops.reshape(S, C, K * p, K * p))
        loss, logits = self.predict(patches, window_mask, tokens)
        return loss, logits, window_mask.reshape(B, -1, K * K)
