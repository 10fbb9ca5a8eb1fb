"""UperNet's decode head (Xiao et al. 2018) and the auxiliary FCN head, as
mmsegmentation's ``UPerHead`` and ``FCNHead`` build them for the MAE/BEiT ADE20K
configs, with the same submodule names so that a state dict carries mmseg's keys
(docs/segmentation.md lists them):

* ``psp_modules.{i}.1``: the pyramid pooling module on the last level (stride 32):
  adaptive average pooling to each of ``pool_scales`` (1, 2, 3, 6), a 1x1
  ConvModule each, upsampled back and concatenated with the level itself;
  ``bottleneck`` (3x3) fuses them;
* ``lateral_convs.{i}`` (1x1) on the other levels, a top-down path adding each
  coarser level upsampled, ``fpn_convs.{i}`` (3x3) on the sums;
* ``fpn_bottleneck`` (3x3) on all four levels upsampled to stride 4 and
  concatenated; dropout (``Dropout2d``, 0.1) and ``conv_seg`` (1x1) to the classes.

A ConvModule is a bias-free convolution (``conv``), BatchNorm (``bn``) and ReLU.
mmseg's configs use SyncBN; here it is BatchNorm, which ``lomar segment``
converts to ``SyncBatchNorm`` under DDP on CUDA (torch's SyncBatchNorm needs a
GPU; on CPU processes each normalises over its own batch). Upsampling is bilinear
with ``align_corners=False`` (the ViT configs'). Initialisation as mmcv's:
convolutions kaiming-normal (fan out, ReLU), BatchNorm ones and zeros,
``conv_seg`` normal with std 0.01 and zero bias."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvModule(nn.Sequential):
    """mmcv's ConvModule with BatchNorm and ReLU: ``conv``, ``bn``, ``activate``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class _ClassifierHead(nn.Module):
    """What both heads end with: dropout, then ``conv_seg`` (1x1) to the classes."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        if num_classes < 1 or channels < 1 or not 0 <= dropout < 1:
            raise ValueError(f"need num_classes >= 1, channels >= 1 and dropout in [0, 1), got "
                             f"{num_classes}, {channels}, {dropout}")
        self.num_classes, self.channels = num_classes, channels
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_ClassifierHead):
    """``head([f4, f8, f16, f32])`` -> logits (B, num_classes, H/4, W/4): the pyramid
    pooling module on the last map, FPN over all of them, their fusion at the first
    map's resolution. ``in_channels``: the channels of each input map."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        if len(in_channels) < 2 or not pool_scales or min(pool_scales) < 1:
            raise ValueError(f"UPerHead needs two or more input levels and pool scales >= 1, "
                             f"got in_channels {list(in_channels)}, pool_scales "
                             f"{list(pool_scales)}")
        self.in_channels, self.pool_scales = list(in_channels), tuple(pool_scales)
        last = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(last, channels, 1))
            for scale in pool_scales)
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3)
                                       for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_upsample(module(x), x.shape[-2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.in_channels):
            raise ValueError(f"UPerHead takes {len(self.in_channels)} feature maps, got "
                             f"{len(features)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        laterals.append(self.psp_forward(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse into fine
            laterals[i - 1] = laterals[i - 1] + _upsample(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_upsample(x, size) for x in outs[1:]],
                                              dim=1))
        return self.classify(fused)


class FCNHead(_ClassifierHead):
    """The auxiliary head: ``num_convs`` 3x3 ConvModules (``convs``) on one map, then
    dropout and ``conv_seg``; mmseg's FCNHead with ``concat_input=False``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__(channels, num_classes, dropout)
        if num_convs < 1:
            raise ValueError(f"FCNHead needs num_convs >= 1, got {num_convs}")
        self.convs = nn.Sequential(*(ConvModule(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))
