"""The input-pipeline page's figure for tiled files: the time per sample (a crop to 1024
and four 7x7-patch windows, one thread) from each source of ``lomar bench-data --tiled``,
with the tile cache warm and cold, drawn from a committed record (no number is typed
in here).

    python docs/figures/tiled_formats.py [DATA_JSON] [OUT_PNG]

Defaults: bench/results/cpu-2026-12-04-tiled/data.json and
docs/figures/tiled_formats.png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = ROOT / "bench/results/cpu-2026-12-04-tiled/data.json"
DEFAULT_OUT = ROOT / "docs/figures/tiled_formats.png"


def rows(records: list[dict]) -> list[tuple[str, float | None, float | None]]:
    """(source, ms with the tile cache on, ms with it off) per source, in record order; a
    non-tiled file has one time (its decode has no cache), shown as the 'on' bar."""
    out: dict[str, list] = {}
    for r in records:
        on_off = out.setdefault(r["name"], [None, None])
        if r["kind"] != "tiled" or r["tile_cache_mb"] > 0:
            on_off[0] = r["ms_per_sample"]
        else:
            on_off[1] = r["ms_per_sample"]
    return [(name, on, off) for name, (on, off) in out.items()]


def draw(results: Path = DEFAULT_RESULTS, out: Path = DEFAULT_OUT) -> Path:
    records = json.loads(Path(results).read_text())
    table = rows(records)
    cache = max((r["tile_cache_mb"] for r in records if r["kind"] == "tiled"), default=0)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.4))
    y = range(len(table))
    on = [t[1] or 0 for t in table]
    off = [t[2] or 0 for t in table]
    ax.barh([i - 0.2 for i in y], on, 0.4, color="tab:blue",
            label=f"tile cache {cache:g} MB (a JPEG: its reduced-scale decode)")
    ax.barh([i + 0.2 for i in y], off, 0.4, color="tab:orange",
            label="tile cache off: every tile decoded")
    for i, (a, b) in enumerate(zip(on, off)):
        for value, dy in ((a, -0.2), (b, 0.2)):
            if value:
                ax.text(value * 1.05, i + dy, f"{value:.1f}", va="center", fontsize=8)
    ax.set_yticks(list(y), [t[0] for t in table])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= 2 * max(on + off)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(left=1)
    ax.set_xlabel("ms per sample (median; crop to 1024, four 7x7-patch windows; one thread)")
    ax.set_title(f"Windows from tiled files and from a JPEG ({records[0]['machine']}, "
                 f"{records[0]['date'][:10]})", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(*(Path(a) for a in sys.argv[1:3])))
