"""Learning-rate rules of the LoMaR/MAE recipes (docs/method.md#pretraining-recipe):
the linear scaling rule, then a linear warmup and a half-cycle cosine decay,
evaluated at every iteration (fractional epochs), with per-group ``lr_scale``
(layer-wise decay) honoured."""

from __future__ import annotations

import math

import torch


def scaled_lr(blr: float, effective_batch: int) -> float:
    """lr = blr * effective batch / 256 (effective batch = per-GPU batch x accum x GPUs)."""
    if blr <= 0 or effective_batch <= 0:
        raise ValueError(f"scaled_lr: blr and effective_batch must be positive, got {blr}, "
                         f"{effective_batch}")
    return blr * effective_batch / 256


def lr_at(step: float, total_steps: int, warmup_steps: int, peak_lr: float,
          min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then half-cycle
    cosine to ``min_lr`` at ``total_steps``."""
    if not 0 <= warmup_steps <= total_steps or total_steps <= 0:
        raise ValueError(f"lr_at: need 0 <= warmup_steps <= total_steps and total_steps > 0, "
                         f"got warmup_steps={warmup_steps}, total_steps={total_steps}")
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if total_steps == warmup_steps:
        return peak_lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr`` times its ``lr_scale`` (1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
