"""The dated record of the model: model.json (everything) and README.md (the tables,
each headed as a model), and the short table printed at the end of make gpu-model."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .model import NO_GPU, PRETRAIN, BENCH_CASES

MB = 1e6
DOCS = "../../../docs/gpu.md#the-model-resources-occupancy-and-floors-without-a-gpu"
_MODE_TO_OP = {"fwd": "forward", "fwd+bwd": "forward+backward"}


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _natural(name: str) -> list:
    """'k<bf16, 128, 64>' after 'k<bf16, 80, 64>': numbers compared as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _binding(row: dict) -> str:
    return " = ".join(b.replace("_", " ") for b in row["binding"]) if row["blocks_per_sm"] \
        else "does not launch: " + row["why_not"]


def compile_section(model: dict) -> str:
    facts, bounds = model["compile"], model["launch_bounds"]
    archs = sorted(facts)
    names = sorted({n for a in archs for n in facts[a]}, key=_natural)
    wa = [n for n in names if n.startswith("window_attention")]
    shown = [n for n in wa if "<bf16" in n or ", 64, " in n or "delta" in n or "drpe" in n]
    header = ["kernel", "launch bounds"] + [f"{a} regs" for a in archs] + \
        ["static smem", "stack / spill st / spill ld (" + ", ".join(archs) + ")"]

    def row(name):
        per = [facts[a].get(name) for a in archs]
        lb = bounds.get(name.split("<", 1)[0], {}).get("launch_bounds")
        lb = f"`{lb}`" if lb else "-"  # code: its template arguments are not HTML
        spills = ", ".join(f"{p['stack_frame']}/{p['spill_stores']}/{p['spill_loads']}"
                           if p else "-" for p in per)
        smem = max((p["static_smem"] for p in per if p), default=0)
        return [f"`{name}`", lb] + [p["registers"] if p else "-" for p in per] + [smem, spills]

    spilling = [f"`{n}` on {a}: {p['registers']} registers, {p['stack_frame']} bytes stack "
                f"frame, {p['spill_stores']} bytes spill stores, {p['spill_loads']} loads"
                for a in archs for n, p in sorted(facts[a].items(), key=lambda i: _natural(i[0]))
                if p["spill_stores"] or p["spill_loads"] or p["stack_frame"]]
    others = [n for n in names if not n.startswith("window_attention")]
    text = [f"## Compiler facts ({NO_GPU}: ptxas's report)", "",
            f"Every kernel instantiation of csrc/cuda/*.cu, {len(names)} per arch. "
            "Registers per thread, static shared memory per block (the dynamic shared "
            "memory is the launch's: next section), stack frame and spills in bytes per "
            "thread. window_attention's bf16 kernels at every padded head dim and every "
            "scalar type at DP = 64 (all in model.json):", "",
            _table(header, [row(n) for n in shown]), "",
            ("Stack frame or spills: " + "; ".join(spilling) + ".") if spilling else
            f"No kernel has a stack frame or spills ({len(names)} instantiations x "
            f"{len(archs)} archs).", "", "The other ops' kernels:", "",
            _table(["kernel", "instantiations"] + [f"{a} regs" for a in archs] +
                   ["static smem"], _grouped_rows(facts, archs, others))]
    return "\n".join(text)


def _grouped_rows(facts: dict, archs: list, names: list) -> list:
    """One row per kernel template: its instantiations' register range per arch and
    largest static shared memory."""
    groups: dict = {}
    for n in names:
        groups.setdefault(n.split("<", 1)[0], []).append(n)
    rows = []
    for base, members in sorted(groups.items()):
        per_arch = []
        for a in archs:
            regs = sorted(facts[a][n]["registers"] for n in members if n in facts[a])
            per_arch.append("-" if not regs else str(regs[0]) if regs[0] == regs[-1]
                            else f"{regs[0]}-{regs[-1]}")
        smem = max(facts[a][n]["static_smem"] for a in archs for n in members if n in facts[a])
        rows.append([f"`{base}`", len(members)] + per_arch + [smem])
    return rows


def launch_section(model: dict, shape: dict) -> str:
    header = ["card", "kernel", "grid", "threads", "dyn smem", "regs", "blocks/SM",
              "binding limit", "warps/SM", "occupancy", "waves", "kernel floor MB"]
    rows = []
    for card, launches in shape["cards"].items():
        for r in launches:
            grid = r["grid"][0] if r["grid"][1] == 1 else f"{r['grid'][0]} x {r['grid'][1]}"
            rows.append([card, f"`{r['kernel']}`", grid, r["threads"], r["dynamic_smem"],
                         r["registers"], r["blocks_per_sm"], _binding(r), r["warps_per_sm"],
                         f"{r['occupancy']:.0%}", r["waves"], f"{r['floor_bytes'] / MB:.1f}"])
    return "\n".join([f"### {shape['shape']} ({NO_GPU})", "", _table(header, rows)])


