"""What window_attention must move and compute at a shape, and the time floor that
gives on a card.

Bytes (the fewest a fused kernel must move): each input read once, each output
written once, the iRPE table and bucket map included (they are small). Forward:
reads q, k, v, the table (NB x d, or H x NB x d per head; H x NB for a bias) and the
(N, N) int32 bucket map; writes out and lse (S, H, N in the accumulator type, which
the backward needs). Backward: reads q, k, v, out, grad_out, lse, the table and map;
writes dq, dk, dv and d(table). D = rowsum(dO * O) is not counted: a fused
backward computes it on the way.

FLOPs, as bench/bench_window_attention.py counts them: the two N x N products,
4 S H N^2 d, and the contextual q R^T, 2 S H N NB d; the backward 2.5x the products
(FlashAttention's count) and 2x the term.

Each kernel of the split backward also gets its own floor (what it reads and
writes once, as the work is divided now: the dk/dv and dq kernels each read q, k,
v and grad_out, the delta kernel (N > ROWS only) reads out and grad_out again, and
so on): their
sum over the op's floor is what the split costs, whatever each kernel achieves."""

from __future__ import annotations

from .cards import Card
from .launch_geometry import DTYPES, Launch, Shape, make_params


def _sizes(shape: Shape) -> dict:
    """Bytes of each tensor the op touches."""
    elem, acc, _ = DTYPES[shape.dtype]
    acc_bytes = DTYPES[acc][0]
    p = make_params(shape)
    if shape.rpe_mode == "none":
        table = ids = 0
    else:
        ids = shape.N * shape.N * 4
        if shape.rpe_mode == "bias":
            table = shape.H * shape.NB * elem
        else:
            table = (shape.H if p.per_head else 1) * shape.NB * shape.d * elem
    return {"qkvo": shape.S * shape.N * shape.H * shape.d * elem,  # any one (S, N, H, d)
            "row_stat": shape.S * shape.H * shape.N * acc_bytes,   # lse or D
            "table": table, "ids": ids}


def op_traffic(shape: Shape) -> dict:
    """{"forward" | "backward" | "forward+backward": {read, written, bytes, flops}}."""
    t = _sizes(shape)
    fwd_read = 3 * t["qkvo"] + t["table"] + t["ids"]
    fwd_written = t["qkvo"] + t["row_stat"]
    bwd_read = 5 * t["qkvo"] + t["row_stat"] + t["table"] + t["ids"]
    bwd_written = 3 * t["qkvo"] + t["table"]
    attn = 4 * shape.S * shape.H * shape.N * shape.N * shape.d
    term = 2 * shape.S * shape.H * shape.N * shape.NB * shape.d \
        if shape.rpe_mode == "contextual" else 0
    out = {"forward": (fwd_read, fwd_written, attn + term),
           "backward": (bwd_read, bwd_written, int(2.5 * attn) + 2 * term)}
    out["forward+backward"] = tuple(a + b for a, b in zip(out["forward"], out["backward"]))
    return {op: {"read": r, "written": w, "bytes": r + w, "flops": f}
            for op, (r, w, f) in out.items()}


def kernel_traffic(shape: Shape, launches: list[Launch]) -> list[dict]:
    """The floor of each kernel of a launch sequence, as the work is divided now: its
    inputs read once, its outputs written once, workspaces included (the dq kernel's
    fp32 partials of d(table), one row per block, which the d(rpe) kernel reads)."""
    t = _sizes(shape)
    p = make_params(shape)
    acc_bytes = DTYPES[DTYPES[shape.dtype][1]][0]
    dq = [launch for launch in launches if launch.base == "window_attention_dq_kernel"]
    partials = p.groups * dq[0].grid[0] * p.group_width * acc_bytes if dq else 0
    fused = not any(launch.base == "window_attention_dkdv_kernel" for launch in launches)
    table_in = t["table"] + t["ids"]
    per_kernel = {
        "window_attention_fwd_kernel": (3 * t["qkvo"] + table_in, t["qkvo"] + t["row_stat"]),
        "window_attention_delta_kernel": (2 * t["qkvo"], t["row_stat"]),
        # q, k, v, dO, lse, D, table, map -> dk, dv
        "window_attention_dkdv_kernel": (4 * t["qkvo"] + 2 * t["row_stat"] + table_in,
                                         2 * t["qkvo"]),
        # q, k, v, dO, lse, D, table, map -> dq and the partials; fused (N <= ROWS, no
        # delta or dk/dv kernel): q, k, v, dO, lse, table, map -> dq, dk, dv, partials
        "window_attention_dq_kernel": (4 * t["qkvo"] + t["row_stat"] + table_in,
                                       3 * t["qkvo"] + partials) if fused else
                                      (4 * t["qkvo"] + 2 * t["row_stat"] + table_in,
                                       t["qkvo"] + partials),
        "window_attention_drpe_kernel": (partials, t["table"]),
    }
    out = []
    for launch in launches:
        if launch.base not in per_kernel:
            raise ValueError(f"launch.kernel={launch.kernel!r}: not a window_attention kernel")
        read, written = per_kernel[launch.base]
        out.append({"read": read, "written": written, "bytes": read + written})
    return out


def time_floor_ms(nbytes: int, flops: int, card: Card) -> dict:
    """The larger of bytes over the card's bandwidth and FLOPs over its bf16 matmul
    rate, and which one it is."""
    memory_ms = nbytes / (card.bandwidth_gbps * 1e9) * 1e3
    compute_ms = flops / (card.bf16_tflops * 1e12) * 1e3
    return {"memory_ms": memory_ms, "compute_ms": compute_ms,
            "floor_ms": max(memory_ms, compute_ms),
            "bound": "memory" if memory_ms >= compute_ms else "compute"}
