"""The launches window_attention's CUDA host code makes at a shape: kernel, grid,
threads per block and dynamic shared memory. The ONE Python mirror of the formulas
of csrc/cuda/window_attention.cu (make_params, plan_runs, FwdSmem, BwdSmem, table_width,
dt_width and the grids of window_attention_fwd_cuda / _bwd_cuda); tests/ops/test_gpu_model.py compiles
those C++ formulas, cut from the source as they are, and checks this mirror against
them, so a kernel change that moves a figure fails that test until this file follows."""

from __future__ import annotations

from dataclasses import dataclass

# Per scalar type: bytes, its accumulator type, whether it multiplies on tensor cores.
DTYPES = {"bf16": (2, "fp32", True), "fp16": (2, "fp32", True),
          "fp32": (4, "fp32", False), "fp64": (8, "fp64", False)}
SIZEOF = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8, "int": 4, "uint8": 1}
HEAD_DIMS = (32, 64, 80, 128)        # kHeadDims: d is padded with zeros to one of these
MODES = {"none": 0, "bias": 1, "contextual": 2}


def rows_per_tile(dtype: str) -> int:
    """kRows: 64 rows for 16-bit types, 32 for fp32, 16 for fp64."""
    return {2: 64, 4: 32, 8: 16}[_sizeof(dtype)]


def pad(dtype: str) -> int:
    """kPad, in elements: 16 bytes for 16-bit types, one element otherwise."""
    return 8 if _sizeof(dtype) == 2 else 1


def padded_head_dim(d: int) -> int:
    for dp in HEAD_DIMS:
        if d <= dp:
            return dp
    raise ValueError(f"d={d}: the CUDA kernel takes a head dim d <= 128")


def id_bytes(nb: int) -> int:
    """Bytes per staged bucket id: 8-bit below 255 buckets (all ones is the mask)."""
    return 1 if nb < 255 else 2


def dt_width(nb: int) -> int:
    """The dT row stride (dq kernel): NB made odd."""
    return nb | 1


def table_width(nb: int) -> int:
    """The qR row stride: the first even number above dt_width(NB), then to 8 mod 16."""
    even = dt_width(nb) + 1
    return even + (24 - even % 16) % 16


def _sizeof(dtype: str) -> int:
    if dtype not in SIZEOF:
        raise ValueError(f"dtype={dtype!r}: one of {sorted(DTYPES)}")
    return SIZEOF[dtype]


class _Carver:
    """Carver: pieces 16-byte aligned, in order."""

    def __init__(self):
        self.used = 0

    def take(self, dtype: str, count: int) -> None:
        self.used = (self.used + 15) & ~15
        self.used += count * _sizeof(dtype)


