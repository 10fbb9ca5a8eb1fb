"""Prints the benchmark records under a results folder as one short table,
with GB/s also as a fraction of the card's measured copy bandwidth when known.

    python bench/summarize.py DIR"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> None:
    root = Path(folder)
    ceilings = {}
    if (root / "ceilings.json").exists():
        ceilings = json.loads((root / "ceilings.json").read_text())
        print(f"ceilings: copy {ceilings['copy_gbps']} GB/s, bf16 matmul "
              f"{ceilings['bf16_matmul_tflops']} TFLOP/s ({ceilings['device_name']})")
    for path in sorted(root.glob("bench_*.json")):
        rows = json.loads(path.read_text())
        print(f"\n{path.stem}")
        memory = any("peak_mb" in r for r in rows)
        print(f"  {'case':<16}{'mode':<9}{'backend':<10}{'dtype':<10}{'ms':>10}{'GB/s':>9}"
              f"{'of copy':>9}{'TFLOP/s':>9}{'of mm':>7}" + (f"{'peak MB':>10}" if memory else ""))
        for r in sorted(rows, key=lambda r: (r["case"], r["mode"], r["backend"])):
            if "skipped" in r:
                print(f"  {r['case']:<16}{r['mode']:<9}{r['backend']:<10}skipped: {r['skipped']}")
                continue
            frac = f"{r['gbps'] / ceilings['copy_gbps']:.0%}" if ceilings and "gbps" in r else ""
            tflops = f"{r['tflops']:.3f}" if "tflops" in r else ""
            of_mm = (f"{r['tflops'] / ceilings['bf16_matmul_tflops']:.0%}"
                     if ceilings and "tflops" in r else "")
            print(f"  {r['case']:<16}{r['mode']:<9}{r['backend']:<10}{r['dtype']:<10}"
                  f"{r['median_ms']:>10.4f}{r.get('gbps', float('nan')):>9.1f}{frac:>9}"
                  f"{tflops:>9}{of_mm:>7}" + (f"{r.get('peak_mb', float('nan')):>10.1f}"
                                              if memory else ""))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/latest")
