"""window_attention, pure PyTorch: the plain formula, the ground truth.

    logit[s,h,i,j] = scale * q[s,i,h] . k[s,j,h] + term[s,h,i,j]
    contextual: term = q[s,i,h] . R[h or 0, bucket_ids[i,j]]   (q not scaled here)
    bias:       term = rpe[h, bucket_ids[i,j]]
    None:       term = 0
    out[s,i,h] = sum_j softmax_j(logit[s,h,i,:]) v[s,j,h]
"""

from __future__ import annotations

import torch

from .rpe_gather import rpe_gather_reference


def relative_term(q_shn: torch.Tensor, rpe: torch.Tensor | None, rpe_mode: str | None,
                  bucket_ids: torch.Tensor | None) -> torch.Tensor | None:
    """The (S, H, N, N) relative-position term for q in (S, H, N, d) layout."""
    if rpe_mode is None:
        return None
    S, H, N, _ = q_shn.shape
    ids = bucket_ids.to(torch.int64)
    if rpe_mode == "bias":
        return rpe[:, ids].unsqueeze(0)  # (1, H, N, N)
    table = rpe if rpe.dim() == 3 else rpe.unsqueeze(0)  # (H or 1, NB, d)
    per_bucket = q_shn @ table.transpose(-1, -2)  # (S, H, N, NB)
    return rpe_gather_reference(per_bucket, ids)  # its backward is deterministic


def window_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               rpe: torch.Tensor | None = None,
                               rpe_mode: str | None = "contextual",
                               bucket_ids: torch.Tensor | None = None,
                               scale: float | None = None) -> torch.Tensor:
    """q, k, v (S, N, H, d) -> (S, N, H, d)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (S, H, N, d)
    logits = scale * (qh @ kh.transpose(-1, -2))
    term = relative_term(qh, rpe, rpe_mode, bucket_ids)
    if term is not None:
        logits = logits + term
    return (logits.softmax(dim=-1) @ vh).transpose(1, 2)