def floor_section(model: dict) -> str:
    cards = model["cards"]
    out = [f"## Floors ({NO_GPU}: bytes and FLOPs counted, over the cards' ceilings)", "",
           "Bandwidth and bf16 matmul rate of each card: " + "; ".join(
               f"{c['name']} {c['bandwidth_gbps']:.0f} GB/s ({c['bandwidth_source']}), "
               f"{c['bf16_tflops']:.0f} TFLOP/s ({c['bf16_source']})" for c in cards) + ".", ""]
    header = ["op", "read MB", "written MB", "GFLOP"] + [f"{c['name']} floor ms" for c in cards] \
        + ["bound"]
    for label, ops in model["floors"].items():
        rows = []
        for op, t in ops.items():
            per = [t["cards"][c["name"]] for c in cards]
            rows.append([op, f"{t['read'] / MB:.1f}", f"{t['written'] / MB:.1f}",
                         f"{t['flops'] / 1e9:.2f}"] + [f"{p['floor_ms']:.4f}" for p in per] +
                        [", ".join(sorted({p["bound"] for p in per}))])
        split = ops["backward"]["split_kernels_bytes"]
        out += [f"### {label} ({NO_GPU})", "", _table(header, rows), "",
                "The backward as its kernels divide it now (N <= ROWS: the fused dq kernel, which computes dq, dk and dv, "
                "then d(rpe); N > ROWS: a delta kernel, dq, dk/dv and d(rpe)), each reading its inputs once: " + "; ".join(
                    f"{card} {b / MB:.1f} MB, {b / ops['backward']['bytes']:.2f}x the op's floor"
                    for card, b in split.items()) + ".", ""]
    return "\n".join(out)


def measured_section(model: dict) -> str:
    rows = []
    floors = {label: ops for label, ops in model["floors"].items()}
    by_device = {n: c["name"] for c in model["cards"] for n in c["device_names"]}
    for m in model["measured_elsewhere"]:
        if m["backend"] not in ("op:cuda", "op:triton", "sdpa", "flex"):
            continue
        card = by_device.get(m["device"])
        label = BENCH_CASES[m["case"]].label()
        floor = floors[label][_MODE_TO_OP[m["mode"]]]["cards"][card]["floor_ms"] if card else None
        rows.append([m["record"], m["device"], m["backend"], m["case"], m["mode"],
                     f"{m['median_ms']:.3f}", f"{floor:.4f}" if floor else "-",
                     f"{m['median_ms'] / floor:.1f}x" if floor else "-"])
    if not rows:
        return ""
    return "\n".join([
        "## Measured on a GPU: not the model", "",
        "The committed GPU records' window_attention times (bf16, medians, L2 flushed), "
        "next to the model's floor for that card and shape. Only the first two columns "
        "of figures were measured; the floor is the model's.", "",
        _table(["record", "device", "backend", "case", "mode", "measured ms",
                "model floor ms", "measured / floor"], rows)])


