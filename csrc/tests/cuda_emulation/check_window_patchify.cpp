// Emulated CUDA window_patchify (csrc/cuda/window_patchify.cu) against the CPU op,
// every dtype: the forward bitwise (staged through shared memory for NCHW images,
// direct for channels-last ones and for rows over 48 KB), as a copy and with the
// input pipeline's pixel transform (uint8 -> / 255, uint16 -> / 65535, (x - mean) / std,
// out_dtype: the same operations in the same order on both backends); the backward's
// sums over overlapping windows within 3x the CPU op's own error.
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

at::Tensor with_layout(at::Tensor images, Layout layout) {
  if (layout == kChannelsLast) return images.contiguous(at::MemoryFormat::ChannelsLast);
  if (layout == kStrided) return emu_check::strided(images);
  return images;
}

// Per-channel mean and std (float64, as the op requires), std away from zero.
std::pair<at::Tensor, at::Tensor> random_stats(int64_t C) {
  return {at::rand({C}, at::kDouble) * 0.5 + 0.25, at::rand({C}, at::kDouble) * 0.3 + 0.1};
}

void check(const Shape& s, Layout layout) {
  const auto coords = random_coords(s);
  const auto [mean, std] = random_stats(s.C);
  for (auto dt : emu_check::kAllTypes) {
    const std::string t = c10::toString(dt);
    const auto images = with_layout(emu_check::randn({s.B, s.C, s.H, s.W}, dt), layout);
    emu_check::same(t + " forward",
                    window_patchify_cuda(images, coords, s.K, s.p, {}, {}, {}),
                    window_patchify_cpu(images, coords, s.K, s.p, {}, {}, {}));
    // Normalised on the way, in the images' dtype and in another one.
    const auto other = dt == at::kFloat ? at::kBFloat16 : at::kFloat;
    for (auto out : {dt, other}) {
      emu_check::same(t + " normalised to " + c10::toString(out),
                      window_patchify_cuda(images, coords, s.K, s.p, mean, std, out),
                      window_patchify_cpu(images, coords, s.K, s.p, mean, std, out));
    }

    const auto grad = emu_check::randn({s.B, s.n, s.K * s.K, s.p * s.p * s.C}, dt);
    emu_check::close(t + " backward",
                     window_patchify_backward_cuda(grad, coords, s.K, s.p, s.H, s.W),
                     window_patchify_backward_cpu(grad, coords, s.K, s.p, s.H, s.W),
                     window_patchify_backward_cpu(grad.to(at::kDouble), coords, s.K, s.p, s.H, s.W),
                     dt);
  }
}

// Integer images (the window pipeline's): uint8 (/ 255) or uint16 (/ 65535) only, and
// normalised, to every float dtype; the default out_dtype is float32 on both backends.
// uint16 samples span 0..65535, the int16 sign boundary (32767, 32768) and both ends
// among them: a kernel reading them as int16 or as bytes gives other values.
void check_integer(const Shape& s, Layout layout, at::ScalarType dt) {
  const auto coords = random_coords(s);
  const auto [mean, std] = random_stats(s.C);
  const bool u16 = dt == at::kUInt16;
  auto values = at::randint(0, u16 ? 65536 : 256, {s.B, s.C, s.H, s.W}, at::kInt);
  if (u16) {
    auto flat = values.view(-1);
    const int32_t edges[] = {0, 65535, 32767, 32768};
    for (int64_t i = 0; i < std::min<int64_t>(4, flat.numel()); ++i) flat[i] = edges[i];
  }
  const auto images = with_layout(values.to(dt), layout);
  const std::string name = c10::toString(dt);
  emu_check::same(name + " default out_dtype",
                  window_patchify_cuda(images, coords, s.K, s.p, {}, {}, {}),
                  window_patchify_cpu(images, coords, s.K, s.p, {}, {}, {}));
  for (auto out : emu_check::kAllTypes) {
    const std::string t = name + " to " + c10::toString(out);
    emu_check::same(t + (u16 ? " / 65535" : " / 255"),
                    window_patchify_cuda(images, coords, s.K, s.p, {}, {}, out),
                    window_patchify_cpu(images, coords, s.K, s.p, {}, {}, out));
    emu_check::same(t + " normalised",
                    window_patchify_cuda(images, coords, s.K, s.p, mean, std, out),
                    window_patchify_cpu(images, coords, s.K, s.p, mean, std, out));
  }
}

// Bad transform arguments are refused before any launch, as on the CPU.
void check_errors() {
  const Shape s{1, 3, 16, 16, 2, 8, 1};
  const auto coords = random_coords(s);
  const auto images = at::randint(0, 256, {1, 3, 16, 16}, at::kByte);
  const auto [mean, std] = random_stats(3);
  emu_check::expect_error("mean without std", [&] {
    window_patchify_cuda(images, coords, 2, 8, mean, {}, {});
  }, "mean and std go together");
  emu_check::expect_error("mean of 2 channels", [&] {
    window_patchify_cuda(images, coords, 2, 8, mean.slice(0, 0, 2), std, {});
  }, "mean must be (C,) = (3,)");
  emu_check::expect_error("float32 std", [&] {
    window_patchify_cuda(images, coords, 2, 8, mean, std.to(at::kFloat), {});
  }, "std must be float64");
  emu_check::expect_error("int out_dtype", [&] {
    window_patchify_cuda(images, coords, 2, 8, {}, {}, at::kInt);
  }, "out_dtype must be float16, bfloat16, float32 or float64");
}

Case shape(const char* name, bool quick, Shape s, Layout layout = kNCHW) {
  return {name, quick, [=] { check(s, layout); }};
}

Case uint8_shape(const char* name, bool quick, Shape s, Layout layout = kNCHW) {
  return {name, quick, [=] { check_integer(s, layout, at::kByte); }};
}

Case uint16_shape(const char* name, bool quick, Shape s, Layout layout = kNCHW) {
  return {name, quick, [=] { check_integer(s, layout, at::kUInt16); }};
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
      // uint8 images with the pixel transform, in every layout and with tails.
      uint8_shape("uint8 2x3x64x48 K=3 p=8 n=5", true, {2, 3, 64, 48, 3, 8, 5}),
      uint8_shape("uint8 channels-last 2x3x48x40 K=3 p=8 n=4", true,
                  {2, 3, 48, 40, 3, 8, 4}, kChannelsLast),
      uint8_shape("uint8 strided 1x3x56x70 K=4 p=14 n=6", false,
                  {1, 3, 56, 70, 4, 14, 6}, kStrided),
      uint8_shape("uint8 tails: C=15 K=4 p=5", false, {1, 15, 30, 25, 4, 5, 2}),
      // uint16 images (16-bit, multi-band data): staged (2-byte tile elements), direct,
      // strided, one band and six, odd patch sizes and tails.
      uint16_shape("uint16 2x3x64x48 K=3 p=8 n=5", true, {2, 3, 64, 48, 3, 8, 5}),
      uint16_shape("uint16 channels-last 2x6x40x30 K=2 p=5 n=3", true,
                   {2, 6, 40, 30, 2, 5, 3}, kChannelsLast),
      uint16_shape("uint16 strided 1x1x45x35 K=3 p=5 n=4", true, {1, 1, 45, 35, 3, 5, 4},
                   kStrided),
      uint16_shape("uint16 tails: C=6 K=4 p=7", false, {1, 6, 35, 28, 4, 7, 2}),
      {"transform argument errors", true, check_errors},
  });
}
