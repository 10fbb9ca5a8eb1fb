"""window_patchify: the pixels of K x K-patch windows, patch by patch, in the
loss-target layout (docs/method.md#the-pretraining-step, step 6).

Implementations: csrc/cpu/window_patchify.cpp, csrc/cuda/window_patchify.cu,
lomar_ops/triton_kernels/window_patchify.py, lomar_ops/reference/window_patchify.py.
This file registers the autograd and fake-tensor rules of the C++ op
``torch.ops.lomar_ops.window_patchify`` and exposes the public function."""

from __future__ import annotations

import torch

from .. import _extension
from .._validation import (FLOAT_DTYPES, INDEX_DTYPES, check_positive_int, check_same_device,
                           check_tensor)
from ..backends import resolve_backend
from ..reference.window_patchify import window_patchify_reference

_OP = "window_patchify"

if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::window_patchify")
    def _window_patchify_fake(images, coords, window_size, patch_size):
        B, C = images.shape[:2]
        return images.new_empty((B, coords.shape[1], window_size * window_size,
                                 patch_size * patch_size * C))

    @torch.library.register_fake("lomar_ops::window_patchify_backward")
    def _window_patchify_backward_fake(grad_out, coords, window_size, patch_size, height, width):
        B, _, _, P = grad_out.shape
        return grad_out.new_empty((B, P // (patch_size * patch_size), height, width))

    def _setup_context(ctx, inputs, output):
        images, coords, window_size, patch_size = inputs
        ctx.save_for_backward(coords)
        ctx.geometry = (window_size, patch_size, images.shape[2], images.shape[3])

    def _backward(ctx, grad_out):
        (coords,) = ctx.saved_tensors
        grad_images = torch.ops.lomar_ops.window_patchify_backward(
            grad_out.contiguous(), coords, *ctx.geometry)
        return grad_images, None, None, None

    torch.library.register_autograd("lomar_ops::window_patchify", _backward,
                                    setup_context=_setup_context)


def check_window_coords(op: str, coords: torch.Tensor, grid_h: int, grid_w: int,
                        window_size: int) -> None:
    """Every window inside the patch grid. Data-dependent (one device sync): eager
    mode only; under torch.compile the kernels' own checks apply."""
    if coords.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = torch.aminmax(coords.reshape(-1, 2), dim=0)
    (row_lo, col_lo), (row_hi, col_hi) = torch.stack((lo, hi)).tolist()
    for name, low, high, grid in (("rows (top row of each window)", row_lo, row_hi, grid_h),
                                  ("columns (left column of each window)", col_lo, col_hi,
                                   grid_w)):
        upper = grid - window_size
        if low < 0 or high > upper:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: coords {name} must lie in [0, {upper}] (patch grid "
                             f"{grid} - window_size {window_size}), got {bad}")


def window_patchify(images: torch.Tensor, coords: torch.Tensor, window_size: int,
                    patch_size: int, backend: str | None = None) -> torch.Tensor:
    """The pixels of square windows of patches, patch by patch.

    Reads only the windows' pixels, through the image's strides (channels-last and
    other non-contiguous images are not copied whole), so its cost does not depend
    on the image size.

    Args:
        images: (B, C, H, W) float16/bfloat16/float32/float64, any strides; H and W
            multiples of ``patch_size``.
        coords: (B, n, 2) int32 or int64: (top row, left column) of each window in
            patch units, with 0 <= row <= H/p - K and 0 <= col <= W/p - K
            (e.g. from :func:`lomar_ops.sample_windows`).
        window_size: K, patches per window side.
        patch_size: p, pixels per patch side.
        backend: None, "cuda", "triton", "cpu" or "torch" (see lomar_ops.backends).

    Returns:
        (B, n, K*K, p*p*C) contiguous, images' dtype, with
        ``out[b, w, r*K + c, (py*p + px)*C + ch] =
        images[b, ch, (row + r)*p + py, (col + c)*p + px]``: patches in raster order
        within a window, pixels in (row, column, channel) order within a patch. This
        is the loss target and, reshaped, the input of the patch-embedding linear map.

    Images normally need no gradient (they are data). When they do, the backward
    is correct: zero outside the windows, overlapping windows summed (in fp32,
    fp64 for double, deterministically); it writes a whole-image gradient.
    """
    check_tensor(_OP, "images", images, ndim=4, dtypes=FLOAT_DTYPES, shape_doc="(B, C, H, W)")
    check_tensor(_OP, "coords", coords, ndim=3, dtypes=INDEX_DTYPES, shape_doc="(B, n, 2)")
    check_same_device(_OP, images=images, coords=coords)
    K = check_positive_int(_OP, "window_size", window_size)
    p = check_positive_int(_OP, "patch_size", patch_size)
    B, C, H, W = images.shape
    if coords.shape[0] != B or coords.shape[2] != 2:
        raise ValueError(f"{_OP}: coords must be (B, n, 2) = ({B}, n, 2) to match images "
                         f"(B, C, H, W) = {tuple(images.shape)}, got {tuple(coords.shape)}")
    if H % p or W % p:
        raise ValueError(f"{_OP}: images height and width (H, W) = ({H}, {W}) must be "
                         f"multiples of patch_size {p}")
    grid_h, grid_w = H // p, W // p
    if K > grid_h or K > grid_w:
        raise ValueError(f"{_OP}: window_size {K} does not fit the patch grid "
                         f"(H/p, W/p) = ({grid_h}, {grid_w})")
    check_window_coords(_OP, coords, grid_h, grid_w, K)
    chosen = resolve_backend(_OP, images.device, backend)
    if chosen == "torch":
        return window_patchify_reference(images, coords, K, p)
    xy = coords.to(torch.int32).contiguous()
    if chosen == "triton":
        from ..triton_kernels.window_patchify import window_patchify_triton
        return window_patchify_triton(images, xy, K, p)
    return torch.ops.lomar_ops.window_patchify(images, xy, K, p)
