"""Shared pieces of the op benchmarks: timing and the tagged result records.

CPU timings come from pytest-benchmark. On CUDA the figure recorded is the median
of triton.testing.do_bench (CUDA events, after warm-up, L2 flushed between runs);
pytest-benchmark still runs (synchronised) for its summary table."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

import torch

import lomar_ops


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def environment_tags() -> dict:
    info = lomar_ops.build_info()
    return {"torch": torch.__version__, "triton": info["triton"], "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def time_case(benchmark, fn, device: torch.device) -> tuple[float, str]:
    """Run ``fn`` under pytest-benchmark; return (median ms, timer used for it)."""
    if device.type != "cuda":
        benchmark.pedantic(fn, rounds=30, iterations=1, warmup_rounds=3)
        return benchmark.stats.stats.median * 1e3, "pytest-benchmark"

    def synced():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=3)
    import triton.testing
    return float(triton.testing.do_bench(fn, return_mode="median")), "triton.do_bench"


def backend_params() -> list:
    """(device, backend) pytest params for every backend on the benchmark device.
    Triton's CPU interpreter is for correctness, not speed: not benchmarked."""
    import pytest

    return [pytest.param(device, backend, id=f"{device.type}-{backend}")
            for device in bench_devices() for backend in lomar_ops.BACKENDS
            if not (device.type == "cpu" and backend == "triton")]


def bench_devices() -> list[torch.device]:
    """$LOMAR_BENCH_DEVICE (cpu or cuda), else cuda when present, else cpu."""
    wanted = os.environ.get("LOMAR_BENCH_DEVICE")
    if wanted:
        return [torch.device(wanted)]
    return [torch.device("cuda" if torch.cuda.is_available() else "cpu")]
