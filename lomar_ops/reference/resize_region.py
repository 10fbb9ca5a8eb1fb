"""resize_region, pure PyTorch: rectangles of a bicubic antialiased resize of a uint8,
uint16 or float32 image.

``resize_region_reference(image, box, size, region)`` is
``resized_crop(image, *box, size, BICUBIC, antialias=True)[:, y0:y0 + rows, x0:x0 + cols]``
with ``region = (y0, x0, rows, cols)``, computed the way Pillow (and torch's AVX2
uint8 path) computes the whole resize: Keys' cubic with a = -0.5 widened by the
downscaling factor, taps clipped to the box, weights normalised (their sum taken in
tap order), then a horizontal pass and a vertical one, each rounded to the image's
dtype. A fractional box (a crop of a JPEG decoded at reduced scale) uses the same
formulas from its fractional origin. Per dtype:

- uint8: the weights quantised to fixed point with the precision the axis's largest
  weight allows (15 bits for it, at most 22 fractional bits); each pass rounded to
  nearest (half up) and clamped to 0..255. torchvision's uint8 resize to the bit.
- uint16: the same with 31 bits for the largest weight (at most 32 fractional bits);
  each pass clamped to 0..65535 (Pillow's "I;16" resize but for one unit in a few
  pixels, where Pillow's clipping of sums above 65535 is right). Within 1.25 units of
  the exact resize (two roundings) where no pass clamps.
- float32: the normalised weights rounded to float32, each output the sum over its
  taps in order, in float64 (the products of two float32 values are exact in float64,
  so the sums are the same with or without fused multiply-adds), rounded to float32
  after each pass; no clamping (bicubic overshoots, as in torch's float resize).

Args: image (H, W, C) uint8, uint16 or float32 on any device; box (top, left, height,
width) in the image's pixels; size (out_h, out_w) of the whole resize; region (y0, x0,
rows, cols) of its output pixels. Returns (C, rows, cols) in the image's dtype. Not
differentiable.

The fixed-point sums are integers below 2**49, so they are computed exactly as
float64 matrix products (integer matrix products do not run on CUDA). uint16 tensors
have few kernels in torch: they are read and written through int16 views of the same
memory (the values brought to 0..65535 in int32 in between)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Per integer dtype: the largest weight's bits, the most fractional bits, the largest value.
_FIXED_POINT = {torch.uint8: (15, 22, 255), torch.uint16: (31, 32, 65535)}
DTYPES = (torch.uint8, torch.uint16, torch.float32)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    a = -0.5
    x = x.abs()
    return torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                       torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))


def _axis_taps(in_size: int, start: float, length: float, out_size: int
               ) -> tuple[list[tuple[int, torch.Tensor]], float]:
    """Per output position its first source pixel and its normalised float64 weights,
    and the axis's largest weight."""
    scale = length / out_size
    fs = max(scale, 1.0)
    support = 2.0 * fs
    origin = math.floor(start)
    offset = start - origin
    limit = min(math.ceil(start + length), in_size) - origin
    taps, max_weight = [], 0.0
    for i in range(out_size):
        center = offset + scale * (i + 0.5)
        xmin = max(math.floor(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), limit)
        j = torch.arange(xmin, xmax, dtype=torch.float64)
        w = _cubic((j - center + 0.5) / fs)
        total = 0.0
        for v in w.tolist():  # in tap order, as the C++ kernel (not a tree sum)
            total += v
        if total != 0.0:
            w = w / total
        if w.numel():
            max_weight = max(max_weight, float(w.max()))
        taps.append((origin + xmin, w))
    return taps, max_weight


def _fixed_point_matrix(taps, max_weight: float, in_size: int, lo: int, count: int,
                        weight_bits: int, max_precision: int) -> tuple[torch.Tensor, int]:
    """(count, in_size) int64 fixed-point weights of outputs [lo, lo + count) and their
    precision (fractional bits)."""
    precision = 0
    while precision < max_precision and \
            int(0.5 + max_weight * 2.0 ** (precision + 1)) < (1 << weight_bits):
        precision += 1
    m = torch.zeros(count, in_size, dtype=torch.int64)
    for r in range(count):
        first, w = taps[lo + r]
        v = w * 2.0 ** precision
        m[r, first:first + len(w)] = torch.where(v < 0, v - 0.5, v + 0.5).to(torch.int64)
    return m, precision


