"""mask_substitute benchmark: forward and forward+backward, every backend on the device.

Shapes: the LoMaR ViT-B pretraining step, windows of 7x7 patches (L = 49, 80%
masked: 39 of 49), D = 768, S = B * n window sequences (4096 on CUDA, 256 on the
CPU), and the largest window (14x14, L = 196).

GB/s counts the fewest bytes the op must move (bench/common.py). Forward: read the
kept (unmasked) token rows only (a masked row is replaced by the mask token, never
read), the mask, mask_token and cls_token; write the output with its cls row:

    (S*L - masked) * D * e + S*L + 2*D*e  +  S*(L+1)*D*e

Backward: read the output's gradient and the mask; write grad_tokens (zero rows
included), grad_mask_token and grad_cls_token:

    S*(L+1)*D*e + S*L  +  S*L*D*e + 2*D*e

(e: bytes per element; the mask is one byte per token). fwd+bwd is their sum.
Until 2026-12 the forward was counted as reading all S*L token rows, 2.5x the
rows it reads at 80% masking: the first GPU record's forward rows read 136-141% of
the copy bandwidth because of it."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, gbps, shape_for, time_case

# name: (S, L, D) on CUDA / on the CPU / tiny ($LOMAR_BENCH_TINY)
CASES = {
    "K7-D768": ((4096, 49, 768), (256, 49, 768), (8, 49, 64)),
    "K14-D768": ((1024, 196, 768), (64, 196, 768), (2, 196, 64)),
}
MASK_RATIO = 0.8


def forward_bytes(S: int, L: int, D: int, masked: int, elt: int) -> int:
    return (S * L - masked) * D * elt + S * L + 2 * D * elt + S * (L + 1) * D * elt


def backward_bytes(S: int, L: int, D: int, elt: int) -> int:
    return S * (L + 1) * D * elt + S * L + S * L * D * elt + 2 * D * elt


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,backend", backend_params())
def test_mask_substitute(benchmark, record, device, backend, case, mode):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    S, L, D = shape_for(CASES[case], device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    needs_grad = mode != "fwd"
    tokens = torch.randn(S, L, D, device=device, dtype=dtype, requires_grad=needs_grad)
    mask = lomar_ops.sample_window_masks(S, int(round(L ** 0.5)), MASK_RATIO, device=device)
    mask_token = torch.randn(D, device=device, dtype=dtype, requires_grad=needs_grad)
    cls_token = torch.randn(D, device=device, dtype=dtype, requires_grad=needs_grad)
    grad = torch.randn(S, L + 1, D, device=device, dtype=dtype)
    elt = tokens.element_size()
    masked = int(mask.sum())
    nbytes = forward_bytes(S, L, D, masked, elt)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
    else:
        nbytes += backward_bytes(S, L, D, elt)

        def fn():
            out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
            torch.autograd.grad(out, (tokens, mask_token, cls_token), grad)

    median_ms, timer = time_case(benchmark, fn, device)
    rate = gbps(nbytes, median_ms)
    benchmark.extra_info.update(gbps=round(rate, 2))
    record(op="mask_substitute", backend=backend, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},L={L},D={D},masked={masked}", median_ms=round(median_ms, 4),
           bytes=nbytes, gbps=round(rate, 2), timer=timer)
