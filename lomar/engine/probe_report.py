"""Compare linear-probe (or fine-tuning) runs: val top-1 per epoch in one PNG and
the final and best accuracies printed, first run against the others.

    python -m lomar.engine.probe_report OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]"""

from __future__ import annotations

import sys
from pathlib import Path

from ..run_log import plot_runs, read_log


def accuracies(run_dir: str | Path) -> dict:
    """Final and best val top-1 (%) of a run (from its log.jsonl)."""
    values = [r["val_top1"] for r in read_log(Path(run_dir) / "log.jsonl") if "val_top1" in r]
    if not values:
        raise ValueError(f"probe_report: no val_top1 in {Path(run_dir) / 'log.jsonl'}")
    return {"final_top1": values[-1], "best_top1": max(values)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = dict(a.split("=", 1) for a in argv[1:])
    results = {label: accuracies(path) for label, path in runs.items()}
    png = plot_runs(runs, argv[0], "val_top1", title="linear probe: val top-1 per epoch",
                    ylabel="val top-1 (%)")
    for label, acc in results.items():
        print(f"{label}: final top-1 {acc['final_top1']:.2f}%, best {acc['best_top1']:.2f}%")
    first, *others = results
    for other in others:
        gap = results[first]["final_top1"] - results[other]["final_top1"]
        print(f"{first} - {other}: {gap:+.2f} points (final top-1)")
    print(f"figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
