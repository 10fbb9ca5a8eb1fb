"""The README's figure: what a pretraining step costs per image as the resolution
grows, LoMaR against MAE and BEiT, drawn from a committed benchmark record (no
number is typed in here).

    python docs/figures/resolution_cost.py [RESULTS_JSON] [OUT_PNG]

Defaults: bench/results/cpu-2026-11-26/throughput/results.json (``lomar bench
--device cpu --quick``: a reduced ViT/16 on 2 CPU threads) and
docs/figures/resolution_cost.png. Left: training FLOPs per image counted from the
models (forward + backward, BEiT's tokenizer included); right: the measured step
time per image. A GPU record of ``lomar bench`` has the same layout and can be
drawn the same way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = ROOT / "bench/results/cpu-2026-11-26/throughput/results.json"
DEFAULT_OUT = ROOT / "docs/figures/resolution_cost.png"
METHODS = {  # method key in results.json: (label, colour)
    "lomar": ("LoMaR, 4 windows of 7x7 patches", "tab:blue"),
    "mae": ("MAE, 75% masked", "tab:red"),
    "beit": ("BEiT, with its dVAE tokenizer", "tab:purple"),
}


def series(record: dict, method: str, key) -> tuple[list[int], list[float]]:
    cases = sorted((c for c in record["cases"] if c["method"] == method and c["status"] == "ok"),
                   key=lambda c: c["resolution"])
    return [c["resolution"] for c in cases], [key(c) for c in cases]


def draw(results: Path, out: Path) -> Path:
    record = json.loads(results.read_text())
    fig, (flops_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, (label, colour) in METHODS.items():
        res, gflop = series(record, method, lambda c: c["flops_per_image"]["train"] / 1e9)
        flops_ax.plot(res, gflop, "o-", color=colour, label=label)
        res, ms = series(record, method, lambda c: c["ms_per_image"])
        time_ax.plot(res, ms, "o-", color=colour, label=label)
    flops_ax.set(title="compute, counted from the models", ylabel="GFLOP per image (train step)")
    time_ax.set(title=f"time, measured ({record['dtype']}, {record['device']})",
                ylabel="ms per image (train step)")
    for ax in (flops_ax, time_ax):
        ax.set_yscale("log")
        ax.set_xlabel("image side (pixels)")
        ax.set_xticks(sorted({c["resolution"] for c in record["cases"]}))
        ax.grid(alpha=0.3, which="both")
    flops_ax.legend(fontsize=8)
    size = {"quick": "reduced ViT/16 (192 wide, 4 blocks)", "base": "ViT-B/16"}.get(
        record["size"], record["size"])
    batches = sorted({c["batch"] for c in record["cases"] if c["method"] in METHODS})
    fig.suptitle(f"One pretraining step per image, {size}, batch "
                 f"{'/'.join(map(str, batches))}; lomar bench record of {record['date'][:10]}",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(draw(Path(args[0]) if args else DEFAULT_RESULTS,
               Path(args[1]) if len(args) > 1 else DEFAULT_OUT))
