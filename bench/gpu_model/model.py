"""The model assembled: compiler facts, then per shape and card each window_attention
launch with its occupancy and waves, then the floors. Plain data (model.json);
record.py writes it out."""

from __future__ import annotations

import re
from pathlib import Path

from . import floors
from .cards import Card
from .launch_geometry import Shape, backward_launches, forward_launches, make_params
from .occupancy import occupancy
from .ptxas_report import KernelResources

NO_GPU = "MODEL, no GPU ran"

PRETRAIN = Shape(S=1024, N=50, H=12, d=64)       # the LoMaR pretraining step, ViT-B
FINETUNE = (Shape(S=64, N=197, H=12, d=64), Shape(S=64, N=577, H=12, d=64))
# bench/bench_window_attention.py's cases, for the measured comparison.
BENCH_CASES = {"pretrain-N50": PRETRAIN, "finetune-N197": FINETUNE[0],
               "finetune-N577": FINETUNE[1]}

_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\(((?:[^()]|\([^()]*\))*)\)\s+(\w+)\s*\(")


def launch_bounds(source: str) -> dict:
    """{kernel: the __launch_bounds__ arguments as written}, e.g. '2 * ROWS, 1'."""
    return {m[2]: m[1] for m in _LAUNCH_BOUNDS.finditer(source)}


def compile_table(kernels: list[KernelResources]) -> dict:
    """{arch: {kernel name: facts}}."""
    out: dict = {}
    for k in kernels:
        out.setdefault(k.arch, {})[k.name] = k.as_dict()
    return out


def launch_rows(shape: Shape, card: Card, facts: dict) -> list[dict]:
    """Each launch of forward + backward at ``shape`` on ``card``: geometry, the
    compiler's registers for the card's arch, occupancy, waves and the kernel's floor."""
    launches = forward_launches(shape, card.sms) + backward_launches(shape, card.sms)
    traffic = floors.kernel_traffic(shape, launches)
    rows = []
    for launch, moved in zip(launches, traffic):
        compiled = facts.get(card.arch, {}).get(launch.kernel)
        if compiled is None:
            raise KeyError(f"no compiler report for {launch.kernel} on {card.arch} "
                           f"({card.name}); compile that arch or pass its report")
        occ = occupancy(card, launch.threads, compiled["registers"], compiled["static_smem"],
                        launch.dynamic_smem)
        resident = occ.blocks_per_sm * card.sms
        waves = -(-launch.blocks // resident) if resident else None
        rows.append({
            "kernel": launch.kernel, "grid": list(launch.grid), "blocks": launch.blocks,
            "threads": launch.threads, "dynamic_smem": launch.dynamic_smem,
            "registers": compiled["registers"], "static_smem": compiled["static_smem"],
            "spill_bytes": compiled["spill_stores"] + compiled["spill_loads"],
            **occ.as_dict(card),
            "waves": waves,
            "last_wave_fill": (round((launch.blocks - (waves - 1) * resident) / resident, 4)
                               if waves else None),
            "floor_bytes": moved["bytes"],
            "floor_ms": floors.time_floor_ms(moved["bytes"], 0, card)["memory_ms"],
        })
    return rows


def floor_table(shape: Shape, cards) -> dict:
    """{op: {read, written, bytes, flops, per card: time floor}}."""
    out = {}
    for op, t in floors.op_traffic(shape).items():
        out[op] = {**t, "cards": {c.name: floors.time_floor_ms(t["bytes"], t["flops"], c)
                                  for c in cards}}
    split = {}
    for card in cards:  # the split backward's kernels' floors summed, per card (dq's grid)
        launches = backward_launches(shape, card.sms)
        split[card.name] = sum(t["bytes"] for t in floors.kernel_traffic(shape, launches))
    out["backward"]["split_kernels_bytes"] = split
    return out


def measured_records(results: Path) -> list[dict]:
    """window_attention rows of the committed GPU records (bench_window_attention.csv),
    for the comparison the README prints apart from the model."""
    import csv
    rows = []
    for path in sorted(results.glob("gpu-*/bench_window_attention.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row["case"] in BENCH_CASES and row["dtype"] == "bfloat16":
                    rows.append({"record": path.parent.name, "device": row["device_name"],
                                 "backend": row["backend"], "mode": row["mode"],
                                 "case": row["case"], "median_ms": float(row["median_ms"])})
    return rows


def build(kernels: list[KernelResources], cards, sources: dict, results: Path) -> dict:
    """``sources``: {path: text} of the .cu files (launch bounds are read from them)."""
    facts = compile_table(kernels)
    bounds = {}
    for path, text in sources.items():
        bounds.update({k: {"source": path, "launch_bounds": b}
                       for k, b in launch_bounds(text).items()})
    shapes = []
    for shape in (PRETRAIN,) + FINETUNE:
        shapes.append({"shape": shape.label(), "params": make_params(shape).__dict__,
                       "cards": {c.name: launch_rows(shape, c, facts) for c in cards}})
    return {
        "model": f"{NO_GPU}: ptxas's resource report of the shipped build's flags, the "
                 "launch formulas of csrc/cuda/window_attention.cu, the CUDA Occupancy "
                 "Calculator's rules, and byte/FLOP counts",
        "cards": [c.as_dict() for c in cards],
        "compile": facts,
        "launch_bounds": bounds,
        "shapes": shapes,
        "floors": {s.label(): floor_table(s, cards) for s in (PRETRAIN,) + FINETUNE},
        "measured_elsewhere": measured_records(results),
    }
