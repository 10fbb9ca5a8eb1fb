"""The Triton window_attention kernels beside the CUDA ones (a model, no GPU ran): the
kernels the op launches at the pretraining shape (bf16, N = 50, d = 64, contextual
iRPE, NB = 50), compiled ahead of time for sm_80 and sm_90 by the compile sweep's own
machinery (tests/triton_compile_sweep.py: the op's Triton backend called on CPU
tensors, forward and backward, its launches recorded and compiled by triton.compile;
Triton's ptxas reports registers and spills, its metadata the shared memory), and
their blocks per SM by the same occupancy rules as the CUDA kernels'.

The compiles take the shape's constexprs, not its sizes (integers are compiled
generic), so a small S stands for S = 1024."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from .cards import Card
from .occupancy import occupancy

SWEEP = Path(__file__).resolve().parents[2] / "tests" / "triton_compile_sweep.py"
ARCHS = (80, 90)


def _sweep_module():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("TRITON_INTERPRET is set: interpreted kernels cannot be compiled")
    spec = importlib.util.spec_from_file_location("lomar_triton_compile_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compile_pretraining_kernels(archs=ARCHS) -> list[dict]:
    """One row per (kernel, arch): constexprs, warps, registers, spill bytes, shared
    memory; ok=False with the compiler's error lines where a compile failed."""
    import torch

    sweep = _sweep_module()
    case = sweep.Case("window_attention", "pretraining shape, bf16 contextual NB=50",
                      sweep.window_attention_case(4, 50, 12, 64, torch.bfloat16, "contextual"))
    specs = sweep.specs_of(sweep.record_cases([case]), typings=("jit",))
    return [sweep.compile_spec(spec, arch) for spec in specs for arch in archs]


def with_occupancy(rows: list[dict], cards) -> list[dict]:
    """Each compiled row with its blocks (warps) per SM on every card of its arch."""
    out = []
    for row in rows:
        per_card = {}
        if row.get("ok"):
            for card in cards:
                if card.arch != f"sm_{row['arch']}":
                    continue
                occ = occupancy(card, 32 * row["num_warps"], row["registers"],
                                static_smem=row["shared_bytes"])
                per_card[card.name] = {"blocks_per_sm": occ.blocks_per_sm,
                                       "warps_per_sm": occ.warps_per_sm,
                                       "binding": occ.binding}
        out.append({**row, "cards": per_card})
    return out


def triton_table(cards: tuple[Card, ...]) -> dict:
    """{"rows": [...]} or {"skipped": why} when Triton cannot compile here."""
    try:
        return {"rows": with_occupancy(compile_pretraining_kernels(), cards)}
    except (ImportError, RuntimeError) as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
