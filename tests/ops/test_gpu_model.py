"""The GPU model (bench/gpu_model/, make gpu-model) without nvcc and without a GPU:
the ptxas report parser on real captured reports (tests/ops/data/), the occupancy
calculator against values worked by hand from the CUDA Occupancy Calculator's rules,
the floors against a hand count, the launch-geometry mirror against the C++ formulas
of csrc/cuda/window_attention.cu (cut from the source and compiled with the host
compiler, about a second), and the record's labels."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
REPORTS = [DATA / "ptxas_window_attention_sm80.txt", DATA / "ptxas_window_attention_sm90.txt"]
KERNEL_SOURCE = ROOT / "csrc" / "cuda" / "window_attention.cu"
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from gpu_model import cards, compile_facts, floors, ptxas_report, record, triton_facts  # noqa: E402
from gpu_model import launch_geometry as lg, occupancy as occ  # noqa: E402
from gpu_model.__main__ import main as gpu_model_main  # noqa: E402

A100, H100, H200 = cards.CARDS
PRETRAIN = lg.Shape(S=1024, N=50, H=12, d=64)


def _by_name(kernels):
    return {k.name: k for k in kernels}


# ---- the ptxas report ---------------------------------------------------------------

def _parsed(path):
    return _by_name(ptxas_report.parse(path.read_text()))


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) not installed")
def test_parser_reads_every_entry_of_a_real_report():
    # nvcc 13.0 --resource-usage on window_attention.cu with the shipped flags:
    # 4 scalar types x (3 tile kernels x 4 head dims + delta + drpe) = 56 entries.
    for path, arch in zip(REPORTS, ("sm_80", "sm_90")):
        kernels = ptxas_report.parse(path.read_text())
        assert len(kernels) == 56 and {k.arch for k in kernels} == {arch}
        assert len({k.name for k in kernels}) == 56
    sm80, sm90 = _parsed(REPORTS[0]), _parsed(REPORTS[1])
    fwd = sm90["window_attention_fwd_kernel<bf16, 64, 64>"]
    assert (fwd.registers, fwd.barriers, fwd.static_smem, fwd.stack_frame) == (96, 1, 0, 0)
    assert sm90["window_attention_dq_kernel<bf16, 64, 64>"].registers == 196
    assert sm80["window_attention_dq_kernel<bf16, 64, 64>"].registers == 174
    assert sm80["window_attention_dkdv_kernel<bf16, 64, 64>"].registers == 214
    assert sm80["window_attention_fwd_kernel<bf16, 64, 64>"].cmem == {0: 712}
    assert sm90["window_attention_fwd_kernel<bf16, 64, 64>"].cmem == {}  # sm_90 omits it
    spill = sm80["window_attention_dkdv_kernel<fp64, 128, 16>"]
    assert (spill.registers, spill.stack_frame, spill.spill_stores, spill.spill_loads) == \
        (255, 216, 648, 432)
    assert sm90["window_attention_drpe_kernel<fp64, fp64>"].registers == 31
    # the only entry that spills, on either arch
    assert [k.name for k in sm80.values() if k.spill_stores] == \
        [k.name for k in sm90.values() if k.spill_stores] == \
        ["window_attention_dkdv_kernel<fp64, 128, 16>"]


def test_parser_keeps_device_functions_out_of_the_entries_and_reads_every_item():
    report = """\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperv
    24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _Z6helperv
    24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 87 registers, used 1 barriers, 1200 bytes smem, 360 bytes cmem[0], 8 bytes cmem[2]
ptxas warning : Registers are spilled to local memory in function '_Z1kPf'
ptxas info    : Compiling entry function '_Z2tkILi3EEvPd' for 'sm_80'
ptxas info    : Function properties for _Z2tkILi3EEvPd
    16 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
