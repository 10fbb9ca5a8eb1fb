// Emulated CUDA rpe_gather (csrc/cuda/rpe_gather.cu) against the CPU op, every dtype:
// the forward gather bitwise, the backward's per-bucket sums within 3x the CPU op's
// own error, and bitwise repeatable.
#include "rpe_gather_emulated.cpp"  // written by emulate_cu.py

#include "check_common.h"

namespace {

using namespace lomar_ops;
using emu_check::Case;

// (S, H, N, NB); strided: a non-contiguous table or gradient and a transposed id map.
void check(int64_t S, int64_t H, int64_t N, int64_t NB, bool strided) {
  auto ids = at::randint(0, NB, {N, N}, at::TensorOptions().dtype(at::kInt));
  if (strided) ids = ids.t();
  for (auto dt : emu_check::kAllTypes) {
    const std::string t = c10::toString(dt);
    auto table = emu_check::randn({S, H, N, NB}, dt);
    if (strided) table = emu_check::strided(table);
    emu_check::same(t + " forward", rpe_gather_cuda(table, ids), rpe_gather_cpu(table, ids));

    auto grad = emu_check::randn({S, H, N, N}, dt);
    if (strided) grad = emu_check::strided(grad);
    const auto got = rpe_gather_backward_cuda(grad, ids, NB);
    emu_check::close(t + " backward", got, rpe_gather_backward_cpu(grad, ids, NB),
                     rpe_gather_backward_cpu(grad.to(at::kDouble), ids, NB), dt);
    emu_check::same(t + " backward repeat", rpe_gather_backward_cuda(grad, ids, NB), got);
  }
}

Case shape(const char* name, bool quick, int64_t S, int64_t H, int64_t N, int64_t NB,
           bool strided = false) {
  return {name, quick, [=] { check(S, H, N, NB, strided); }};
}

}  // namespace

int main(int argc, char** argv) {
  return emu_check::main(argc, argv, {
      // The C++ tests' shapes.
      shape("S=2 H=3 N=7 NB=50", true, 2, 3, 7, 50),
      shape("S=2 H=3 N=1 NB=50", false, 2, 3, 1, 50),
      shape("S=2 H=3 N=50 NB=50", false, 2, 3, 50, 50),
      shape("S=2 H=3 N=17 NB=50", false, 2, 3, 17, 50),
      // One element; a bucket loop with a tail (NB = 33 lanes' worth + 1) and rows
      // that are not whole blocks of 8 warps.
      shape("one element", true, 1, 1, 1, 1),
      shape("tails: N=17 NB=33", true, 1, 1, 17, 33),
      shape("strided inputs", true, 2, 1, 9, 12, true),
      // Grid-stride loops: more elements (forward) and rows (backward) than the grid.
      shape("grid-stride: S=2 H=3 N=65 NB=20", false, 2, 3, 65, 20),
      shape("grid-stride: S=3 H=2 N=100 NB=64", false, 3, 2, 100, 64),
      shape("empty: S=0", true, 0, 2, 5, 7),
  });
}
