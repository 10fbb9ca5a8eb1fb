"""window_attention in Triton: flash attention with iRPE's relative position term
inside the logits, forward and backward (the algorithm of the CUDA kernel).

Forward: program (sequence x head, query block) walks the key blocks with an
online softmax; logits = scale * q k^T + term, where the contextual term is
gathered (tl.gather by bucket id) from qR = q @ R^T, a (BLOCK_M, NB) tile computed
once per program, and the bias term is read from the (H, NB) table. It writes out
and the rows' log-sum-exp (fp32, (S, H, N)); the logits never leave the chip.
Backward, two kernels that recompute the probabilities (no atomics) as
P = exp((x - m) - log l) from the rows' max m and log-sum l, saved apart: a
single fp32 lse = m + log l would carry an error of half its ulp (1e-6 at
|lse| ~ 16) into every P and gradient.
* dq: program (query block, head group, chunk of sequences) walks its (s, h)
  pairs and their key blocks. D_i = sum_j P_ij dP_ij (from fp32 P: a pass of its
  own when the keys span several blocks) is written for the second kernel.
  Contextual: dS is summed per (row, bucket) into d(qR) (bucket-sorted prefix
  sums, _bucket_sums), then dq += d(qR) @ R and the program's table-gradient
  partial += d(qR)^T @ q. Bias: dS summed per bucket into the program's partial.
* dk, dv: program (sequence x head, key block) walks the query blocks.
The partials (fp32, one per dq program, a count fixed by the shape) are summed in
program order by torch.sum: d(rpe) is bitwise repeatable.
Head dims are padded to a power of two (>= 16) with masks; keys and queries are
tiled with masked tails, so any N runs. fp32 inputs use exact-fp32 dots (not
TF32), like torch's default matmul; fp16/bf16 use tensor cores with fp32
accumulators. float64 does not run here (the op's backend chooser says so)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ..backends import triton_interpret
from ._launch import launch

MODES = {"none": 0, "bias": 1, "contextual": 2}
_DQ_PROGRAMS = 1024  # dq-kernel programs wanted: bounds the d(rpe) workspace


@triton.jit
def _load_rows(ptr, stride_row, rows, row_ok, cols, col_ok):
    return tl.load(ptr + rows[:, None] * stride_row + cols[None, :],
                   mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _load_table(rpe_ptr, NB, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """The contextual table R (NB, D), contiguous, zero-padded to (BLOCK_B, BLOCK_D)."""
    b = tl.arange(0, BLOCK_B)
    d = tl.arange(0, BLOCK_D)
    return _load_rows(rpe_ptr, D, b, b < NB, d, d < D)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b with an fp32 result. PREC "interpreter": a broadcast product summed
    over k in order, in fp32. The interpreter's tl.dot is numpy's matmul, whose
    rounding depends on the tile's shape (and which misreads bfloat16, stored as
    uint16), so a logit recomputed by the backward with other tiles than the
    forward's would differ by ulps: a P error that the gradients inherit. Compiled
    dots (and this sum) do not depend on the tile shape."""
    if PREC == "interpreter":
        return tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _logits(q, k, qR, bias_ptr, ids, ok, scale, MODE: tl.constexpr, PREC: tl.constexpr):
    """scale * q k^T + the relative term, fp32 (BLOCK_M, BLOCK_N)."""
    x = _dot(q, tl.trans(k), PREC) * scale
    if MODE == 2:
        x += tl.gather(qR, ids, axis=1)
    if MODE == 1:
        x += tl.load(bias_ptr + ids, mask=ok, other=0.0).to(tl.float32)
    return x


@triton.jit
def _probs_and_dp(q, qR, do, row_max, log_sum, k_base, v_base, table_ptr, ids_ptr, sk_n, sv_n,
                  offs_m, m_ok, start_n, offs_d, d_ok, N, scale, MODE: tl.constexpr,
                  PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the key block at start_n: P (recomputed, 0 outside the sequence),
    dP = dO V^T, both fp32 (BLOCK_M, BLOCK_N), the block's bucket ids and K."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    ok = m_ok[:, None] & n_ok[None, :]
    k = _load_rows(k_base, sk_n, offs_n, n_ok, offs_d, d_ok)
    v = _load_rows(v_base, sv_n, offs_n, n_ok, offs_d, d_ok)
    ids = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)  # a tensor in every mode: it is returned
    if MODE != 0:
        ids = tl.load(ids_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0)
    x = _logits(q, k, qR, table_ptr, ids, ok, scale, MODE, PREC)
    p = tl.where(ok, tl.exp((x - row_max[:, None]) - log_sum[:, None]), 0.0)
    return p, _dot(do, tl.trans(v), PREC), ids, k


