"""masked_patch_loss, pure PyTorch: MAE/LoMaR's normalised-pixel loss on masked patches."""

from __future__ import annotations

import torch


def masked_patch_loss_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                                norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    # fp32 arithmetic (fp64 for double); the target is data: no gradient flows to it.
    work = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p = pred.to(work)
    t = target.detach().to(work)
    if norm_pix:
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True)  # unbiased, as the authors' code
        t = (t - mean) / (var + eps) ** 0.5
    per_patch = ((p - t) ** 2).mean(dim=-1)
    m = mask.to(work)
    return (per_patch * m).sum() / m.sum()
