"""The windows' pixels: rectangles of the crop's bicubic antialiased resize, computed
from the source pixels they need by the op :func:`lomar_ops.resize_regions`.

The pipelines run in the data loader's CPU workers on decoded images in host memory,
so they call the op's CPU default (:data:`BACKEND`: the C++ kernel, or the PyTorch
reference in an installation without the compiled extension), whatever
``$LOMAR_OPS_BACKEND`` picks for the model's ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import lomar_ops
from lomar_ops.backends import default_backend, implemented_backends

__all__ = ["BACKEND", "resize_windows"]

BACKEND = default_backend("resize_region", "cpu",
                          implemented=implemented_backends("resize_region"))[0]


def resize_windows(image: torch.Tensor, box: Sequence[float], size: Sequence[int],
                   corners: Sequence[tuple[int, int]], side: int) -> torch.Tensor:
    """The ``side`` x ``side`` squares at ``corners`` (y0, x0) of the resize of ``box``
    of ``image`` (H, W, C) uint8 or uint16 to ``size``: (n, C, side, side), its dtype.

    One rectangle, the windows' bounding box, is resized when that costs no more
    pixels than the windows one by one (at 224 four 7x7 windows tile the whole crop);
    else each window is its own region of one call."""
    n = len(corners)
    if n == 0:
        return torch.empty(0, image.shape[2], side, side, dtype=image.dtype)
    y_lo, x_lo = min(y for y, _ in corners), min(x for _, x in corners)
    y_hi, x_hi = max(y for y, _ in corners) + side, max(x for _, x in corners) + side
    if (y_hi - y_lo) * (x_hi - x_lo) <= n * side * side:
        union = lomar_ops.resize_region(image, box, size, (y_lo, x_lo, y_hi - y_lo, x_hi - x_lo),
                                        backend=BACKEND)
        out = torch.empty(n, image.shape[2], side, side, dtype=image.dtype)
        for i, (y0, x0) in enumerate(corners):
            out[i] = union[:, y0 - y_lo:y0 - y_lo + side, x0 - x_lo:x0 - x_lo + side]
        return out
    return lomar_ops.resize_regions(image, box, size, [(y0, x0, side, side) for y0, x0 in corners],
                                    backend=BACKEND)
