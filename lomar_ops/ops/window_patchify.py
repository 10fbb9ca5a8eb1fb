"""window_patchify: the pixels of K x K-patch windows, patch by patch, in the
loss-target layout (docs/method.md#the-pretraining-step, step 6).

Implementations: csrc/cpu/window_patchify.cpp, csrc/cuda/window_patchify.cu,
lomar_ops/triton_kernels/window_patchify.py, lomar_ops/reference/window_patchify.py.
This file holds the op's autograd rule (for the C++ and the Triton op), the C++ op's
fake-tensor rules and the public function."""

from __future__ import annotations

import torch

from .. import _extension
from .._autograd import register_autograd
from .._validation import (FLOAT_DTYPES, INDEX_DTYPES, INT_PIXEL_DTYPES, check_positive_int,
                           check_same_device, check_tensor)
from ..backends import TRITON_INSTALLED, resolve_backend
from ..reference.window_patchify import window_patchify_reference

_OP = "window_patchify"
PIXEL_DTYPES = FLOAT_DTYPES + INT_PIXEL_DTYPES


def _save(ctx, inputs, output):
    images, coords, window_size, patch_size, mean, std, out_dtype = inputs
    ctx.save_for_backward(coords, std)
    ctx.geometry = (window_size, patch_size, images.shape[2], images.shape[3])
    ctx.images_dtype = images.dtype


def _grads(backward, ctx, grad_out):
    coords, std = ctx.saved_tensors
    # Summed in the images' dtype (fp32 sums at least): a bf16 output of fp32
    # images must not round the gradient to bf16 before it reaches them.
    grad_images = backward(grad_out.to(ctx.images_dtype).contiguous(), coords, *ctx.geometry)
    return scale_image_grad(grad_images, std, ctx.images_dtype), None, None, None, None, \
        None, None


