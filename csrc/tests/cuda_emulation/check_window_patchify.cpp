// Emulated CUDA window_patchify (csrc/cuda/window_patchify.cu) against the CPU op,
// every dtype: the forward copy bitwise (staged through shared memory for NCHW
// images, direct for channels-last ones and for rows over 48 KB), the backward's sums
// over overlapping windows within 3x the CPU op's own error.
#include "window_patchify_emulated.cpp"  // written by emulate_cu.py

#include "check_common.h"

namespace {

using namespace lomar_ops;
using emu_check::Case;

struct Shape {
  int64_t B, C, H, W, K, p, n;
};
enum Layout { kNCHW, kChannelsLast, kStrided };

// Random window corners (top row, left column) in the patch grid, the last valid
// corner included.
at::Tensor random_coords(const Shape& s) {
  const int64_t gh = s.H / s.p, gw = s.W / s.p;
  auto opts = at::TensorOptions().dtype(at::kInt);
  auto coords = at::cat({at::randint(0, gh - s.K + 1, {s.B, s.n, 1}, opts),
                         at::randint(0, gw - s.K + 1, {s.B, s.n, 1}, opts)}, 2);
  if (s.n > 0) {
    coords[0][0][0] = gh - s.K;
    coords[0][0][1] = gw - s.K;
  }
  return coords;
}

void check(const Shape& s, Layout layout) {
  const auto coords = random_coords(s);
  for (auto dt : emu_check::kAllTypes) {
    const std::string t = c10::toString(dt);
    auto images = emu_check::randn({s.B, s.C, s.H, s.W}, dt);
    if (layout == kChannelsLast) images = images.contiguous(at::MemoryFormat::ChannelsLast);
    if (layout == kStrided) images = emu_check::strided(images);
    emu_check::same(t + " forward", window_patchify_cuda(images, coords, s.K, s.p),
                    window_patchify_cpu(images, coords, s.K, s.p));

    const auto grad = emu_check::randn({s.B, s.n, s.K * s.K, s.p * s.p * s.C}, dt);
    emu_check::close(t + " backward",
                     window_patchify_backward_cuda(grad, coords, s.K, s.p, s.H, s.W),
                     window_patchify_backward_cpu(grad, coords, s.K, s.p, s.H, s.W),
                     window_patchify_backward_cpu(grad.to(at::kDouble), coords, s.K, s.p, s.H, s.W),
                     dt);
  }
}

Case shape(const char* name, bool quick, Shape s, Layout layout = kNCHW) {
  return {name, quick, [=] { check(s, layout); }};
}

}  // namespace

int main(int argc, char** argv) {
  // (B, C, H, W, K, p, n)
  return emu_check::main(argc, argv, {
      // The C++ tests' shapes: odd sizes, non-square grids, overlapping windows.
      shape("1x1x8x8 K=1 p=8 n=1", true, {1, 1, 8, 8, 1, 8, 1}),
      shape("2x1x64x48 K=3 p=8 n=7", true, {2, 1, 64, 48, 3, 8, 7}),
      shape("1x3x56x70 K=4 p=14 n=16", false, {1, 3, 56, 70, 4, 14, 16}),
      shape("1x3x112x112 K=7 p=16 n=4", false, {1, 3, 112, 112, 7, 16, 4}),
      // More window rows (forward) and image rows (backward) than the grid's blocks.
      shape("grid-stride: 2x3x112x80 K=5 p=16 n=3", false, {2, 3, 112, 80, 5, 16, 3}),
      shape("one element", true, {1, 1, 1, 1, 1, 1, 1}),
      // Rows of K*p*C = 300 (a block of 256 threads loops, tail 44) and 105 (< 128).
      shape("tails: C=15 K=4 p=5", true, {1, 15, 30, 25, 4, 5, 2}),
      shape("tails: C=7 K=3 p=5", false, {2, 7, 20, 15, 3, 5, 3}),
      // Layouts: channels-last (copied directly), strided (staged, read through
      // strides), and NCHW rows over 48 KB of shared memory in fp32/fp64 (direct).
      shape("channels-last 2x3x48x40 K=3 p=8 n=4", true, {2, 3, 48, 40, 3, 8, 4}, kChannelsLast),
      shape("strided 2x3x48x40 K=3 p=8 n=4", true, {2, 3, 48, 40, 3, 8, 4}, kStrided),
      shape("rows over 48 KB: C=400 K=2 p=16", true, {1, 400, 32, 32, 2, 16, 1}),
      shape("empty: n=0", true, {2, 3, 16, 16, 2, 8, 0}),
  });
}
