"""Prints the benchmark records under a results folder as one short table, with
GB/s also as a fraction of the card's measured copy bandwidth and TFLOP/s as a
fraction of its measured bf16 matmul rate when bench/ceilings.py's JSON is there.

A row above either ceiling is impossible for an honest byte or FLOP count timed
from device memory: it is marked SUSPECT in the table and listed again at the end
(a wrong byte model, inputs left in cache between repetitions, or an op that did
not run). Such a figure must not be quoted.

    python bench/summarize.py DIR               the tables (what make bench/gpu-check save)
    python bench/summarize.py DIR --headline    a few lines: the headline cases, the
                                                suspect count and lomar bench's images/s"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (op, case, mode) shown by --headline; a missing case falls back to the op's first
# case in that mode (the tiny dry run has other cases).
HEADLINE = [("window_attention", "pretrain-N50", "fwd+bwd"),
            ("mask_substitute", "K7-D768", "fwd"),
            ("mask_substitute", "K7-D768", "fwd+bwd"),
            ("masked_patch_loss", "K7-P768", "fwd+bwd"),
            ("rpe_gather", "pretrain-N50", "fwd+bwd"),
            ("window_patchify", "img1024", "fwd"),
            ("vitdet_backbone", "1024-windowed", "fwd+bwd")]


def load(root: Path) -> tuple[dict, dict[str, list[dict]]]:
    ceilings = {}
    if (root / "ceilings.json").exists():
        ceilings = json.loads((root / "ceilings.json").read_text())
    records = {path.stem: json.loads(path.read_text())
               for path in sorted(root.glob("bench_*.json"))}
    return ceilings, records


def suspicion(row: dict, ceilings: dict) -> str | None:
    """Why a row is above a measured ceiling, or None."""
    reasons = []
    copy, mm = ceilings.get("copy_gbps"), ceilings.get("bf16_matmul_tflops")
    if copy and row.get("gbps") is not None and row["gbps"] > copy:
        reasons.append(f"{row['gbps']:.0f} GB/s = {row['gbps'] / copy:.0%} of the measured "
                       f"copy bandwidth ({copy:.0f} GB/s)")
    if mm and row.get("tflops") is not None and row["tflops"] > mm:
        reasons.append(f"{row['tflops']:.1f} TFLOP/s = {row['tflops'] / mm:.0%} of the "
                       f"measured bf16 matmul rate ({mm:.1f} TFLOP/s)")
    return "; ".join(reasons) or None


def _row_id(name: str, r: dict) -> str:
    return f"{name} {r['case']} {r['mode']} {r['backend']}"


def tables(root: Path) -> tuple[list[str], list[str]]:
    """(the table lines, the suspect rows)."""
    ceilings, records = load(root)
    lines, suspects = [], []
    if ceilings:
        lines.append(f"ceilings: copy {ceilings['copy_gbps']} GB/s, bf16 matmul "
                     f"{ceilings['bf16_matmul_tflops']} TFLOP/s ({ceilings['device_name']})"
                     + ("  [tiny: a dry run's, not a ceiling]" if ceilings.get("tiny") else ""))
    else:
        lines.append("ceilings: none (no ceilings.json): figures are not checked against them")
    for name, rows in records.items():
        lines.append(f"\n{name}")
        memory = any("peak_mb" in r for r in rows)
        lines.append(f"  {'case':<16}{'mode':<9}{'backend':<10}{'dtype':<10}{'ms':>10}{'GB/s':>9}"
                     f"{'of copy':>9}{'TFLOP/s':>9}{'of mm':>7}"
                     + (f"{'peak MB':>10}" if memory else ""))
        for r in sorted(rows, key=lambda r: (r["case"], r["mode"], r["backend"])):
            if "skipped" in r:
                lines.append(f"  {r['case']:<16}{r['mode']:<9}{r['backend']:<10}"
                             f"skipped: {r['skipped']}")
                continue
            frac = (f"{r['gbps'] / ceilings['copy_gbps']:.0%}"
                    if ceilings.get("copy_gbps") and r.get("gbps") is not None else "")
            tflops = f"{r['tflops']:.3f}" if r.get("tflops") is not None else ""
            of_mm = (f"{r['tflops'] / ceilings['bf16_matmul_tflops']:.0%}"
                     if ceilings.get("bf16_matmul_tflops") and r.get("tflops") is not None
                     else "")
            gb = r.get("gbps")
            line = (f"  {r['case']:<16}{r['mode']:<9}{r['backend']:<10}{r['dtype']:<10}"
                    f"{r['median_ms']:>10.4f}{gb if gb is not None else float('nan'):>9.1f}"
                    f"{frac:>9}{tflops:>9}{of_mm:>7}"
                    + (f"{r.get('peak_mb', float('nan')):>10.1f}" if memory else ""))
            why = suspicion(r, ceilings)
            if why:
                line += "   <-- SUSPECT: above the measured ceiling"
                suspects.append(f"{_row_id(name, r)}: {why}")
            lines.append(line)
    if suspects:
        lines += ["", "!" * 78,
                  f"!! {len(suspects)} SUSPECT ROW(S): above the card's measured ceilings. A "
                  "figure above", "!! the copy bandwidth or the matmul rate is a measurement "
                  "error (a byte/FLOP", "!! model counting more than the op moves, inputs "
                  "served from cache, or an op", "!! that did not run): do not quote it.",
                  *[f"!!   {s}" for s in suspects], "!" * 78]
    return lines, suspects


def _ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _pick(rows: list[dict], case: str, mode: str) -> list[dict]:
    chosen = [r for r in rows if r["case"] == case and r["mode"] == mode and "skipped" not in r]
    if not chosen:
        first = next((r["case"] for r in rows if r["mode"] == mode and "skipped" not in r), None)
        chosen = [r for r in rows if r["case"] == first and r["mode"] == mode
                  and "skipped" not in r]
    return sorted(chosen, key=lambda r: r["median_ms"])


def headline(root: Path) -> list[str]:
    """A few lines for the end of a run: the headline cases (fastest first), the
    number of suspect rows, and lomar bench's images/s per resolution."""
    ceilings, records = load(root)
    by_op = {}
    for rows in records.values():
        for r in rows:
            by_op.setdefault(r.get("op", "?"), []).append(r)
    lines = []
    for op, case, mode in HEADLINE:
        chosen = _pick(by_op.get(op, []), case, mode)
        if not chosen:
            continue
        parts = []
        for r in chosen:
            part = f"{r['backend'].removeprefix('op:')} {_ms(r['median_ms'])}"
            if ceilings.get("copy_gbps") and r.get("gbps") is not None \
                    and op != "window_attention":
                part += f" ({r['gbps'] / ceilings['copy_gbps']:.0%})"
            if suspicion(r, ceilings):
                part += " SUSPECT"
            parts.append(part)
        lines.append(f"{op} {chosen[0]['case']} {mode} ms"
                     + (" (% of copy)" if op not in ("window_attention", "vitdet_backbone")
                        and ceilings else "") + ": " + ", ".join(parts))
    if records:
        _, suspects = tables(root)
        lines.append(f"rows above a measured ceiling (SUSPECT): {len(suspects)}")
    lines += throughput_headline(root / "throughput" / "results.json")
    return lines


def throughput_headline(path: Path) -> list[str]:
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    by_res: dict[int, dict[str, dict]] = {}
    for case in results.get("cases", []):
        by_res.setdefault(case["resolution"], {})[case["method"]] = case
    lines = [f"lomar bench ({results.get('size')}, {results.get('device')}), images/s:"]
    for res, cases in sorted(by_res.items()):
        parts = []
        for name in ("lomar", "mae", "beit", "lomar_reference"):
            c = cases.get(name)
            if c is None:
                continue
            parts.append(f"{name} {c['images_per_s']:.1f}" if c.get("status") == "ok"
                         else f"{name} {c.get('status', '?').split(':')[0]}")
        ok = {n: c for n, c in cases.items() if c.get("status") == "ok"}
        if "lomar" in ok and "mae" in ok:
            parts.append(f"lomar/mae {ok['lomar']['images_per_s'] / ok['mae']['images_per_s']:.2f}x")
        lines.append(f"  {res}: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="bench/results/latest")
    parser.add_argument("--headline", action="store_true",
                        help="a few lines instead of the tables")
    args = parser.parse_args(argv)
    root = Path(args.folder)
    lines = headline(root) if args.headline else tables(root)[0]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
