"""LoMaR models (docs/method.md: the pretraining step, iRPE), built on lomar_ops.

Pretraining (:class:`LoMaRPretrain`): for each image, ``num_windows`` random
K x K-patch windows (independent per image by default; ``window_sampling="batch"``
reproduces the authors' shared windows); the windows' pixels are read by
``window_patchify`` (never the whole image), embedded by the patch-embedding
linear map, ``mask_substitute`` puts the mask token on floor(K*K*mask_ratio)
patches per window and prepends cls; ViT blocks with iRPE (contextual, on keys,
shared by heads) through ``window_attention``; a linear head; ``masked_patch_loss``.

The asymmetric encoder-decoder variant (:class:`LoMaRPretrainAsymmetric`, the
paper's Fig. 4): the encoder sees only the visible patches of each window, a light
decoder with mask tokens reconstructs.

Fine-tuning and inference (:class:`LoMaRViT`): the same blocks on the whole patch
grid, iRPE over the full grid, mean-pooled patch features + fc_norm (or cls).

``ops_backend`` (None or one of lomar_ops.BACKENDS) moves every op of a model to
one backend, e.g. "torch" for the pure-PyTorch references."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

import lomar_ops

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from .layers import (Block, BucketMaps, IRPEAttention, PatchEmbed, check_image_batch,
                     init_weights, sincos_2d)

__all__ = ["IRPEAttention", "LoMaRPretrain", "LoMaRPretrainAsymmetric", "LoMaRViT"]


def _init_pretrain_weights(model: nn.Module) -> None:
    """MAE's initialisation of a pretraining model: linear/norm defaults, the patch
    embedding as a linear map (xavier), cls and mask tokens N(0, 0.02)."""
    init_weights(model)
    w = model.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.normal_(model.cls_token, std=0.02)
    nn.init.normal_(model.mask_token, std=0.02)


class _Encoder(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                 drop_path_rate, rpe, rpe_ratio, per_head_rpe):
        super().__init__()
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.rpe, self.rpe_ratio = rpe, rpe_ratio
        num_buckets = lomar_ops.irpe_num_buckets(rpe_ratio) if rpe else None
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, num_buckets, mlp_ratio, r,
                                           per_head_rpe) for r in rates])
        self._bucket_maps = BucketMaps(1, rpe_ratio) if rpe else None
        self.ops_backend: str | None = None

    def bucket_ids(self, h: int, w: int, device) -> torch.Tensor | None:
        """iRPE bucket map for 1 cls + an h x w grid, cached per size and device."""
        return self._bucket_maps.get(h, w, device) if self.rpe else None

    def check_images(self, imgs: torch.Tensor) -> tuple[int, int]:
        return check_image_batch(imgs, self.in_chans, self.patch_size)

    def run_blocks(self, x, bucket_ids):
        for blk in self.blocks:
            x = blk(x, bucket_ids, self.ops_backend)
        return x


class _WindowPretrain(_Encoder):
    """What both pretraining models share: argument checks, the window and mask draw,
    the pixels of the windows (from images or from the window pipeline's windows)
    and the absolute sin-cos variant's position embedding."""

    def _setup_pretrain(self, norm_pix_loss, abs_pos_embed, window_sampling, pixel_mean,
                        pixel_std):
        if window_sampling not in ("image", "batch"):
            raise ValueError(f"window_sampling must be 'image' or 'batch', got {window_sampling!r}")
        self.window_sampling = window_sampling
        self.norm_pix_loss = norm_pix_loss
        self.abs_pos_embed = abs_pos_embed
        # uint8 pixels are normalised inside window_patchify with these (not saved: data
        # constants, not weights).
        for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            t = torch.as_tensor(value, dtype=torch.float64)
            if t.shape != (self.in_chans,):
                raise ValueError(f"{name} must have one value per channel ({self.in_chans}), "
                                 f"got {tuple(t.shape)}")
            self.register_buffer(name, t, persistent=False)

    def sample(self, imgs, window_size, num_windows, mask_ratio, generator=None):
        """(coords (B, n, 2), window_mask (B*n, K*K)) as the forward draws them.

        ``generator``: None, one torch.Generator for the batch, or a list of B CPU
        generators, one per image: image i's windows and masks then come from
        generator[i] alone (drawn on the CPU, moved to the images' device), so they do
        not depend on which other images share its batch, e.g. how a global batch is
        split over processes. With window_sampling="batch" the shared windows come
        from the first image's generator."""
        gh, gw = self.check_images(imgs)
        if isinstance(generator, (list, tuple)):
            self._check_generators(generator, imgs.shape[0])
            draws = [self._draw(1, gh, gw, window_size, num_windows, mask_ratio, g, "cpu")
                     for g in generator]
            coords, mask = (torch.cat(parts).to(imgs.device) for parts in zip(*draws))
            if self.window_sampling == "batch":
                coords = coords[:1].expand_as(coords).contiguous()
            return coords, mask
        return self._draw(imgs.shape[0], gh, gw, window_size, num_windows, mask_ratio,
                          generator, imgs.device)

    def sample_masks(self, batch, num_windows, window_size, mask_ratio, generator=None,
                     device=None):
        """(B*n, K*K) window masks alone (windows given, e.g. by the data loader); with a
        list of B generators, image i's masks come from generator[i]."""
        if isinstance(generator, (list, tuple)):
            self._check_generators(generator, batch)
            return torch.cat([lomar_ops.sample_window_masks(num_windows, window_size, mask_ratio,
                                                            generator=g)
                              for g in generator]).to(device)
        return lomar_ops.sample_window_masks(batch * num_windows, window_size, mask_ratio,
                                             generator=generator, device=device)

    @staticmethod
    def _check_generators(generator, batch):
        if len(generator) != batch:
            raise ValueError(f"generator: a list needs one generator per image, got "
                             f"{len(generator)} for a batch of {batch}")

    def _draw(self, B, gh, gw, K, n, mask_ratio, generator, device):
        images = 1 if self.window_sampling == "batch" else B
        coords = lomar_ops.sample_windows(images, gh, gw, n, K, generator=generator, device=device)
        mask = lomar_ops.sample_window_masks(B * n, K, mask_ratio, generator=generator,
                                             device=device)
        return coords.expand(B, -1, -1).contiguous(), mask

    def check_windows(self, windows, window_size):
        """(B, n) of the window pipeline's (B, n, C, K*p, K*p) windows."""
        side = window_size * self.patch_size
        if windows.shape[2:] != (self.in_chans, side, side):
            raise ValueError(f"imgs: windows must be (B, n, {self.in_chans}, K*p, K*p) = "
                             f"(B, n, {self.in_chans}, {side}, {side}) for window_size "
                             f"{window_size}, got {tuple(windows.shape)}")
        return windows.shape[:2]

    def windows(self, imgs, window_size, num_windows, mask_ratio, generator, coords, window_mask):
        """Checks the arguments; the given coords/window_mask, else a fresh draw. Given
        coords (or windows), only the masks are drawn."""
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if isinstance(imgs, torch.Tensor) and imgs.dim() == 5:  # the window pipeline's windows
            B, n = self.check_windows(imgs, window_size)
            if coords is None and self.abs_pos_embed:
                raise ValueError("coords: the absolute position embedding needs the windows' "
                                 "corners in the image; pass coords (B, n, 2) with the windows")
            if coords is not None and tuple(coords.shape) != (B, n, 2):
                raise ValueError(f"coords must be (B, n, 2) = ({B}, {n}, 2) to match the "
                                 f"windows, got {tuple(coords.shape)}")
        else:
            gh, gw = self.check_images(imgs)
            if window_size > gh or window_size > gw:
                raise ValueError(f"window_size {window_size} does not fit the patch grid "
                                 f"{gh}x{gw} of {imgs.shape[-2]}x{imgs.shape[-1]} images")
            if coords is None:
                sampled = self.sample(imgs, window_size, num_windows, mask_ratio, generator)
                return sampled[0], sampled[1] if window_mask is None else window_mask
            B, n = coords.shape[:2]
        if window_mask is None:
            window_mask = self.sample_masks(B, n, window_size, mask_ratio, generator, imgs.device)
        return coords, window_mask

    def patchify(self, imgs, coords, window_size):
        """(B, n, K*K, p*p*C) pixels of the windows, normalised with pixel_mean/pixel_std
        when they are uint8 or uint16: from (B, C, H, W) images and coords, or from the window
        pipeline's (B, n, C, K*p, K*p) windows."""
        K, p = window_size, self.patch_size
        norm = {}
        if imgs.dtype in (torch.uint8, torch.uint16):  # files' pixels: value / max, then mean/std
            norm = dict(mean=self.pixel_mean, std=self.pixel_std,
                        out_dtype=self.patch_embed.proj.weight.dtype)
        if imgs.dim() == 5:
            B, n = imgs.shape[:2]
            corner = torch.zeros(B * n, 1, 2, dtype=torch.int32, device=imgs.device)
            patches = lomar_ops.window_patchify(imgs.flatten(0, 1), corner, K, p,
                                                backend=self.ops_backend, **norm)
            return patches.view(B, n, K * K, -1)
        return lomar_ops.window_patchify(imgs, coords, K, p, backend=self.ops_backend, **norm)

    def forward_features(self, imgs):
        """(B, D) features of whole images, nothing masked: every patch of the grid
        through the encoder (iRPE over the full grid, or the sin-cos embedding of each
        patch's place), the final norm, then the mean over the patch tokens (cls left
        out). For monitors and probes of a pretraining model (the kNN monitor,
        lomar/engine/knn.py); the pixel head and the decoder are not used.

        imgs: (B, C, H, W), uint8/uint16 (normalised with pixel_mean/pixel_std, as the
        training windows are) or float already normalised; H and W multiples of the patch
        size, any aspect. No random draw."""
        gh, gw = self.check_images(imgs)
        # The grid as gh*gw windows of one patch: window_patchify gives the pixels in the
        # layout and normalisation the patch embedding was trained on.
        rows = torch.arange(gh, device=imgs.device).repeat_interleave(gw)
        cols = torch.arange(gw, device=imgs.device).repeat(gh)
        coords = torch.stack([rows, cols], dim=1).expand(imgs.shape[0], -1, -1)
        tokens = self.patch_embed(self.patchify(imgs, coords.contiguous(), 1).squeeze(2))
        if self.abs_pos_embed:
            pos = sincos_2d(self.embed_dim, gh, gw, num_cls=0).to(tokens.device, tokens.dtype)
            tokens = tokens + pos
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1).to(tokens.dtype), tokens],
                      dim=1)
        x = self.norm(self.run_blocks(x, self.bucket_ids(gh, gw, x.device)))
        return x[:, 1:].mean(dim=1)

    @staticmethod
    def _window_pos_embed(coords, K, dim):
        B, n, _ = coords.shape
        # sin-cos of each window patch's (row, col) in the image grid (absolute variant)
        rows = coords[..., 0, None, None] + torch.arange(K, device=coords.device)[:, None]
        cols = coords[..., 1, None, None] + torch.arange(K, device=coords.device)[None, :]
        gh = int(rows.max()) + 1
        gw = int(cols.max()) + 1
        table = sincos_2d(dim, gh, gw, num_cls=0).to(coords.device)
        idx = (rows * gw + cols).reshape(B * n, K * K)
        return table[idx]


