"""Segmentation runs compared: mIoU per evaluation in one PNG and the last
evaluation's IoU per class in a second (``<OUT>_class_iou.png``); each run's last
and best mIoU, and the first run's gap to each other in mIoU and in classes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..run_log import read_log

CLASS_IOU_FILE = "class_iou.json"  # written by lomar segment at every evaluation


def result(run_dir: str | Path) -> dict:
    """Last and best mIoU and the last pixel accuracy (%) from a run's log.jsonl, with
    the last evaluation's classes and IoU per class (NaN: absent) from class_iou.json."""
    run_dir = Path(run_dir)
    records = [r for r in read_log(run_dir / "log.jsonl") if "miou" in r]
    if not records:
        raise ValueError(f"report segment: no miou in {run_dir / 'log.jsonl'}")
    per_class = run_dir / CLASS_IOU_FILE
    if not per_class.is_file():
        raise ValueError(f"report segment: {per_class} not found (written by lomar segment "
                         f"at each evaluation)")
    classes = json.loads(per_class.read_text())
    return {"miou": records[-1]["miou"], "best_miou": max(r["miou"] for r in records),
            "pixel_accuracy": records[-1].get("pixel_accuracy", math.nan),
            "step": records[-1]["step"], "classes": classes["classes"],
            "iou": [math.nan if v is None else v for v in classes["iou"]]}


def figure(runs: dict, out_png) -> Path:
    from ..segmentation import figures

    out_png = Path(out_png)
    results = {label: result(path) for label, path in runs.items()}
    classes = next(iter(results.values()))["classes"]
    if any(r["classes"] != classes for r in results.values()):
        raise ValueError("report segment: the runs were evaluated on different classes")
    fractions = {label: [v / 100 for v in r["iou"]] for label, r in results.items()}
    figures.plot_class_iou(fractions, classes, class_iou_png(out_png),
                           title="IoU per class (last evaluation)")
    return figures.plot_miou(runs, out_png, title="segmentation: mIoU")


def class_iou_png(out_png) -> Path:
    out_png = Path(out_png)
    return out_png.with_name(f"{out_png.stem}_class_iou.png")


def describe(label: str, r: dict) -> str:
    return (f"{label}: step {r['step']}: mIoU {r['miou']:.2f}, pixel accuracy "
            f"{r['pixel_accuracy']:.2f} (best mIoU {r['best_miou']:.2f})")


def compare(first: dict, other: dict) -> str:
    pairs = [(a, b) for a, b in zip(first["iou"], other["iou"])
             if math.isfinite(a) and math.isfinite(b)]
    higher = sum(a > b for a, b in pairs)
    return (f"{first['miou'] - other['miou']:+.2f} mIoU (points, last evaluation); higher IoU "
            f"on {higher} of {len(pairs)} classes")
