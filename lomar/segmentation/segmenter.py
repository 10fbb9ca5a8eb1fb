"""A semantic segmentation model: a backbone giving feature maps at strides 4, 8,
16 and 32 (the ViTDet backbone of :mod:`lomar.models.vitdet`: windowed and global
blocks, then its simple feature pyramid), UperNet's decode head on all four and
the auxiliary FCN head on stride 16 (:mod:`.upernet`), mmsegmentation's
``EncoderDecoder`` in names and behaviour.

``model(images)`` takes images in [0, 1] (B, C, H, W), H and W multiples of 32,
normalises them with the buffers ``pixel_mean``/``pixel_std`` and returns the
decode head's logits upsampled bilinearly to (H, W). ``model(images, targets)``
returns the training losses: ``loss_seg`` (cross-entropy at the input resolution,
averaged over the pixels whose target is not ``ignore_index``) and, with an
auxiliary head, ``loss_aux`` (the same on its logits) already weighted by
``aux_weight`` (0.4): the loss to minimise is their sum. mmseg 0.x averaged over
all pixels, the ignored ones counted as 0; averaging over the counted ones (its
later ``avg_non_ignore=True``) keeps a mostly-ignored crop from shrinking the
step. Cross-entropy runs in float32 under autocast."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from .upernet import FCNHead, UPerHead

LEVELS = ("0", "1", "2", "3")  # the ViTDet pyramid's keys of strides 4, 8, 16, 32
AUX_LEVEL = 2  # stride 16: the auxiliary head's input (mmseg's in_index=2)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean cross-entropy over the counted pixels (0, not NaN, when none is counted)."""
    logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear",
                           align_corners=False)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


class Segmenter(nn.Module):
    """``backbone`` (images -> a mapping with the keys of :data:`LEVELS`, or a
    sequence of four maps), ``decode_head`` (an :class:`UPerHead`),
    ``auxiliary_head`` (an :class:`FCNHead` or None)."""

    def __init__(self, backbone: nn.Module, decode_head: UPerHead,
                 auxiliary_head: Optional[FCNHead] = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255,
                 aux_weight: float = 0.4):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got "
                             f"mean={list(mean)}, std={list(std)}")
        self.backbone, self.decode_head, self.auxiliary_head = backbone, decode_head, auxiliary_head
        self.num_classes = decode_head.num_classes
        self.ignore_index, self.aux_weight = ignore_index, aux_weight
        # Not saved: the run's config holds the statistics; the state dict stays mmseg's.
        self.register_buffer("pixel_mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The four backbone maps (strides 4 to 32) of images in [0, 1]."""
        out = self.backbone((images - self.pixel_mean) / self.pixel_std)
        return [out[k] for k in LEVELS] if isinstance(out, dict) else list(out)

    def forward(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """Logits (B, num_classes, H, W); with ``targets`` (B, H, W) int64, the losses."""
        features = self.features(images)
        logits = self.decode_head(features)
        if targets is None:
            return F.interpolate(logits, size=images.shape[-2:], mode="bilinear",
                                 align_corners=False)
        losses = {"loss_seg": _cross_entropy(logits, targets, self.ignore_index)}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head(features[AUX_LEVEL])
            losses["loss_aux"] = self.aux_weight * _cross_entropy(aux, targets, self.ignore_index)
        return losses


def build_segmenter(backbone: nn.Module, num_classes: int, in_channels: int, channels: int = 512,
                    pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
                    aux_channels: int = 256, aux_weight: float = 0.4,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    ignore_index: int = 255) -> Segmenter:
    """UperNet (``channels`` wide) on ``backbone``'s four maps of ``in_channels``
    each, with the auxiliary FCN head (``aux_channels`` wide, one 3x3 conv) on
    stride 16 when ``aux_weight`` > 0."""
    head = UPerHead([in_channels] * len(LEVELS), channels, num_classes, pool_scales, dropout)
    aux = FCNHead(in_channels, aux_channels, num_classes, 1, dropout) if aux_weight > 0 else None
    return Segmenter(backbone, head, aux, mean, std, ignore_index, aux_weight)
