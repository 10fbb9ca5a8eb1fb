"""The card's measured ceilings, for reading benchmark figures against:
device-to-device copy bandwidth (GB/s) and dense bf16 matmul throughput (TFLOP/s).

    python bench/ceilings.py --out DIR     (writes DIR/ceilings.json)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def measure(device: torch.device) -> dict:
    import triton.testing

    n = 1 << 28  # 256 Mi bf16 elements: 512 MiB, far beyond L2
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    copy_gbps = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e9
    del src, dst
    m = 8192
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    mm_ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
    return {"device_name": torch.cuda.get_device_name(device),
            "copy_gbps": round(copy_gbps, 1),
            "bf16_matmul_tflops": round(2 * m ** 3 / (mm_ms * 1e-3) / 1e12, 1),
            "copy_bytes": 2 * n * 2, "matmul_shape": [m, m, m]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/latest")
    args = parser.parse_args()
    result = measure(torch.device("cuda"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceilings.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