"""
    k, tk = ptxas_report.parse(report, demangle=lambda names: names)
    assert (k.mangled, k.registers, k.barriers, k.static_smem, k.cmem) == \
        ("_Z1kPf", 87, 1, 1200, {0: 360, 2: 8})
    assert (k.stack_frame, k.spill_stores, k.spill_loads) == (0, 0, 0)  # not the helper's
    assert k.warnings == ["Registers are spilled to local memory in function '_Z1kPf'"]
    assert (tk.registers, tk.static_smem, tk.stack_frame, tk.spill_stores, tk.spill_loads) == \
        (8, 0, 16, 4, 12)


def test_readable_names_drop_namespaces_and_parameters_and_shorten_types():
    assert ptxas_report.readable(
        "void lomar_ops::(anonymous namespace)::window_attention_dq_kernel<c10::BFloat16, "
        "128, 64>(lomar_ops::(anonymous namespace)::Params)") == \
        "window_attention_dq_kernel<bf16, 128, 64>"
    assert ptxas_report.readable(
        "void lomar_ops::(anonymous namespace)::window_attention_drpe_kernel<double, double>"
        "(double const*, double*, int, int, long)") == "window_attention_drpe_kernel<fp64, fp64>"
    assert ptxas_report.readable("k(float*)") == "k"
    assert ptxas_report.readable("_Z1kPf") == "_Z1kPf"  # c++filt could not demangle it


# ---- the compile -------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"),
                    reason="no CUDA toolkit: setup.py refuses LOMAR_CUDA=1 without nvcc")
def test_the_compile_uses_the_shipped_builds_flags():
    torch = pytest.importorskip("torch")
    if torch.version.cuda is None:
        pytest.skip("torch is not a CUDA build: setup.py refuses LOMAR_CUDA=1")
    flags = compile_facts.shipped_build_flags(ROOT)
    cmd = flags.command(KERNEL_SOURCE, "sm_90", Path("x.cubin"))
    setup_py = ["-O3", "-DLOMAR_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
    torch_adds = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
                  "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", "-fPIC"]
    ours = ["-cubin", "-gencode=arch=compute_90,code=sm_90", "--resource-usage"]
    missing = [f for f in setup_py + torch_adds + ours if f not in cmd]
    assert not missing, cmd
    assert any(re.fullmatch(r"-DLOMAR_TORCH_VERSION=\"[\d.]+\"", a) for a in cmd), cmd
    assert f"-I{ROOT / 'csrc'}" in cmd and any(a.endswith("torch/include") for a in cmd)
    assert sum(a.startswith("-std=c++") for a in cmd) == 1
    assert "csrc/cuda/window_attention.cu" in flags.cuda_sources


def test_reports_are_cached_until_the_source_or_its_headers_change(tmp_path):
    # A stand-in nvcc that logs each compile and prints a one-kernel report.
    log = tmp_path / "compiles.log"
    fake = tmp_path / "nvcc"
    fake.write_text(f"""#!/bin/sh
