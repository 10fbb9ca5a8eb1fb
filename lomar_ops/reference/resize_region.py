"""resize_region, pure PyTorch: rectangles of a bicubic antialiased resize of a uint8
image, as dense fixed-point matrices.

``resize_region_reference(image, box, size, region)`` is
``resized_crop(image, *box, size, BICUBIC, antialias=True)[:, y0:y0 + rows, x0:x0 + cols]``
with ``region = (y0, x0, rows, cols)``, computed the way Pillow (and torch's AVX2
uint8 path) computes the whole resize: Keys' cubic with a = -0.5 widened by the
downscaling factor, taps clipped to the box, weights normalised, then quantised to
fixed point with the precision the axis's largest weight allows; a horizontal pass
rounded to uint8, then a vertical one. A fractional box (a crop of a JPEG decoded at
reduced scale) uses the same formulas from its fractional origin.

Args: image (H, W, C) uint8 on any device; box (top, left, height, width) in the
image's pixels; size (out_h, out_w) of the whole resize; region (y0, x0, rows, cols)
of its output pixels. Returns (C, rows, cols) uint8. Not differentiable (uint8).

The fixed-point sums are integers far below 2**53, so they are computed exactly as
float64 matrix products (integer matrix products do not run on CUDA)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


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
    # x (..., in) -> (..., out): fixed-point sum, arithmetic shift, clamp to uint8's range.
    sums = (x.double() @ m.T.to(x.device, torch.float64)).to(torch.int64)
    return ((sums + (1 << (precision - 1))) >> precision).clamp_(0, 255)


def resize_region_reference(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                            region: Sequence[int]) -> torch.Tensor:
    top, left, height, width = (float(v) for v in box)
    (out_h, out_w), (y0, x0, rows, cols) = size, region
    H, W, _ = image.shape
    mx, px = _axis_matrix(W, left, width, out_w, x0, cols)
    my, py = _axis_matrix(H, top, height, out_h, y0, rows)
    src = image.permute(2, 0, 1).to(torch.int64)                            # (C, H, W)
    horizontal = _pass(src, mx, px)                                         # (C, H, cols)
    vertical = _pass(horizontal.transpose(1, 2), my, py).transpose(1, 2)   # (C, rows, cols)
    return vertical.to(torch.uint8)


def resize_regions_reference(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                             regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """:func:`resize_region_reference` of each region (all of one size): (n, C, rows, cols)."""
    return torch.stack([resize_region_reference(image, box, size, r) for r in regions])