@triton.jit
def _bucket_sums(acc, ds, order_ptr, first_ptr, last_ptr, offs_m, m_ok, key_block, key_blocks,
                 BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """acc[i, b] += sum_j ds[i, j] over the key block's j with ids[i, j] == b (the
    transpose of the gather), without a loop over buckets: each row's ds is put in
    bucket order (order: a stable sort of the block's ids, from _bucket_order), summed
    cumulatively, and a bucket's sum is the difference of the prefix sums at its
    ends (first/last: the count of ids < b and <= b). Empty buckets get exactly 0;
    masked entries have ds == 0. A fixed order: deterministic."""
    row = offs_m[:, None].to(tl.int64) * key_blocks + key_block
    jj = tl.arange(0, BLOCK_N)[None, :]
    bb = tl.arange(0, BLOCK_B)[None, :]
    order = tl.load(order_ptr + row * BLOCK_N + jj, mask=m_ok[:, None], other=0)
    first = tl.load(first_ptr + row * BLOCK_B + bb, mask=m_ok[:, None], other=0)
    last = tl.load(last_ptr + row * BLOCK_B + bb, mask=m_ok[:, None], other=0)
    prefix = tl.cumsum(tl.gather(ds, order, axis=1), axis=1)
    upto_last = tl.where(last > 0, tl.gather(prefix, tl.maximum(last - 1, 0), axis=1), 0.0)
    upto_first = tl.where(first > 0, tl.gather(prefix, tl.maximum(first - 1, 0), axis=1), 0.0)
    return acc + (upto_last - upto_first)


@triton.jit
def _bucket_totals(acc, ds, ids, NB, BLOCK_B: tl.constexpr):
    """acc[b] += the sum of ds over the tile's entries with ids == b (bias mode:
    no (rows, buckets) tile, so any number of buckets fits)."""
    cols = tl.arange(0, BLOCK_B)
    for b in range(0, NB):
        acc += tl.where(cols == b, tl.sum(tl.where(ids == b, ds, 0.0)), 0.0)
    return acc


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, rpe_ptr, ids_ptr, out_ptr, stats_ptr,
                sq_s, sq_n, sq_h, sk_s, sk_n, sk_h, sv_s, sv_n, sv_h, so_s, so_n, so_h,
                H, N, D, NB, rpe_head_stride, scale, stats_plane,
                MODE: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr):
    # scale arrives as fp32 from triton.jit and as fp64 from Inductor's launch of the
    # triton_op: fp32 either way, or it would make the logits, and m_i with them, fp64.
    scale = tl.cast(scale, tl.float32)
    pair = tl.program_id(0).to(tl.int64)  # S * H on axis 0: no 65535 limit
    s = pair // H
    h = pair % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < N
    d_ok = offs_d < D
    q = _load_rows(q_ptr + s * sq_s + h * sq_h, sq_n, offs_m, m_ok, offs_d, d_ok)
    k_base = k_ptr + s * sk_s + h * sk_h
    v_base = v_ptr + s * sv_s + h * sv_h
    table_ptr = rpe_ptr + h * rpe_head_stride
    qR = 0.0
    if MODE == 2:
        R = _load_table(table_ptr, NB, D, BLOCK_B, BLOCK_D)
        qR = _dot(q, tl.trans(R), PREC)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        ok = m_ok[:, None] & n_ok[None, :]
        k = _load_rows(k_base, sk_n, offs_n, n_ok, offs_d, d_ok)
        v = _load_rows(v_base, sv_n, offs_n, n_ok, offs_d, d_ok)
        ids = 0
        if MODE != 0:
            ids = tl.load(ids_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0)
        x = _logits(q, k, qR, table_ptr, ids, ok, scale, MODE, PREC)
        x = tl.where(n_ok[None, :], x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, axis=1))  # finite: every row has key 0
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(x - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    out_ptrs = out_ptr + s * so_s + h * so_h + offs_m[:, None] * so_n + offs_d[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(stats_ptr + pair * N + offs_m, m_i, mask=m_ok)
    tl.store(stats_ptr + stats_plane + pair * N + offs_m, tl.log(l_i), mask=m_ok)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, rpe_ptr, ids_ptr, stats_ptr, delta_ptr,
                   dq_ptr, part_ptr, order_ptr, first_ptr, last_ptr,
                   sq_s, sq_n, sq_h, sk_s, sk_n, sk_h, sv_s, sv_n, sv_h,
                   sdo_s, sdo_n, sdo_h, sdq_s, sdq_n, sdq_h,
                   S, H, N, D, NB, rpe_head_stride, scale, stats_plane, seqs_per_program,
                   heads_per_program,
                   key_blocks, MODE: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr,
                   ONE_KEY_BLOCK: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # as in _fwd_kernel
    pid_m = tl.program_id(0)
    group = tl.program_id(1).to(tl.int64)  # 64-bit loop bounds: 64-bit (s, h) below
    chunk = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_b = tl.arange(0, BLOCK_B)
    m_ok = offs_m < N
    d_ok = offs_d < D
    h_first = group * heads_per_program
    # Shared table: rpe_head_stride == 0; per-head tables and bias: one head per program.
    table_ptr = rpe_ptr + h_first * rpe_head_stride
    R = 0.0
    table_grad = 0.0
    bias_grad = 0.0
    if MODE == 2:
        R = _load_table(table_ptr, NB, D, BLOCK_B, BLOCK_D)
        table_grad = tl.zeros((BLOCK_B, BLOCK_D), tl.float32)
    if MODE == 1:
        bias_grad = tl.zeros((BLOCK_B,), tl.float32)
    s_first = chunk * seqs_per_program
    s_last = tl.minimum(s_first + seqs_per_program, S)
    for s in range(s_first, s_last):
        for h in range(h_first, h_first + heads_per_program):
            pair = s * H + h
            q = _load_rows(q_ptr + s * sq_s + h * sq_h, sq_n, offs_m, m_ok, offs_d, d_ok)
            do = _load_rows(do_ptr + s * sdo_s + h * sdo_h, sdo_n, offs_m, m_ok, offs_d, d_ok)
            row_max = tl.load(stats_ptr + pair * N + offs_m, mask=m_ok, other=0.0)
            log_sum = tl.load(stats_ptr + stats_plane + pair * N + offs_m, mask=m_ok, other=0.0)
            qR = 0.0
            if MODE == 2:
                qR = _dot(q, tl.trans(R), PREC)
            k_base = k_ptr + s * sk_s + h * sk_h
            v_base = v_ptr + s * sv_s + h * sv_h
            # D_i = sum_j P_ij dP_ij (= dO_i . O_i, but from fp32 P rather than the
            # rounded output: dS = P (dP - D) cancels, and a bf16 O costs accuracy).
            delta = tl.zeros((BLOCK_M,), tl.float32)
            if not ONE_KEY_BLOCK:
                for start_n in range(0, N, BLOCK_N):
                    p, dp, _, _ = _probs_and_dp(q, qR, do, row_max, log_sum, k_base, v_base,
                                                table_ptr, ids_ptr, sk_n, sv_n, offs_m, m_ok,
                                                start_n, offs_d, d_ok, N, scale, MODE, PREC,
                                                BLOCK_M, BLOCK_N)
                    delta += tl.sum(p * dp, axis=1)
            dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
            dqR = 0.0
            if MODE == 2:
                dqR = tl.zeros((BLOCK_M, BLOCK_B), tl.float32)
            for start_n in range(0, N, BLOCK_N):
                p, dp, ids, k = _probs_and_dp(q, qR, do, row_max, log_sum, k_base, v_base,
                                              table_ptr, ids_ptr, sk_n, sv_n, offs_m, m_ok,
                                              start_n, offs_d, d_ok, N, scale, MODE, PREC,
                                              BLOCK_M, BLOCK_N)
                if ONE_KEY_BLOCK:
                    delta = tl.sum(p * dp, axis=1)
                ds = p * (dp - delta[:, None])
                dq += _dot(ds.to(k.dtype), k, PREC)
                if MODE == 2:
                    dqR = _bucket_sums(dqR, ds, order_ptr, first_ptr, last_ptr, offs_m, m_ok,
                                       start_n // BLOCK_N, key_blocks, BLOCK_N, BLOCK_B)
                if MODE == 1:
                    bias_grad = _bucket_totals(bias_grad, ds, ids, NB, BLOCK_B)
            tl.store(delta_ptr + pair * N + offs_m, delta, mask=m_ok)
            dq = dq * scale
            if MODE == 2:  # the term q . R[b] is not scaled
                dq += tl.dot(dqR, R.to(tl.float32), input_precision="ieee")
                table_grad += tl.dot(tl.trans(dqR), q.to(tl.float32), input_precision="ieee")
            dq_ptrs = dq_ptr + s * sdq_s + h * sdq_h + offs_m[:, None] * sdq_n + offs_d[None, :]
            tl.store(dq_ptrs, dq.to(dq_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & d_ok[None, :])
    # One partial per program, at ((chunk, query block), group): summed over the first.
    slot = (chunk * tl.num_programs(0) + pid_m) * tl.num_programs(1) + group
    b_ok = offs_b < NB
    if MODE == 2:
        part = part_ptr + slot * NB * D + offs_b[:, None] * D + offs_d[None, :]
        tl.store(part, table_grad, mask=b_ok[:, None] & d_ok[None, :])
    if MODE == 1:
        tl.store(part_ptr + slot * NB + offs_b, bias_grad, mask=b_ok)


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, rpe_ptr, ids_ptr, stats_ptr, delta_ptr,
                     dk_ptr, dv_ptr,
                     sq_s, sq_n, sq_h, sk_s, sk_n, sk_h, sv_s, sv_n, sv_h,
                     sdo_s, sdo_n, sdo_h, sdk_s, sdk_n, sdk_h,
                     H, N, D, NB, rpe_head_stride, scale, stats_plane,
                     MODE: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # as in _fwd_kernel
    pair = tl.program_id(0).to(tl.int64)
    s = pair // H
    h = pair % H
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    k = _load_rows(k_ptr + s * sk_s + h * sk_h, sk_n, offs_n, n_ok, offs_d, d_ok)
    v = _load_rows(v_ptr + s * sv_s + h * sv_h, sv_n, offs_n, n_ok, offs_d, d_ok)
    q_base = q_ptr + s * sq_s + h * sq_h
    do_base = do_ptr + s * sdo_s + h * sdo_h
    table_ptr = rpe_ptr + h * rpe_head_stride
    R = 0.0
    if MODE == 2:
        R = _load_table(table_ptr, NB, D, BLOCK_B, BLOCK_D)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < N
        ok = m_ok[:, None] & n_ok[None, :]
        q = _load_rows(q_base, sq_n, offs_m, m_ok, offs_d, d_ok)
        do = _load_rows(do_base, sdo_n, offs_m, m_ok, offs_d, d_ok)
        row_max = tl.load(stats_ptr + pair * N + offs_m, mask=m_ok, other=0.0)
        log_sum = tl.load(stats_ptr + stats_plane + pair * N + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(delta_ptr + pair * N + offs_m, mask=m_ok, other=0.0)
        qR = 0.0
        ids = 0
        if MODE == 2:
            qR = _dot(q, tl.trans(R), PREC)
        if MODE != 0:
            ids = tl.load(ids_ptr + offs_m[:, None] * N + offs_n[None, :], mask=ok, other=0)
        x = _logits(q, k, qR, table_ptr, ids, ok, scale, MODE, PREC)
        p = tl.where(ok, tl.exp((x - row_max[:, None]) - log_sum[:, None]), 0.0)
        dv += _dot(tl.trans(p.to(do.dtype)), do, PREC)
        dp = _dot(do, tl.trans(v), PREC)
        ds = p * (dp - delta[:, None])
        dk += _dot(tl.trans(ds.to(q.dtype)), q, PREC)
    dk = dk * scale
    mask = n_ok[:, None] & d_ok[None, :]
    rows = s * sdk_s + h * sdk_h + offs_n[:, None] * sdk_n + offs_d[None, :]
    tl.store(dk_ptr + rows, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=mask)


# ---- host side ----------------------------------------------------------------

def _tile(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def _dot_precision(dtype: torch.dtype) -> str:
    if triton_interpret():
        return "interpreter"  # see _dot
    if dtype == torch.float32:
        return "ieee"  # exact fp32, as torch's default matmul (not TF32)
    return "tf32"  # ignored for fp16/bf16 operands: tensor cores, fp32 accumulators


def _config(N: int, D: int, NB: int, dtype: torch.dtype) -> dict:
    """Block sizes (every tl.dot dim >= 16, N's tiles no bigger than it needs) and
    warps, per kernel: (query rows, keys) for fwd and dq, (queries, keys) for dkdv.
    Chosen from ptxas's register and spill counts for sm_90 (the dq kernel holds the
    most fp32 tiles); not timed yet: no GPU has run them (make gpu-check will)."""
    block_d = _tile(D, 1 << 30)
    big = block_d > 64  # d = 80 or 128, padded to 128
    if dtype == torch.float32:
        fwd, dq, dkdv = (32 if big else 64, 32), (16 if big else 32, 32), (16 if big else 32, 32)
    else:
        fwd, dq, dkdv = (64, 32 if big else 64), (16 if big else 32, 32 if big else 64), (32, 64)
    blocks = lambda m_n: dict(BLOCK_M=_tile(N, m_n[0]), BLOCK_N=_tile(N, m_n[1]), num_warps=8)
    return dict(BLOCK_D=block_d, BLOCK_B=_tile(NB, 1 << 30), PREC=_dot_precision(dtype),
                fwd=blocks(fwd), dq=blocks(dq), dkdv=blocks(dkdv))


def _row_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    # The kernels take any S/N/H strides (qkv-packed views are read in place).
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _table(rpe: torch.Tensor | None, mode: int, q: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(table, NB, stride between heads' tables) for the kernels."""
    if mode == 0:
        return q, 0, 0  # never read
    rpe = rpe.contiguous()
    if mode == 1:
        return rpe, rpe.shape[1], rpe.shape[1]
    per_head = rpe.dim() == 3
    return rpe, rpe.shape[-2], (rpe.shape[1] * rpe.shape[2]) if per_head else 0


@triton_op("lomar_ops::window_attention_fwd_triton", mutates_args=())
def window_attention_fwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                rpe: torch.Tensor | None, bucket_ids: torch.Tensor | None,
                                rpe_mode: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v (S, N, H, d) fp16/bf16/fp32, last dim contiguous (else copied); rpe per
    rpe_mode ("contextual", "bias", "none"); bucket_ids (N, N) int32 contiguous ->
    (out (S, N, H, d), stats (2, S, H, N) fp32: each row's logit max and log of its
    sum of exp, for the backward; lse = stats[0] + stats[1])."""
    S, N, H, D = q.shape
    mode = MODES[rpe_mode]
    out = torch.empty((S, N, H, D), dtype=q.dtype, device=q.device)
    stats = torch.empty((2, S, H, N), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, stats
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    table, NB, head_stride = _table(rpe, mode, q)
    ids = bucket_ids if bucket_ids is not None else stats
    cfg = _config(N, D, NB, q.dtype)
    fwd = cfg["fwd"]
    launch(_fwd_kernel, (S * H, triton.cdiv(N, fwd["BLOCK_M"])))(
        q, k, v, table, ids, out, stats, *_row_strides(q), *_row_strides(k), *_row_strides(v),
        *_row_strides(out), H, N, D, NB, head_stride, scale, S * H * N, MODE=mode,
        PREC=cfg["PREC"],
        BLOCK_D=cfg["BLOCK_D"], BLOCK_B=cfg["BLOCK_B"], **fwd)
    return out, stats


def _bucket_order(ids: torch.Tensor, N: int, block_n: int, block_b: int):
    """Per query row and key block of the (N, N) bucket map: the block's key
    positions sorted by bucket (stable; keys past N last), and for each bucket b the
    number of the block's ids < b and <= b. Int32, (N, key blocks, block_n or block_b)."""
    key_blocks = triton.cdiv(N, block_n)
    padded = ids.new_full((N, key_blocks * block_n), block_b)  # past N: after every bucket
    padded[:, :N] = ids
    blocks = padded.view(N, key_blocks, block_n)
    sorted_ids, order = torch.sort(blocks, dim=-1, stable=True)
    buckets = torch.arange(block_b, dtype=ids.dtype, device=ids.device).expand(
        N, key_blocks, block_b).contiguous()
    first = torch.searchsorted(sorted_ids, buckets, right=False)
    last = torch.searchsorted(sorted_ids, buckets, right=True)
    return order.int(), first.int(), last.int(), key_blocks


def _dq_grid(S: int, H: int, query_blocks: int, heads_per_program: int) -> tuple[int, int]:
    """(sequences per program, chunks): about _DQ_PROGRAMS programs, from the shape only."""
    groups = H // heads_per_program
    chunks = max(1, min(S, _DQ_PROGRAMS // (query_blocks * groups)))
    per_program = triton.cdiv(S, chunks)
    return per_program, triton.cdiv(S, per_program)


@triton_op("lomar_ops::window_attention_bwd_triton", mutates_args=())
def window_attention_bwd_triton(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                                v: torch.Tensor, stats: torch.Tensor,
                                rpe: torch.Tensor | None, bucket_ids: torch.Tensor | None,
                                rpe_mode: str, scale: float
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq, dk, dv (S, N, H, d), d(rpe) like rpe, or (0,) without a table)."""
    S, N, H, D = q.shape
    mode = MODES[rpe_mode]
    dq, dk, dv = (torch.empty((S, N, H, D), dtype=q.dtype, device=q.device) for _ in range(3))
    if dq.numel() == 0:
        drpe = torch.zeros_like(rpe) if mode else q.new_empty((0,))
        return dq.zero_(), dk.zero_(), dv.zero_(), drpe
    q, k, v, grad_out = (_last_dim_contiguous(t) for t in (q, k, v, grad_out))
    table, NB, head_stride = _table(rpe, mode, q)
    ids = bucket_ids if bucket_ids is not None else stats
    cfg = _config(N, D, NB, q.dtype)
    dq_blocks, dkdv_blocks = cfg["dq"], cfg["dkdv"]
    consts = dict(MODE=mode, PREC=cfg["PREC"], BLOCK_D=cfg["BLOCK_D"], BLOCK_B=cfg["BLOCK_B"])
    delta = torch.empty((S, H, N), dtype=torch.float32, device=q.device)
    query_blocks = triton.cdiv(N, dq_blocks["BLOCK_M"])
    # A shared contextual table: one program covers every head (a partial per program
    # for all of them); per-head tables and biases: one head per program.
    heads_per_program = H if (mode == 2 and head_stride == 0) else 1
    per_program, chunks = _dq_grid(S, H, query_blocks, heads_per_program)
    groups = H // heads_per_program
    slots = chunks * query_blocks
    order = first = last = stats  # read in contextual mode only
    key_blocks = triton.cdiv(N, dq_blocks["BLOCK_N"])
    if mode == 2:
        order, first, last, _ = _bucket_order(ids, N, dq_blocks["BLOCK_N"], cfg["BLOCK_B"])
    part = stats  # never written without a table
    if mode:
        width = D if mode == 2 else 1
        part = torch.empty((slots, groups, NB, width), dtype=torch.float32, device=q.device)
    launch(_bwd_dq_kernel, (query_blocks, groups, chunks))(
        q, k, v, grad_out, table, ids, stats, delta, dq, part, order, first, last,
        *_row_strides(q), *_row_strides(k), *_row_strides(v), *_row_strides(grad_out),
        *_row_strides(dq), S, H, N, D, NB, head_stride, scale, S * H * N, per_program,
        heads_per_program,
        key_blocks, ONE_KEY_BLOCK=key_blocks == 1, **consts, **dq_blocks)
    launch(_bwd_dkdv_kernel, (S * H, triton.cdiv(N, dkdv_blocks["BLOCK_N"])))(
        q, k, v, grad_out, table, ids, stats, delta, dk, dv,
        *_row_strides(q), *_row_strides(k), *_row_strides(v), *_row_strides(grad_out),
        *_row_strides(dk), H, N, D, NB, head_stride, scale, S * H * N, **consts, **dkdv_blocks)
    drpe = q.new_empty((0,))
    if mode:  # (groups, NB, width), the partials added in slot order
        drpe = part.sum(0).view(rpe.shape).to(rpe.dtype)
    return dq, dk, dv, drpe
