"""Linear-probe (or fine-tuning) runs compared: val top-1 per epoch in one PNG; each
run's final and best top-1, and the final gap of the first run to each other."""

from __future__ import annotations

from pathlib import Path

from ..run_log import plot_runs, read_log


def result(run_dir: str | Path) -> dict:
    """Final and best val top-1 (%) of a run (from its log.jsonl)."""
    values = [r["val_top1"] for r in read_log(Path(run_dir) / "log.jsonl") if "val_top1" in r]
    if not values:
        raise ValueError(f"report probe: no val_top1 in {Path(run_dir) / 'log.jsonl'}")
    return {"final_top1": values[-1], "best_top1": max(values)}


def figure(runs: dict, out_png) -> Path:
    return plot_runs(runs, out_png, "val_top1", title="linear probe: val top-1 per epoch",
                     ylabel="val top-1 (%)")


def describe(label: str, r: dict) -> str:
    return f"{label}: final top-1 {r['final_top1']:.2f}%, best {r['best_top1']:.2f}%"


def compare(first: dict, other: dict) -> str:
    return f"{first['final_top1'] - other['final_top1']:+.2f} points (final top-1)"
