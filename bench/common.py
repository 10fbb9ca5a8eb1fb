"""Shared pieces of the op benchmarks: timing, the byte-rate helper, the tiny-size
switch and the tagged result records.

Timing. On the CPU the figure recorded is pytest-benchmark's median (30 rounds
after 3 warm-up rounds). On CUDA it is :func:`cuda_median_ms`: CUDA events around
each repetition, after warm-up, with the L2 cache flushed before every repetition
by zeroing a buffer of max(256 MiB, 4 x the card's L2) outside the timed region.
So every repetition reads its inputs from device memory, as a training step does
(its tensors are far larger than L2, and other kernels run between two uses), and
a GB/s figure is comparable with the copy bandwidth measured by bench/ceilings.py.
This is what triton.testing.do_bench does too (it zeroes 256 MB before each
repetition), written out here so that the flush grows with the card's L2 (on a card
whose L2 were over 64 MB, 256 MB would no longer be 4x it) and the record says
which flush was used. pytest-benchmark still runs a few synchronised rounds on
CUDA, for its own summary table only.

Byte counts (the ``gbps`` column): the fewest bytes the op must move, element by
element: each input read once, and only the parts the op needs (not the masked
tokens mask_substitute replaces, not the iRPE table entries no query uses, not the
pixels outside the windows), each output written once. fwd+bwd counts the forward's
bytes plus the backward's (the backward reads what autograd hands it: the output's
gradient and the saved inputs it needs). A figure above the copy ceiling is then
impossible, and bench/summarize.py flags it as a measurement error.

$LOMAR_BENCH_TINY=1 runs every case at a tiny size with few rounds: the CPU dry run
of the GPU check (bench/gpu_check.py) uses it so that each benchmark's code runs in
CI in seconds; its figures mean nothing."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

import lomar_ops

TINY = os.environ.get("LOMAR_BENCH_TINY", "") not in ("", "0")

# The L2 flush before each CUDA repetition: at least this many bytes, and at least
# FLUSH_L2_MULTIPLE x the card's L2.
FLUSH_MIN_BYTES = 256 * 2**20
FLUSH_L2_MULTIPLE = 4


def git_commit() -> str:
    """$LOMAR_COMMIT, else this checkout's short commit, else "unknown". Only when this
    checkout is the top of its git repository: a copy without .git inside another
    repository would otherwise report the outer repository's commit."""
    if os.environ.get("LOMAR_COMMIT"):
        return os.environ["LOMAR_COMMIT"]
    root = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        if Path(top).resolve() != root:
            return "unknown"
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def environment_tags() -> dict:
    info = lomar_ops.build_info()
    tags = {"torch": torch.__version__, "triton": info["triton"], "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if TINY:
        tags["tiny"] = True  # LOMAR_BENCH_TINY: a code-path check, not a measurement
    return tags


def shape_for(shapes: tuple, device: torch.device):
    """A case's shape: ``shapes`` is (on CUDA, on the CPU[, tiny]); with
    $LOMAR_BENCH_TINY the tiny one (the last)."""
    if TINY:
        return shapes[-1]
    return shapes[0 if device.type == "cuda" else 1]


def gbps(nbytes: int, median_ms: float) -> float:
    return nbytes / (median_ms * 1e-3) / 1e9


class _L2Flush:
    """A device buffer of max(256 MiB, 4 x L2); zeroing it evicts every earlier line."""

    _buffers: dict = {}

    @classmethod
    def get(cls, device: torch.device) -> tuple[torch.Tensor, str]:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in cls._buffers:
            l2 = int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0) or 0)
            nbytes = max(FLUSH_MIN_BYTES, FLUSH_L2_MULTIPLE * l2)
            buf = torch.empty(nbytes // 4, dtype=torch.int32, device=f"cuda:{index}")
            note = (f"cuda events, L2 flushed before each rep ({nbytes / 2**20:.0f} MiB zeroed"
                    + (f", {nbytes / l2:.1f}x the {l2 / 2**20:.0f} MiB L2)" if l2 else ")"))
            cls._buffers[index] = (buf, note)
        return cls._buffers[index]


def cuda_median_ms(fn, device: torch.device, warmup_ms: float = 25, rep_ms: float = 100,
                   min_reps: int = 5, max_reps: int = 1000) -> tuple[float, str]:
    """(median ms of ``fn`` on CUDA, a description of the timer). Each repetition:
    the L2 flush, then a start event, ``fn``, an end event; the flush is not timed."""
    flush, note = _L2Flush.get(device)
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    reps = min(max_reps, max(min_reps, int(rep_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return float(statistics.median(times)), f"{note}, median of {reps}"


def time_case(benchmark, fn, device: torch.device) -> tuple[float, str]:
    """Run ``fn`` under pytest-benchmark; return (median ms, timer used for it)."""
    if device.type != "cuda":
        rounds, warmup = (3, 1) if TINY else (30, 3)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
        return benchmark.stats.stats.median * 1e3, f"pytest-benchmark, median of {rounds}"

    def synced():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=5, iterations=1, warmup_rounds=1)  # its table only
    return cuda_median_ms(fn, device)


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
