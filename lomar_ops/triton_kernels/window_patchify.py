"""window_patchify in Triton: forward copy and a deterministic backward.

Forward: one program per window patch (b, w, r, c) copies its p x (p*C) tile,
loading the image through its strides (never a whole-image copy), through the
input pipeline's pixel transform when asked (uint8 / 255, uint16 / 65535,
(x - mean) / std, the output dtype; see lomar_ops/reference/window_patchify.py).
Backward: one program per (b, tile of image pixels) sums, channel by channel and
window by window in index order, the gradients of the windows covering each pixel,
in fp32 (fp64 for double): no atomics, zero outside every window."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from .._validation import PIXEL_SCALE
from ..backends import triton_interpret
from ._launch import launch


@triton.jit
def _window_patchify_fwd_kernel(img_ptr, coords_ptr, out_ptr, mean_ptr, std_ptr, n, K, p, C,
                                stride_b, stride_c, stride_h, stride_w,
                                BLOCK_PY: tl.constexpr, BLOCK_J: tl.constexpr,
                                TRANSFORM: tl.constexpr, INT_MAX: tl.constexpr,
                                NORMALIZE: tl.constexpr, ACC_F64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # ((b * n + w) * K + r) * K + c
    c = pid % K
    r = (pid // K) % K
    bw = pid // (K * K)
    b = bw // n
    row = tl.load(coords_ptr + bw * 2).to(tl.int64)
    col = tl.load(coords_ptr + bw * 2 + 1).to(tl.int64)
    py = tl.arange(0, BLOCK_PY)
    j = tl.arange(0, BLOCK_J)  # (px, ch) within a patch row
    px = j // C
    ch = (j % C).to(tl.int64)
    y = (row + r) * p + py
    x = (col + c) * p + px
    src = (img_ptr + b * stride_b + y[:, None] * stride_h + ch[None, :] * stride_c
           + x[None, :] * stride_w)
    ok = (py < p)[:, None] & (j < p * C)[None, :]
    v = tl.load(src, mask=ok)
    if TRANSFORM:
        acc_dtype = tl.float64 if ACC_F64 else tl.float32
        x = v.to(acc_dtype)
        # Integer images: value / the type's maximum (0: a float image).
        if INT_MAX == 255:
            x = x / 255.0
        if INT_MAX == 65535:
            x = x / 65535.0
        if NORMALIZE:
            in_c = j < p * C
            m = tl.load(mean_ptr + ch, mask=in_c, other=0.0).to(acc_dtype)
            s = tl.load(std_ptr + ch, mask=in_c, other=1.0).to(acc_dtype)
            x = (x - m[None, :]) / s[None, :]
        v = x.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + pid * (p * p * C) + py[:, None] * (p * C) + j[None, :], v, mask=ok)


@triton.jit
def _window_patchify_bwd_kernel(grad_ptr, coords_ptr, out_ptr, n, K, p, C, H, W,
                                BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
                                ACC_F64: tl.constexpr):
    # One flat grid (a tall image would overflow grid axes 1 and 2): (b, tile row, tile col).
    pid = tl.program_id(0)
    tiles_x = tl.cdiv(W, BLOCK_X)
    tiles_y = tl.cdiv(H, BLOCK_Y)
    b = (pid // (tiles_x * tiles_y)).to(tl.int64)
    y = ((pid // tiles_x) % tiles_y) * BLOCK_Y + tl.arange(0, BLOCK_Y)
    x = (pid % tiles_x) * BLOCK_X + tl.arange(0, BLOCK_X)
    in_image = (y < H)[:, None] & (x < W)[None, :]
    patch_row, py = y // p, y % p
    patch_col, px = x // p, x % p
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    P = p * p * C
    for ch in range(C):
        acc = tl.zeros((BLOCK_Y, BLOCK_X), dtype=acc_dtype)
        for w in range(n):  # window order: a fixed summation order
            bw = b * n + w
            r = patch_row - tl.load(coords_ptr + bw * 2)
            c = patch_col - tl.load(coords_ptr + bw * 2 + 1)
            hit = in_image & ((r >= 0) & (r < K))[:, None] & ((c >= 0) & (c < K))[None, :]
            offs = ((bw * K * K + r[:, None] * K + c[None, :]) * P
                    + (py[:, None] * p + px[None, :]) * C + ch)
            acc += tl.load(grad_ptr + offs, mask=hit, other=0.0).to(acc_dtype)
        dst = out_ptr + ((b * C + ch) * H + y[:, None]) * W + x[None, :]
        tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=in_image)


@triton_op("lomar_ops::window_patchify_triton", mutates_args=())
def window_patchify_triton(images: torch.Tensor, coords: torch.Tensor, window_size: int,
                           patch_size: int, mean: Optional[torch.Tensor] = None,
                           std: Optional[torch.Tensor] = None,
                           out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """images (B, C, H, W) any strides, coords (B, n, 2) int32 contiguous, mean/std float64
    (C,) or None -> (B, n, K*K, p*p*C) in out_dtype (default: the images' dtype, float32
    for uint8 and uint16)."""
    B, C, _, _ = images.shape
    n, K, p = coords.shape[1], window_size, patch_size
    int_max = PIXEL_SCALE.get(images.dtype, 0)  # a constexpr: 0 for float images
    out_dtype = out_dtype or (torch.float32 if int_max else images.dtype)
    out = torch.empty((B, n, K * K, p * p * C), dtype=out_dtype, device=images.device)
    if out.numel() == 0:
        return out
    normalize = mean is not None
    transform = bool(int_max) or normalize or out_dtype != images.dtype
    launch(_window_patchify_fwd_kernel, (B * n * K * K,))(
        images, coords, out, mean if normalize else out, std if normalize else out, n, K, p, C,
        *images.stride(), BLOCK_PY=triton.next_power_of_2(p),
        BLOCK_J=triton.next_power_of_2(p * C), TRANSFORM=transform, INT_MAX=int_max,
        NORMALIZE=normalize, ACC_F64=torch.float64 in (images.dtype, out_dtype))
    return out


@triton_op("lomar_ops::window_patchify_backward_triton", mutates_args=())
def window_patchify_backward_triton(grad_out: torch.Tensor, coords: torch.Tensor,
                                    window_size: int, patch_size: int, height: int,
                                    width: int) -> torch.Tensor:
    """grad_out (B, n, K*K, p*p*C) contiguous -> grad_images (B, C, height, width) contiguous."""
    B, n, _, P = grad_out.shape
    C = P // (patch_size * patch_size)
    out = torch.empty((B, C, height, width), dtype=grad_out.dtype, device=grad_out.device)
    if out.numel() == 0:
        return out
    # Pixel tiles per program; the CPU interpreter pays per program, so it gets large ones
    # (chosen by the mode, not the device: the compile sweep records CPU launches).
    block_y, block_x = (64, 256) if triton_interpret() else (16, 64)
    grid = (B * triton.cdiv(height, block_y) * triton.cdiv(width, block_x),)
    launch(_window_patchify_bwd_kernel, grid)(
        grad_out, coords, out, n, window_size, patch_size, C, height, width,
        BLOCK_Y=block_y, BLOCK_X=block_x, ACC_F64=grad_out.dtype == torch.float64)
    return out
