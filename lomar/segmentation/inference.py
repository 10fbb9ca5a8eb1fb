"""Sliding-window inference (mmsegmentation's ``slide`` test mode): a model
trained on ``crop`` x ``crop`` crops predicts a larger image window by window.

Windows of the crop size start every ``stride`` pixels down and across (mmseg:
stride 341 for crop 512, two thirds); the last row and column of windows are
moved back to end at the image's edge, so every pixel is covered and no window
reaches past the image. Each pixel's logits are the sum over the windows that
cover it divided by their count. An image smaller than the crop along a side is
first padded at the bottom or right with ``pad_value`` (the normalisation's mean:
zero after normalising, what mmseg pads with) and the padding cut from the result.
The windows of an image go through the model ``batch_size`` at a time; the caller
chooses the precision (autocast around the call); sums are kept in float32."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """The windows' first indices along one side of ``size`` >= ``crop`` pixels."""
    if not 0 < stride <= crop <= size:
        raise ValueError(f"need 0 < stride <= crop <= size, got stride {stride}, crop {crop}, "
                         f"size {size}")
    count = (size - crop + stride - 1) // stride + 1
    return [min(i * stride, size - crop) for i in range(count)]


def _pad_to(image: torch.Tensor, height: int, width: int, value) -> torch.Tensor:
    C, H, W = image.shape
    if H >= height and W >= width:
        return image
    out = torch.empty(C, max(H, height), max(W, width), dtype=image.dtype, device=image.device)
    out[:] = torch.as_tensor(value, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    out[:, :H, :W] = image
    return out


@torch.no_grad()
def sliding_window_logits(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                          crop: int, stride: Optional[int] = None, batch_size: int = 4,
                          pad_value: Sequence[float] | float = 0.0) -> torch.Tensor:
    """Logits (K, H, W) float32 of ``image`` (C, H, W) by ``model`` ((N, C, crop, crop) ->
    (N, K, crop, crop)) over crop x crop windows every ``stride`` pixels (default:
    two thirds of the crop, rounded down: mmseg's 341 at 512)."""
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stride = stride or crop * 2 // 3
    H, W = image.shape[-2:]
    padded = _pad_to(image, crop, crop, pad_value)
    Hp, Wp = padded.shape[-2:]
    boxes = [(top, left) for top in window_starts(Hp, crop, stride)
             for left in window_starts(Wp, crop, stride)]
    total: Optional[torch.Tensor] = None
    count = torch.zeros(1, Hp, Wp, dtype=torch.float32, device=image.device)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first:first + batch_size]
        logits = model(torch.stack([padded[:, t:t + crop, s:s + crop] for t, s in chunk])).float()
        if total is None:
            total = torch.zeros(logits.shape[1], Hp, Wp, dtype=torch.float32, device=image.device)
        for (t, s), window in zip(chunk, logits):
            total[:, t:t + crop, s:s + crop] += window
            count[:, t:t + crop, s:s + crop] += 1
    return (total / count)[:, :H, :W]


@torch.no_grad()
def predict(model, image: torch.Tensor, crop: int, stride: Optional[int] = None,
            batch_size: int = 4) -> torch.Tensor:
    """The label map (H, W) int64 of ``image`` (C, H, W) in [0, 1] by a
    :class:`lomar.segmentation.Segmenter` in evaluation mode, sliding ``crop``
    windows; padding takes the model's mean colour."""
    pad = model.pixel_mean.flatten().tolist()
    return sliding_window_logits(model, image, crop, stride, batch_size, pad).argmax(0)


def resize_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """(K, h, w) logits resampled bilinearly to ``size`` (mmseg's resize of the
    prediction to the label map's size before scoring)."""
    return F.interpolate(logits[None], size=tuple(size), mode="bilinear",
                         align_corners=False)[0]