def _fixed_point_pass(x: torch.Tensor, m: torch.Tensor, precision: int, top: int) -> torch.Tensor:
    # x (..., in) -> (..., out): fixed-point sum, arithmetic shift, clamp to [0, top].
    sums = (x.double() @ m.T.to(x.device, torch.float64)).to(torch.int64)
    return ((sums + (1 << (precision - 1))) >> precision).clamp_(0, top)


def _float_pass(x: torch.Tensor, taps, lo: int, count: int) -> torch.Tensor:
    # x (..., in) float32 -> (..., out) float32: each output's taps summed in order in
    # float64 (exact products of float32 values), rounded once.
    width = max(len(w) for _, w in taps[lo:lo + count])
    first = torch.tensor([f for f, _ in taps[lo:lo + count]], dtype=torch.int64)
    sizes = torch.tensor([len(w) for _, w in taps[lo:lo + count]], dtype=torch.int64)
    weights = torch.zeros(count, max(width, 1), dtype=torch.float64)
    for r, (_, w) in enumerate(taps[lo:lo + count]):
        weights[r, :len(w)] = w.to(torch.float32).double()
    first, sizes, weights = (t.to(x.device) for t in (first, sizes, weights))
    xd = x.double()
    acc = torch.zeros(*x.shape[:-1], count, dtype=torch.float64, device=x.device)
    for k in range(width):
        inside = k < sizes
        idx = torch.where(inside, first + k, torch.zeros_like(first))
        acc = torch.where(inside, acc + xd[..., idx] * weights[:, k], acc)
    return acc.to(torch.float32)


def _to_int(image: torch.Tensor) -> torch.Tensor:
    """(H, W, C) uint8/uint16 -> (C, H, W) int64 of the same values."""
    chw = image.permute(2, 0, 1)
    if image.dtype == torch.uint16:
        return chw.view(torch.int16).to(torch.int64) & 0xFFFF
    return chw.to(torch.int64)


def _from_int(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int64 values in the dtype's range -> that dtype."""
    if dtype == torch.uint16:  # 32768..65535 are the int16 view's negative numbers
        return torch.where(values > 32767, values - 65536, values).to(torch.int16) \
            .view(torch.uint16)
    return values.to(dtype)


def resize_region_reference(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                            region: Sequence[int]) -> torch.Tensor:
    top, left, height, width = (float(v) for v in box)
    (out_h, out_w), (y0, x0, rows, cols) = size, region
    H, W, _ = image.shape
    tx, max_x = _axis_taps(W, left, width, out_w)
    ty, max_y = _axis_taps(H, top, height, out_h)
    if image.dtype == torch.float32:
        src = image.permute(2, 0, 1)                                        # (C, H, W)
        horizontal = _float_pass(src, tx, x0, cols)                         # (C, H, cols)
        return _float_pass(horizontal.transpose(1, 2), ty, y0, rows).transpose(1, 2) \
            .contiguous()
    bits, max_precision, top_value = _FIXED_POINT[image.dtype]
    mx, px = _fixed_point_matrix(tx, max_x, W, x0, cols, bits, max_precision)
    my, py = _fixed_point_matrix(ty, max_y, H, y0, rows, bits, max_precision)
    horizontal = _fixed_point_pass(_to_int(image), mx, px, top_value)      # (C, H, cols)
    vertical = _fixed_point_pass(horizontal.transpose(1, 2), my, py, top_value).transpose(1, 2)
    return _from_int(vertical.contiguous(), image.dtype)                    # (C, rows, cols)


def resize_regions_reference(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                             regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """:func:`resize_region_reference` of each region (all of one size): (n, C, rows, cols)."""
    outs = [resize_region_reference(image, box, size, r) for r in regions]
    if image.dtype == torch.uint16:  # stacked as int16, the same bits
        return torch.stack([o.view(torch.int16) for o in outs]).view(torch.uint16)
    return torch.stack(outs)