if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::window_patchify")
    def _window_patchify_fake(images, coords, window_size, patch_size, mean=None, std=None,
                              out_dtype=None):
        B, C = images.shape[:2]
        return images.new_empty((B, coords.shape[1], window_size * window_size,
                                 patch_size * patch_size * C),
                                dtype=out_dtype or default_out_dtype(images.dtype))

    @torch.library.register_fake("lomar_ops::window_patchify_backward")
    def _window_patchify_backward_fake(grad_out, coords, window_size, patch_size, height, width):
        B, _, _, P = grad_out.shape
        return grad_out.new_empty((B, P // (patch_size * patch_size), height, width))


def default_out_dtype(images_dtype: torch.dtype) -> torch.dtype:
    """float32 for uint8 and uint16 images, else the images' dtype."""
    return torch.float32 if images_dtype in INT_PIXEL_DTYPES else images_dtype


def scale_image_grad(grad_images: torch.Tensor, std: torch.Tensor | None,
                     images_dtype: torch.dtype) -> torch.Tensor:
    """The images' gradient from the summed window gradients: the chain rule of the
    per-channel division by std (in fp32, fp64 for double), in the images' dtype."""
    if std is not None:
        work = torch.float64 if torch.float64 in (grad_images.dtype, images_dtype) \
            else torch.float32
        grad_images = grad_images.to(work) / std.to(work).view(1, -1, 1, 1)
    return grad_images.to(images_dtype)


def normalization(op: str, images: torch.Tensor, mean, std):
    """(mean, std) as float64 (C,) tensors on the images' device, or (None, None)."""
    if (mean is None) != (std is None):
        raise ValueError(f"{op}: mean and std go together: got mean={'None' if mean is None else '...'}"
                         f", std={'None' if std is None else '...'}")
    if mean is None:
        return None, None
    C = images.shape[1]
    out = []
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, torch.Tensor):
            if not value.dtype.is_floating_point:
                raise TypeError(f"{op}: {name} must be a float tensor or a sequence of floats, "
                                f"got dtype {value.dtype}")
            t = value.detach().to(device=images.device, dtype=torch.float64)
        else:
            try:
                t = torch.tensor([float(v) for v in value], dtype=torch.float64,
                                 device=images.device)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{op}: {name} must be a float tensor or a sequence of floats, "
                                f"got {value!r}") from exc
        if t.shape != (C,):
            raise ValueError(f"{op}: {name} must have one value per channel, shape ({C},), "
                             f"got shape {tuple(t.shape)}")
        out.append(t)
    if not torch.compiler.is_compiling() and not bool((out[1] > 0).all()):
        raise ValueError(f"{op}: std must be > 0 in every channel, got {out[1].tolist()}")
    return out[0], out[1]


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
                    patch_size: int, mean=None, std=None, out_dtype: torch.dtype | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """The pixels of square windows of patches, patch by patch, optionally normalised.

    Reads only the windows' pixels, through the image's strides (channels-last and
    other non-contiguous images are not copied whole), so its cost does not depend
    on the image size. With integer images (uint8, uint16) and ``mean``/``std`` it is
    also the normalisation of the input pipeline, fused into the gather: the loader
    ships the file's samples as they are (uint8: 1 byte per sample value, a quarter of
    float32's; uint16: 2 bytes, a half) and only the windows' pixels are ever
    converted.

    Args:
        images: (B, C, H, W) uint8/uint16/float16/bfloat16/float32/float64, any number
            of channels C, any strides; H and W multiples of ``patch_size``.
        coords: (B, n, 2) int32 or int64: (top row, left column) of each window in
            patch units, with 0 <= row <= H/p - K and 0 <= col <= W/p - K
            (e.g. from :func:`lomar_ops.sample_windows`).
        window_size: K, patches per window side.
        patch_size: p, pixels per patch side.
        mean, std: None, or per-channel values (sequences of C floats or float tensors
            of shape (C,)), given together, std > 0: the output is (x - mean) / std.
            x is the pixel value, divided by 255 for uint8 images and by 65535 for
            uint16 images (their type's maximum: [0, 1] units, as
            ``ToDtype(torch.float32, scale=True)`` gives), taken as it is for float
            images. So ImageNet's mean/std apply to uint8 images, and the statistics
            of 16-bit data (``lomar stats``) are given as value / 65535: a 12-bit
            sensor's mean of 1000 counts is 1000 / 65535 = 0.01526. Not differentiated.
        out_dtype: float16/bfloat16/float32/float64 output; default the images' dtype
            (float32 for uint8 and uint16 images).
        backend: None, "cuda", "triton", "cpu" or "torch" (see lomar_ops.backends).

    Returns:
        (B, n, K*K, p*p*C) contiguous, ``out_dtype``, with
        ``out[b, w, r*K + c, (py*p + px)*C + ch] =
        f(images[b, ch, (row + r)*p + py, (col + c)*p + px])``: patches in raster order
        within a window, pixels in (row, column, channel) order within a patch. This
        is the loss target and, reshaped, the input of the patch-embedding linear map.
        f is the identity for float images without mean/std (an exact copy); else it
        is computed in float32 (float64 when the images or the output are float64)
        and rounded once to ``out_dtype``.

    Images normally need no gradient (they are data). When float images do, the
    backward is correct: zero outside the windows, overlapping windows summed (in
    fp32, fp64 for double, deterministically), divided by std; it writes a
    whole-image gradient. Integer (uint8, uint16) images have no gradient.
    """
    check_tensor(_OP, "images", images, ndim=4, dtypes=PIXEL_DTYPES, shape_doc="(B, C, H, W)")
    check_tensor(_OP, "coords", coords, ndim=3, dtypes=INDEX_DTYPES, shape_doc="(B, n, 2)")
    check_same_device(_OP, images=images, coords=coords)
    K = check_positive_int(_OP, "window_size", window_size)
    p = check_positive_int(_OP, "patch_size", patch_size)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{_OP}: out_dtype must be None or one of float16, bfloat16, float32, "
                        f"float64, got {out_dtype}")
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
    mean, std = normalization(_OP, images, mean, std)
    check_window_coords(_OP, coords, grid_h, grid_w, K)
    chosen = resolve_backend(_OP, images.device, backend)
    if out_dtype == default_out_dtype(images.dtype):
        out_dtype = None  # the plain copy when nothing else changes
    if chosen == "torch":
        return window_patchify_reference(images, coords, K, p, mean, std, out_dtype)
    xy = coords.to(torch.int32).contiguous()
    if chosen == "triton":
        return _triton.window_patchify_triton(images, xy, K, p, mean, std, out_dtype)
    return torch.ops.lomar_ops.window_patchify(images, xy, K, p, mean, std, out_dtype)


# The autograd rule on every compiled forward op: the C++ op's, the Triton op's.
_FORWARDS = {}
if _extension.AVAILABLE:
    _FORWARDS["lomar_ops::window_patchify"] = torch.ops.lomar_ops.window_patchify_backward
if TRITON_INSTALLED:
    from ..triton_kernels import window_patchify as _triton
    _FORWARDS[_triton.window_patchify_triton] = _triton.window_patchify_backward_triton
register_autograd(_FORWARDS, _save, _grads)
