"""Detection runs compared: box and mask AP per evaluation in one PNG; each run's last
and best APs, and the last evaluation's gaps of the first run to each other."""

from __future__ import annotations

import math
from pathlib import Path

from ..detection.figures import plot_ap
from ..run_log import read_log


def result(run_dir: str | Path) -> dict:
    """Last and best box AP, and mask AP when logged (%), from a run's log.jsonl."""
    records = [r for r in read_log(Path(run_dir) / "log.jsonl") if "box_ap" in r]
    if not records:
        raise ValueError(f"report detect: no box_ap in {Path(run_dir) / 'log.jsonl'}")
    out = {"box_ap": records[-1]["box_ap"], "best_box_ap": max(r["box_ap"] for r in records),
           "step": records[-1]["step"]}
    if math.isfinite(records[-1].get("mask_ap", math.nan)):
        out["mask_ap"] = records[-1]["mask_ap"]
    return out


def figure(runs: dict, out_png) -> Path:
    return plot_ap(runs, out_png, title="detection")


def describe(label: str, r: dict) -> str:
    mask = f", mask AP {r['mask_ap']:.2f}" if "mask_ap" in r else ""
    return (f"{label}: step {r['step']}: box AP {r['box_ap']:.2f}{mask} "
            f"(best box AP {r['best_box_ap']:.2f})")


def compare(first: dict, other: dict) -> str:
    gaps = [f"{first[k] - other[k]:+.2f} {name}"
            for k, name in (("box_ap", "box AP"), ("mask_ap", "mask AP"))
            if k in first and k in other]
    return f"{', '.join(gaps)} (points, last evaluation)"
