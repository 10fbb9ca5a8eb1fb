"""window_attention through PyTorch's attention: the "sdpa" and "flex" backends.

Same arguments and meaning as lomar_ops.reference.window_attention; q, k, v (S, N, H, d).

* ``sdpa``: ``scaled_dot_product_attention`` with the relative term materialised as an
  (S, H, N, N) additive mask (the contextual term through ``rpe_gather``; the bias term
  broadcast over the sequences). On CUDA the mask goes to the memory-efficient kernel,
  which also returns its gradient; the term costs S*H*N*N values of memory.
* ``flex``: FlexAttention with the iRPE term added in its score_mod from the (S, H, N, NB)
  products q @ R^T, indexed by the bucket map: no (S, H, N, N) term in memory. On CUDA it
  runs compiled (``torch.compile(flex_attention)``, as FlexAttention expects); on the CPU
  uncompiled, forward only (FlexAttention has no CPU backward)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..ops.rpe_gather import rpe_gather


def _heads_first(*tensors):
    return [t.transpose(1, 2) for t in tensors]


def _table(rpe):
    """A contextual table as (H or 1, NB, d)."""
    return rpe if rpe.dim() == 3 else rpe.unsqueeze(0)


def materialised_term(qh, rpe, rpe_mode, bucket_ids, gather_backend=None):
    """The relative term for q in (S, H, N, d) layout, in memory: (1, H, N, N) for
    "bias", (S, H, N, N) for "contextual" (through rpe_gather), None without one."""
    if rpe is None or rpe_mode is None:
        return None
    if rpe_mode == "bias":
        return rpe[:, bucket_ids.long()].unsqueeze(0)
    return rpe_gather(qh @ _table(rpe).transpose(-1, -2), bucket_ids, backend=gather_backend)


def window_attention_sdpa(q, k, v, rpe, rpe_mode, bucket_ids, scale):
    qh, kh, vh = _heads_first(q, k, v)
    term = materialised_term(qh, rpe, rpe_mode, bucket_ids)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=term, scale=scale)
    return out.transpose(1, 2)


_compiled_flex = None


def _flex_attention(device: torch.device):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex


def window_attention_flex(q, k, v, rpe, rpe_mode, bucket_ids, scale):
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # FlexAttention refuses CPU inputs that require grad even with no gradient wanted.
        q, k, v = q.detach(), k.detach(), v.detach()
    qh, kh, vh = _heads_first(q, k, v)
    ids = bucket_ids.long() if bucket_ids is not None else None
    score_mod = None
    if rpe_mode == "bias":
        def score_mod(score, b, h, i, j):
            return score + rpe[h, ids[i, j]]
    elif rpe_mode == "contextual":
        q_r = qh @ _table(rpe).transpose(-1, -2)  # (S, H, N, NB): q_i . R[bucket] for all buckets

        def score_mod(score, b, h, i, j):
            return score + q_r[b, h, i, ids[i, j]]
    attend = _flex_attention(q.device)
    if q.device.type == "cuda" or torch.compiler.is_compiling():
        out = attend(qh, kh, vh, score_mod=score_mod, scale=scale)
    else:
        with warnings.catch_warnings():  # uncompiled on the CPU: slow, not wrong
            warnings.filterwarnings("ignore", message=".*flex_attention called without "
                                                      "torch.compile.*")
            out = attend(qh, kh, vh, score_mod=score_mod, scale=scale)
    return out.transpose(1, 2)
