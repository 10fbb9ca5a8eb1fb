"""Mixed precision for the jobs: the config key ``amp`` and what it turns on.

``amp``:
* ``true`` (the default): bfloat16 autocast on CUDA; float32 on the CPU;
* ``false``: float32 everywhere;
* ``"bf16"``: bfloat16 autocast on any device (the CPU included);
* ``"fp16"``: float16 autocast on any device, with loss scaling
  (``torch.amp.GradScaler``): float16's narrow range flushes small gradients to zero
  without it. The scaler's state is saved in every checkpoint and resumed.

Under autocast, matrix products and convolutions run in the low precision; the
LoMaR loss, like ``mse_loss``, runs in float32 (``lomar_ops.masked_patch_loss``)."""

from __future__ import annotations

import contextlib
from typing import Literal, Union

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Amp = Union[bool, Literal["bf16", "fp16"]]


def autocast_dtype(amp: Amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that ``amp`` selects on ``device``; None for float32."""
    if amp is True:
        return torch.bfloat16 if torch.device(device).type == "cuda" else None
    if amp is False:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be true, false, 'bf16' or 'fp16', got {amp!r}")
    return AMP_DTYPES[amp]


def autocast(amp: Amp, device: torch.device):
    """The autocast context of ``amp`` on ``device`` (a no-op for float32)."""
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(amp: Amp, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for float16 only (a disabled one passes steps through)."""
    enabled = autocast_dtype(amp, device) == torch.float16
    return torch.amp.GradScaler(torch.device(device).type, enabled=enabled)
