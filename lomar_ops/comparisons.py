"""Other ways to compute :func:`lomar_ops.window_attention`, for benchmarks and for
models that want them. Same arguments and meaning; (S, N, H, d) layout.

* ``eager``: the authors' unfused formulation, ``q @ k^T * scale + gather(q @ R^T)``,
  softmax, ``@ v``, every intermediate in memory (the gather through rpe_gather);
* ``sdpa``: torch's scaled_dot_product_attention with the relative term
  materialised as an (S, H, N, N) additive mask;
* ``flex``: FlexAttention with the relative term precomputed and added in its
  score_mod (wrap it in torch.compile for speed, as FlexAttention expects)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .ops.rpe_gather import rpe_gather


def _heads_first(*tensors):
    return [t.transpose(1, 2) for t in tensors]


def _scale(q, scale):
    return q.shape[-1] ** -0.5 if scale is None else scale


def _term(qh, rpe, rpe_mode, bucket_ids, backend=None):
    """The (S or 1, H, N, N) relative term, materialised."""
    if rpe is None or rpe_mode is None:
        return None
    ids = bucket_ids.to(torch.int32)
    if rpe_mode == "bias":
        return rpe[:, ids.long()].unsqueeze(0)
    table = rpe if rpe.dim() == 3 else rpe.unsqueeze(0)
    return rpe_gather(qh @ table.transpose(-1, -2), ids, backend=backend)


def window_attention_eager(q, k, v, *, rpe=None, rpe_mode="contextual", bucket_ids=None,
                           scale=None, gather_backend=None):
    qh, kh, vh = _heads_first(q, k, v)
    attn = (qh @ kh.transpose(-1, -2)) * _scale(q, scale)
    term = _term(qh, rpe, rpe_mode, bucket_ids, gather_backend)
    if term is not None:
        attn = attn + term
    return (attn.softmax(dim=-1) @ vh).transpose(1, 2)


def window_attention_sdpa(q, k, v, *, rpe=None, rpe_mode="contextual", bucket_ids=None,
                          scale=None):
    qh, kh, vh = _heads_first(q, k, v)
    term = _term(qh, rpe, rpe_mode, bucket_ids)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=term, scale=_scale(q, scale))
    return out.transpose(1, 2)


def window_attention_flex(q, k, v, *, rpe=None, rpe_mode="contextual", bucket_ids=None,
                          scale=None):
    from torch.nn.attention.flex_attention import flex_attention

    qh, kh, vh = _heads_first(q, k, v)
    term = _term(qh, rpe, rpe_mode, bucket_ids)
    score_mod = None
    if term is not None:
        if term.shape[0] == 1:
            def score_mod(score, b, h, i, j):
                return score + term[0, h, i, j]
        else:
            def score_mod(score, b, h, i, j):
                return score + term[b, h, i, j]
    out = flex_attention(qh, kh, vh, score_mod=score_mod, scale=_scale(q, scale))
    return out.transpose(1, 2)


COMPARISONS = {"eager": window_attention_eager, "sdpa": window_attention_sdpa,
               "flex": window_attention_flex}
