"""window_attention: attention over many short sequences with iRPE's relative
position term inside the logits, forward and backward.

    logit[s,h,i,j] = scale * q_i . k_j + term_ij
      rpe_mode="contextual": term_ij = q_i . rpe[(h,) bucket_ids[i, j]]  (q unscaled)
      rpe_mode="bias":       term_ij = rpe[h, bucket_ids[i, j]]
      rpe=None:              no term (plain attention)

Implementations: csrc/cuda/window_attention.cu, lomar_ops/triton_kernels/window_attention.py,
csrc/cpu/window_attention.cpp, lomar_ops/reference/window_attention.py; through PyTorch's
attention ("sdpa", "flex"): lomar_ops/composite/window_attention.py. The authors' unfused
formulation, for benchmarks: lomar_ops/comparisons.py."""

from __future__ import annotations

import math

import torch

from .. import _extension
from .._autograd import register_autograd
from .._validation import FLOAT_DTYPES, INDEX_DTYPES, check_index_range, check_tensor
from ..backends import TRITON_INSTALLED, implemented_backends, resolve_backend
from ..reference.window_attention import window_attention_reference

_OP = "window_attention"
_IMPLEMENTED = implemented_backends(_OP, cpp_op="window_attention_fwd",
                                   composite=("sdpa", "flex"))
RPE_MODES = ("contextual", "bias", None)
# The Triton kernel keeps a (query rows, buckets) tile of q @ R^T on chip: iRPE has 50.
TRITON_MAX_CONTEXTUAL_BUCKETS = 128


# The autograd rule of both compiled forward ops. The C++ op returns (out, lse, probs)
# (probs kept by the CPU kernel, empty on CUDA), the Triton op (out, stats); each
# backward op takes the forward's inputs and outputs.
def _save(ctx, inputs, output):
    q, k, v, rpe, bucket_ids, rpe_mode, scale = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.save_for_backward(q, k, v, rpe, bucket_ids, *output)
    ctx.rpe_mode, ctx.scale = rpe_mode, scale


def _grads(backward, ctx, grad_out, *_grad_stats):
    q, k, v, rpe, bucket_ids, *output = ctx.saved_tensors
    dq, dk, dv, drpe = backward(grad_out, q, k, v, output, rpe, bucket_ids, ctx.rpe_mode,
                                ctx.scale)
    return dq, dk, dv, (drpe if rpe is not None else None), None, None, None

if _extension.AVAILABLE:

    def _result_like(q):
        """An (S, N, H, d) result: contiguous from the CUDA kernel; on the CPU a view of
        heads-major (S, H, N, d) memory, as the unfused formula returns it."""
        S, N, H, d = q.shape
        if q.device.type == "cpu":
            return q.new_empty((S, H, N, d)).permute(0, 2, 1, 3)
        return q.new_empty((S, N, H, d))

    @torch.library.register_fake("lomar_ops::window_attention_fwd")
    def _fwd_fake(q, k, v, rpe, bucket_ids, rpe_mode, scale):
        S, N, H, d = q.shape
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        # probs: the CPU kernel keeps the softmax for its backward; CUDA recomputes it.
        probs_shape = (S * H, N, N) if q.device.type == "cpu" else (0,)
        return (_result_like(q), q.new_empty((S, H, N), dtype=acc),
                q.new_empty(probs_shape, dtype=acc))

    @torch.library.register_fake("lomar_ops::window_attention_bwd")
    def _bwd_fake(grad_out, q, k, v, out, lse, probs, rpe, bucket_ids, rpe_mode, scale):
        drpe = rpe.new_empty(rpe.shape) if rpe is not None else q.new_empty((0,))
        return _result_like(q), _result_like(q), _result_like(q), drpe


