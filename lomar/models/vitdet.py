"""The LoMaR encoder as a ViTDet backbone (Li et al., "Exploring Plain Vision
Transformer Backbones for Object Detection"): ``features = backbone(images)``, an
OrderedDict of feature maps with ``backbone.out_channels``, which torchvision's
``MaskRCNN`` / ``FasterRCNN`` take as they are.

Encoder: the pretraining model's patch embedding and blocks over the whole image.
Most blocks attend within non-overlapping ``window_size`` x ``window_size`` windows
of the patch grid (the grid padded with zeros, after the block's first norm, to a
multiple of the window, as ViTDet pads: padded tokens take part as keys and are
cut away after the attention); the ``global_blocks`` attend over the whole grid.
Both go through ``lomar_ops.window_attention`` with windows (or images) as its
sequences. The pretrained iRPE table needs no resizing: its buckets are relative
offsets (clipped beyond 4 patches with the default ratio), so one table serves the
window's and the whole grid's bucket maps (``lomar_ops.irpe_bucket_ids``).

The cls token: dropped, as ViTDet drops MAE's. A feature map has no place for it,
and one per window would make windowed and global blocks disagree on the sequence.
The bucket maps are built without a cls row (``num_cls=0``): the table's cls bucket
goes unused, and a checkpoint's ``cls_token`` is reported as unused on loading.
There is no final norm (ViTDet's choice); the pyramid normalises each level.

Simple feature pyramid (ViTDet): from the last stride-p map, strides 4, 8, 16, 32
(keys "0" to "3") by transposed convolutions or max pooling, each followed by a 1x1
and a 3x3 convolution with LayerNorm, plus "pool" (stride 64, max pooling of "3",
torchvision's LastLevelMaxPool) for the RPN's fifth anchor size. Patch 14 (stride
14) is first resampled bilinearly to the stride-16 grid, so that the strides stay
the powers of two torchvision's anchor generator assumes.

Options: drop path, activation checkpointing of the blocks (``checkpointing``,
ViTDet's setting at 1024), bf16 autocast (the blocks run in the autocast dtype; the
iRPE table is cast like the other weights), ``ops_backend`` as in the other models."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torch.utils.checkpoint import checkpoint

import lomar_ops

from .layers import Block, BucketMaps, PatchEmbed, check_image_batch, init_weights, sincos_2d

PYRAMID_STRIDES = (4, 8, 16, 32)


def default_global_blocks(depth: int) -> tuple[int, ...]:
    """The last block of each quarter of the depth: ViTDet's (2, 5, 8, 11) for ViT-B,
    (5, 11, 17, 23) for ViT-L and (7, 15, 23, 31) for ViT-H."""
    return tuple(sorted({max(0, round(depth * (i + 1) / 4) - 1) for i in range(4)}))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, D) -> (B * windows, window * window, D), windows in raster order and
    tokens in raster order within each; H and W are padded with zeros at the bottom
    and right to multiples of ``window``. Returns the windows and the padded (H, W)."""
    B, H, W, D = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, D).transpose(2, 3)
    return x.reshape(-1, window * window, D), (Hp, Wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       size: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`window_partition`: (B, H, W, D), padding cut away."""
    (Hp, Wp), (H, W) = padded, size
    D = windows.shape[-1]
    x = windows.reshape(-1, Hp // window, Wp // window, window, window, D).transpose(2, 3)
    return x.reshape(-1, Hp, Wp, D)[:, :H, :W]


class ViTDetBlock(Block):
    """A pre-norm ViT block (the same parameters and names as the pretraining
    model's) on a (B, H, W, D) map: attention within windows (``window_size`` > 0)
    or over the whole map (0); the MLP per token."""

    def __init__(self, dim, num_heads, num_buckets, mlp_ratio, drop_path, per_head_rpe,
                 window_size: int):
        super().__init__(dim, num_heads, num_buckets, mlp_ratio, drop_path, per_head_rpe)
        self.window_size = window_size

    def forward(self, x, bucket_ids, backend=None):
        B, H, W, D = x.shape
        y = self.norm1(x)
        if self.window_size:
            y, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y, bucket_ids, backend), self.window_size, padded,
                                   (H, W))
        else:
            y = self.attn(y.reshape(B, H * W, D), bucket_ids, backend).view(B, H, W, D)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _pyramid_level(dim: int, out_channels: int, scale: float) -> tuple[nn.Module, nn.Module]:
    """(resampling, output convolutions) of one level, ViTDet's layers for ``scale``
    (4, 2: transposed convolutions halving the channels; 1; 1/2, 1/4: max pooling)."""
    layers: list[nn.Module] = []
    width = dim
    if scale > 1:
        for i in range(int(round(scale)).bit_length() - 1):
            if i:
                layers += [LayerNorm2d(width), nn.GELU()]
            layers.append(nn.ConvTranspose2d(width, width // 2, 2, stride=2))
            width //= 2
    elif scale < 1:
        layers.append(nn.MaxPool2d(int(round(1 / scale))))
    output = nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                           nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                           LayerNorm2d(out_channels))
    return nn.Sequential(*layers), output


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one (B, dim, h, w) map at stride
    ``patch_size``: levels at strides 4, 8, 16, 32 ("0" to "3"), and "pool" at 64
    when ``top_pool``."""

    def __init__(self, dim: int, patch_size: int, out_channels: int = 256, top_pool: bool = True):
        super().__init__()
        if dim % 4:
            raise ValueError(f"SimpleFeaturePyramid: dim must be a multiple of 4 (the stride-4 "
                             f"level quarters it), got {dim}")
        # Patch 14 and other non-powers of two: resample to the stride-16 grid first.
        self.base_stride = patch_size if patch_size & (patch_size - 1) == 0 else 16
        self.patch_size, self.top_pool = patch_size, top_pool
        self.resample = nn.ModuleList()
        self.output = nn.ModuleList()
        for stride in PYRAMID_STRIDES:
            resample, output = _pyramid_level(dim, out_channels, self.base_stride / stride)
            self.resample.append(resample)
            self.output.append(output)
        self.out_channels = out_channels
        for m in self.output.modules():
            if isinstance(m, nn.Conv2d):  # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(m.weight, a=1)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self.base_stride != self.patch_size:
            h, w = x.shape[-2:]
            size = (-(-h * self.patch_size // 16), -(-w * self.patch_size // 16))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        out = OrderedDict((str(i), output(resample(x))) for i, (resample, output)
                          in enumerate(zip(self.resample, self.output)))
        if self.top_pool:
            out["pool"] = F.max_pool2d(out[str(len(PYRAMID_STRIDES) - 1)], 1, stride=2)
        return out


class ViTDetBackbone(nn.Module):
    """``backbone(images)`` (B, C, H, W), H and W multiples of the patch size ->
    OrderedDict of (B, out_channels, H / s, W / s) maps, s = 4, 8, 16, 32 (and 64);
    ``backbone.forward_features(images)`` -> the encoder's (B, embed_dim, H/p, W/p).

    ``window_size``: patches per window side (0: every block global);
    ``global_blocks``: the blocks with global attention (default: the last of each
    quarter, :func:`default_global_blocks`); ``abs_pos_embed``: fixed sin-cos
    embeddings instead of iRPE (for encoders pretrained that way)."""

    def __init__(self, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, drop_path_rate=0.1, window_size=14, global_blocks=None,
                 rpe=True, rpe_ratio=1.9, per_head_rpe=False, abs_pos_embed=False,
                 out_channels=256, top_pool=True, checkpointing=False):
        super().__init__()
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 0:
            raise ValueError(f"window_size must be an int >= 0 (0: global attention in every "
                             f"block), got {window_size!r}")
        global_blocks = default_global_blocks(depth) if global_blocks is None else global_blocks
        bad = [b for b in global_blocks if not isinstance(b, int) or not 0 <= b < depth]
        if bad:
            raise ValueError(f"global_blocks must be block indices in [0, {depth - 1}], got "
                             f"{list(global_blocks)}")
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.window_size = window_size
        self.global_blocks = tuple(sorted(set(global_blocks)))
        self.rpe = rpe and not abs_pos_embed
        self.rpe_ratio, self.abs_pos_embed = rpe_ratio, abs_pos_embed
        self.checkpointing = checkpointing
        self.ops_backend: str | None = None
        num_buckets = lomar_ops.irpe_num_buckets(rpe_ratio) if self.rpe else None
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            ViTDetBlock(embed_dim, num_heads, num_buckets, mlp_ratio, rate, per_head_rpe,
                        0 if i in self.global_blocks else window_size)
            for i, rate in enumerate(rates)])
        self.pyramid = SimpleFeaturePyramid(embed_dim, patch_size, out_channels, top_pool)
        self.out_channels = out_channels
        self._bucket_maps = BucketMaps(0, rpe_ratio) if self.rpe else None  # no cls token
        init_weights(self.blocks)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith("rpe_table")}

    def bucket_ids(self, h: int, w: int, device) -> torch.Tensor | None:
        """The iRPE map of an h x w patch grid without cls (a few kept per device)."""
        return self._bucket_maps.get(h, w, device) if self.rpe else None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = check_image_batch(images, self.in_chans, self.patch_size, "images")
        B, p = images.shape[0], self.patch_size
        patches = images.reshape(B, self.in_chans, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
        x = self.patch_embed(patches.reshape(B, gh, gw, p * p * self.in_chans))
        if self.abs_pos_embed:
            x = x + sincos_2d(self.embed_dim, gh, gw, num_cls=0).to(x).view(gh, gw, -1)
        k = self.window_size
        maps = {"global": self.bucket_ids(gh, gw, images.device),
                "window": self.bucket_ids(k, k, images.device) if k else None}
        run_checkpointed = self.checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.blocks:
            ids = maps["window" if blk.window_size else "global"]
            if run_checkpointed:
                x = checkpoint(blk, x, ids, self.ops_backend, use_reentrant=False)
            else:
                x = blk(x, ids, self.ops_backend)
        return x.permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.forward_features(images))