if [ "$1" = --version ]; then echo "Cuda compilation tools, release 13.0, V13.0.88"; exit 0; fi
echo "$@" >> {log}
echo "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'"
echo "ptxas info    : Used 8 registers, used 0 barriers"
""")
    fake.chmod(0o755)
    root = tmp_path / "repo"
    (root / "csrc" / "cuda").mkdir(parents=True)
    (root / "csrc" / "lomar_ops.h").write_text("// v1\n")
    (root / "csrc" / "cuda" / "op.cu").write_text('#include "../lomar_ops.h"\n')
    (root / "csrc" / "unrelated.h").write_text("// v1\n")
    flags = compile_facts.BuildFlags(str(fake), [str(root / "csrc")], ["-O3"],
                                     ["csrc/cuda/op.cu"])
    assert compile_facts.project_headers(root / "csrc" / "cuda" / "op.cu", root) == \
        [(root / "csrc" / "lomar_ops.h").resolve()]

    def compiles():
        reports = compile_facts.compile_reports(root, flags, archs=("sm_90",), jobs=1,
                                                log=lambda *_: None)
        assert "Used 8 registers" in reports[("csrc/cuda/op.cu", "sm_90")]
        return len(log.read_text().splitlines())

    assert compiles() == 1
    assert compiles() == 1                      # cached
    (root / "csrc" / "unrelated.h").write_text("// v2\n")
    assert compiles() == 1                      # a header op.cu does not include
    (root / "csrc" / "lomar_ops.h").write_text("// v2\n")
    assert compiles() == 2                      # one it does
    (root / "csrc" / "cuda" / "op.cu").write_text('#include "../lomar_ops.h"\n// edit\n')
    assert compiles() == 3


# ---- occupancy --------------------------------------------------------------------

def test_occupancy_of_the_forward_kernel_by_hand():
    # 128 threads = 4 warps, 96 registers, 71168 bytes of dynamic shared memory:
    #   warps:     64 // 4 = 16 blocks
    #   registers: 96 * 32 = 3072 per warp (a multiple of 256); 65536 / 4 = 16384 per
    #              sub-partition, 16384 // 3072 = 5 warps each, 20 per SM -> 20 // 4 = 5
    #   shared:    71168 + 1024 reserved = 72192 = 564 * 128 (no rounding);
    #              H100 233472 // 72192 = 3 (3.23); A100 167936 // 72192 = 2 (2.33)
    h = occ.occupancy(H100, threads=128, registers=96, dynamic_smem=71168)
    assert h.limits == {"warps": 16, "blocks": 32, "registers": 5, "shared_memory": 3}
    assert (h.blocks_per_sm, h.warps_per_sm, h.binding) == (3, 12, ["shared_memory"])
    assert (h.registers_per_warp, h.smem_per_block) == (3072, 72192)
    assert h.occupancy(H100) == 12 / 64
    a = occ.occupancy(A100, threads=128, registers=96, dynamic_smem=71168)
    assert (a.blocks_per_sm, a.binding) == (2, ["shared_memory"])


def test_occupancy_rounds_registers_per_warp_and_per_sub_partition():
    # 166 registers: 166 * 32 = 5312 -> 5376 (21 * 256); 16384 // 5376 = 3 warps per
    # sub-partition (3.05), 12 per SM -> 3 blocks of 4 warps. Without the rounding,
    # 65536 // (5312 * 4) = 3 too, so also check a case where it matters:
    # 200 registers: 6400 per warp; 16384 // 6400 = 2 -> 8 warps -> 2 blocks, where
    # 65536 // (6400 * 4) would give 2.56 -> 2 and 65536 / 6400 = 10 warps -> 2 blocks;
    # and 144 registers with 1 warp per block: 4608 per warp, 16384 // 4608 = 3 per
    # sub-partition -> 12 blocks (65536 // 4608 = 14 without the partition split).
    assert occ.occupancy(H100, 128, 166).limits["registers"] == 3
    assert occ.occupancy(H100, 128, 200).limits["registers"] == 2
    one_warp = occ.occupancy(H100, 32, 144)
    assert (one_warp.registers_per_warp, one_warp.limits["registers"]) == (4608, 12)
    # 33 registers: 1056 -> 1280 per warp; 16384 // 1280 = 12 -> 48 warps -> 6 blocks of 8
    r = occ.occupancy(A100, 256, 33)
    assert (r.registers_per_warp, r.limits["registers"], r.blocks_per_sm) == (1280, 6, 6)
    assert r.binding == ["registers"]


def test_occupancy_other_limits_and_ties():
    # 1 warp, few registers, no shared memory: 64 warps would fit, 32 blocks bind.
    small = occ.occupancy(H200, threads=32, registers=16)
    assert (small.blocks_per_sm, small.binding, small.limits["warps"]) == (32, ["blocks"], 64)
    # 256 threads x 32 registers: 8 blocks by warps (64 // 8) and by registers
    # (1024 per warp, 16 per sub-partition, 64 per SM // 8): a tie, both named.
    tie = occ.occupancy(H200, threads=256, registers=32)
    assert (tie.blocks_per_sm, tie.binding) == (8, ["warps", "registers"])
    # shared memory rounded to 128 bytes with the 1 KB: 100 + 1024 = 1124 -> 1152
    assert occ.occupancy(H100, 64, 32, static_smem=60, dynamic_smem=40).smem_per_block == 1152


def test_blocks_that_do_not_launch():
    # 1024 threads x 64 registers = 32 warps x 2048 = 65536: exactly fits, 1 block.
    assert occ.occupancy(H100, 1024, 64).blocks_per_sm == 1
    # 65 registers: 2080 -> 2304 per warp x 32 warps = 73728 > 65536 registers per block.
    over = occ.occupancy(H100, 1024, 65)
    assert over.blocks_per_sm == 0 and "registers" in over.why_not
    # 227 KB is an H100 block's opt-in limit; one byte more does not launch; the A100's is 163 KB.
    assert occ.occupancy(H100, 128, 32, dynamic_smem=227 * 1024).blocks_per_sm == 1
    assert occ.occupancy(H100, 128, 32, dynamic_smem=227 * 1024 + 1).blocks_per_sm == 0
    assert occ.occupancy(A100, 128, 32, dynamic_smem=164 * 1024).why_not.endswith(
        "exceed the 166912 a block may opt in to")


def test_occupancy_names_the_bad_argument():
    with pytest.raises(ValueError, match="threads=2048"):
        occ.occupancy(H100, threads=2048, registers=32)
    with pytest.raises(ValueError, match="registers=256"):
        occ.occupancy(H100, threads=128, registers=256)
    with pytest.raises(ValueError, match="dynamic_smem=-1"):
        occ.occupancy(H100, threads=128, registers=32, dynamic_smem=-1)


# ---- floors -------------------------------------------------------------------------

def test_floors_by_hand_at_the_pretraining_shape():
    # one (S, N, H, d) bf16 tensor: 1024 * 50 * 12 * 64 = 39,321,600 elements, 78,643,200 B
    # lse: 1024 * 12 * 50 fp32 = 2,457,600 B; table 50 * 64 bf16 = 6,400 B;
    # bucket map 50 * 50 int32 = 10,000 B.
    t = floors.op_traffic(PRETRAIN)
    assert t["forward"]["read"] == 3 * 78_643_200 + 6_400 + 10_000 == 235_946_000
    assert t["forward"]["written"] == 78_643_200 + 2_457_600
    assert t["backward"]["read"] == 5 * 78_643_200 + 2_457_600 + 16_400
    assert t["backward"]["written"] == 3 * 78_643_200 + 6_400
    assert t["forward+backward"]["bytes"] == 948_672_800
    # FLOPs: 4 S H N^2 d = 7,864,320,000; 2 S H N NB d = 3,932,160,000
    assert t["forward"]["flops"] == 7_864_320_000 + 3_932_160_000
    assert t["backward"]["flops"] == 2.5 * 7_864_320_000 + 2 * 3_932_160_000
    # H200 measured 4166.2 GB/s: 948,672,800 / 4166.2e9 s = 0.22771 ms; compute
    # 39.3216e9 / 701.6e12 = 0.056 ms, so memory bound.
    h200 = cards.with_measured_ceilings(cards.CARDS, ROOT / "bench" / "results")[2]
    f = floors.time_floor_ms(t["forward+backward"]["bytes"], t["forward+backward"]["flops"], h200)
    assert f["bound"] == "memory" and f["floor_ms"] == pytest.approx(0.22771, abs=1e-5)


def test_the_backward_kernels_floors_by_hand():
    # dq's grid on 132 SMs: min(12288 tiles, 4 * 132) = 528 blocks, each an fp32
    # partial of 50 * 64 = 3200 elements: 528 * 3200 * 4 = 6,758,400 bytes.
    launches = lg.backward_launches(PRETRAIN, sms=132)
    per = [t["bytes"] for t in floors.kernel_traffic(PRETRAIN, launches)]
    e, r, tab = 78_643_200, 2_457_600, 16_400
    # N = 50 <= 64 rows: the dq kernel is the whole backward: q, k, v, dO, lse, the
    # table and the map in; dq, dk, dv and the partials out (no D, out not read).
    assert [launch.base for launch in launches] == ["window_attention_dq_kernel",
                                                    "window_attention_drpe_kernel"]
    assert per == [4 * e + r + tab + 3 * e + 6_758_400,         # fused dq, dk, dv, partials
                   6_758_400 + 6_400]                           # d(rpe)
    # N = 197 > 64: the delta kernel reads out and dO; dq reads D.
    fine = lg.Shape(64, 197, 12, 64)
    e2, r2 = 64 * 197 * 12 * 64 * 2, 64 * 12 * 197 * 4
    per = {launch.base: t["bytes"] for launch, t in zip(
        lg.backward_launches(fine, sms=132),
        floors.kernel_traffic(fine, lg.backward_launches(fine, sms=132)))}
    assert per["window_attention_delta_kernel"] == 2 * e2 + r2
    assert per["window_attention_dq_kernel"] - per["window_attention_drpe_kernel"] + 6_400 \
        == 4 * e2 + 2 * r2 + 6_400 + 197 * 197 * 4 + e2


# ---- the launch-geometry mirror against the C++ ------------------------------------

def _cut(text: str, start: str, what: str) -> str:
    """The declaration or statement of ``text`` that starts where the regex ``start``
    matches: up to the first ';' or through the brace block that comes first (and its
    trailing ';')."""
    m = re.search(start, text, re.M)
    assert m, (f"{KERNEL_SOURCE.name}: {what} not found (/{start}/); if the kernel's host "
               "code changed, update bench/gpu_model/launch_geometry.py and this test")
    i, n = m.start(), len(text)
    semi, brace = text.find(";", i), text.find("{", i)
    if semi != -1 and (brace == -1 or semi < brace):
        return text[i:semi + 1]
    depth, j = 0, brace
    while j < n:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            break
        j += 1
    end = j + 1
    rest = text[end:].lstrip()
    if rest.startswith(";"):
        end = text.index(";", end) + 1
    return text[i:end]


_DECLS = [  # (regex of the start, what): the host code's pieces, in order
    (r"^enum Mode\b", "enum Mode"),
    (r"^template <typename T> struct AccType\b", "AccType"),
    (r"^template <> struct AccType<double>", "AccType<double>"),
    (r"^template <typename T>\s*constexpr bool kTensorCores\b", "kTensorCores"),
    (r"^template <typename T> constexpr int kPad\b", "kPad"),
    (r"^template <typename T> constexpr int kRows\b", "kRows"),
    (r"^constexpr int kNoBucket\b", "kNoBucket"),
    (r"^constexpr int kNoBucket8\b", "kNoBucket8"),
    (r"^template <int ROWS> constexpr int kIdsLd\b", "kIdsLd"),
    (r"^__host__ __device__ inline int id_bytes\b", "id_bytes"),
    (r"^struct Strides\b", "struct Strides"),
    (r"^struct Params\b", "struct Params"),
    (r"^struct Carver\b", "struct Carver"),
    (r"^__host__ __device__ inline int dt_width\b", "dt_width"),
    (r"^__host__ __device__ inline int table_width\b", "table_width"),
    (r"^template <int ROWS> __host__ __device__ inline int table_rows\b", "table_rows"),
    (r"^template <typename scalar_t, int DP, int ROWS>\s*struct FwdSmem\b", "FwdSmem"),
    (r"^template <typename scalar_t, int DP, int ROWS>\s*struct BwdSmem\b", "BwdSmem"),
    (r"^constexpr int kHeadDims\b", "kHeadDims"),
    (r"^int padded_head_dim\b", "padded_head_dim"),
    (r"^Strides strides_of\b", "strides_of"),
    (r"^Params make_params\b", "make_params"),
    (r"^constexpr int64_t kRunBlocksPerSm\b", "kRunBlocksPerSm"),
    (r"^void plan_runs\b", "plan_runs"),
]
_BWD_STATEMENTS = [  # the backward's grid arithmetic, inside window_attention_bwd_cuda
    r"const int64_t rows =", r"const int64_t delta_blocks =", r"const int64_t group_tiles =",
    r"const int64_t blocks =", r"const int64_t total =", r"const int64_t threads = \d+, grid ="]

_HARNESS = r"""
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>
#define __host__
#define __device__
#define __forceinline__ inline
#define TORCH_CHECK(cond, ...) \
  do { if (!(cond)) throw std::runtime_error("TORCH_CHECK"); } while (0)