def _check(q, k, v, rpe, rpe_mode, bucket_ids, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(_OP, name, t, ndim=4, dtypes=FLOAT_DTYPES, shape_doc="(S, N, H, d)")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{_OP}: {name} must have q's shape {tuple(q.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{_OP}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{_OP}: {name} must be on q's device {q.device}, got {t.device}")
    if rpe_mode not in RPE_MODES:
        raise ValueError(f"{_OP}: rpe_mode must be one of {RPE_MODES}, got {rpe_mode!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"{_OP}: scale must be a finite number or None, got {scale!r}")
    S, N, H, d = q.shape
    if rpe is None:
        if bucket_ids is not None:
            raise ValueError(f"{_OP}: bucket_ids given without rpe; pass rpe (and rpe_mode) "
                             "or neither")
        return
    if rpe_mode is None:
        raise ValueError(f"{_OP}: rpe given with rpe_mode=None; use 'contextual' or 'bias'")
    check_tensor(_OP, "rpe", rpe, dtypes=FLOAT_DTYPES)
    if rpe.dtype != q.dtype:
        raise TypeError(f"{_OP}: rpe must have q's dtype {q.dtype}, got {rpe.dtype}")
    if rpe.device != q.device:
        raise ValueError(f"{_OP}: rpe must be on q's device {q.device}, got {rpe.device}")
    if rpe_mode == "contextual":
        if not ((rpe.dim() == 2 and rpe.shape[1] == d)
                or (rpe.dim() == 3 and rpe.shape[0] == H and rpe.shape[2] == d)):
            raise ValueError(f"{_OP}: contextual rpe must be (NB, d) = (NB, {d}) or "
                             f"(H, NB, d) = ({H}, NB, {d}), got {tuple(rpe.shape)}")
        num_buckets = rpe.shape[-2]
    else:
        if not (rpe.dim() == 2 and rpe.shape[0] == H):
            raise ValueError(f"{_OP}: bias rpe must be (H, NB) = ({H}, NB), "
                             f"got {tuple(rpe.shape)}")
        num_buckets = rpe.shape[1]
    if bucket_ids is None:
        raise ValueError(f"{_OP}: rpe_mode={rpe_mode!r} needs bucket_ids, an (N, N) bucket map")
    check_tensor(_OP, "bucket_ids", bucket_ids, ndim=2, dtypes=INDEX_DTYPES, shape_doc="(N, N)")
    if tuple(bucket_ids.shape) != (N, N):
        raise ValueError(f"{_OP}: bucket_ids must be (N, N) = ({N}, {N}) for sequences of "
                         f"N = {N} tokens, got {tuple(bucket_ids.shape)}")
    if bucket_ids.device != q.device:
        raise ValueError(f"{_OP}: bucket_ids must be on q's device {q.device}, "
                         f"got {bucket_ids.device}")
    check_index_range(_OP, "bucket_ids", bucket_ids, num_buckets, "NB, the rpe table's buckets")


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     rpe: torch.Tensor | None = None, rpe_mode: str | None = "contextual",
                     bucket_ids: torch.Tensor | None = None, scale: float | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """Attention within each of S sequences of N tokens, with a relative position term.

    Args:
        q, k, v: (S, N, H, d), float16/bfloat16/float32/float64 (float64: not on
            Triton). Any strides; the kernels read S/N/H strides as they are (the
            Triton one copies a q, k or v whose last dim is not contiguous).
        rpe: None (plain attention), or the relative position table: for
            ``rpe_mode="contextual"`` (iRPE on keys) (NB, d) shared by all heads or
            (H, NB, d); for ``rpe_mode="bias"`` (H, NB).
        rpe_mode: "contextual", "bias" or None.
        bucket_ids: (N, N) int32/int64 map into the table's NB buckets, e.g.
            :func:`lomar_ops.irpe_bucket_ids` or BEiT's relative position index.
        scale: multiplies q.k; default d ** -0.5 (not applied to the contextual term).
        backend: None, "cuda", "triton", "cpu", "torch", or PyTorch's attention: "sdpa"
            (the term materialised as SDPA's mask) or "flex" (FlexAttention, the term
            in its score_mod; forward only on the CPU, not float64 on CUDA). None: on
            CUDA what the committed GPU record measured fastest for this N
            (lomar_ops.backends.default_backend says which and why).

    Returns:
        (S, N, H, d) in q's dtype (from the C++ CPU kernel, like the reference formula,
        a view of (S, H, N, d) memory: ``.reshape`` it rather than ``.view``). Gradients flow to q, k, v and rpe; d(rpe) sums over
        all sequences (and heads, for a shared table) in fp32, deterministically.
    """
    _check(q, k, v, rpe, rpe_mode, bucket_ids, scale)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mode = rpe_mode if rpe is not None else None
    chosen = resolve_backend(_OP, q.device, backend, _IMPLEMENTED,
                             unsupported=_unsupported_here(q, k, v, rpe, mode), size=q.shape[1])
    if chosen == "torch":
        return window_attention_reference(q, k, v, rpe, mode, bucket_ids, scale)
    if chosen in ("sdpa", "flex"):
        from ..composite import window_attention as composite
        fn = composite.window_attention_sdpa if chosen == "sdpa" else \
            composite.window_attention_flex
        return fn(q, k, v, rpe, mode, bucket_ids, scale)
    ids = bucket_ids.to(torch.int32).contiguous() if bucket_ids is not None else None
    if chosen == "triton":
        out, _ = _triton.window_attention_fwd_triton(q, k, v, rpe, ids, mode or "none", scale)
        return out
    return torch.ops.lomar_ops.window_attention_fwd(q, k, v, rpe, ids, mode or "none", scale)[0]


def _unsupported_here(q, k, v, rpe, mode) -> dict[str, str]:
    """Backends that cannot run this call, with the reason (for the chooser)."""
    out = {}
    if q.dtype == torch.float64:
        out["triton"] = ("the Triton kernel runs float16, bfloat16 and float32, not float64 "
                         "(use 'cpu' for CPU tensors, or 'torch')")
        if q.device.type == "cuda":
            out["flex"] = "FlexAttention's compiled kernels run float16, bfloat16 and float32"
    elif mode == "contextual" and rpe.shape[-2] > TRITON_MAX_CONTEXTUAL_BUCKETS:
        out["triton"] = (f"the Triton kernel takes contextual tables of at most "
                         f"{TRITON_MAX_CONTEXTUAL_BUCKETS} buckets, got NB = {rpe.shape[-2]}")
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, rpe)):
        out["flex"] = "FlexAttention has no backward on the CPU (forward only there)"
    return out


