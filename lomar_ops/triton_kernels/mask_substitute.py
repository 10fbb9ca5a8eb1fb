"""mask_substitute in Triton: forward copy and a deterministic two-stage backward.

Forward: each program writes BLOCK_R output rows, D in BLOCK_D tiles, picking
per row the cls token, the mask token or the token row.
Backward, stage 1: program (c, j) walks the sequences of chunk c in order over
the D tile j: it writes grad_tokens (zero at masked rows) and sums the masked
rows and the cls rows in fp32 (fp64 for double) into per-chunk partials.
Stage 2 adds the partials in chunk order, Kahan-compensated (the error does not
grow with the number of chunks). No atomics; the chunking depends on
the shape only, so results are deterministic."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._launch import launch

_MAX_CHUNKS = 1024  # stage-1 chunks along S (fewer when S is smaller)


@triton.jit
def _mask_substitute_fwd_kernel(tokens_ptr, mask_ptr, mask_token_ptr, cls_ptr, out_ptr,
                                rows, L, D, HEAD: tl.constexpr, BLOCK_R: tl.constexpr,
                                BLOCK_D: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    row_ok = r < rows
    T = L + HEAD
    s = r // T
    j = r - s * T - HEAD  # -1 on the cls row
    is_token_row = row_ok & (j >= 0)
    i = s * L + tl.maximum(j, 0)  # (s, l) in tokens and mask
    masked = tl.load(mask_ptr + i, mask=is_token_row, other=False)
    read_token = is_token_row & ~masked
    for start in range(0, D, BLOCK_D):
        d = start + tl.arange(0, BLOCK_D)
        d_ok = d < D
        v = tl.load(tokens_ptr + i[:, None] * D + d[None, :],
                    mask=read_token[:, None] & d_ok[None, :], other=0.0)
        mt = tl.load(mask_token_ptr + d, mask=d_ok, other=0.0)
        v = tl.where(masked[:, None], mt[None, :], v)
        if HEAD:
            c = tl.load(cls_ptr + d, mask=d_ok, other=0.0)
            v = tl.where((j < 0)[:, None], c[None, :], v)
        tl.store(out_ptr + r[:, None] * D + d[None, :], v, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _mask_substitute_bwd_rows_kernel(grad_ptr, mask_ptr, grad_tokens_ptr, part_mask_ptr,
                                     part_cls_ptr, S, L, D, chunk, HEAD: tl.constexpr,
                                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
                                     ACC_F64: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    c = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    T = L + HEAD
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=acc_dtype)
    acc_cls = tl.zeros((BLOCK_D,), dtype=acc_dtype)
    s_start = c * chunk
    s_end = tl.minimum(s_start + chunk, S)
    for s in range(s_start, s_end):
        g_seq = grad_ptr + s * T * D
        if HEAD:
            acc_cls += tl.load(g_seq + d, mask=d_ok, other=0.0).to(acc_dtype)
        for l0 in range(0, L, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            l_ok = l < L
            masked = tl.load(mask_ptr + s * L + l, mask=l_ok, other=False)[:, None]
            ok = l_ok[:, None] & d_ok[None, :]
            g = tl.load(g_seq + (HEAD + l)[:, None] * D + d[None, :], mask=ok, other=0.0)
            acc += tl.where(masked, g.to(acc_dtype), 0.0)
            kept = tl.where(masked, 0.0, g).to(grad_tokens_ptr.dtype.element_ty)
            tl.store(grad_tokens_ptr + (s * L + l)[:, None] * D + d[None, :], kept, mask=ok)
    tl.store(part_mask_ptr + c * D + d, tl.sum(acc, axis=0), mask=d_ok)
    if HEAD:
        tl.store(part_cls_ptr + c * D + d, acc_cls, mask=d_ok)


@triton.jit
def _sum_chunks_kernel(part_ptr, out_ptr, num_chunks, D, BLOCK_D: tl.constexpr,
                       ACC_F64: tl.constexpr):
    acc_dtype = tl.float64 if ACC_F64 else tl.float32
    d = tl.program_id(0).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    total = tl.zeros((BLOCK_D,), dtype=acc_dtype)
    comp = tl.zeros((BLOCK_D,), dtype=acc_dtype)
    ptrs = part_ptr + d
    for _ in range(0, num_chunks):  # chunk order; pointer steps keep offsets 64-bit
        y = tl.load(ptrs, mask=d_ok, other=0.0) - comp
        t = total + y
        comp = (t - total) - y
        total = t
        ptrs += D
    tl.store(out_ptr + d, total.to(out_ptr.dtype.element_ty), mask=d_ok)


def _block_d(D: int) -> int:
    return max(16, min(128, triton.next_power_of_2(D)))


@triton_op("lomar_ops::mask_substitute_triton", mutates_args=())
def mask_substitute_triton(tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor,
                           cls_token: torch.Tensor | None) -> torch.Tensor:
    """tokens (S, L, D), mask (S, L) bool, mask_token and cls_token (D,), all
    contiguous -> (S, [1+]L, D)."""
    S, L, D = tokens.shape
    head = 0 if cls_token is None else 1
    out = torch.empty((S, L + head, D), dtype=tokens.dtype, device=tokens.device)
    rows = S * (L + head)
    if out.numel() == 0:
        return out
    block_d = _block_d(D)
    block_r = max(1, 4096 // block_d)
    cls = mask_token if cls_token is None else cls_token
    launch(_mask_substitute_fwd_kernel, (triton.cdiv(rows, block_r),))(
        tokens, mask, mask_token, cls, out, rows, L, D, HEAD=head,
        BLOCK_R=block_r, BLOCK_D=block_d)
    return out


@triton_op("lomar_ops::mask_substitute_backward_triton", mutates_args=())
def mask_substitute_backward_triton(grad_out: torch.Tensor, mask: torch.Tensor,
                                    has_cls: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out (S, [1+]L, D) contiguous -> (grad_tokens (S, L, D), grad_mask_token (D,),
    grad_cls_token (D,), or (0,) when has_cls is False)."""
    head = 1 if has_cls else 0
    S, T, D = grad_out.shape
    L = T - head
    grad_tokens = torch.empty((S, L, D), dtype=grad_out.dtype, device=grad_out.device)
    grad_mask_token = torch.empty((D,), dtype=grad_out.dtype, device=grad_out.device)
    grad_cls_token = torch.empty((D if has_cls else 0,), dtype=grad_out.dtype,
                                 device=grad_out.device)
    if D == 0:
        return grad_tokens, grad_mask_token, grad_cls_token
    chunk = max(1, triton.cdiv(S, _MAX_CHUNKS))
    num_chunks = triton.cdiv(S, chunk)
    acc_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    part_mask = torch.empty((num_chunks, D), dtype=acc_dtype, device=grad_out.device)
    part_cls = torch.empty((num_chunks if has_cls else 0, D), dtype=acc_dtype,
                           device=grad_out.device)
    block_d = _block_d(D)
    d_tiles = triton.cdiv(D, block_d)
    acc_f64 = acc_dtype == torch.float64
    if num_chunks > 0:
        launch(_mask_substitute_bwd_rows_kernel, (num_chunks, d_tiles))(
            grad_out, mask, grad_tokens, part_mask,
            part_cls if has_cls else part_mask, S, L, D, chunk, HEAD=head, BLOCK_L=16,
            BLOCK_D=block_d, ACC_F64=acc_f64)
    launch(_sum_chunks_kernel, (d_tiles,))(part_mask, grad_mask_token, num_chunks, D,
                                           BLOCK_D=block_d, ACC_F64=acc_f64)
    if has_cls:
        launch(_sum_chunks_kernel, (d_tiles,))(part_cls, grad_cls_token, num_chunks, D,
                                               BLOCK_D=block_d, ACC_F64=acc_f64)
    return grad_tokens, grad_mask_token, grad_cls_token