def table_rows(nb: int, rows: int) -> int:
    """table_rows<ROWS>: the resident table's rows, NB rounded up to a chunk of ROWS."""
    return -(-nb // rows) * rows


def qr_rows(shape: "Shape") -> int:
    """p.qr_rows: the rows of a tile its sequences fill (pack N), or ROWS."""
    rows = rows_per_tile(shape.dtype)
    return rows // shape.N * shape.N if shape.N <= rows else rows


def fwd_smem(dtype: str, dp: int, nb: int, mode: str, qr_rows: int) -> int:
    """FwdSmem<scalar_t, DP, ROWS>(nullptr, NB, mode, qr_rows).bytes."""
    rows, (_, acc, tc) = rows_per_tile(dtype), DTYPES[dtype]
    ld, ldp = dp + pad(dtype), rows + pad(acc)
    c = _Carver()
    for _ in range(3):                       # Qs, Ks, Vs
        c.take(dtype, rows * ld)
    c.take(acc, 0 if tc else rows * ldp)     # Ps (the tensor cores keep P in registers)
    c.take("uint8", rows * (rows + 8) * id_bytes(nb))  # ids
    for _ in range(4):                       # qseq, qpos, kseq, kpos
        c.take("int", rows)
    c.take(dtype, table_rows(nb, rows) * ld if mode == "contextual" else 0)  # Rs, resident
    c.take(acc, qr_rows * table_width(nb) if mode == "contextual" else 0)   # qR, its rows
    c.take(acc, nb if mode == "bias" else 0)  # bias
    return c.used


def bwd_smem(dtype: str, dp: int, nb: int, mode: str, dq_kernel: bool, fused: bool = False,
             width: int = 0) -> int:
    """BwdSmem<scalar_t, DP, ROWS>(nullptr, NB, mode, dq_kernel, fused, width).bytes."""
    rows, (_, acc, tc) = rows_per_tile(dtype), DTYPES[dtype]
    ld, ldp, lds, ldq = dp + pad(dtype), rows + pad(acc), rows + 1, rows + pad(dtype)
    kv = rows * ldq if dq_kernel and fused and ldq > ld else rows * ld  # P and dS staged there
    c = _Carver()
    c.take(dtype, rows * ld)                 # Qs
    c.take(dtype, rows * ld)                 # dOs
    c.take(dtype, kv)                        # Ks
    c.take(dtype, kv)                        # Vs
    c.take(acc, 0 if dq_kernel or tc else rows * ldp)   # Ps (FMA path's dk/dv kernel)
    c.take(acc, rows * lds if dq_kernel and not tc else 0)   # dSs (FMA path's dq kernel)
    c.take("uint8", rows * (rows + 8) * id_bytes(nb))   # ids
    for _ in range(4):                       # qseq, qpos, kseq, kpos
        c.take("int", rows)
    c.take(acc, rows)                        # lse
    c.take(acc, 0 if dq_kernel and fused else rows)     # delta
    c.take(acc, width if dq_kernel and fused and mode != "none" else 0)   # the d(rpe) partial
    c.take(dtype, table_rows(nb, rows) * ld if mode == "contextual" else 0)  # Rs, resident
    c.take(acc, rows * table_width(nb) if mode == "contextual" else 0)         # qR
    shared_dt = dq_kernel and fused and mode == "contextual"           # dT in qR's memory
    c.take(acc, rows * dt_width(nb) if dq_kernel and mode != "none" and not shared_dt else 0)
    c.take(acc, nb if mode == "bias" else 0)                             # bias
    return c.used


@dataclass(frozen=True)
class Shape:
    """q, k, v of (S, N, H, d); the iRPE table (NB, d), (H, NB, d) per head, or the
    bias (H, NB)."""
    S: int
    N: int
    H: int
    d: int
    dtype: str = "bf16"
    rpe_mode: str = "contextual"
    NB: int = 50
    per_head: bool = False

    def __post_init__(self):
        for name in ("S", "N", "H", "d"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.rpe_mode not in MODES:
            raise ValueError(f"rpe_mode={self.rpe_mode!r}: one of {sorted(MODES)}")
        _sizeof(self.dtype)

    def label(self) -> str:
        table = "" if self.rpe_mode == "none" else f" NB={self.NB}" + \
            (" per-head" if self.per_head else "")
        return (f"S={self.S} N={self.N} H={self.H} d={self.d} {self.dtype} "
                f"{self.rpe_mode}{table}")


@dataclass(frozen=True)
class Params:
    """The tile bookkeeping of make_params."""
    NB: int
    per_head: bool
    pack: int
    row_tiles: int
    tiles_per_head: int
    num_tiles: int
    groups: int
    group_width: int


def make_params(shape: Shape) -> Params:
    rows = rows_per_tile(shape.dtype)
    S, N, H = shape.S, shape.N, shape.H
    nb = 0 if shape.rpe_mode == "none" else shape.NB  # Params{} leaves NB = 0
    per_head = shape.rpe_mode == "contextual" and shape.per_head
    pack = rows // N if N <= rows else 1
    row_tiles = 1 if N <= rows else -(-N // rows)
    tiles_per_head = -(-S // pack) if N <= rows else S * row_tiles
    groups = H if shape.rpe_mode == "bias" or per_head else 1
    group_width = nb * shape.d if shape.rpe_mode == "contextual" else nb
    return Params(nb, per_head, pack, row_tiles, tiles_per_head, H * tiles_per_head, groups,
                  group_width)


@dataclass(frozen=True)
class Launch:
    kernel: str        # as ptxas_report names it: base<scalar, DP, ROWS>
    grid: tuple        # (x, y)
    threads: int
    dynamic_smem: int

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def base(self) -> str:
        return self.kernel.split("<", 1)[0]


def dq_blocks(params: Params, mode: str, sms: int) -> int:
    """The dq kernel's blocks per table group: a fixed count per GPU (4 per SM over the
    groups), so the d(rpe) summation order depends only on the shapes and the card."""
    group_tiles = params.num_tiles // params.groups
    if mode == "none":
        return group_tiles
    return max(1, min(group_tiles, (4 * sms + params.groups - 1) // params.groups))


RUN_BLOCKS_PER_SM, MAX_RUN_TILES = 8, 8


def run_blocks(params: Params, H: int, sms: int) -> tuple[int, int]:
    """(run_tiles, blocks) of the forward and dk/dv kernels (plan_runs): runs of up to 8
    consecutive tiles of one head, as long as 8 blocks per SM remain."""
    if sms < 1:
        raise ValueError(f"sms={sms}: a card has at least one SM")
    run = max(1, min(MAX_RUN_TILES, params.num_tiles // (RUN_BLOCKS_PER_SM * sms)))
    return run, H * -(-params.tiles_per_head // run)


def forward_launches(shape: Shape, sms: int) -> list[Launch]:
    p, rows, dp = make_params(shape), rows_per_tile(shape.dtype), padded_head_dim(shape.d)
    tmpl = f"<{shape.dtype}, {dp}, {rows}>"
    return [Launch("window_attention_fwd_kernel" + tmpl, (run_blocks(p, shape.H, sms)[1], 1),
                   2 * rows, fwd_smem(shape.dtype, dp, p.NB, shape.rpe_mode, qr_rows(shape)))]


def fused_backward(shape: Shape) -> bool:
    """N <= ROWS: the dq kernel computes the whole backward (p.fused_backward): no delta
    or dk/dv kernel."""
    return shape.N <= rows_per_tile(shape.dtype)


def delta_blocks(shape: Shape, sms: int) -> int:
    """The delta kernel's grid (launched when N > ROWS only)."""
    return min(-(-(shape.S * shape.H * shape.N) // 8), sms * 32)


def backward_launches(shape: Shape, sms: int) -> list[Launch]:
    """delta, dq, dk/dv (N > ROWS) or the fused dq kernel alone (N <= ROWS), then (with
    a table) the d(rpe) reduction, in launch order."""
    if sms < 1:
        raise ValueError(f"sms={sms}: a card has at least one SM")
    p, rows, dp = make_params(shape), rows_per_tile(shape.dtype), padded_head_dim(shape.d)
    acc = DTYPES[shape.dtype][1]
    tmpl = f"<{shape.dtype}, {dp}, {rows}>"
    fused = fused_backward(shape)
    out = [] if fused else [
        Launch(f"window_attention_delta_kernel<{shape.dtype}>", (delta_blocks(shape, sms), 1), 256, 0)]
    out.append(Launch("window_attention_dq_kernel" + tmpl,
                      (dq_blocks(p, shape.rpe_mode, sms), p.groups), 2 * rows,
                      bwd_smem(shape.dtype, dp, p.NB, shape.rpe_mode, True, fused, p.group_width)))
    if not fused:
        out.append(Launch("window_attention_dkdv_kernel" + tmpl, (run_blocks(p, shape.H, sms)[1], 1),
                          2 * rows, bwd_smem(shape.dtype, dp, p.NB, shape.rpe_mode, False)))
    if shape.rpe_mode != "none":
        total = p.groups * p.group_width
        out.append(Launch(f"window_attention_drpe_kernel<{shape.dtype}, {acc}>",
                          (min(-(-total // 256), sms * 8), 1), 256, 0))
    return out
