"""iRPE bucket map (Wu et al., "Rethinking and Improving Relative Position
Encoding for Vision Transformer"), in the configuration LoMaR uses: "product"
method, piecewise index with alpha, beta, gamma = 1x, 2x, 8x ``ratio``, and one
extra bucket shared by every pair that involves a cls token.

See docs/method.md#irpe-the-relative-position-encoding. The map is built once per grid size and is
shared by all windows, heads and layers."""

from __future__ import annotations

import math

import torch

from ._validation import check_positive_int

_OP = "irpe_bucket_ids"


def _check_ratio(op: str, ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
        raise TypeError(f"{op}: ratio must be a float, got {type(ratio).__name__}")
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"{op}: ratio must be a positive finite number, got {ratio}")
    return float(ratio)


def _max_index(ratio: float) -> int:
    # Offsets map into [-int(beta), int(beta)] with beta = 2 * ratio.
    return int(2.0 * ratio)


def piecewise_index(offsets: torch.Tensor, ratio: float = 1.9) -> torch.Tensor:
    """iRPE's piecewise index of signed integer offsets: round(x) when |x| <= alpha,
    else sign(x) * min(beta, round(alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha))),
    truncated to an integer. With ratio 1.9: 0->0, 1->1, 2->2, 3->2, >=4->3."""
    ratio = _check_ratio("piecewise_index", ratio)
    alpha, beta, gamma = ratio, 2.0 * ratio, 8.0 * ratio
    x = offsets.to(torch.float64)
    ax = x.abs()
    far = torch.sign(x) * (alpha + torch.log(ax.clamp_min(1e-12) / alpha)
                           / math.log(gamma / alpha) * (beta - alpha)).round().clamp(max=beta)
    out = torch.where(ax <= alpha, x.round(), far)
    return out.trunc().to(torch.int64)


def irpe_num_buckets(ratio: float = 1.9, num_cls: int = 1) -> int:
    """Number of buckets of the map: (2 * int(2 * ratio) + 1) ** 2 for the patch pairs,
    plus one shared by all cls pairs when num_cls > 0 (50 for the defaults)."""
    ratio = _check_ratio("irpe_num_buckets", ratio)
    check_positive_int("irpe_num_buckets", "num_cls", num_cls, minimum=0)
    side = 2 * _max_index(ratio) + 1
    return side * side + (1 if num_cls > 0 else 0)


def irpe_bucket_ids(height: int, width: int, num_cls: int = 1, ratio: float = 1.9,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The (L, L) int32 bucket map, L = num_cls + height * width, for a sequence of
    ``num_cls`` cls tokens followed by a ``height x width`` patch grid in raster order.

    ``ids[i, j]`` is the bucket of query i and key j: for two patches,
    ``(idx(row_i - row_j) + m) * (2m + 1) + (idx(col_i - col_j) + m)`` with
    ``m = int(2 * ratio)`` and ``idx`` the piecewise index; when i or j is a cls
    token, the extra last bucket ``(2m + 1) ** 2``."""
    check_positive_int(_OP, "height", height)
    check_positive_int(_OP, "width", width)
    check_positive_int(_OP, "num_cls", num_cls, minimum=0)
    ratio = _check_ratio(_OP, ratio)
    m = _max_index(ratio)
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    drow = piecewise_index(rows[:, None] - rows[None, :], ratio)
    dcol = piecewise_index(cols[:, None] - cols[None, :], ratio)
    patch_ids = (drow + m) * (2 * m + 1) + (dcol + m)
    total = num_cls + height * width
    ids = torch.full((total, total), (2 * m + 1) ** 2, dtype=torch.int32)
    ids[num_cls:, num_cls:] = patch_ids.to(torch.int32)
    return ids.to(device) if device is not None else ids
