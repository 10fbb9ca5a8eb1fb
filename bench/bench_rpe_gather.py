"""rpe_gather benchmark: forward and forward+backward, every backend on the device.

Shapes: the LoMaR pretraining step (windows of 7x7 + cls, N = 50, 12 heads, 50
iRPE buckets) and fine-tuning on whole images (N = 197 and 577). On the CPU the
window counts are reduced. GB/s counts the bytes an op must move: read the table
and the bucket map, write the output (backward: read grad, write grad_table)."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, time_case

# name: (S, H, N) on CUDA / on CPU
CASES = {
    "pretrain-N50": ((1024, 12, 50), (256, 12, 50)),
    "finetune-N197": ((64, 12, 197), (16, 12, 197)),
    "finetune-N577": ((64, 12, 577), (2, 12, 577)),
}


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,backend", backend_params())
def test_rpe_gather(benchmark, record, device, backend, case, mode):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    S, H, N = CASES[case][0 if device.type == "cuda" else 1]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side = int(round((N - 1) ** 0.5))
    ids = lomar_ops.irpe_bucket_ids(side, side, device=device)
    nb = lomar_ops.irpe_num_buckets()
    table = torch.randn(S, H, N, nb, device=device, dtype=dtype, requires_grad=mode != "fwd")
    grad = torch.randn(S, H, N, N, device=device, dtype=dtype)
    elt = table.element_size()
    nbytes = (S * H * N * nb + S * H * N * N) * elt + N * N * 4

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.rpe_gather(table, ids, backend=backend)
    else:
        nbytes *= 2

        def fn():
            out = lomar_ops.rpe_gather(table, ids, backend=backend)
            torch.autograd.grad(out, table, grad)

    median_ms, timer = time_case(benchmark, fn, device)
    gbps = nbytes / (median_ms * 1e-3) / 1e9
    benchmark.extra_info.update(gbps=round(gbps, 2))
    record(op="rpe_gather", backend=backend, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},H={H},N={N},NB={nb}", median_ms=round(median_ms, 4),
           gbps=round(gbps, 2), timer=timer)
