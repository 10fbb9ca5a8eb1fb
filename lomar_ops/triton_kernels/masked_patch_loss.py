"""masked_patch_loss in Triton.

Forward: each program takes BLOCK_R rows (patches), P in BLOCK_P tiles, and
computes per masked row the mean, the unbiased variance (two passes: the sum, then
the centred squares) and the mean squared error against the normalised target, in
fp32 (fp64 for double); unmasked rows are never read and get 0. A row that fits a
tile (P <= 1024: ONE_TILE) is read once and both passes run over the tile in
registers; longer rows take two passes over their tiles for the statistics and a
third for the error. A single program then sums the row losses and counts the mask
in a fixed order (deterministic) and divides.
Backward: the same tiles recompute each row's mean and rstd (the normalised
target is never stored) and write dpred = grad * 2 * (pred - t) / (P * count);
the gradient and the count are read on the device.
The mask is read as the bool tensor it is (a uint8 view would not lower in
Inductor); eps is made fp32 on entry, whether triton.jit passes it as fp32 or
Inductor as fp64, so that eager and compiled runs give the same bits.
pred and target are read through their (S, L) strides when each patch is
contiguous (pred is typically the head's output sliced past its cls row)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch


@triton.jit
def _load_rows(ptr, row, rows_read, start, P, BLOCK_P: tl.constexpr, ACC_F64: tl.constexpr):
    """Values start ... start + BLOCK_P of the rows at offsets row, in the accumulation
    dtype; 0 (never read) outside P and in the rows not read. Also the tile's mask."""
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    i = start + tl.arange(0, BLOCK_P)
    ok = rows_read[:, None] & (i < P)[None, :]
    x = tl.load(ptr + row[:, None] + i[None, :], mask=ok, other=0.0)
    return x.to(acc_dtype), ok


@triton.jit
def _row_stats(target_ptr, t_row, rows_read, P, eps, BLOCK_R: tl.constexpr,
               BLOCK_P: tl.constexpr, ACC_F64: tl.constexpr):
    """Rows longer than a tile: mean and 1/sqrt(unbiased var + eps) in two passes
    over the tiles (the sum, then the centred squares), in tile order."""
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    total = tl.zeros((BLOCK_R,), dtype=acc_dtype)
    for start in range(0, P, BLOCK_P):
        t, _ = _load_rows(target_ptr, t_row, rows_read, start, P, BLOCK_P, ACC_F64)
        total += tl.sum(t, axis=1)
    mean = total / P
    ss = tl.zeros((BLOCK_R,), dtype=acc_dtype)
    for start in range(0, P, BLOCK_P):
        t, ok = _load_rows(target_ptr, t_row, rows_read, start, P, BLOCK_P, ACC_F64)
        centred = tl.where(ok, t - mean[:, None], 0.0)
        ss += tl.sum(centred * centred, axis=1)
    return mean, 1.0 / tl.sqrt(ss / (P - 1) + eps)


@triton.jit
def _normalised_tile(target_ptr, t_row, rows_read, P, eps, NORM_PIX: tl.constexpr,
                     BLOCK_P: tl.constexpr, ACC_F64: tl.constexpr):
    """Rows that fit one tile (P <= BLOCK_P): the target read once, its mean and
    unbiased variance from the tile in registers (the same two passes, same order)."""
    t, ok = _load_rows(target_ptr, t_row, rows_read, 0, P, BLOCK_P, ACC_F64)
    if NORM_PIX:
        mean = tl.sum(t, axis=1) / P
        centred = tl.where(ok, t - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / (P - 1) + eps)
        t = centred * rstd[:, None]
    return t, ok


@triton.jit
def _row_offsets(r, L, stride_s, stride_l):
    """Offsets of rows r = s * L + l of an (S, L, P) tensor with contiguous rows."""
    s = r // L
    return s * stride_s + (r - s * L) * stride_l


