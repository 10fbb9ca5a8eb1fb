"""rpe_gather: the unfused iRPE gather, ``out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]]``.

Implementations: csrc/cpu/rpe_gather.cpp, csrc/cuda/rpe_gather.cu,
lomar_ops/triton_kernels/rpe_gather.py, lomar_ops/reference/rpe_gather.py.
This file holds the op's autograd rule (for the C++ and the Triton op), the C++ op's
fake-tensor rules and the public function."""

from __future__ import annotations

import torch

from .. import _extension
from .._autograd import register_autograd
from .._validation import (FLOAT_DTYPES, INDEX_DTYPES, check_index_range, check_same_device,
                           check_tensor)
from ..backends import TRITON_INSTALLED, implemented_backends, resolve_backend
from ..reference.rpe_gather import rpe_gather_reference

_OP = "rpe_gather"
_IMPLEMENTED = implemented_backends(_OP)


def _save(ctx, inputs, output):
    table, bucket_ids = inputs
    ctx.save_for_backward(bucket_ids)
    ctx.num_buckets = table.shape[3]


def _grads(backward, ctx, grad_out):
    (bucket_ids,) = ctx.saved_tensors
    return backward(grad_out.contiguous(), bucket_ids, ctx.num_buckets), None


if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::rpe_gather")
    def _rpe_gather_fake(table, bucket_ids):
        S, H, N, _ = table.shape
        return table.new_empty((S, H, N, N))

    @torch.library.register_fake("lomar_ops::rpe_gather_backward")
    def _rpe_gather_backward_fake(grad_out, bucket_ids, num_buckets):
        S, H, N, _ = grad_out.shape
        return grad_out.new_empty((S, H, N, num_buckets))


def rpe_gather(table: torch.Tensor, bucket_ids: torch.Tensor,
               backend: str | None = None) -> torch.Tensor:
    """Gather a per-query bucket table into a full relative-position term.

    Args:
        table: (S, H, N, NB) float16/bfloat16/float32/float64; for iRPE's
            contextual mode this is ``q @ R^T``.
        bucket_ids: (N, N) int32 or int64, values in [0, NB), e.g.
            :func:`lomar_ops.irpe_bucket_ids`.
        backend: None, "cuda", "triton", "cpu" or "torch" (see lomar_ops.backends).

    Returns:
        (S, H, N, N) tensor of table's dtype, ``out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]]``.
        Its backward scatter-adds into the table, accumulating in fp32 for half types.
    """
    check_tensor(_OP, "table", table, ndim=4, dtypes=FLOAT_DTYPES, shape_doc="(S, H, N, NB)")
    check_tensor(_OP, "bucket_ids", bucket_ids, ndim=2, dtypes=INDEX_DTYPES, shape_doc="(N, N)")
    check_same_device(_OP, table=table, bucket_ids=bucket_ids)
    n = table.shape[2]
    if tuple(bucket_ids.shape) != (n, n):
        raise ValueError(f"{_OP}: bucket_ids must be (N, N) = ({n}, {n}) to match table "
                         f"(S, H, N, NB) = {tuple(table.shape)}, got {tuple(bucket_ids.shape)}")
    num_buckets = table.shape[3]
    if num_buckets < 1:
        raise ValueError(f"{_OP}: table must have at least one bucket, got NB = {num_buckets}")
    check_index_range(_OP, "bucket_ids", bucket_ids, num_buckets, "NB, the table's last dim")
    chosen = resolve_backend(_OP, table.device, backend, _IMPLEMENTED, size=table.shape[2])
    if chosen == "torch":
        return rpe_gather_reference(table, bucket_ids)
    ids = bucket_ids.to(torch.int32).contiguous()
    if chosen == "triton":
        return _triton.rpe_gather_triton(table.contiguous(), ids)
    return torch.ops.lomar_ops.rpe_gather(table, ids)


# The autograd rule on every compiled forward op: the C++ op's, the Triton op's.
_FORWARDS = {}
if _extension.AVAILABLE:
    _FORWARDS["lomar_ops::rpe_gather"] = torch.ops.lomar_ops.rpe_gather_backward
if TRITON_INSTALLED:
    from ..triton_kernels import rpe_gather as _triton
    _FORWARDS[_triton.rpe_gather_triton] = _triton.rpe_gather_backward_triton
register_autograd(_FORWARDS, _save, _grads)
