"""The card's measured ceilings, for reading benchmark figures against:
device-to-device copy bandwidth (GB/s) and dense bf16 matmul throughput (TFLOP/s).

    python bench/ceilings.py --out DIR                  (writes DIR/ceilings.json)
    python bench/ceilings.py --device cpu --tiny --out DIR

On CUDA: a copy of 512 MiB into another 512 MiB buffer (1 GiB moved, far beyond
any L2) and an 8192^3 bf16 matrix product, each timed as the op benchmarks are
(bench/common.py's cuda_median_ms: CUDA events, the L2 flushed before each
repetition). GB/s counts the bytes read plus the bytes written, as the op
benchmarks count theirs, so an op at 100% moves its bytes as fast as a plain copy.

--device cpu --tiny measures the same two things on the CPU at small sizes
(32 MiB, 256^3), with the median of a few perf_counter timings: the GPU check's
dry run uses it so that this code and what reads its JSON run in CI; those
figures describe nothing."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import cuda_median_ms, device_name  # noqa: E402


def _cpu_median_ms(fn, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(device: torch.device, tiny: bool = False) -> dict:
    n = (1 << 24) if tiny else (1 << 28)  # bf16 elements: 32 MiB tiny, else 512 MiB
    m = 256 if tiny else 8192

    def timed(fn):
        if device.type == "cuda":
            return cuda_median_ms(fn, device, min_reps=10)
        return _cpu_median_ms(fn), "perf_counter, median of 5"

    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms, timer = timed(lambda: dst.copy_(src))
    copy_bytes = 2 * src.numel() * src.element_size()
    del src, dst
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    mm_ms, _ = timed(lambda: a @ b)
    result = {"device_name": device_name(device),
              "copy_gbps": round(copy_bytes / (copy_ms * 1e-3) / 1e9, 1),
              "bf16_matmul_tflops": round(2 * m ** 3 / (mm_ms * 1e-3) / 1e12, 3 if tiny else 1),
              "copy_bytes": copy_bytes, "matmul_shape": [m, m, m], "timer": timer,
              "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        result["l2_cache_mb"] = round(getattr(props, "L2_cache_size", 0) / 2**20, 1)
    if tiny:
        result["tiny"] = True  # a code-path check (the GPU check's dry run), not a ceiling
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/latest")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small sizes (the dry run)")
    args = parser.parse_args()
    result = measure(torch.device(args.device), tiny=args.tiny)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceilings.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
