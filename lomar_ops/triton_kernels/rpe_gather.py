"""rpe_gather in Triton: forward gather and a deterministic backward.

Forward: each program copies BLOCK_R rows of out[s,h,i,:] from table[s,h,i,:].
Backward: each program owns one row (s,h,i) and reduces its N gradients into the
NB buckets, bucket block by bucket block, with a masked sum in fp32 (fp64 for
double): no atomics, so the result does not depend on scheduling."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch


@triton.jit
def _rpe_gather_fwd_kernel(table_ptr, ids_ptr, out_ptr, rows, N, NB,
                           BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = r < rows
    i = r % N
    for start in range(0, N, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (j < N)[None, :]
        b = tl.load(ids_ptr + i[:, None] * N + j[None, :], mask=ok, other=0)
        v = tl.load(table_ptr + r[:, None] * NB + b, mask=ok)
        tl.store(out_ptr + r[:, None] * N + j[None, :], v, mask=ok)


@triton.jit
def _rpe_gather_bwd_kernel(grad_ptr, ids_ptr, out_ptr, N, NB,
                           BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, ACC_F64: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    i = row % N
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    for b_start in range(0, NB, BLOCK_B):
        b = b_start + tl.arange(0, BLOCK_B)
        acc = tl.zeros((BLOCK_B,), dtype=acc_dtype)
        for start in range(0, N, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            ok = j < N
            ids = tl.load(ids_ptr + i * N + j, mask=ok, other=-1)
            g = tl.load(grad_ptr + row * N + j, mask=ok, other=0.0).to(acc_dtype)
            hit = ids[:, None] == b[None, :]
            acc += tl.sum(tl.where(hit, g[:, None], 0.0), axis=0)
        tl.store(out_ptr + row * NB + b, acc.to(out_ptr.dtype.element_ty), mask=b < NB)


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


@triton_op("lomar_ops::rpe_gather_triton", mutates_args=())
def rpe_gather_triton(table: torch.Tensor, bucket_ids: torch.Tensor) -> torch.Tensor:
    """table (S, H, N, NB) contiguous, bucket_ids (N, N) int32 contiguous -> (S, H, N, N)."""
    S, H, N, NB = table.shape
    out = torch.empty((S, H, N, N), dtype=table.dtype, device=table.device)
    rows = S * H * N
    if rows == 0:
        return out
    block_n = _block(N, 128)
    block_r = max(1, 4096 // block_n)
    launch(_rpe_gather_fwd_kernel, (triton.cdiv(rows, block_r),))(
        table, bucket_ids, out, rows, N, NB, BLOCK_R=block_r, BLOCK_N=block_n)
    return out


@triton_op("lomar_ops::rpe_gather_backward_triton", mutates_args=())
def rpe_gather_backward_triton(grad_out: torch.Tensor, bucket_ids: torch.Tensor,
                               num_buckets: int) -> torch.Tensor:
    """grad_out (S, H, N, N) contiguous -> grad_table (S, H, N, num_buckets)."""
    S, H, N, _ = grad_out.shape
    out = torch.empty((S, H, N, num_buckets), dtype=grad_out.dtype, device=grad_out.device)
    rows = S * H * N
    if rows == 0:
        return out
    launch(_rpe_gather_bwd_kernel, (rows,))(
        grad_out, bucket_ids, out, N, num_buckets, BLOCK_N=_block(N, 64),
        BLOCK_B=_block(num_buckets, 64), ACC_F64=grad_out.dtype == torch.float64)
    return out