def triton_section(model: dict) -> str:
    """The Triton window_attention kernels at the pretraining shape (triton_facts.py)."""
    title = f"## Triton kernels ({NO_GPU}: Triton's compile, ptxas's report)"
    table = model.get("triton") or {"skipped": "not in this record"}
    if "skipped" in table:
        return "\n".join([title, "", f"Not compiled: {table['skipped']}."])
    cards = sorted({c for r in table["rows"] for c in r["cards"]})
    header = ["kernel", "arch", "tiles (M, N, D, B)", "warps", "registers", "spill B",
              "shared B"] + [f"{c}: blocks (warps) per SM" for c in cards]
    rows = []
    for r in table["rows"]:
        c = r["constexprs"]
        tiles = ", ".join(str(c.get(k, "-")) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_B"))
        if not r.get("ok"):
            rows.append([f"`{r['kernel']}`", f"sm_{r['arch']}", tiles, r["num_warps"],
                         "failed: " + "; ".join(r.get("error", [])[:2]), "", ""] + [""] * len(cards))
            continue
        per = [f"{r['cards'][n]['blocks_per_sm']} ({r['cards'][n]['warps_per_sm']}), "
               + "/".join(r["cards"][n]["binding"]) if n in r["cards"] else "-" for n in cards]
        rows.append([f"`{r['kernel']}`", f"sm_{r['arch']}", tiles, r["num_warps"],
                     r["registers"], r["spill_bytes"], r["shared_bytes"]] + per)
    return "\n".join([
        title, "", "What the Triton backend launches at the pretraining shape (bf16, N = 50, "
        "d = 64, contextual NB = 50), compiled ahead of time for each arch by the compile "
        "sweep's machinery (tests/triton_compile_sweep.py, eager typing); registers and spill "
        "bytes per thread, shared memory per program; blocks per SM by the same occupancy "
        "rules as the CUDA kernels'.", "", _table(header, rows)])


def readme(model: dict, meta: dict) -> str:
    pre = next(s for s in model["shapes"] if s["shape"] == PRETRAIN.label())
    others = [s for s in model["shapes"] if s is not pre]
    head = [
        f"# GPU model record, {meta['date']} ({NO_GPU})", "",
        "**A model, not a measurement: no GPU ran.** `make gpu-model` "
        f"(bench/gpu_model/, [docs/gpu.md]({DOCS})) compiled csrc/cuda/*.cu with the "
        "shipped build's flags and read ptxas's resource report (registers, static shared "
        "memory, stack, spills), "
        "computed each window_attention launch's grid, block and dynamic shared memory with "
        "the host code's formulas (mirrored in Python, checked against the C++ by "
        "tests/ops/test_gpu_model.py), the blocks resident per SM by the CUDA Occupancy "
        "Calculator's rules, and the bytes and FLOPs each op must move and do, over each "
        "card's ceilings. What it cannot show: achieved occupancy, where the warps stall, "
        "the bytes the kernels really move, bank conflicts (Nsight Compute on a GPU; the CPU "
        "emulation's counters are the issue's second half).", "",
        f"Commit {meta['commit']}, nvcc {meta['nvcc']}, torch {meta['torch']}; "
        f"window_attention.cu sha256 {meta['window_attention_sha256'][:16]}" +
        (" (the working tree was compiled; these differed from the commit: " +
         ", ".join(meta["uncommitted_sources"]) + ")" if meta.get("uncommitted_sources")
         else "") + ". "
        "Flags: `" + " ".join(meta["flags"]) + "` plus `-gencode=arch=compute_XX,code=sm_XX` "
        "per arch.", "",
        "Cards: " + "; ".join(
            f"{c['name']} ({c['arch']}, {c['sms']} SMs, {c['smem_per_sm'] // 1024} KB shared "
            f"memory per SM, {c['smem_per_block_optin'] // 1024} KB per block)"
            for c in model["cards"]) + "; all: 64 warps, 32 blocks and 65536 registers per "
        "SM, registers given to warps in units of 256 across 4 sub-partitions, 1 KB of "
        "shared memory reserved per block, allocated in 128-byte units.", ""]
    body = [compile_section(model), "",
            f"## Launches ({NO_GPU}: the host code's formulas, the occupancy rules)", "",
            "window_attention forward and backward, in launch order; the backward's delta, "
            "dq and d(rpe) grids depend on the SM count. waves: the grid over the blocks "
            "resident at once on all SMs. kernel floor: what that kernel must read and write "
            "once (model.json has the ms per card).", "",
            launch_section(model, pre), ""]
    body += sum(([launch_section(model, s), ""] for s in others), [])
    body += [triton_section(model), "", floor_section(model), measured_section(model), ""]
    return "\n".join(head + body)


def short_table(model: dict) -> str:
    """The few lines make gpu-model prints: the pretraining shape's launches per card
    and the floors."""
    pre = next(s for s in model["shapes"] if s["shape"] == PRETRAIN.label())
    lines = [f"{NO_GPU}. {pre['shape']}:",
             f"{'card':9} {'kernel':44} {'regs':>4} {'smem':>7} {'blk/SM':>6} "
             f"{'warps':>5} {'waves':>5}  binding"]
    for card, launches in pre["cards"].items():
        for r in launches:
            lines.append(f"{card:9} {r['kernel']:44} {r['registers']:>4} "
                         f"{r['dynamic_smem'] + r['static_smem']:>7} {r['blocks_per_sm']:>6} "
                         f"{r['warps_per_sm']:>5} {r['waves']!s:>5}  {_binding(r)}")
    ops = model["floors"][PRETRAIN.label()]
    lines.append("floors (ms): " + "; ".join(
        f"{op} {t['bytes'] / MB:.0f} MB, " + ", ".join(
            f"{c} {v['floor_ms']:.3f}" for c, v in t["cards"].items())
        for op, t in ops.items()))
    return "\n".join(lines)


def write(out: Path, model: dict, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps({"meta": meta, **model}, indent=1) + "\n")
    (out / "README.md").write_text(readme(model, meta))
