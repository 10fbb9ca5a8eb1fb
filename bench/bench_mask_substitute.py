"""mask_substitute benchmark: forward and forward+backward, every backend on the device.

Shapes: the LoMaR ViT-B pretraining step, windows of 7x7 patches (L = 49, 80%
masked), D = 768, S = B * n window sequences (4096 on CUDA, 256 on the CPU), and
the largest window (14x14, L = 196). GB/s counts the bytes an op must move:
read tokens and mask, write the output with its cls row (backward: read the
output's gradient and the mask, write grad_tokens, grad_mask_token, grad_cls_token)."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, time_case

# name: (S, L, D) on CUDA / on CPU
CASES = {
    "K7-D768": ((4096, 49, 768), (256, 49, 768)),
    "K14-D768": ((1024, 196, 768), (64, 196, 768)),
}
MASK_RATIO = 0.8


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,backend", backend_params())
def test_mask_substitute(benchmark, record, device, backend, case, mode):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    S, L, D = CASES[case][0 if device.type == "cuda" else 1]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    needs_grad = mode != "fwd"
    tokens = torch.randn(S, L, D, device=device, dtype=dtype, requires_grad=needs_grad)
    mask = lomar_ops.sample_window_masks(S, int(round(L ** 0.5)), MASK_RATIO, device=device)
    mask_token = torch.randn(D, device=device, dtype=dtype, requires_grad=needs_grad)
    cls_token = torch.randn(D, device=device, dtype=dtype, requires_grad=needs_grad)
    grad = torch.randn(S, L + 1, D, device=device, dtype=dtype)
    elt = tokens.element_size()
    nbytes = (S * L * D + S * (L + 1) * D + 2 * D) * elt + S * L

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
    else:
        nbytes *= 2

        def fn():
            out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
            torch.autograd.grad(out, (tokens, mask_token, cls_token), grad)

    median_ms, timer = time_case(benchmark, fn, device)
    gbps = nbytes / (median_ms * 1e-3) / 1e9
    benchmark.extra_info.update(gbps=round(gbps, 2))
    record(op="mask_substitute", backend=backend, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},L={L},D={D}", median_ms=round(median_ms, 4), gbps=round(gbps, 2),
           timer=timer)