@triton.jit
def _loss_rows_kernel(pred_ptr, target_ptr, mask_ptr, row_loss_ptr, rows, L, P, eps,
                      p_stride_s, p_stride_l, t_stride_s, t_stride_l,
                      NORM_PIX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
                      ONE_TILE: tl.constexpr, ACC_F64: tl.constexpr):
    # eps arrives as fp32 (triton.jit) or fp64 (Inductor's launch): fp32 either way.
    eps = tl.cast(eps, tl.float32)
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = r < rows
    rows_read = tl.load(mask_ptr + r, mask=row_ok, other=False)
    p_row = _row_offsets(r, L, p_stride_s, p_stride_l)
    t_row = _row_offsets(r, L, t_stride_s, t_stride_l)
    if ONE_TILE:
        t, ok = _normalised_tile(target_ptr, t_row, rows_read, P, eps, NORM_PIX, BLOCK_P,
                                 ACC_F64)
        p, _ = _load_rows(pred_ptr, p_row, rows_read, 0, P, BLOCK_P, ACC_F64)
        diff = tl.where(ok, p - t, 0.0)
        se = tl.sum(diff * diff, axis=1)
    else:
        mean = tl.zeros((BLOCK_R,), dtype=acc_dtype)
        rstd = tl.zeros((BLOCK_R,), dtype=acc_dtype) + 1.0
        if NORM_PIX:
            mean, rstd = _row_stats(target_ptr, t_row, rows_read, P, eps, BLOCK_R, BLOCK_P,
                                    ACC_F64)
        se = tl.zeros((BLOCK_R,), dtype=acc_dtype)
        for start in range(0, P, BLOCK_P):
            p, ok = _load_rows(pred_ptr, p_row, rows_read, start, P, BLOCK_P, ACC_F64)
            t, _ = _load_rows(target_ptr, t_row, rows_read, start, P, BLOCK_P, ACC_F64)
            diff = tl.where(ok, p - (t - mean[:, None]) * rstd[:, None], 0.0)
            se += tl.sum(diff * diff, axis=1)
    tl.store(row_loss_ptr + r, se / P, mask=row_ok)


@triton.jit
def _loss_sum_kernel(row_loss_ptr, mask_ptr, loss_ptr, rows, BLOCK: tl.constexpr,
                     ACC_F64: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK,), dtype=acc_dtype)
    count = tl.zeros((BLOCK,), dtype=tl.int64)
    for start in range(0, rows, BLOCK):  # fixed order, then a fixed-shape tree
        i = start + tl.arange(0, BLOCK).to(tl.int64)
        ok = i < rows
        acc += tl.load(row_loss_ptr + i, mask=ok, other=0.0)
        count += tl.load(mask_ptr + i, mask=ok, other=False).to(tl.int64)
    total = tl.sum(acc, axis=0)
    n = tl.sum(count, axis=0)
    tl.store(loss_ptr, total / n.to(acc_dtype))


