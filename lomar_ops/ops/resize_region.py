"""resize_region: rectangles of a bicubic antialiased resize of a uint8, uint16 or
float32 image with any number of channels, computed from the source pixels they need
only.

The window pipeline (lomar.data) renders each LoMaR window of a random-resized crop
with it, so its cost follows the windows, not the crop's output size. On a uint8
image its result is, to the bit, that rectangle of torchvision's
``resized_crop(image, ..., BICUBIC, antialias=True)`` (torch's AVX2 uint8 path; on
machines without AVX2 torch computes in float and may differ by one grey level).
uint16 images go through the same fixed-point algorithm with 32-bit weights, float32
images through float32 weights and float64 sums (lomar_ops/reference/resize_region.py
says exactly how); the output has the image's dtype.

Implementations: csrc/cpu/resize_region.cpp (CPU tensors: the op runs in the data
loader's workers, on decoded images in host memory) and
lomar_ops/reference/resize_region.py. There is no CUDA or Triton kernel. This file
registers the fake-tensor rule of the C++ op ``torch.ops.lomar_ops.resize_region``
(no autograd) and exposes the public functions."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from .. import _extension
from .._validation import check_tensor
from ..backends import (BACKENDS, BackendUnavailableError, implemented_backends,
                        resolve_backend, unavailable_reason)
from ..reference.resize_region import DTYPES, resize_regions_reference

_OP = "resize_region"
_IMPLEMENTED = implemented_backends(_OP)
# Backends that have no kernel for this op at all: an explicit request is told so
# (the chooser would first say that a CPU tensor cannot go to a GPU backend).
_NO_KERNEL = {b: f"{_OP} has no {b} kernel (it runs on decoded images in the data "
                 f"loader's CPU workers: its backends are cpu and torch)"
              for b in ("cuda", "triton") if b not in _IMPLEMENTED}

if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::resize_region")
    def _resize_region_fake(image, box, size, regions):
        return image.new_empty((len(regions) // 4, image.shape[2], regions[2], regions[3]))


def _ints(name: str, values, count: int, doc: str) -> tuple[int, ...]:
    try:
        if len(values) != count or any(isinstance(v, bool) for v in values):
            raise TypeError
        return tuple(operator.index(v) for v in values)
    except TypeError:
        raise TypeError(f"{_OP}: {name} must be {count} ints {doc}, got {values!r}") from None


def _check(image, box, size, regions) -> tuple[tuple[float, ...], tuple[int, int],
                                                list[tuple[int, ...]]]:
    check_tensor(_OP, "image", image, ndim=3, dtypes=DTYPES, shape_doc="(H, W, C)")
    H, W, C = image.shape
    if H == 0 or W == 0 or C == 0:
        raise ValueError(f"{_OP}: image must not be empty, got shape {tuple(image.shape)}")
    try:
        if len(box) != 4 or any(isinstance(v, bool) for v in box):
            raise TypeError
        box = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise TypeError(f"{_OP}: box must be 4 numbers (top, left, height, width), "
                        f"got {box!r}") from None
    top, left, height, width = box
    if not (top >= 0 and left >= 0 and height > 0 and width > 0
            and top + height <= H + 1e-6 and left + width <= W + 1e-6):
        raise ValueError(f"{_OP}: box (top, left, height, width) must lie inside the {H}x{W} "
                         f"image and not be empty, got {box}")
    size = _ints("size", size, 2, "(out_h, out_w)")
    if min(size) < 1:
        raise ValueError(f"{_OP}: size (out_h, out_w) must be positive, got {size}")
    if isinstance(regions, (str, bytes)) or not isinstance(regions, Sequence) or not regions:
        raise ValueError(f"{_OP}: regions must be a non-empty sequence of (y0, x0, rows, cols), "
                         f"got {regions!r}")
    out_h, out_w = size
    checked = []
    for i, region in enumerate(regions):
        y0, x0, rows, cols = _ints(f"region {i}", region, 4, "(y0, x0, rows, cols)")
        if not (y0 >= 0 and x0 >= 0 and rows > 0 and cols > 0
                and y0 + rows <= out_h and x0 + cols <= out_w):
            raise ValueError(f"{_OP}: region {i} (y0, x0, rows, cols) = {(y0, x0, rows, cols)} "
                             f"must lie inside the {out_h}x{out_w} output and not be empty")
        if checked and (rows, cols) != checked[0][2:]:
            raise ValueError(f"{_OP}: every region must have the first one's size (rows, cols) "
                             f"= {checked[0][2:]}, region {i} has {(rows, cols)}")
        checked.append((y0, x0, rows, cols))
    return box, size, checked


def resize_region(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                  region: Sequence[int], backend: str | None = None) -> torch.Tensor:
    """``region`` of the bicubic antialiased resize of ``box`` of ``image`` to ``size``.

    Args:
        image: (H, W, C) uint8, uint16 or float32 (the decoder's layout), any number
            of channels C, any strides; CPU for the "cpu" backend.
        box: (top, left, height, width) of the crop in ``image``'s pixels, inside the
            image; fractional values address a crop of an image decoded at reduced
            scale.
        size: (out_h, out_w), the size the whole crop is resized to.
        region: (y0, x0, rows, cols), the output pixels wanted, inside ``size``.
        backend: None, "cpu" or "torch" (see lomar_ops.backends); "cuda" and
            "triton" have no implementation of this op.

    Returns:
        (C, rows, cols) in the image's dtype: integers rounded to nearest and clamped to
        the dtype's range after each of the two passes, float32 not clamped. For a uint8
        image and an integer box it equals
        ``resized_crop(image_chw, top, left, height, width, size, BICUBIC,
        antialias=True)[:, y0:y0 + rows, x0:x0 + cols]``; for uint16, the same
        algorithm with finer weights (within 1.25 units of the exact resize where nothing
        clamps); for float32, torchvision's float resize to within float32 rounding.
        Every region equals, to the bit, that part of the whole resize
        (``region = (0, 0, *size)``).
    """
    return resize_regions(image, box, size, [region], backend=backend)[0]


def resize_regions(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                   regions: Sequence[Sequence[int]], backend: str | None = None) -> torch.Tensor:
    """:func:`resize_region` for several rectangles of one size at once (the filter
    taps are computed once): (n, C, rows, cols) in the image's dtype."""
    box, size, regions = _check(image, box, size, regions)
    if backend in _NO_KERNEL:
        usable = [b for b in BACKENDS
                  if b in _IMPLEMENTED and unavailable_reason(b, image.device) is None]
        raise BackendUnavailableError(f"{_OP}: backend={backend!r} is unavailable: "
                                      f"{_NO_KERNEL[backend]}. Available for {_OP} on "
                                      f"{image.device}: {usable}")
    chosen = resolve_backend(_OP, image.device, backend, _IMPLEMENTED)
    if chosen == "torch":
        return resize_regions_reference(image, box, size, regions)
    return torch.ops.lomar_ops.resize_region(image, list(box), list(size),
                                             [v for r in regions for v in r])
