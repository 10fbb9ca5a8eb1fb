"""The benchmark's outputs: results.json (every figure), throughput.png (time per
image against resolution, one line per method, log scale) and ratios.md (LoMaR's
throughput over MAE's and BEiT's next to the paper's reported speed-ups)."""

from __future__ import annotations

import json
from pathlib import Path

# Wall-clock speed-ups the paper reports (Table 1: 300-epoch pretraining time on 4 A100s;
# Table 5 at 224), LoMaR with its paper window counts (6 at 384, 9 at 448).
PAPER_SPEEDUP = {
    ("lomar_paper_windows", "mae", 384): 2.5, ("lomar_paper_windows", "beit", 384): 5.0,
    ("lomar_paper_windows", "mae", 448): 3.1, ("lomar_paper_windows", "beit", 448): 5.3,
    ("beit_window", "beit", 224): 2.8,
}
RATIOS = (  # (numerator method, denominator method)
    ("lomar", "mae"), ("lomar", "beit"), ("lomar_paper_windows", "mae"),
    ("lomar_paper_windows", "beit"), ("beit_window", "beit"), ("lomar", "lomar_reference"),
)


def write_json(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def _ok(results: dict) -> list[dict]:
    return [c for c in results["cases"] if c["status"] == "ok"]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cases = _ok(results)
    for name in dict.fromkeys(c["method"] for c in cases):
        mine = sorted((c for c in cases if c["method"] == name), key=lambda c: c["resolution"])
        ax.plot([c["resolution"] for c in mine], [c["ms_per_image"] for c in mine], marker="o",
                label=mine[0]["label"])
    ax.set_yscale("log")
    ax.set_xlabel("image resolution (pixels per side)")
    ax.set_ylabel("training-step time per image (ms, log scale)")
    ax.set_title(f"{results['size']} ViT/16, {results['dtype']}, {results['device']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ratio_rows(results: dict) -> list[dict]:
    """For each ratio and resolution where both ran: measured images/s ratio, the
    counted training-FLOP ratio (inverse), and the paper's figure if it has one."""
    by_key = {(c["method"], c["resolution"]): c for c in _ok(results)}
    rows = []
    for num, den in RATIOS:
        for res in sorted({r for (m, r) in by_key if m == num}):
            a, b = by_key.get((num, res)), by_key.get((den, res))
            if a is None or b is None:
                continue
            fa, fb = a["flops_per_image"]["train"], b["flops_per_image"]["train"]
            rows.append({"numerator": num, "denominator": den, "resolution": res,
                         "throughput_ratio": a["images_per_s"] / b["images_per_s"],
                         "compute_ratio": fb / fa if fa and fb else None,
                         "paper": PAPER_SPEEDUP.get((num, den, res))})
    return rows


def speed_targets(results: dict) -> list[dict]:
    """The speed targets (docs/benchmarks.md#speed-targets), evaluated on what ran (each
    needs its cases): LoMaR's time per
    image at 4 windows flat within 10% from 224 to 1024; at 448, LoMaR (4 windows) at
    least 2.4x MAE's and 5x BEiT's images/s; fused ops at least 1.3x reference ops."""
    by_key = {(c["method"], c["resolution"]): c for c in _ok(results)}
    targets = []
    lomar = {r: c["ms_per_image"] for (m, r), c in by_key.items() if m == "lomar"}
    if 224 in lomar and 1024 in lomar:
        spread = max(lomar.values()) / min(lomar.values())
        targets.append({"target": "LoMaR, 4 windows: time per image flat within 10%, 224-1024",
                        "measured": f"max/min {spread:.2f}", "met": spread <= 1.10})
    for den, want in (("mae", 2.4), ("beit", 5.0)):
        a, b = by_key.get(("lomar", 448)), by_key.get((den, 448))
        if a and b:
            ratio = a["images_per_s"] / b["images_per_s"]
            targets.append({"target": f"448: LoMaR (4 windows) >= {want}x {den} images/s",
                            "measured": f"{ratio:.2f}x", "met": ratio >= want})
    fused = [(r, c["images_per_s"] / by_key[("lomar_reference", r)]["images_per_s"])
             for (m, r), c in sorted(by_key.items()) if m == "lomar"
             and ("lomar_reference", r) in by_key]
    if fused:
        worst = min(fused, key=lambda item: item[1])
        targets.append({"target": "fused ops >= 1.3x reference ops, every resolution",
                        "measured": f"lowest {worst[1]:.2f}x (at {worst[0]})",
                        "met": worst[1] >= 1.3})
    return targets


def ratios_markdown(results: dict) -> str:
    lines = [f"# Throughput ratios ({results['size']} ViT/16, {results['device']})", "",
             f"Command: `{results['command']}`", "",
             "Throughput ratio = images/s of the first method over the second's, same "
             "device, same run. Compute ratio = the second's counted training FLOPs per "
             "image over the first's (what the ratio would be at equal FLOP/s). Paper = "
             "the speed-up it reports from pretraining times on 4 A100s (Table 1, Table 5).",
             "", "| ratio | resolution | measured throughput ratio | compute ratio | paper |",
             "|---|---|---|---|---|"]
    for row in ratio_rows(results):
        compute = f"{row['compute_ratio']:.2f}x" if row["compute_ratio"] else "n/a"
        paper = f"{row['paper']:.1f}x" if row["paper"] else "-"
        lines.append(f"| {row['numerator']} / {row['denominator']} | {row['resolution']} | "
                     f"{row['throughput_ratio']:.2f}x | {compute} | {paper} |")
    targets = speed_targets(results)
    if targets:
        lines += ["", "## Speed targets (set for ViT-B/16 on a GPU)", "",
                  "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
                  for t in targets]
    lines += ["", "## Every case", "",
              "| method | res | windows | batch | images/s | ms/image "
              "| GFLOP/image fwd (tokenizer) | GFLOP/image train | peak GiB | MFU "
              "| forward split ms: data+embed / tokenizer / encoder / head+loss; backward; "
              "optimizer |", "|---" * 11 + "|"]
    for c in results["cases"]:
        if c["status"] != "ok":
            lines.append(f"| {c['method']} | {c['resolution']} | | | {c['status']} | | | | | | |")
            continue
        f, ph = c["flops_per_image"], c.get("phases_ms", {})
        split = " / ".join(f"{ph[k]:.1f}" if k in ph else "-" for k in (
            "data_and_embed_ms", "tokenizer_ms", "encoder_forward_ms", "head_and_loss_forward_ms"))
        if ph:
            split += f"; {ph['backward_ms']:.1f}; {ph['optimizer_ms']:.1f}"
        mem = f"{c['peak_memory_gib']:.1f}" if c.get("peak_memory_gib") is not None else "-"
        mfu = f"{c['mfu']:.1%}" if c.get("mfu") else "-"
        lines.append(f"| {c['method']} | {c['resolution']} | {c['windows'] or '-'} | "
                     f"{c['batch']} | {c['images_per_s']:.1f} | {c['ms_per_image']:.2f} | "
                     f"{f['forward'] / 1e9:.1f} ({f['tokenizer'] / 1e9:.1f}) | "
                     f"{f['train'] / 1e9:.1f} | {mem} | {mfu} | {split} |")
    fed = [c for c in _ok(results) if "data_wait_share" in c]
    if fed:
        lines += ["", "## Steps fed by the window pipeline (share of the step waiting for data)",
                  "", "| method | res | loader processes | images/s fed | waiting for data |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['method']} | {c['resolution']} | {c['data_workers']} | "
                  f"{c['fed_images_per_s']:.1f} | {c['data_wait_share']:.0%} |" for c in fed]
    if results["size"] != "base":
        lines += ["", f"Model size '{results['size']}' is reduced from ViT-B: these ratios "
                  "show the trend, not the paper's ViT-B figures."]
    return "\n".join(lines) + "\n"


def write_all(results: dict, out: Path) -> None:
    write_json(results, out / "results.json")
    if _ok(results):
        plot(results, out / "throughput.png")
    (out / "ratios.md").write_text(ratios_markdown(results))
