"""A rectangle of a bicubic antialiased resize, from the source pixels it needs.

The window pipeline (:mod:`lomar.crop`) renders each LoMaR window of a
random-resized crop with :func:`resize_region`, so its cost follows the windows,
not the crop's output size. Its result is, to the bit, that rectangle of
torchvision's ``resized_crop(image, ..., BICUBIC, antialias=True)`` on a uint8
image (torch's AVX2 uint8 path; on machines without AVX2 torch computes in float
and may differ by one grey level).

The C++ kernel is ``csrc/cpu/resize_region.cpp`` (CPU only: it runs in the data
loader's workers); :func:`resize_region_reference` is the same algorithm in
PyTorch, slow and exact, the ground truth of the tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["resize_region", "resize_region_reference", "resize_regions"]


def _check(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
           region: Sequence[int]) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.dtype != torch.uint8:
        got = (f"{image.dtype} of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
               else type(image).__name__)
        raise TypeError(f"resize_region: image must be a uint8 (H, W, C) tensor, got {got}")
    if len(box) != 4 or len(size) != 2 or len(region) != 4:
        raise ValueError(f"resize_region: box must be (top, left, height, width), size "
                         f"(out_h, out_w) and region (y0, x0, rows, cols), got {box}, {size}, "
                         f"{region}")


def resize_region(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                  region: Sequence[int]) -> torch.Tensor:
    """``region`` of the bicubic antialiased resize of ``box`` of ``image`` to ``size``.

    Args:
        image: (H, W, C) uint8 on the CPU (the decoder's layout).
        box: (top, left, height, width) of the crop in ``image``'s pixels; fractional
            values address a crop of an image decoded at reduced scale.
        size: (out_h, out_w), the size the whole crop is resized to.
        region: (y0, x0, rows, cols), the output pixels wanted.

    Returns:
        (C, rows, cols) uint8, equal to
        ``resized_crop(image_chw, top, left, height, width, size, BICUBIC,
        antialias=True)[:, y0:y0 + rows, x0:x0 + cols]`` for an integer box.
    """
    return resize_regions(image, box, size, [region])[0]


def resize_regions(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                   regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """:func:`resize_region` for several rectangles of one size at once (the filter
    taps are computed once): (n, C, rows, cols)."""
    _check(image, box, size, regions[0] if len(regions) else ())
    return torch.ops.lomar_ops.resize_region(image, [float(v) for v in box],
                                             [int(v) for v in size],
                                             [int(v) for r in regions for v in r])


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5
    x = x.abs()
    return torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                       torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))


def _axis_matrix(in_size: int, start: float, length: float, out_size: int, lo: int,
                 count: int) -> tuple[torch.Tensor, int]:
    """(count, in_size) int64 fixed-point weights of outputs [lo, lo + count) and their
    precision (fractional bits)."""
    scale = length / out_size
    fs = max(scale, 1.0)
    support = 2.0 * fs
    origin = math.floor(start)
    offset = start - origin
    limit = min(math.ceil(start + length), in_size) - origin
    rows, max_weight = [], 0.0
    for i in range(out_size):
        center = offset + scale * (i + 0.5)
        xmin = max(math.floor(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), limit)
        j = torch.arange(xmin, xmax, dtype=torch.float64)
        w = _cubic((j - center + 0.5) / fs)
        total = float(w.sum())
        if total != 0.0:
            w = w / total
        if w.numel():
            max_weight = max(max_weight, float(w.max()))
        rows.append((origin + xmin, w))
    precision = 0
    while precision < 22 and int(0.5 + max_weight * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    m = torch.zeros(count, in_size, dtype=torch.int64)
    for r in range(count):
        first, w = rows[lo + r]
        v = w * (1 << precision)
        m[r, first:first + len(w)] = torch.where(v < 0, v - 0.5, v + 0.5).to(torch.int64)
    return m, precision


def _pass(x: torch.Tensor, m: torch.Tensor, precision: int) -> torch.Tensor:
    # x (..., in) int64 -> (..., out): fixed-point sum, arithmetic shift, clamp.
    return ((x @ m.T + (1 << (precision - 1))) >> precision).clamp_(0, 255)


def resize_region_reference(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                            region: Sequence[int]) -> torch.Tensor:
    """:func:`resize_region` in PyTorch (dense fixed-point matrices): the same
    arithmetic, step by step, for the tests."""
    _check(image, box, size, region)
    top, left, height, width = (float(v) for v in box)
    (out_h, out_w), (y0, x0, rows, cols) = size, region
    H, W, _ = image.shape
    mx, px = _axis_matrix(W, left, width, out_w, x0, cols)
    my, py = _axis_matrix(H, top, height, out_h, y0, rows)
    src = image.permute(2, 0, 1).to(torch.int64)                          # (C, H, W)
    horizontal = _pass(src, mx, px)                                         # (C, H, cols)
    vertical = _pass(horizontal.transpose(1, 2), my, py).transpose(1, 2)   # (C, rows, cols)
    return vertical.to(torch.uint8)
