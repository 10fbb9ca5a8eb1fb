"""Fixed 2-D sine-cosine position embeddings (MAE's), for any patch grid."""

from __future__ import annotations

import torch


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, num_cls: int = 1) -> torch.Tensor:
    """(num_cls + grid_h * grid_w, dim) float32: half the channels encode the row, half
    the column (MAE's layout: first half from the width axis), zeros for cls tokens."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return torch.cat([torch.zeros(num_cls, dim, dtype=torch.float64), emb]).float()