class LoMaRPretrain(_WindowPretrain):
    """``loss, pred, mask = model(imgs, window_size=7, num_windows=4, mask_ratio=0.8)``.

    imgs: (B, C, H, W) images, float (normalised) or uint8 (normalised here with
    ``pixel_mean``/``pixel_std``, ImageNet's by default); or the window pipeline's
    windows (B, n, C, K*p, K*p), uint8 or float, with their corners in ``coords``
    (needed only by ``abs_pos_embed``; num_windows is then n).
    pred (B, n, K*K, p*p*C) predicted pixels of every window patch (normalised-pixel
    space when norm_pix_loss); mask (B, n, K*K) bool, True = masked (and in the loss).
    ``coords`` (B, n, 2) and ``window_mask`` (B*n, K*K) fix the windows and masks;
    ``generator`` (one, or one per image: see :meth:`sample`) draws them reproducibly
    (only the masks when coords are given);
    ``abs_pos_embed`` replaces iRPE with fixed sin-cos position embeddings of each
    window patch's place in the image."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, norm_pix_loss=True, rpe=True, rpe_ratio=1.9,
                 per_head_rpe=False, abs_pos_embed=False, window_sampling="image",
                 pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD):
        super().__init__(patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, 0.0,
                         rpe and not abs_pos_embed, rpe_ratio, per_head_rpe)
        self._setup_pretrain(norm_pix_loss, abs_pos_embed, window_sampling, pixel_mean,
                             pixel_std)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.encoder_pred = nn.Linear(embed_dim, patch_size * patch_size * in_chans)
        _init_pretrain_weights(self)

    def forward(self, imgs, window_size=7, num_windows=4, mask_ratio=0.8, generator=None,
                coords=None, window_mask=None):
        coords, window_mask = self.windows(imgs, window_size, num_windows, mask_ratio, generator,
                                           coords, window_mask)
        K, backend = window_size, self.ops_backend
        patches = self.patchify(imgs, coords, K)
        B, n = patches.shape[:2]
        target = patches.flatten(0, 1)                                   # (S, K*K, p*p*C)
        tokens = self.patch_embed(target)
        if self.abs_pos_embed:
            tokens = tokens + self._window_pos_embed(coords, K, self.embed_dim).to(tokens.dtype)
        x = lomar_ops.mask_substitute(tokens, window_mask, self.mask_token.view(-1).to(tokens.dtype),
                                      self.cls_token.view(-1).to(tokens.dtype), backend=backend)
        x = self.norm(self.run_blocks(x, self.bucket_ids(K, K, x.device)))
        pred = self.encoder_pred(x)[:, 1:]
        loss = lomar_ops.masked_patch_loss(pred, target, window_mask, norm_pix=self.norm_pix_loss,
                                           backend=backend)
        L = K * K
        return loss, pred.reshape(B, n, L, -1), window_mask.reshape(B, n, L)


class LoMaRPretrainAsymmetric(_WindowPretrain):
    """The MAE-like asymmetric encoder-decoder on LoMaR's windows (the paper's Fig. 4):
    the same call and outputs as :class:`LoMaRPretrain`.

    The encoder sees only each window's visible patches (+ cls): its cost follows the
    K*K - floor(K*K*mask_ratio) visible tokens. A light decoder (``decoder_embed_dim``,
    ``decoder_depth``, ``decoder_num_heads``) gets the encoded tokens back in their
    places, ``mask_token`` at the masked ones, and predicts every patch's pixels.

    Position: with iRPE, the decoder uses the full window's bucket map; the encoder the
    rows and columns of that map at its tokens' true window positions. Those differ per
    window (masks do), so the encoder's attention takes an (S, N, N) map, which the
    fused window_attention (one (N, N) map) does not: it runs the pure-PyTorch reference
    formula instead. Sharing one mask per batch would keep the fused op but would
    change the masking of docs/method.md#the-pretraining-step. With ``abs_pos_embed``, fixed sin-cos embeddings
    of the patches' places in the image, in the encoder and (decoder width) the decoder."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_pix_loss=True, rpe=True, rpe_ratio=1.9, per_head_rpe=False,
                 abs_pos_embed=False, window_sampling="image", pixel_mean=IMAGENET_MEAN,
                 pixel_std=IMAGENET_STD):
        super().__init__(patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, 0.0,
                         rpe and not abs_pos_embed, rpe_ratio, per_head_rpe)
        self._setup_pretrain(norm_pix_loss, abs_pos_embed, window_sampling, pixel_mean,
                             pixel_std)
        self.decoder_embed_dim = decoder_embed_dim
        num_buckets = lomar_ops.irpe_num_buckets(rpe_ratio) if self.rpe else None
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, num_buckets, mlp_ratio,
                  per_head_rpe=per_head_rpe) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        _init_pretrain_weights(self)

    @staticmethod
    def visible_index(window_mask: torch.Tensor) -> torch.Tensor:
        """(S, V) raster positions of each window's visible patches, in order."""
        counts = (~window_mask).sum(dim=1)
        if counts.numel() and not (counts == counts[0]).all():
            raise ValueError(f"window_mask must mask the same number of patches in every window "
                             f"(the encoder batches the visible ones), got visible counts "
                             f"from {int(counts.min())} to {int(counts.max())}")
        order = torch.argsort(window_mask.to(torch.int8), dim=1, stable=True)  # visible first
        return order[:, :int(counts[0]) if counts.numel() else 0]

    def _encoder_bucket_ids(self, K, visible, device):
        """(S, 1+V, 1+V): the full window map's rows/columns at cls and the visible tokens."""
        full = self.bucket_ids(K, K, device)
        if full is None:
            return None
        keep = torch.cat([visible.new_zeros(visible.shape[0], 1), visible + 1], dim=1)
        return full[keep[:, :, None], keep[:, None, :]]

    def forward(self, imgs, window_size=7, num_windows=4, mask_ratio=0.8, generator=None,
                coords=None, window_mask=None):
        coords, window_mask = self.windows(imgs, window_size, num_windows, mask_ratio, generator,
                                           coords, window_mask)
        K, backend = window_size, self.ops_backend
        patches = self.patchify(imgs, coords, K)
        B, n = patches.shape[:2]
        S, L = B * n, K * K
        target = patches.flatten(0, 1)                                     # (S, L, p*p*C)
        visible = self.visible_index(window_mask)                          # (S, V)
        tokens = self.patch_embed(target.gather(1, visible[..., None].expand(-1, -1,
                                                                             target.shape[-1])))
        if self.abs_pos_embed:
            pos = self._window_pos_embed(coords, K, self.embed_dim).to(tokens.dtype)
            tokens = tokens + pos.gather(1, visible[..., None].expand(-1, -1, pos.shape[-1]))
        x = torch.cat([self.cls_token.expand(S, -1, -1).to(tokens.dtype), tokens], dim=1)
        enc_ids = self._encoder_bucket_ids(K, visible, x.device)
        for blk in self.blocks:
            x = blk(x, enc_ids, backend)
        x = self.decoder_embed(self.norm(x))                               # (S, 1+V, Dd)
        Dd = x.shape[-1]
        placed = x.new_zeros(S, L, Dd).scatter(1, visible[..., None].expand(-1, -1, Dd), x[:, 1:])
        y = lomar_ops.mask_substitute(placed, window_mask, self.mask_token.view(-1).to(x.dtype),
                                      backend=backend)                     # (S, L, Dd)
        if self.abs_pos_embed:
            y = y + self._window_pos_embed(coords, K, Dd).to(y.dtype)
        y = torch.cat([x[:, :1], y], dim=1)
        dec_ids = self.bucket_ids(K, K, y.device)
        for blk in self.decoder_blocks:
            y = blk(y, dec_ids, backend)
        pred = self.decoder_pred(self.decoder_norm(y))[:, 1:]
        loss = lomar_ops.masked_patch_loss(pred, target, window_mask, norm_pix=self.norm_pix_loss,
                                           backend=backend)
        return loss, pred.reshape(B, n, L, -1), window_mask.reshape(B, n, L)


class LoMaRViT(_Encoder):
    """ViT encoder with iRPE over the whole patch grid, for fine-tuning and inference:
    ``logits = model(imgs)``; ``model.forward_features(imgs)`` gives the pooled features."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, num_classes=1000, global_pool=True, drop_path_rate=0.0,
                 rpe=True, rpe_ratio=1.9, per_head_rpe=False):
        super().__init__(patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                         drop_path_rate, rpe, rpe_ratio, per_head_rpe)
        self.global_pool = global_pool
        self.num_classes = num_classes
        if global_pool:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=2e-5)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token"} | {n for n, _ in self.named_parameters() if n.endswith("rpe_table")}

    def forward_features(self, imgs):
        gh, gw = self.check_images(imgs)
        p = self.patch_size
        B = imgs.shape[0]
        patches = imgs.reshape(B, self.in_chans, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
        x = self.patch_embed(patches.reshape(B, gh * gw, p * p * self.in_chans))
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        x = self.run_blocks(x, self.bucket_ids(gh, gw, imgs.device))
        if self.global_pool:
            return self.fc_norm(x[:, 1:].mean(dim=1))
        return self.norm(x)[:, 0]

    def forward(self, imgs):
        return self.head(self.forward_features(imgs))
