"""masked_patch_loss benchmark: forward and forward+backward, every backend on the device.

Shapes: the LoMaR ViT-B/16 pretraining step, windows of 7x7 patches (L = 49,
39 masked), P = 16*16*3 = 768, S = B * n window sequences (4096 on CUDA, 256 on
the CPU), with norm_pix.

GB/s counts the fewest bytes the op must move (bench/common.py). Forward: read
pred and target on the masked patches only (the loss ignores the others) and the
mask; write the 0-dim loss (fp32):

    2 * masked * P * e + S*L + 4

Backward: read the loss's gradient, pred and target on the masked patches and
the mask (it recomputes each patch's statistics); write dpred everywhere (zero
on the kept patches):

    4 + 2 * masked * P * e + S*L  +  S*L*P * e

(e: bytes per element). fwd+bwd is their sum."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, gbps, shape_for, time_case

# name: (S, L, P) on CUDA / on the CPU / tiny ($LOMAR_BENCH_TINY)
CASES = {
    "K7-P768": ((4096, 49, 768), (256, 49, 768), (8, 49, 48)),
}
MASK_RATIO = 0.8
LOSS_BYTES = 4  # the fp32 loss, or its gradient


def forward_bytes(S: int, L: int, P: int, masked: int, elt: int) -> int:
    return 2 * masked * P * elt + S * L + LOSS_BYTES


def backward_bytes(S: int, L: int, P: int, masked: int, elt: int) -> int:
    return LOSS_BYTES + 2 * masked * P * elt + S * L + S * L * P * elt


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,backend", backend_params())
def test_masked_patch_loss(benchmark, record, device, backend, case, mode):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    S, L, P = shape_for(CASES[case], device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pred = torch.randn(S, L, P, device=device, dtype=dtype, requires_grad=mode != "fwd")
    target = torch.randn(S, L, P, device=device, dtype=dtype)
    mask = lomar_ops.sample_window_masks(S, int(round(L ** 0.5)), MASK_RATIO, device=device)
    masked = int(mask.sum())
    elt = pred.element_size()
    nbytes = forward_bytes(S, L, P, masked, elt)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
    else:
        nbytes += backward_bytes(S, L, P, masked, elt)

        def fn():
            loss = lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
            torch.autograd.grad(loss, pred)

    median_ms, timer = time_case(benchmark, fn, device)
    rate = gbps(nbytes, median_ms)
    benchmark.extra_info.update(gbps=round(rate, 2))
    record(op="masked_patch_loss", backend=backend, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},L={L},P={P},masked={masked}", median_ms=round(median_ms, 4),
           bytes=nbytes, gbps=round(rate, 2), timer=timer)
