"""window_patchify benchmark: forward and forward+backward, every backend on the
device, for the SAME windows (4 windows of 7x7 patches, p = 16, drawn on the
224x224 grid) in images of 224, 448 and 1024 pixels a side.

The forward reads only the windows' pixels, so its cost must not grow with the
image: each record carries ``vs_224``, its time over the 224 time of the same
backend and mode (about 1 expected). The backward writes a whole-image gradient
(zero outside the windows), so fwd+bwd grows with the image; images normally
need no gradient. GB/s counts the bytes the op must move: read the windows'
pixels and write the output (backward: read grad_out, write grad_images)."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, time_case

WINDOWS, K, P = 4, 7, 16
SIZES = [224, 448, 1024]
BATCH = {"cuda": 256, "cpu": 64}
_MEDIANS: dict[tuple, float] = {}


@pytest.mark.parametrize("size", SIZES)  # innermost: 224 runs first for each backend/mode
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("device,backend", backend_params())
def test_window_patchify(benchmark, record, device, backend, mode, size):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    B = BATCH[device.type]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    # The same windows at every size: drawn on the 224 grid (14 x 14 patches).
    coords = lomar_ops.sample_windows(B, 224 // P, 224 // P, WINDOWS, K, generator=g)
    images = torch.randn(B, 3, size, size, device=device, dtype=dtype,
                         requires_grad=mode != "fwd")
    out_elems = B * WINDOWS * K * K * P * P * 3
    elt = images.element_size()
    nbytes = 2 * out_elems * elt + coords.numel() * 4

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.window_patchify(images, coords, K, P, backend=backend)
    else:
        grad = torch.randn(B, WINDOWS, K * K, P * P * 3, device=device, dtype=dtype)
        nbytes += (out_elems + images.numel()) * elt

        def fn():
            out = lomar_ops.window_patchify(images, coords, K, P, backend=backend)
            torch.autograd.grad(out, images, grad)

    median_ms, timer = time_case(benchmark, fn, device)
    _MEDIANS[(device.type, backend, mode, size)] = median_ms
    base = _MEDIANS.get((device.type, backend, mode, 224))
    vs_224 = round(median_ms / base, 3) if base else None
    gbps = nbytes / (median_ms * 1e-3) / 1e9
    benchmark.extra_info.update(gbps=round(gbps, 2), vs_224=vs_224)
    record(op="window_patchify", backend=backend, mode=mode, case=f"img{size}",
           device=device.type, device_name=device_name(device),
           dtype=str(dtype).replace("torch.", ""),
           shape=f"B={B},C=3,H=W={size},n={WINDOWS},K={K},p={P}",
           median_ms=round(median_ms, 4), gbps=round(gbps, 2), vs_224=vs_224, timer=timer)
