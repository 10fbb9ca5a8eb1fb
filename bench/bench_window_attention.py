"""window_attention benchmark: forward and forward+backward, iRPE contextual mode,
every backend of the op on the device (our kernels, the reference, PyTorch's SDPA and
FlexAttention as the op's "sdpa" and "flex" backends) and the authors' unfused
formulation ("eager").

Shapes: the ViT-B pretraining step (N = 50: 7x7 window + cls, 12 heads, d = 64,
bf16 on a GPU) and fine-tuning on whole images (N = 197 and 577); on the CPU, in
fp32 with fewer sequences; tiny with $LOMAR_BENCH_TINY. FLOPs count the two N x N
matmuls (backward 2.5x forward, as FlashAttention counts) and the contextual
q @ R^T (backward 2x forward). Bytes count what a fused kernel must move, each
(S, N, H, d) tensor once: forward reads q, k, v and writes out (4 passes); backward
reads q, k, v, out, dout and writes dq, dk, dv (8 more); the table and bucket map
are small."""

from __future__ import annotations

import importlib

import pytest
import torch

import lomar_ops
from common import bench_devices, device_name, shape_for, time_case
from lomar_ops.backends import unavailable_reason
from lomar_ops.comparisons import COMPARISONS

# name: (S, N, H, d) on CUDA / on the CPU / tiny ($LOMAR_BENCH_TINY)
CASES = {
    "pretrain-N50": ((1024, 50, 12, 64), (64, 50, 12, 64), (2, 50, 2, 16)),
    "finetune-N197": ((64, 197, 12, 64), (4, 197, 12, 64), (1, 197, 2, 16)),
    "finetune-N577": ((64, 577, 12, 64), (1, 577, 12, 64), (1, 577, 1, 16)),
}
NUM_BUCKETS = 50
_IMPLEMENTED = importlib.import_module("lomar_ops.ops.window_attention")._IMPLEMENTED


def _providers():
    # Every backend of the op that runs tensors on the device, not Triton's CPU
    # interpreter (it is for correctness, not speed); then the authors' formulation.
    out = []
    for device in bench_devices():
        for backend in lomar_ops.BACKENDS + lomar_ops.backends.COMPOSITE_BACKENDS:
            if (backend in _IMPLEMENTED and unavailable_reason(backend, device) is None
                    and not (device.type == "cpu" and backend == "triton")):
                out.append(pytest.param(device, f"op:{backend}", id=f"{device.type}-{backend}"))
        for name in COMPARISONS:
            out.append(pytest.param(device, name, id=f"{device.type}-{name}"))
    return out


def _inputs(case, device, dtype, requires_grad):
    S, N, H, d = shape_for(CASES[case], device)
    side = int(round((N - 1) ** 0.5))
    ids = lomar_ops.irpe_bucket_ids(side, side, device=device)
    q, k, v = (torch.randn(S, N, H, d, device=device, dtype=dtype, requires_grad=requires_grad)
               for _ in range(3))
    rpe = (0.1 * torch.randn(NUM_BUCKETS, d, device=device, dtype=dtype)).requires_grad_(
        requires_grad)
    return (S, N, H, d), q, k, v, rpe, ids


def _fn(provider):
    if provider.startswith("op:"):
        backend = provider[3:]
        return lambda *a, **kw: lomar_ops.window_attention(*a, **kw, backend=backend)
    return COMPARISONS[provider]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device,provider", _providers())
def test_window_attention(benchmark, record, device, provider, case, mode):
    if provider == "op:flex" and device.type == "cpu" and mode != "fwd":
        pytest.skip("FlexAttention has no backward on the CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    (S, N, H, d), q, k, v, rpe, ids = _inputs(case, device, dtype, mode != "fwd")
    attn = _fn(provider)
    grad = torch.randn_like(q)

    if mode == "fwd":
        def fn():
            with torch.no_grad():
                attn(q, k, v, rpe=rpe, bucket_ids=ids)
    else:
        def fn():
            out = attn(q, k, v, rpe=rpe, bucket_ids=ids)
            torch.autograd.grad(out, (q, k, v, rpe), grad)

    median_ms, timer = time_case(benchmark, fn, device)
    attn_flops, term_flops = 4 * S * H * N * N * d, 2 * S * H * N * NUM_BUCKETS * d
    flops = attn_flops + term_flops
    nbytes = 4 * S * N * H * d * q.element_size()
    if mode != "fwd":
        flops = int(3.5 * attn_flops + 3 * term_flops)
        nbytes *= 3
    tflops = flops / (median_ms * 1e-3) / 1e12
    gbps = nbytes / (median_ms * 1e-3) / 1e9
    benchmark.extra_info.update(tflops=round(tflops, 3), gbps=round(gbps, 2))
    record(op="window_attention", backend=provider, mode=mode, case=case, device=device.type,
           device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
           shape=f"S={S},N={N},H={H},d={d},NB={NUM_BUCKETS}", rpe_mode="contextual",
           median_ms=round(median_ms, 4), tflops=round(tflops, 4), gbps=round(gbps, 2),
           timer=timer)
