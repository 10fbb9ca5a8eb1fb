// Emulated CUDA masked_patch_loss (csrc/cuda/masked_patch_loss.cu) against the CPU
// op, every dtype, with and without norm_pix: the loss (warp sums per row, then one
// block's tree) and d(pred) within 3x the CPU op's own error.
#include "masked_patch_loss_emulated.cpp"  // written by emulate_cu.py

#include "check_common.h"

namespace {

using namespace lomar_ops;
using emu_check::Case;

enum Variant { kPlain, kStrided, kOneMasked, kAllMasked };

// density: the fraction of masked rows (only those cost warp shuffles).
void check(int64_t S, int64_t L, int64_t P, Variant variant = kPlain, double density = 0.7) {
  at::Tensor mask = at::rand({S, L}) < density;
  if (variant == kOneMasked) mask = at::zeros({S, L}, at::kBool).index_put_({S - 1, L - 1}, true);
  if (variant == kAllMasked) mask = at::ones({S, L}, at::kBool);
  mask.index_put_({0, 0}, true);  // never an empty mask (the Python layer rejects it)
  for (auto dt : emu_check::kAllTypes) {
    const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor pred = emu_check::randn({S, L, P}, dt), target = emu_check::randn({S, L, P}, dt);
    if (variant == kStrided) {  // pred past a cls row (read in place), target strided (copied)
      pred = emu_check::randn({S, L + 1, P}, dt).narrow(1, 1, L);
      target = emu_check::strided(target);
    }
    const auto grad = at::scalar_tensor(0.5, at::TensorOptions().dtype(acc));
    for (bool norm : {true, false}) {
      if (norm && P < 2) continue;
      const std::string t = std::string(c10::toString(dt)) + (norm ? " norm_pix" : "");
      const auto p64 = pred.to(at::kDouble), t64 = target.to(at::kDouble);
      emu_check::close(t + " loss", masked_patch_loss_cuda(pred, target, mask, norm, 1e-6),
                       masked_patch_loss_cpu(pred, target, mask, norm, 1e-6),
                       masked_patch_loss_cpu(p64, t64, mask, norm, 1e-6), acc);
      emu_check::close(
          t + " d(pred)", masked_patch_loss_backward_cuda(grad, pred, target, mask, norm, 1e-6),
          masked_patch_loss_backward_cpu(grad, pred, target, mask, norm, 1e-6),
          masked_patch_loss_backward_cpu(grad.to(at::kDouble), p64, t64, mask, norm, 1e-6), dt);
    }
  }
}

Case shape(const char* name, bool quick, int64_t S, int64_t L, int64_t P, Variant v = kPlain,
           double density = 0.7) {
  return {name, quick, [=] { check(S, L, P, v, density); }};
}

}  // namespace

int main(int argc, char** argv) {
  return emu_check::main(argc, argv, {
      // The C++ tests' shapes: S = 3, L = K*K for K in 1, 2, 7, 14; P in 2, 17, 768.
      shape("S=3 L=1 P=2", false, 3, 1, 2),
      shape("S=3 L=4 P=17", true, 3, 4, 17),
      shape("S=3 L=49 P=768", false, 3, 49, 768),
      shape("S=1 L=4 P=768", true, 1, 4, 768),
      shape("S=3 L=196 P=17", false, 3, 196, 17),
      shape("S=3 L=196 P=768", false, 3, 196, 768),
      shape("S=3 L=1 P=768", false, 3, 1, 768),
      shape("S=3 L=49 P=2", false, 3, 49, 2),
      // One value; lane tails (P = 33: one lane reads twice); 1100 rows, 5% masked:
      // more than the grid's warps and than the sum block's 512 threads.
      shape("one element", true, 1, 1, 1),
      shape("tails: P=33", true, 2, 5, 33),
      shape("rows past the grid: S=11 L=100 P=3", true, 11, 100, 3, kPlain, 0.05),
      shape("rows past the grid: S=6 L=100 P=40, 70% masked", false, 6, 100, 40),
      shape("strided pred and target", true, 4, 9, 17, kStrided),
      shape("one masked row", true, 3, 7, 20, kOneMasked),
      shape("all rows masked", false, 3, 7, 20, kAllMasked),
  });
}