namespace c10 {
struct Half { uint16_t x; };
struct BFloat16 { uint16_t x; };
template <class T> using optional = std::optional<T>;
using string_view = std::string_view;
inline constexpr std::nullopt_t nullopt = std::nullopt;
}  // namespace c10
namespace at {
struct Tensor {  // what make_params and strides_of ask of a tensor
  std::vector<int64_t> sizes_, strides_;
  int64_t esize = 2;
  int64_t size(int64_t i) const { return sizes_[i]; }
  int64_t stride(int64_t i) const { return strides_[i]; }
  int64_t dim() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t element_size() const { return esize; }
  void* data_ptr() const { return reinterpret_cast<void*>(uintptr_t(4096)); }
  template <class T> T* data_ptr() const { return reinterpret_cast<T*>(uintptr_t(4096)); }
};
}  // namespace at
namespace lomar_ops { namespace {
DECLS
at::Tensor contiguous(std::vector<int64_t> sizes, int64_t esize) {
  at::Tensor t;
  t.sizes_ = sizes;
  t.esize = esize;
  t.strides_.assign(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 2; i >= 0; --i)
    t.strides_[i] = t.strides_[i + 1] * sizes[i + 1];
  return t;
}
template <typename scalar_t>
void one_case(int64_t S, int64_t N, int64_t H, int64_t d, const std::string& mode, int64_t NB,
              bool per_head, int64_t sms) {
  constexpr int ROWS = kRows<scalar_t>;
  const auto q = contiguous({S, N, H, d}, sizeof(scalar_t));
  std::optional<at::Tensor> rpe, ids;
  if (mode != "none") {
    ids = contiguous({N, N}, 4);
    rpe = mode == "bias" ? contiguous({H, NB}, sizeof(scalar_t))
          : per_head     ? contiguous({H, NB, d}, sizeof(scalar_t))
                         : contiguous({NB, d}, sizeof(scalar_t));
  }
  Params p = make_params(q, q, q, rpe, ids, mode, 0.125, ROWS);
  plan_runs(p, sms);
  const int DP = padded_head_dim(d);
  size_t fwd = 0, dkdv = 0, dq = 0;
  auto sizes = [&](auto dp_const) {
    constexpr int D = decltype(dp_const)::value;
    fwd = FwdSmem<scalar_t, D, ROWS>(nullptr, p.NB, p.mode, p.qr_rows).bytes;
    dkdv = BwdSmem<scalar_t, D, ROWS>(nullptr, p.NB, p.mode, false, false, 0).bytes;
    dq = BwdSmem<scalar_t, D, ROWS>(nullptr, p.NB, p.mode, true, p.fused_backward, p.group_width).bytes;
  };
  if (DP == 32) sizes(std::integral_constant<int, 32>{});
  else if (DP == 64) sizes(std::integral_constant<int, 64>{});
  else if (DP == 80) sizes(std::integral_constant<int, 80>{});
  else sizes(std::integral_constant<int, 128>{});
  BWD
  int64_t drpe_grid = 0;
  if (p.mode != kNone) {
    DRPE
    drpe_grid = grid;
  }
  std::printf("NB=%d per_head=%d pack=%d row_tiles=%d tiles_per_head=%lld num_tiles=%lld "
              "groups=%d group_width=%lld dp=%d rows=%d fwd_smem=%zu dkdv_smem=%zu "
              "dq_smem=%zu delta_blocks=%lld dq_blocks=%lld drpe_grid=%lld run_tiles=%lld "
              "run_blocks=%lld\n",
              p.NB, p.per_head, p.pack, p.row_tiles, (long long)p.tiles_per_head,
              (long long)p.num_tiles, p.groups, (long long)p.group_width, DP, ROWS, fwd, dkdv,
              dq, (long long)delta_blocks, (long long)blocks, (long long)drpe_grid,
              (long long)p.run_tiles, (long long)(p.H * p.runs_per_head));
}
}}  // namespace lomar_ops::(anonymous)
int main() {
  std::string dtype, mode;
  long long S, N, H, d, NB, per_head, sms;
  while (std::cin >> S >> N >> H >> d >> dtype >> mode >> NB >> per_head >> sms) {
    using namespace lomar_ops;
    if (dtype == "bf16") one_case<c10::BFloat16>(S, N, H, d, mode, NB, per_head, sms);
    else if (dtype == "fp16") one_case<c10::Half>(S, N, H, d, mode, NB, per_head, sms);
    else if (dtype == "fp32") one_case<float>(S, N, H, d, mode, NB, per_head, sms);
    else one_case<double>(S, N, H, d, mode, NB, per_head, sms);
  }
}
"""

# (shape, SM count): the model's shapes and every code path of the formulas (packed
# and cut sequences, odd N, S not a multiple of the pack, every mode and scalar type,
# per-head tables, head dims between the padded sizes, more tiles than 4 x SMs and fewer).
_CASES = [(PRETRAIN, 132), (PRETRAIN, 108), (lg.Shape(64, 197, 12, 64), 132),
          (lg.Shape(64, 577, 12, 64), 108), (lg.Shape(5, 17, 3, 24, "fp32", "bias", 9), 2),
          (lg.Shape(7, 64, 2, 65, "fp16", "contextual", 130, True), 3),
          (lg.Shape(3, 65, 4, 128, "fp64", "none"), 132),
          (lg.Shape(33, 31, 1, 80, "bf16", "contextual", 7), 1),
          (lg.Shape(1, 1, 1, 1, "fp32", "contextual", 1, True), 4),
          (lg.Shape(2, 16, 5, 33, "fp64", "bias", 300), 2),
          (lg.Shape(9, 33, 2, 64, "fp32", "contextual", 64), 16)]


def _cpp_geometry(tmp_path) -> list[dict]:
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++ or $CXX) to compile the C++ formulas")
    text = KERNEL_SOURCE.read_text()
    decls = "\n".join(_cut(text, start, what) for start, what in _DECLS)
    bwd = _cut(text, r"^std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> "
                     r"window_attention_bwd_cuda\(", "window_attention_bwd_cuda")
    stmts = [_cut(bwd, s, s) for s in _BWD_STATEMENTS]
    source = (_HARNESS.replace("DECLS", decls).replace("BWD", "\n".join(stmts[:4]))
              .replace("DRPE", "\n".join(stmts[4:])))
    (tmp_path / "geometry.cpp").write_text(source)
    exe = tmp_path / "geometry"
    subprocess.run([cxx, "-std=c++17", "-O0", "-o", str(exe), str(tmp_path / "geometry.cpp")],
                   check=True, capture_output=True, text=True)
    stdin = "".join(f"{s.S} {s.N} {s.H} {s.d} {s.dtype} {s.rpe_mode} {s.NB} {int(s.per_head)} "
                    f"{sms}\n" for s, sms in _CASES)
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True)
    return [{k: int(v) for k, v in (kv.split("=") for kv in line.split())}
            for line in out.stdout.splitlines()]


def _mirror(shape: lg.Shape, sms: int) -> dict:
    p = lg.make_params(shape)
    fwd, = lg.forward_launches(shape, sms)
    bwd = {launch.base: launch for launch in lg.backward_launches(shape, sms)}
    run_tiles, run_blocks = lg.run_blocks(p, shape.H, sms)
    dp, rows = lg.padded_head_dim(shape.d), lg.rows_per_tile(shape.dtype)
    return {"NB": p.NB, "per_head": int(p.per_head), "pack": p.pack, "row_tiles": p.row_tiles,
            "tiles_per_head": p.tiles_per_head, "num_tiles": p.num_tiles, "groups": p.groups,
            "group_width": p.group_width, "dp": dp, "rows": rows,
            "fwd_smem": fwd.dynamic_smem,
            # the dk/dv kernel runs for N > ROWS only; its layout is sized either way
            "dkdv_smem": lg.bwd_smem(shape.dtype, dp, p.NB, shape.rpe_mode, dq_kernel=False),
            "dq_smem": bwd["window_attention_dq_kernel"].dynamic_smem,
            "delta_blocks": lg.delta_blocks(shape, sms),
            "dq_blocks": bwd["window_attention_dq_kernel"].grid[0],
            "drpe_grid": bwd["window_attention_drpe_kernel"].grid[0]
            if "window_attention_drpe_kernel" in bwd else 0,
            "run_tiles": run_tiles, "run_blocks": run_blocks}


@pytest.fixture(scope="module")
def cpp_geometry(tmp_path_factory):
    return _cpp_geometry(tmp_path_factory.mktemp("gpu_model_geometry"))


def test_the_mirror_agrees_with_the_cpp_formulas(cpp_geometry):
    assert len(cpp_geometry) == len(_CASES)
    for (shape, sms), cpp in zip(_CASES, cpp_geometry):
        assert _mirror(shape, sms) == cpp, f"{shape.label()} on {sms} SMs"
    # the pretraining shape's figures, worked by hand: one window per 64-row tile,
    # 1024 x 12 tiles; the forward's shared memory 3 x 64 x 72 x 2 (Q, K, V) + 64 x 72
    # (8-bit bucket ids in rows of 72; P stays in registers) + 4 x 64 x 4 (rows) +
    # 64 x 72 x 2 (the resident table, NB = 50 rounded up to 64 rows) + 50 x 56 x 4
    # (qR: the 50 rows a window fills, NB = 50 rounded to 8 mod 16) = 53696.
    assert cpp_geometry[0]["num_tiles"] == 12288 and cpp_geometry[0]["fwd_smem"] == 53696
    # runs: 12288 tiles / (8 x 132 SMs) = 11.6, capped at 8 tiles: 128 runs per head.
    assert cpp_geometry[0]["run_tiles"] == 8 and cpp_geometry[0]["run_blocks"] == 12 * 128


def _top_level_args(text: str) -> list[str]:
    """Split a C++ argument list at the commas outside (), <> of templates and {}."""
    args, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "({" or (ch == "<" and i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            depth += 1
        elif ch in ")}" or (ch == ">" and depth):
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return args


def _launches_in_source(text: str) -> dict:
    """{kernel: (grid expression, threads expression, smem expression)} of the host
    code's launches: launch(kernel<...>, grid, threads, smem, p, what) and
    kernel<...><<<grid, threads, smem, stream>>>."""
    found = {}
    for m in re.finditer(r"\blaunch\((window_attention_\w+_kernel)<", text):
        open_at = text.index("(", m.start())
        depth, j = 0, open_at
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        args = _top_level_args(text[open_at + 1:j])
        found[m[1]] = (args[1], args[2], args[3])
    for m in re.finditer(r"(window_attention_\w+_kernel)<[^<>]*><<<(.*?)>>>", text, re.S):
        args = _top_level_args(m[2])
        found[m[1]] = (args[0], args[1], args[2])
    return found


def _cpp_expr(expr: str, names: dict):
    """A C++ launch expression evaluated in Python: static_casts dropped, dim3(x[, y]) a
    tuple (x, y), the names bound to ``names``."""
    expr = re.sub(r"static_cast<[^>]*>", "", expr)
    expr = re.sub(r"\bdim3\(", "_dim3(", expr)
    return eval(expr, {"_dim3": lambda x, y=1: (x, y)}, names)  # noqa: S307


def test_the_launches_in_the_source_are_the_ones_the_mirror_models(cpp_geometry):
    text = KERNEL_SOURCE.read_text()
    found = _launches_in_source(text)
    assert set(found) == {f"window_attention_{k}_kernel"
                          for k in ("fwd", "delta", "dkdv", "dq", "drpe")}, found
    # the launches' shared-memory arguments are the layouts the mirror sizes
    smem_of = {"smem": "FwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, p.qr_rows)",
               "dkdv_smem": "BwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, false, false, 0)",
               "dq_smem": "BwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, true, p.fused_backward, "
                          "p.group_width)"}
    for name, layout in smem_of.items():
        assert re.search(rf"const size_t {name} = {re.escape(layout)}\.bytes;", text), name
    for (shape, sms), cpp in zip(_CASES, cpp_geometry):
        names = {"p": SimpleNamespace(num_tiles=cpp["num_tiles"], groups=cpp["groups"], H=shape.H,
                                      runs_per_head=cpp["run_blocks"] // shape.H),
                 "ROWS": cpp["rows"], "blocks": cpp["dq_blocks"],
                 "delta_blocks": cpp["delta_blocks"], "grid": cpp["drpe_grid"], "threads": 256,
                 "smem": cpp["fwd_smem"], "dkdv_smem": cpp["dkdv_smem"],
                 "dq_smem": cpp["dq_smem"]}
        mirror = lg.forward_launches(shape, sms) + lg.backward_launches(shape, sms)
        for launch in mirror:
            grid, threads, smem = (_cpp_expr(e, names) for e in found[launch.base])
            grid = grid if isinstance(grid, tuple) else (grid, 1)
            assert (grid, threads, smem) == (launch.grid, launch.threads, launch.dynamic_smem), \
                f"{launch.kernel} at {shape.label()} on {sms} SMs"
        assert ("window_attention_drpe_kernel" in {m.base for m in mirror}) == \
            (shape.rpe_mode != "none")
        # N <= ROWS: the dq kernel is the whole backward (no delta or dk/dv launch)
        assert ("window_attention_dkdv_kernel" in {m.base for m in mirror}) == (shape.N > cpp["rows"])


def test_mirror_arguments_are_checked():
    with pytest.raises(ValueError, match="rpe_mode='relative'"):
        lg.Shape(1, 50, 12, 64, rpe_mode="relative")
    with pytest.raises(ValueError, match="d=129"):
        lg.forward_launches(lg.Shape(1, 50, 12, 129), sms=132)
    with pytest.raises(ValueError, match="sms=0"):
        lg.backward_launches(PRETRAIN, sms=0)


# ---- cards, the record --------------------------------------------------------------

def test_measured_ceilings_replace_the_spec_only_for_that_card(tmp_path):
    for folder, name, gbps, tiny in [("gpu-2026-01-01-h200", "NVIDIA H200", 4000.0, False),
                                     ("gpu-2026-02-01-h200", "NVIDIA H200", 4100.0, False),
                                     ("dry-latest", "cpu", 9.0, True)]:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ceilings.json").write_text(json.dumps(
            {"device_name": name, "copy_gbps": gbps, "bf16_matmul_tflops": 700.0, "tiny": tiny}))
    a100, h100, h200 = cards.with_measured_ceilings(cards.CARDS, tmp_path)
    assert (h200.bandwidth_gbps, h200.bf16_tflops) == (4100.0, 700.0)  # the newest record
    assert h200.bandwidth_source.startswith("measured") and "gpu-2026-02-01-h200" in \
        h200.bandwidth_source
    assert (h100.bandwidth_gbps, a100.bandwidth_gbps) == (3350.0, 2039.0)
    assert h100.bandwidth_source.startswith("spec") and a100.bf16_source.startswith("spec")


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) not installed")
def test_the_record_says_it_is_a_model(tmp_path, capsys):
    out = tmp_path / "model-test"
    assert gpu_model_main(["--out", str(out), "--reports", *map(str, REPORTS)]) == 0
    model = json.loads((out / "model.json").read_text())
    assert model["model"].startswith("MODEL, no GPU ran")
    readme = (out / "README.md").read_text()
    headings = re.findall(r"^#{1,3} .*$", readme, re.M)
    measured = [h for h in headings if h.startswith("## Measured")]
    assert measured == ["## Measured on a GPU: not the model"]
    # every other heading is labelled, and the measured section comes last
    assert all("no GPU ran" in h for h in headings if h not in measured), headings
    assert headings[-1] in measured
    printed = capsys.readouterr().out
    assert printed.startswith("MODEL, no GPU ran") and "no GPU ran" in printed.splitlines()[-1]
    # the pretraining shape on the H200: the forward's shared memory binds at 4 blocks
    # the pretraining shape on the H200: the forward's shared memory binds at 4 blocks
    pre = model["shapes"][0]
    assert pre["shape"] == PRETRAIN.label()
    fwd = pre["cards"]["H200"][0]
    assert (fwd["kernel"], fwd["blocks_per_sm"], fwd["binding"], fwd["waves"]) == \
        ("window_attention_fwd_kernel<bf16, 64, 64>", 4, ["shared_memory"], 3)  # 1536 runs / 528


def test_triton_rows_get_the_occupancy_rules():
    row = {"kernel": "window_attention._fwd_kernel", "arch": 90, "ok": True, "num_warps": 8,
           "registers": 255, "spill_bytes": 0, "shared_bytes": 32768,
           "constexprs": {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 64, "BLOCK_B": 64}}
    got, = triton_facts.with_occupancy([row], cards.CARDS)
    # 255 registers: 256 x 32 = 8192 per warp, 2 warps per 16 K sub-partition, 8 per SM:
    # one block of 8 warps; shared memory alone would allow 6. sm_90 cards only.
    assert set(got["cards"]) == {"H100 SXM", "H200"}
    assert got["cards"]["H200"] == {"blocks_per_sm": 1, "warps_per_sm": 8,
                                    "binding": ["registers"]}
    text = record.triton_section({"triton": {"rows": [got]}})
    assert "| `window_attention._fwd_kernel` | sm_90 | 64, 64, 64, 64 | 8 | 255 | 0 | 32768 |" \
        in text and "1 (8), registers" in text
    assert "Not compiled: why" in record.triton_section({"triton": {"skipped": "why"}})


def test_the_triton_kernels_of_the_pretraining_shape_compile_for_both_archs():
    # Real compiles (Triton's own ptxas, no GPU): what the record's Triton table shows.
    # In a process of its own: the tests run Triton interpreted, which cannot compile.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT)])
    code = ("import json; from gpu_model import triton_facts; "
            "print(json.dumps(triton_facts.compile_pretraining_kernels()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=False, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(r["ok"] for r in rows), [r.get("error") for r in rows]
    got = {(r["kernel"].rsplit(".", 1)[-1], r["arch"]) for r in rows}
    assert got == {(k, a) for k in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel")
                   for a in (80, 90)}
    for r in rows:
        assert r["constexprs"]["MODE"] == 2 and r["constexprs"]["BLOCK_D"] == 64
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] > 0
