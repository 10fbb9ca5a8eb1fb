"""rpe_gather benchmark: forward and forward+backward, every backend on the device.

Shapes: the LoMaR pretraining step (windows of 7x7 + cls, N = 50, 12 heads, 50
iRPE buckets) and fine-tuning on whole images (N = 197 and 577). On the CPU the
window counts are reduced.

GB/s counts the fewest bytes the op must move (bench/common.py). Forward: read,
for each query row, only the table entries its bucket map row names (U distinct
(row, bucket) pairs of the map: 1275 of the 2500 entries at N = 50, 7253 of 9850
at N = 197, 24293 of 28850 at N = 577), the bucket map once, and write the output:

    S*H*U * e + N*N * i + S*H*N*N * e

Backward: read the output's gradient and the bucket map; write grad_table whole
(zero where no key uses a bucket):

    S*H*N*N * e + N*N * i + S*H*N*NB * e

(e: bytes per element, i: per bucket id, 4 for int32). fwd+bwd is their sum.
Until 2026-12 the forward was counted as reading the whole table (S*H*N*NB)."""

from __future__ import annotations

import pytest
import torch

import lomar_ops
from common import backend_params, device_name, gbps, shape_for, time_case

# name: (S, H, N) on CUDA / on the CPU / tiny ($LOMAR_BENCH_TINY)
CASES = {
    "pretrain-N50": ((1024, 12, 50), (256, 12, 50), (4, 2, 50)),
    "finetune-N197": ((64, 12, 197), (16, 12, 197), (1, 2, 197)),
    "finetune-N577": ((64, 12, 577), (2, 12, 577), (1, 1, 577)),
}


def used_entries(ids: torch.Tensor) -> int:
    """U: the (query row, bucket) pairs the map uses, the table entries the forward needs."""
    n, nb = ids.shape[0], int(ids.max()) + 1
    rows = torch.arange(n, device=ids.device).unsqueeze(1).expand_as(ids)
    return int(torch.unique(rows.reshape(-1).long() * nb + ids.reshape(-1).long()).numel())


def forward_bytes(S: int, H: int, N: int, used: int, elt: int, id_elt: int) -> int:
    return S * H * used * elt + N * N * id_elt + S * H * N * N * elt


def backward_bytes(S: int, H: int, N: int, nb: int, elt: int, id_elt: int) -> int:
    return S * H * N * N * elt + N * N * id_elt + S * H * N * nb * elt


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,backend", backend_params())
def test_rpe_gather(benchmark, record, device, backend, case, mode):
    reason = lomar_ops.backends.unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)
    S, H, N = shape_for(CASES[case], device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    side = int(round((N - 1) ** 0.5))
    ids = lomar_ops.irpe_bucket_ids(side, side, device=device)
    nb = lomar_ops.irpe_num_buckets()
    table = torch.randn(S, H, N, nb, device=device, dtype=dtype, requires_grad=mode != "fwd")
    grad = torch.randn(S, H, N, N, device=device, dtype=dtype)
    elt, id_elt = table.element_size(), ids.element_size()
    used = used_entries(ids)
    nbytes = forward_bytes(S, H, N, used, elt, id_elt)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                lomar_ops.rpe_gather(table, ids, backend=backend)
    else:
        nbytes += backward_bytes(S, H, N, nb, elt, id_elt)

        def fn():
            out = lomar_ops.rpe_gather(table, ids, backend=backend)
            torch.autograd.grad(out, table, grad)

    median_ms, timer = time_case(benchmark, fn, device)
    rate = gbps(nbytes, median_ms)
    benchmark.extra_info.update(gbps=round(rate, 2))
    record(op="rpe_gather", backend=backend, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},H={H},N={N},NB={nb},used={used}", median_ms=round(median_ms, 4),
           bytes=nbytes, gbps=round(rate, 2), timer=timer)
