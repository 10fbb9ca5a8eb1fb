"""The authors' way to compute :func:`lomar_ops.window_attention`, for benchmarks:
``eager``, the unfused formulation ``q @ k^T * scale + gather(q @ R^T)``, softmax,
``@ v``, every intermediate in memory (the gather through rpe_gather). Same arguments
and meaning; (S, N, H, d) layout. PyTorch's SDPA and FlexAttention are backends of
the op itself (``backend="sdpa"``, ``"flex"``: lomar_ops/composite/)."""

from __future__ import annotations

from .composite.window_attention import materialised_term


def window_attention_eager(q, k, v, *, rpe=None, rpe_mode="contextual", bucket_ids=None,
                           scale=None, gather_backend=None):
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    attn = (qh @ kh.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    term = materialised_term(qh, rpe, rpe_mode, bucket_ids, gather_backend)
    if term is not None:
        attn = attn + term
    return (attn.softmax(dim=-1) @ vh).transpose(1, 2)


COMPARISONS = {"eager": window_attention_eager}
