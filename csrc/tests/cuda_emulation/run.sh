#!/usr/bin/env bash
# Runs csrc/cuda/window_attention.cu's kernels on the CPU, one std::thread per CUDA
# thread (cuda_emu.h: barriers for __syncthreads/__syncwarp, shuffles, and
# mma.sync m16n8k16 computed from PTX's documented fragment layout), and compares
# forward, lse and the four gradients with the CPU op in fp64, under the tests'
# "3x the CPU op's own error in that dtype" rule, plus d(rpe) repeatability.
# A check of the kernels' logic (tiles, packing, masks, online softmax, bucket
# sums, partials) on machines without a GPU; it says nothing about speed, and
# cannot see what only hardware shows (memory ordering, bank conflicts).
#   csrc/tests/cuda_emulation/run.sh [f64|f32|lowp|extra]   (minutes: 2 cores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=${TMPDIR:-/tmp}/lomar_cuda_emulation
mkdir -p "$work"
python3 - "$root" "$work" <<'PY'
import re, sys
root, work = sys.argv[1:]
s = open(f"{root}/csrc/cuda/window_attention.cu").read()
s = s.replace("#include <ATen/cuda/CUDAContext.h>\n", '#include "cuda_emu.h"\n')
s = s.replace("#include <c10/cuda/CUDAGuard.h>\n", "")
s = s.replace('#include "../lomar_ops.h"', '#include "lomar_ops.h"')
s = s.replace("extern __shared__ __align__(16) unsigned char smem_raw[];",
              "unsigned char* smem_raw = emu::smem();")
i = s.index("#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800")
j = s.index("#endif", i)
s = s[:j] + "#else\n  emu::mma<scalar_t>(c, a0, a1, a2, a3, b0, b1);\n" + s[j:]
s, n = re.subn(r"([\w:]+(?:<[\w, :]+>)?)<<<(.*?)>>>\(",
               lambda m: f"emu::launch({m.group(2)})({m.group(1)}, ", s, flags=re.S)
assert n >= 3, f"expected the kernel launches, found {n}"
open(f"{work}/window_attention_emulated.cpp", "w").write(s)
PY
torch_dir=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")
flags=(-std=c++20 -O1 -DLOMAR_WITH_CUDA -I"$root/csrc" -I"$here" -I"$work"
       -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include")
g++ "${flags[@]}" "$here/check_window_attention.cpp" "$root/csrc/cpu/window_attention.cpp" \
    "$root/csrc/checks.cpp" -o "$work/check_window_attention" -L"$torch_dir/lib" -ltorch \
    -ltorch_cpu -lc10 -Wl,-rpath,"$torch_dir/lib" -pthread
"$work/check_window_attention" "${1:-f64}"
