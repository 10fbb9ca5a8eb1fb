"""make gpu-model: compile, model, write bench/results/model-YYYY-MM-DD/, print a table.

    PYTHONPATH=bench python -m gpu_model [--out DIR] [--jobs N] [--reports FILE ...]

--reports takes saved ptxas reports (nvcc --resource-usage output) instead of
compiling, e.g. on a machine without nvcc (the Triton kernels are then not compiled
either; --no-triton skips them alone)."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

from . import compile_facts, ptxas_report, record, triton_facts
from .cards import CARDS, with_measured_ceilings
from .model import build

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _uncommitted(*paths: str) -> list[str]:
    """Files of ``paths`` (git pathspecs) that differ from the commit (the record compiles the
    working tree, so it says which sources were not the commit's)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    today = datetime.date.today().isoformat()
    parser.add_argument("--out", type=Path, default=RESULTS / f"model-{today}")
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc (default: cores)")
    parser.add_argument("--reports", type=Path, nargs="+",
                        help="saved ptxas reports to use instead of compiling")
    parser.add_argument("--no-triton", action="store_true",
                        help="do not compile the Triton window_attention kernels")
    args = parser.parse_args(argv)

    meta = {"date": today, "commit": _commit(), "generated_by": "make gpu-model",
            "uncommitted_sources": _uncommitted("csrc/cuda", "csrc/*.h")}
    if args.reports:
        texts = [p.read_text() for p in args.reports]
        meta.update(nvcc="(saved reports: " + ", ".join(p.name for p in args.reports) + ")",
                    flags=[], torch="-")
    else:
        flags = compile_facts.shipped_build_flags(ROOT)
        reports = compile_facts.compile_reports(ROOT, flags, jobs=args.jobs)
        texts = [reports[key] for key in sorted(reports)]
        import torch
        meta.update(nvcc=compile_facts.nvcc_version(flags.nvcc), flags=flags.flags,
                    torch=torch.__version__)
    kernels = [k for text in texts for k in ptxas_report.parse(text)]
    sources = {p.relative_to(ROOT).as_posix(): p.read_text()
               for p in sorted((ROOT / "csrc" / "cuda").glob("*.cu"))}
    meta["source_sha256"] = {path: hashlib.sha256(text.encode()).hexdigest()
                             for path, text in sources.items()}
    triton_source = ROOT / "lomar_ops" / "triton_kernels" / "window_attention.py"
    meta["triton_window_attention_sha256"] = hashlib.sha256(triton_source.read_bytes()).hexdigest()
    meta["window_attention_sha256"] = meta["source_sha256"]["csrc/cuda/window_attention.cu"]
    cards = with_measured_ceilings(CARDS, RESULTS)
    model = build(kernels, cards, sources, RESULTS)
    if args.reports or args.no_triton:
        model["triton"] = {"skipped": "not compiled (" + ("saved ptxas reports" if args.reports
                                                          else "--no-triton") + ")"}
    else:
        model["triton"] = triton_facts.triton_table(cards)
        import triton
        meta["triton"] = triton.__version__
    record.write(args.out, model, meta)
    print(record.short_table(model))
    print(f"gpu-model: wrote {args.out}/model.json and README.md (a model: no GPU ran)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
