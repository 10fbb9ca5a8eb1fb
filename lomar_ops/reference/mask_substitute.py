"""mask_substitute, pure PyTorch: masked rows replaced by mask_token, cls prepended."""

from __future__ import annotations

import torch


def mask_substitute_reference(tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor,
                              cls_token: torch.Tensor | None = None) -> torch.Tensor:
    dtype = tokens.dtype
    # Half types work on fp32 copies so that autograd's sums for mask_token and
    # cls_token accumulate in fp32; the forward values are exact copies either way.
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out = torch.where(mask.unsqueeze(-1), mask_token.to(work), tokens.to(work))
    if cls_token is not None:
        S, _, D = tokens.shape
        out = torch.cat([cls_token.to(work).expand(S, 1, D), out], dim=1)
    return out.to(dtype)