@triton.jit
def _loss_bwd_kernel(grad_ptr, count_ptr, pred_ptr, target_ptr, mask_ptr, dpred_ptr, rows, L, P,
                     eps, p_stride_s, p_stride_l, t_stride_s, t_stride_l,
                     NORM_PIX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
                     ONE_TILE: tl.constexpr, ACC_F64: tl.constexpr):
    eps = tl.cast(eps, tl.float32)  # as in the forward
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = r < rows
    rows_read = tl.load(mask_ptr + r, mask=row_ok, other=False)
    p_row = _row_offsets(r, L, p_stride_s, p_stride_l)
    t_row = _row_offsets(r, L, t_stride_s, t_stride_l)
    g = tl.load(grad_ptr).to(acc_dtype)
    n = tl.load(count_ptr).to(acc_dtype)
    scale = 2.0 * g / (n * P)
    if ONE_TILE:
        t, ok = _normalised_tile(target_ptr, t_row, rows_read, P, eps, NORM_PIX, BLOCK_P,
                                 ACC_F64)
        p, _ = _load_rows(pred_ptr, p_row, rows_read, 0, P, BLOCK_P, ACC_F64)
        i = tl.arange(0, BLOCK_P)
        d = tl.where(ok, scale * (p - t), 0.0)
        tl.store(dpred_ptr + r[:, None] * P + i[None, :], d.to(dpred_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (i < P)[None, :])
    else:
        mean = tl.zeros((BLOCK_R,), dtype=acc_dtype)
        rstd = tl.zeros((BLOCK_R,), dtype=acc_dtype) + 1.0
        if NORM_PIX:
            mean, rstd = _row_stats(target_ptr, t_row, rows_read, P, eps, BLOCK_R, BLOCK_P,
                                    ACC_F64)
        for start in range(0, P, BLOCK_P):
            p, ok = _load_rows(pred_ptr, p_row, rows_read, start, P, BLOCK_P, ACC_F64)
            t, _ = _load_rows(target_ptr, t_row, rows_read, start, P, BLOCK_P, ACC_F64)
            i = start + tl.arange(0, BLOCK_P)
            d = tl.where(ok, scale * (p - (t - mean[:, None]) * rstd[:, None]), 0.0)
            tl.store(dpred_ptr + r[:, None] * P + i[None, :],
                     d.to(dpred_ptr.dtype.element_ty), mask=row_ok[:, None] & (i < P)[None, :])


def _blocks(P: int) -> tuple[int, int]:
    block_p = max(16, min(1024, triton.next_power_of_2(P)))
    return max(1, 4096 // block_p), block_p


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when each (s, l) row of P values is contiguous, else a contiguous copy."""
    return x if x.shape[2] <= 1 or x.stride(2) == 1 else x.contiguous()


@triton_op("lomar_ops::masked_patch_loss_triton", mutates_args=())
def masked_patch_loss_triton(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                             norm_pix: bool, eps: float) -> torch.Tensor:
    """pred, target (S, L, P), mask (S, L) bool contiguous -> 0-dim float32 (float64)."""
    pred, target = _rows_contiguous(pred), _rows_contiguous(target)
    S, L, P = pred.shape
    rows = S * L
    acc_dtype = _acc_dtype(pred.dtype)
    loss = torch.empty((), dtype=acc_dtype, device=pred.device)
    row_loss = torch.empty((rows,), dtype=acc_dtype, device=pred.device)
    block_r, block_p = _blocks(P)
    acc_f64 = acc_dtype == torch.float64
    if rows > 0:
        launch(_loss_rows_kernel, (triton.cdiv(rows, block_r),))(
            pred, target, mask, row_loss, rows, L, P, eps, pred.stride(0), pred.stride(1),
            target.stride(0), target.stride(1), NORM_PIX=norm_pix, BLOCK_R=block_r,
            BLOCK_P=block_p, ONE_TILE=P <= block_p, ACC_F64=acc_f64)
    launch(_loss_sum_kernel, (1,))(row_loss, mask, loss, rows, BLOCK=1024, ACC_F64=acc_f64)
    return loss


@triton_op("lomar_ops::masked_patch_loss_backward_triton", mutates_args=())
def masked_patch_loss_backward_triton(grad: torch.Tensor, pred: torch.Tensor,
                                      target: torch.Tensor, mask: torch.Tensor, norm_pix: bool,
                                      eps: float) -> torch.Tensor:
    """d loss / d pred, (S, L, P) in pred's dtype; grad is the loss's 0-dim gradient."""
    pred, target = _rows_contiguous(pred), _rows_contiguous(target)
    S, L, P = pred.shape
    rows = S * L
    grad_pred = torch.empty((S, L, P), dtype=pred.dtype, device=pred.device)
    if rows == 0:
        return grad_pred
    acc_dtype = _acc_dtype(pred.dtype)
    g = grad.to(acc_dtype).reshape(1).contiguous()
    count = mask.sum().reshape(1)  # int64, on the device: no synchronisation
    block_r, block_p = _blocks(P)
    launch(_loss_bwd_kernel, (triton.cdiv(rows, block_r),))(
        g, count, pred, target, mask, grad_pred, rows, L, P, eps,
        pred.stride(0), pred.stride(1), target.stride(0), target.stride(1), NORM_PIX=norm_pix,
        BLOCK_R=block_r, BLOCK_P=block_p, ONE_TILE=P <= block_p,
        ACC_F64=acc_dtype == torch.float64)
    return grad_pred
