"""The cards the model speaks of: their per-SM limits (the CUDA C++ Programming
Guide's table of compute capabilities, and the constants the CUDA Occupancy
Calculator, cuda_occupancy.h, uses for them) and their ceilings.

Ceilings: a card's measured copy bandwidth and bf16 matmul rate where a GPU record
of this project has them (bench/results/gpu-*/ceilings.json, bench/ceilings.py's
output, matched by the device's exact name); the vendor's datasheet otherwise,
labelled "spec" wherever a figure is shown."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

KB = 1024


@dataclass(frozen=True)
class Card:
    name: str
    arch: str                       # the cubin the build ships for it
    sms: int
    device_names: tuple             # torch.cuda.get_device_name() of this card
    smem_per_sm: int                # the largest shared-memory carveout, bytes
    smem_per_block_optin: int       # cudaDevAttrMaxSharedMemoryPerBlockOptin
    bandwidth_gbps: float           # device memory, read + write
    bandwidth_source: str
    bf16_tflops: float              # dense
    bf16_source: str
    # Identical on sm_80 and sm_90:
    max_threads_per_sm: int = 2048
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024
    registers_per_sm: int = 65536
    registers_per_block: int = 65536
    max_registers_per_thread: int = 255
    register_alloc_unit: int = 256  # registers are given to warps in units of 256
    sub_partitions: int = 4         # the register file is split between 4 schedulers
    smem_reserved_per_block: int = 1 * KB  # the system's share of each block, sm_80+
    smem_alloc_unit: int = 128
    warp_size: int = 32

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_SPEC = "spec (NVIDIA datasheet)"

CARDS = (
    Card("A100", "sm_80", sms=108, device_names=("NVIDIA A100-SXM4-80GB",),
         smem_per_sm=164 * KB, smem_per_block_optin=163 * KB,
         bandwidth_gbps=2039.0, bandwidth_source=_SPEC + ", A100 SXM4 80 GB",
         bf16_tflops=312.0, bf16_source=_SPEC),
    Card("H100 SXM", "sm_90", sms=132, device_names=("NVIDIA H100 80GB HBM3",),
         smem_per_sm=228 * KB, smem_per_block_optin=227 * KB,
         bandwidth_gbps=3350.0, bandwidth_source=_SPEC,
         bf16_tflops=989.0, bf16_source=_SPEC),
    Card("H200", "sm_90", sms=132, device_names=("NVIDIA H200",),
         smem_per_sm=228 * KB, smem_per_block_optin=227 * KB,
         bandwidth_gbps=4800.0, bandwidth_source=_SPEC,
         bf16_tflops=989.0, bf16_source=_SPEC),
)


def with_measured_ceilings(cards, results: Path) -> tuple:
    """The cards with the ceilings of the newest GPU record of each (folders
    gpu-YYYY-MM-DD-*, newest by name) in place of the spec values."""
    measured = {}
    for path in sorted(results.glob("gpu-*/ceilings.json")):
        data = json.loads(path.read_text())
        if data.get("tiny"):
            continue  # a dry run's figures describe nothing
        measured[data.get("device_name")] = (path, data)  # later folders win
    out = []
    for card in cards:
        hit = next((measured[n] for n in card.device_names if n in measured), None)
        if hit:
            path, data = hit
            where = f"measured, {path.relative_to(results.parent.parent).as_posix()}"
            card = replace(card, bandwidth_gbps=float(data["copy_gbps"]), bandwidth_source=where,
                           bf16_tflops=float(data["bf16_matmul_tflops"]), bf16_source=where)
        out.append(card)
    return tuple(out)
