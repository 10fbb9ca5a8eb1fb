"""Blocks resident per SM, by the CUDA Occupancy Calculator's rules (the arithmetic of
cuda_occupancy.h, cudaOccMaxActiveBlocksPerMultiprocessor, for sm_80 and sm_90):

  - warps:     floor(max warps per SM / warps per block)
  - blocks:    the card's resident-block limit (32)
  - registers: a warp gets regs/thread x 32 rounded up to 256; the register file is
               split between 4 sub-partitions (one per scheduler), so an SM holds
               4 x floor(16384 / registers per warp) warps, and floor(that / warps per
               block) blocks. A block whose registers exceed 64 K (with its warps
               rounded up to a multiple of 4, as the hardware checks) does not launch.
  - shared memory: a block takes static + dynamic + 1 KB reserved, rounded up to
               128 bytes; floor(largest carveout / that) blocks. Over the per-block
               opt-in limit it does not launch.

The carveout is taken at its largest (the driver's choice when the kernel states no
preference and needs the shared memory); the L1 cache gets what is left."""

from __future__ import annotations

from dataclasses import dataclass

from .cards import Card

LIMITS = ("warps", "blocks", "registers", "shared_memory")


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


@dataclass
class Occupancy:
    blocks_per_sm: int
    warps_per_block: int
    limits: dict               # limit name -> blocks per SM it alone would allow
    binding: list              # the limits equal to blocks_per_sm (all, when tied)
    registers_per_warp: int    # allocated
    smem_per_block: int        # allocated, with the reserved 1 KB
    why_not: str = ""          # when 0: why the block does not launch

    @property
    def warps_per_sm(self) -> int:
        return self.blocks_per_sm * self.warps_per_block

    def occupancy(self, card: Card) -> float:
        """Resident warps over the SM's maximum: the theoretical occupancy."""
        return self.warps_per_sm / card.max_warps_per_sm

    def as_dict(self, card: Card) -> dict:
        return {"blocks_per_sm": self.blocks_per_sm, "warps_per_block": self.warps_per_block,
                "warps_per_sm": self.warps_per_sm,
                "occupancy": round(self.occupancy(card), 4), "limits": self.limits,
                "binding": self.binding, "registers_per_warp": self.registers_per_warp,
                "smem_per_block_allocated": self.smem_per_block, "why_not": self.why_not}


def occupancy(card: Card, threads: int, registers: int, static_smem: int = 0,
              dynamic_smem: int = 0) -> Occupancy:
    """Blocks of ``threads`` threads using ``registers`` per thread and the given shared
    memory (bytes) resident on one SM of ``card``."""
    if not 1 <= threads <= card.max_threads_per_block:
        raise ValueError(f"threads={threads}: a block has 1 to "
                         f"{card.max_threads_per_block} threads on {card.name}")
    if not 0 <= registers <= card.max_registers_per_thread:
        raise ValueError(f"registers={registers}: a thread has 0 to "
                         f"{card.max_registers_per_thread} registers on {card.name}")
    if static_smem < 0 or dynamic_smem < 0:
        raise ValueError(f"static_smem={static_smem}, dynamic_smem={dynamic_smem}: "
                         "shared memory is not negative")
    warps = -(-threads // card.warp_size)
    why_not = []

    by_warps = card.max_warps_per_sm // warps

    reg_warp = _round_up(registers * card.warp_size, card.register_alloc_unit)
    if reg_warp == 0:
        by_regs = card.max_blocks_per_sm
    elif reg_warp * _round_up(warps, card.sub_partitions) > card.registers_per_block:
        by_regs = 0
        why_not.append(f"{reg_warp} registers per warp x {warps} warps (rounded up to "
                       f"{_round_up(warps, card.sub_partitions)}) exceed the "
                       f"{card.registers_per_block} registers a block may have")
    else:
        per_partition = card.registers_per_sm // card.sub_partitions // reg_warp
        by_regs = per_partition * card.sub_partitions // warps

    smem = _round_up(static_smem + dynamic_smem + card.smem_reserved_per_block,
                     card.smem_alloc_unit)
    if static_smem + dynamic_smem > card.smem_per_block_optin:
        by_smem = 0
        why_not.append(f"{static_smem + dynamic_smem} bytes of shared memory exceed the "
                       f"{card.smem_per_block_optin} a block may opt in to")
    else:
        by_smem = card.smem_per_sm // smem

    limits = {"warps": by_warps, "blocks": card.max_blocks_per_sm, "registers": by_regs,
              "shared_memory": by_smem}
    blocks = min(limits.values())
    binding = [name for name in LIMITS if limits[name] == blocks]
    return Occupancy(blocks, warps, limits, binding, reg_warp, smem, "; ".join(why_not))
