"""uint16 against uint8 window_patchify (mode fwd-norm), timed call by call in
alternation, for a shared, noisy machine: each round times one uint8 and one uint16
call back to back (the order swapped every round), so a load change hits both dtypes
alike; the paired ratio of a round is its uint16 time over its uint8 time.

The cases are the op benchmark's (bench/bench_window_patchify.py: integer_case), 64
images, 4 windows of 7 x 7 patches of 16 pixels, C = 3 and 6, normalised to float32.
Writes every call's time, the load average before and after each case, and per case
the medians, the minima and the median paired ratio as JSON.

    .venv/bin/python bench/results/cpu-2026-12-05-patchify-uint16/interleaved.py \\
        --threads 1 --rounds 41 --out interleaved-1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/

import lomar_ops  # noqa: E402
from bench_window_patchify import K, P, integer_case  # noqa: E402
from common import environment_tags  # noqa: E402

DTYPES = (torch.uint8, torch.uint16)


def time_pair(calls: dict, rounds: int) -> dict:
    """{dtype: [seconds per call]} over ``rounds`` alternating rounds, after warm-up."""
    for fn in calls.values():
        for _ in range(3):
            fn()
    times = {dtype: [] for dtype in calls}
    for r in range(rounds):
        for dtype in (DTYPES if r % 2 == 0 else DTYPES[::-1]):
            start = time.perf_counter()
            calls[dtype]()
            times[dtype].append(time.perf_counter() - start)
    return times


def cpu_facts() -> dict:
    """The CPU's model name and its vector extensions (Linux /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"cpu": platform.processor() or platform.machine()}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = fields.get("flags\t\t", fields.get("flags", "")).split()
    name = next((v.strip() for k, v in fields.items() if k.strip() == "model name"), "")
    return {"cpu": name or platform.machine(),
            "vector_flags": [f for f in flags if f.startswith(("avx", "sse4", "fma", "f16c"))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["cpu"], choices=["cpu", "torch"])
    parser.add_argument("--layouts", nargs="+", default=["windows", "img448"],
                        choices=["windows", "img448"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for backend in args.backends:
        for layout in args.layouts:
            for channels in (3, 6):
                g = torch.Generator().manual_seed(0)
                calls = {}
                for dtype in DTYPES:
                    images, coords, _, case = integer_case(layout, args.batch, channels, dtype, g)
                    calls[dtype] = (lambda images=images, coords=coords: lomar_ops.window_patchify(
                        images, coords, K, P, mean=[0.5] * channels, std=[0.25] * channels,
                        out_dtype=torch.float32, backend=backend))
                load_before = os.getloadavg()
                times = time_pair(calls, args.rounds)
                load_after = os.getloadavg()
                u8, u16 = times[torch.uint8], times[torch.uint16]
                pixels = images.shape[0] * coords.shape[1] * K * K * P * P
                row = dict(backend=backend, case=f"{case}-C{channels}", layout=layout,
                           channels=channels, pixels=pixels, rounds=args.rounds,
                           u8_median_ms=round(statistics.median(u8) * 1e3, 3),
                           u16_median_ms=round(statistics.median(u16) * 1e3, 3),
                           u8_min_ms=round(min(u8) * 1e3, 3), u16_min_ms=round(min(u16) * 1e3, 3),
                           ratio_of_medians=round(statistics.median(u16) / statistics.median(u8), 3),
                           ratio_of_mins=round(min(u16) / min(u8), 3),
                           median_paired_ratio=round(statistics.median(
                               b / a for a, b in zip(u8, u16)), 3),
                           u8_ns_per_pixel=round(statistics.median(u8) * 1e9 / pixels, 3),
                           u16_ns_per_pixel=round(statistics.median(u16) * 1e9 / pixels, 3),
                           load_before=load_before, load_after=load_after,
                           u8_ms=[round(t * 1e3, 3) for t in u8],
                           u16_ms=[round(t * 1e3, 3) for t in u16])
                rows.append(row)
                print(f"{backend:5} {row['case']:12} u8 {row['u8_median_ms']:8.2f} ms "
                      f"u16 {row['u16_median_ms']:8.2f} ms  medians {row['ratio_of_medians']:.3f}"
                      f"  mins {row['ratio_of_mins']:.3f}  paired {row['median_paired_ratio']:.3f}"
                      f"  load {load_before[0]:.2f}->{load_after[0]:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(
        threads=args.threads, batch=args.batch, **cpu_facts(), cpus=os.cpu_count(), **environment_tags(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
