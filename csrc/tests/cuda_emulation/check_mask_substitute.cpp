// Emulated CUDA mask_substitute (csrc/cuda/mask_substitute.cu) against the CPU op,
// every dtype: the forward copy bitwise (by 16-byte words when rows and pointers
// allow, else element by element), the backward's grad_tokens bitwise and its two
// column sums (chunk partials, then Kahan over chunks) within 3x the CPU op's error.
#include "mask_substitute_emulated.cpp"  // written by emulate_cu.py

#include "check_common.h"

namespace {

using namespace lomar_ops;
using emu_check::Case;

// misaligned: tokens that start one element past a 16-byte boundary (the element path).
void check(int64_t S, int64_t L, int64_t D, bool misaligned, bool strided_grad = false) {
  const auto mask = at::rand({S, L}) < 0.6;
  for (auto dt : emu_check::kAllTypes) {
    const std::string t = c10::toString(dt);
    auto tokens = emu_check::randn({S, L, D}, dt);
    if (misaligned) {
      auto buffer = at::empty({S * L * D + 8}, tokens.options());
      tokens = buffer.narrow(0, 1, S * L * D).view({S, L, D}).copy_(tokens);
    }
    const auto mask_token = emu_check::randn({D}, dt), cls = emu_check::randn({D}, dt);
    for (bool with_cls : {true, false}) {
      const std::string c = t + (with_cls ? " cls" : "");
      const std::optional<at::Tensor> cls_token = with_cls ? std::optional<at::Tensor>(cls) : std::nullopt;
      emu_check::same(c + " forward", mask_substitute_cuda(tokens, mask, mask_token, cls_token),
                      mask_substitute_cpu(tokens, mask, mask_token, cls_token));

      auto grad = emu_check::randn({S, L + with_cls, D}, dt);
      if (strided_grad) grad = emu_check::strided(grad);
      auto [gt, gm, gc] = mask_substitute_backward_cuda(grad, mask, with_cls);
      auto [ct, cm, cc] = mask_substitute_backward_cpu(grad, mask, with_cls);
      auto [rt, rm, rc] = mask_substitute_backward_cpu(grad.to(at::kDouble), mask, with_cls);
      emu_check::same(c + " grad_tokens", gt, ct);
      emu_check::close(c + " grad_mask_token", gm, cm, rm, dt);
      emu_check::close(c + " grad_cls_token", gc, cc, rc, dt);
    }
  }
}

Case shape(const char* name, bool quick, int64_t S, int64_t L, int64_t D, bool misaligned = false,
           bool strided_grad = false) {
  return {name, quick, [=] { check(S, L, D, misaligned, strided_grad); }};
}

}  // namespace

int main(int argc, char** argv) {
  return emu_check::main(argc, argv, {
      // The C++ tests' shapes (L = K*K for K in 1, 3, 7, 14; D = 17: element path).
      shape("S=5 L=1 D=17", false, 5, 1, 17),
      shape("S=5 L=9 D=17", true, 5, 9, 17),
      shape("S=5 L=49 D=17", false, 5, 49, 17),
      shape("S=5 L=196 D=17", false, 5, 196, 17),
      shape("S=9 L=4 D=5", false, 9, 4, 5),
      // Rows of whole 16-byte words in every dtype (D = 32: uint4 copies).
      shape("16-byte words: S=6 L=10 D=32", true, 6, 10, 32),
      shape("misaligned tokens: S=6 L=10 D=32", true, 6, 10, 32, true),
      shape("one element", true, 1, 1, 1),
      // D tails: 300 columns = a tile of 256 threads and a tile of 44.
      shape("tails: D=300", true, 3, 7, 300),
      // More chunks than one per sequence (S > 1024), and rows past the grid.
      shape("chunks: S=1500 L=3 D=8", true, 1500, 3, 8),
      shape("chunks: S=2100 L=2 D=40", false, 2100, 2, 40),
      shape("strided grad: S=4 L=6 D=24", true, 4, 6, 24, false, true),
      shape("empty: S=0", true, 0, 4, 16),
  });
}
