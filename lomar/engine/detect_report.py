"""Compare detection runs: box and mask AP per evaluation in one PNG, and the last
and best APs printed, first run against the others.

    python -m lomar.engine.detect_report OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from ..detection.figures import plot_ap
from ..run_log import read_log


def final_ap(run_dir: str | Path) -> dict:
    """Last and best box AP, and mask AP when logged (%), from a run's log.jsonl."""
    records = [r for r in read_log(Path(run_dir) / "log.jsonl") if "box_ap" in r]
    if not records:
        raise ValueError(f"detect_report: no box_ap in {Path(run_dir) / 'log.jsonl'}")
    out = {"box_ap": records[-1]["box_ap"], "best_box_ap": max(r["box_ap"] for r in records),
           "step": records[-1]["step"]}
    if math.isfinite(records[-1].get("mask_ap", math.nan)):
        out["mask_ap"] = records[-1]["mask_ap"]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or not all("=" in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    runs = dict(a.split("=", 1) for a in argv[1:])
    results = {label: final_ap(path) for label, path in runs.items()}
    png = plot_ap(runs, argv[0], title="detection")
    for label, ap in results.items():
        mask = f", mask AP {ap['mask_ap']:.2f}" if "mask_ap" in ap else ""
        print(f"{label}: step {ap['step']}: box AP {ap['box_ap']:.2f}{mask} "
              f"(best box AP {ap['best_box_ap']:.2f})")
    first, *others = results
    for other in others:
        gaps = [f"{results[first][k] - results[other][k]:+.2f} {name}"
                for k, name in (("box_ap", "box AP"), ("mask_ap", "mask AP"))
                if k in results[first] and k in results[other]]
        print(f"{first} - {other}: {', '.join(gaps)} (points, last evaluation)")
    print(f"figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
