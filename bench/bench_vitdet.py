"""ViTDet backbone benchmark: forward + backward time and peak memory of
the ViT-B/16 backbone (encoder and simple feature pyramid, lomar.models.vitdet) on
one image at 448, 768 and 1024, windowed attention (14x14 windows, global blocks
2, 5, 8, 11: ViTDet's) against global attention in every block, for every backend
of window_attention on the device. Each test measures both attentions in turn, so
that the recorded ratios (global / windowed) come from one run.

fp32 on the CPU, bf16 autocast on a GPU. Time: the median of 3 steps after one
warm-up on the CPU (a ViT-B step at 1024 takes tens of seconds there; the whole
file about 20 minutes on 2 cores), on a GPU the median of
bench/common.py's cuda_median_ms (at least 3 repetitions).
Peak memory, what the step adds to what was allocated before it: on a GPU
torch.cuda.max_memory_allocated; on the CPU the process's peak resident set
(VmHWM, reset through /proc/self/clear_refs) during the last timed step minus its
resident set before that step, freed heap returned first (malloc_trim), so the
figure includes the allocator's own overhead. A CPU case whose estimated memory
exceeds 60% of the memory available is skipped, saying so (the reference
backend's global attention at 1024: 12 blocks each holding 12 x 4096^2 fp32
probabilities, plus the logits and relative term it materialises).

On a GPU the time is bench/common.py's cuda_median_ms (CUDA events, the L2 flushed
before each repetition). $LOMAR_BENCH_TINY=1 (the GPU check's CPU dry run) builds
an 8-block, 32-wide backbone at 224 with 7x7 windows instead: a code-path check."""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

import lomar_ops
from common import TINY, bench_devices, cuda_median_ms, device_name
from lomar.models import create_model
from lomar.models.vitdet import default_global_blocks

# $LOMAR_BENCH_VITDET_RESOLUTIONS (e.g. "1024") measures fewer sizes.
RESOLUTIONS = tuple(int(r) for r in os.environ.get("LOMAR_BENCH_VITDET_RESOLUTIONS",
                                                   "224" if TINY else "448,768,1024").split(","))
WINDOW = 7 if TINY else 14
CPU_ROUNDS = 1 if TINY else 3
# $LOMAR_BENCH_TINY: a small backbone (8 blocks, so that the default global blocks,
# 1, 3, 5, 7, leave windowed ones), for the dry run; else ViT-B/16.
MODEL_ARGS = dict(embed_dim=32, depth=8, num_heads=2, out_channels=16) if TINY else {}
DEPTH = MODEL_ARGS.get("depth", 12)


def _providers():
    impl = importlib.import_module("lomar_ops.ops.window_attention")._IMPLEMENTED
    return [pytest.param(device, backend, id=f"{device.type}-{backend}")
            for device in bench_devices() for backend in lomar_ops.BACKENDS
            if backend in impl and lomar_ops.backends.unavailable_reason(backend, device) is None
            and not (device.type == "cpu" and backend == "triton")]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _estimated_mb(backend: str, tokens: int, global_blocks: int, heads: int = 12) -> float:
    """Attention memory of the global blocks on the CPU (the rest is small beside it):
    the C++ kernel keeps its fp32 probabilities for the backward; the reference keeps
    its softmax and materialises logits, relative term and sum on the way."""
    square = heads * tokens * tokens * 4 / 2**20
    return square * (global_blocks + 1) if backend == "cpu" else square * (global_blocks * 1.3 + 4)


def _release_heap():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _measure(step, device):
    """(median ms, peak MB added by a step, timer)."""
    if device.type == "cuda":
        step()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        median_ms, timer = cuda_median_ms(step, device, min_reps=3)
        return median_ms, peak, timer
    step()  # warm-up: bucket maps, gradient buffers, thread pools
    times = []
    for i in range(CPU_ROUNDS):
        if i == CPU_ROUNDS - 1:
            _release_heap()
            base = _status_kb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = (_status_kb("VmHWM") - base) / 1024
    return statistics.median(times), peak, f"perf_counter median of {CPU_ROUNDS}"


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("device,backend", _providers())
def test_vitdet_backbone(record, device, backend, resolution):
    grid = resolution // 16
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = {}
    for attention in ("windowed", "global"):
        global_blocks = (default_global_blocks(DEPTH) if attention == "windowed"
                         else tuple(range(DEPTH)))
        case = f"{resolution}-{attention}"
        if device.type == "cpu":
            need = _estimated_mb(backend, grid * grid, len(global_blocks))
            have = _mem_available_mb()
            if need > 0.6 * have:
                rows[attention] = None
                record(op="vitdet_backbone", backend=backend, mode="fwd+bwd", case=case,
                       device=device.type, device_name=device_name(device), dtype="float32",
                       skipped=f"estimated {need / 1024:.1f} GB > 60% of the {have / 1024:.1f} "
                               f"GB available")
                continue
        torch.manual_seed(0)
        model = create_model("vitdet_base_patch16", window_size=WINDOW,
                             global_blocks=global_blocks, drop_path_rate=0.0,
                             **MODEL_ARGS).to(device)
        model.ops_backend = backend
        image = torch.randn(1, 3, resolution, resolution, device=device)

        def step():
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                out = model(image)
            sum(v.float().mean() for v in out.values()).backward()
            model.zero_grad(set_to_none=True)

        median_ms, peak_mb, timer = _measure(step, device)
        rows[attention] = (median_ms, peak_mb)
        padded = -(-grid // WINDOW) * WINDOW
        fields = dict(op="vitdet_backbone", backend=backend, mode="fwd+bwd", case=case,
                      device=device.type, device_name=device_name(device),
                      dtype=str(dtype).replace("torch.", ""),
                      shape=f"{'tiny ViT/16' if TINY else 'ViT-B/16'} 1x3x{resolution}x"
                            f"{resolution}, grid {grid}x{grid}, window "
                            f"{WINDOW} (padded grid {padded}x{padded}), global blocks "
                            f"{','.join(map(str, global_blocks))}",
                      median_ms=round(median_ms, 2), peak_mb=round(peak_mb, 1), timer=timer)
        if attention == "global" and rows.get("windowed"):
            fields.update(time_ratio_global_over_windowed=round(median_ms / rows["windowed"][0], 3),
                          memory_ratio_global_over_windowed=round(peak_mb / rows["windowed"][1],
                                                                  3))
        record(**fields)
        del model, image, step
        _release_heap()
        if device.type == "cuda":
            torch.cuda.empty_cache()