def window_attention_qkvpacked(qkv: torch.Tensor, **kwargs) -> torch.Tensor:
    """:func:`window_attention` on qkv (S, N, 3, H, d), the qkv projection's output
    reshaped; q, k and v are read as views, without copies."""
    check_tensor(_OP, "qkv", qkv, ndim=5, dtypes=FLOAT_DTYPES, shape_doc="(S, N, 3, H, d)")
    if qkv.shape[2] != 3:
        raise ValueError(f"{_OP}: qkv must be (S, N, 3, H, d), got {tuple(qkv.shape)}")
    return window_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], **kwargs)


def _cpp_backward(grad_out, q, k, v, output, rpe, bucket_ids, rpe_mode, scale):
    out, lse, probs = output
    return torch.ops.lomar_ops.window_attention_bwd(grad_out, q, k, v, out, lse, probs, rpe,
                                                    bucket_ids, rpe_mode, scale)


def _triton_backward(grad_out, q, k, v, output, rpe, bucket_ids, rpe_mode, scale):
    _, stats = output  # not out: the kernel's D comes from P
    return _triton.window_attention_bwd_triton(grad_out, q, k, v, stats, rpe, bucket_ids,
                                               rpe_mode, scale)


_FORWARDS = {}
if _extension.AVAILABLE:
    _FORWARDS["lomar_ops::window_attention_fwd"] = _cpp_backward
if TRITON_INSTALLED:
    from ..triton_kernels import window_attention as _triton
    _FORWARDS[_triton.window_attention_fwd_triton] = _triton_backward
register_autograd(_FORWARDS, _save, _grads)
