// C++ unit tests of window_patchify, through the dispatcher (as Python calls it),
// against naive loops. Run by ctest:
//   test_window_patchify [case]     (no argument: every case)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "harness.h"

#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

using lomar_ops_test::throws_with;

at::Tensor call_patchify(const at::Tensor& images, const at::Tensor& coords, int64_t K,
                         int64_t p, const std::optional<at::Tensor>& mean = std::nullopt,
                         const std::optional<at::Tensor>& std = std::nullopt,
                         std::optional<at::ScalarType> out_dtype = std::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::window_patchify", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&,
                                         std::optional<at::ScalarType>)>();
  return op.call(images, coords, K, p, mean, std, out_dtype);
}

at::Tensor call_patchify_backward(const at::Tensor& grad, const at::Tensor& coords, int64_t K,
                                  int64_t p, int64_t H, int64_t W) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::window_patchify_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                         int64_t, int64_t, int64_t)>();
  return op.call(grad, coords, K, p, H, W);
}

// (B, C, H, W, K, p, n): odd shapes, non-square grids, overlapping windows.
struct Case {
  int64_t B, C, H, W, K, p, n;
};
const Case kCases[] = {
    {1, 1, 8, 8, 1, 8, 1},    {2, 3, 112, 80, 5, 16, 3}, {1, 3, 56, 70, 4, 14, 16},
    {2, 1, 64, 48, 3, 8, 7},  {1, 3, 112, 112, 7, 16, 4},
};

// Random corners in the valid range, the last valid corner included.
at::Tensor random_coords(const Case& c) {
  const int64_t gh = c.H / c.p, gw = c.W / c.p;
  auto rows = at::randint(0, gh - c.K + 1, {c.B, c.n, 1}, at::TensorOptions().dtype(at::kInt));
  auto cols = at::randint(0, gw - c.K + 1, {c.B, c.n, 1}, at::TensorOptions().dtype(at::kInt));
  auto coords = at::cat({rows, cols}, 2);
  coords[0][0][0] = gh - c.K;
  coords[0][0][1] = gw - c.K;
  return coords;
}

// out[b, w, r*K + c, (py*p + px)*C + ch] = images[b, ch, (row+r)*p + py, (col+c)*p + px]
at::Tensor naive_forward(const at::Tensor& images, const at::Tensor& coords, int64_t K,
                         int64_t p) {
  auto img = images.to(at::kDouble);
  const int64_t B = img.size(0), C = img.size(1), n = coords.size(1);
  auto out = at::empty({B, n, K * K, p * p * C}, img.options());
  auto ia = img.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto ca = coords.accessor<int32_t, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t w = 0; w < n; ++w)
      for (int64_t r = 0; r < K; ++r)
        for (int64_t c = 0; c < K; ++c)
          for (int64_t py = 0; py < p; ++py)
            for (int64_t px = 0; px < p; ++px)
              for (int64_t ch = 0; ch < C; ++ch)
                oa[b][w][r * K + c][(py * p + px) * C + ch] =
                    ia[b][ch][(ca[b][w][0] + r) * p + py][(ca[b][w][1] + c) * p + px];
  return out;
}

at::Tensor naive_backward(const at::Tensor& grad, const at::Tensor& coords, int64_t K,
                          int64_t p, int64_t H, int64_t W) {
  auto g = grad.to(at::kDouble);
  const int64_t B = g.size(0), n = g.size(1), C = g.size(3) / (p * p);
  auto out = at::zeros({B, C, H, W}, g.options());
  auto ga = g.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto ca = coords.accessor<int32_t, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t w = 0; w < n; ++w)
      for (int64_t r = 0; r < K; ++r)
        for (int64_t c = 0; c < K; ++c)
          for (int64_t py = 0; py < p; ++py)
            for (int64_t px = 0; px < p; ++px)
              for (int64_t ch = 0; ch < C; ++ch)
                oa[b][ch][(ca[b][w][0] + r) * p + py][(ca[b][w][1] + c) * p + px] +=
                    ga[b][w][r * K + c][(py * p + px) * C + ch];
  return out;
}

bool forward_matches(at::ScalarType dtype) {
  for (const auto& c : kCases) {
    auto images = at::randn({c.B, c.C, c.H, c.W}).to(dtype);
    auto coords = random_coords(c);
    auto out = call_patchify(images, coords, c.K, c.p);
    EXPECT(out.scalar_type() == dtype);
    EXPECT(out.sizes() == at::IntArrayRef({c.B, c.n, c.K * c.K, c.p * c.p * c.C}));
    // A copy: exact in every dtype.
    EXPECT(at::equal(out.to(at::kDouble), naive_forward(images, coords, c.K, c.p)));
  }
  return true;
}

// Integer images (uint8, uint16), per-channel mean/std: (v / max - mean[ch]) / std[ch] in
// float32 (max: the type's, 255 or 65535), rounded to the output dtype; the float32
// result is the float32 formula's to the bit. Random values over the whole range, and in
// the first window the extremes and the values around a byte's and a sign bit's edges,
// so that a kernel reading only the low byte, or the values as signed, fails.
bool integer_normalised(at::ScalarType in_dtype, at::ScalarType out_dtype, double tol) {
  const int64_t top = in_dtype == at::kByte ? 255 : 65535;
  const std::vector<int64_t> edges =
      in_dtype == at::kByte ? std::vector<int64_t>{0, 1, 127, 128, 254, 255}
                            : std::vector<int64_t>{0, 255, 256, 32767, 32768, 65534, 65535};
  for (const auto& c : kCases) {
    auto values = at::randint(0, top + 1, {c.B, c.C, c.H, c.W}, at::kInt);
    auto coords = random_coords(c);
    const int64_t y0 = coords[0][0][0].item<int32_t>() * c.p;
    const int64_t x0 = coords[0][0][1].item<int32_t>() * c.p;
    for (size_t i = 0; i < edges.size(); ++i) {
      const int64_t px = static_cast<int64_t>(i) % (c.K * c.p);  // along the first row
      values[0][static_cast<int64_t>(i) % c.C][y0][x0 + px] = edges[i];
    }
    auto images = values.to(in_dtype);
    EXPECT(at::equal(images.to(at::kInt), values));  // the input holds what was drawn
    // Per-channel statistics in [0, 1] units, different in every channel.
    auto mean = at::rand({c.C}, at::kDouble) * 0.5 + 0.1;
    auto std = at::rand({c.C}, at::kDouble) * 0.3 + 0.05;
    auto out = call_patchify(images, coords, c.K, c.p, mean, std, out_dtype);
    EXPECT(out.scalar_type() == out_dtype);
    auto pixels = naive_forward(images, coords, c.K, c.p);  // (B, n, K*K, p*p*C), C fastest
    EXPECT(pixels.max().item<double>() == static_cast<double>(top));
    auto m = mean.to(at::kFloat), s = std.to(at::kFloat);
    auto want = ((pixels.to(at::kFloat) / static_cast<double>(top)).view({-1, c.C}) - m)
                    .div(s)
                    .view(pixels.sizes());
    EXPECT(at::allclose(out.to(at::kDouble), want.to(at::kDouble), tol, tol));
    if (out_dtype == at::kFloat) EXPECT(at::equal(out, want));
  }
  // Without mean/std: v / max, float32.
  const Case c = kCases[1];
  auto images = at::randint(0, top + 1, {c.B, c.C, c.H, c.W}, at::kInt).to(in_dtype);
  auto coords = random_coords(c);
  auto out = call_patchify(images, coords, c.K, c.p);
  EXPECT(out.scalar_type() == at::kFloat);
  EXPECT(at::equal(out, naive_forward(images, coords, c.K, c.p).to(at::kFloat) /
                            static_cast<double>(top)));
  return true;
}

bool backward_matches(at::ScalarType dtype, double tol) {
  for (const auto& c : kCases) {
    auto grad = at::randn({c.B, c.n, c.K * c.K, c.p * c.p * c.C}).to(dtype);
    auto coords = random_coords(c);
    auto got = call_patchify_backward(grad, coords, c.K, c.p, c.H, c.W);
    EXPECT(got.scalar_type() == dtype);
    EXPECT(got.sizes() == at::IntArrayRef({c.B, c.C, c.H, c.W}));
    // fp32 accumulation: the only error is the final rounding to dtype.
    auto want = naive_backward(grad, coords, c.K, c.p, c.H, c.W);
    EXPECT(at::allclose(got.to(at::kDouble), want, tol, tol));
  }
  return true;
}

bool non_contiguous_images() {
  const Case c{2, 3, 48, 64, 3, 16, 3};
  auto coords = random_coords(c);
  const auto want = [&](const at::Tensor& img) { return naive_forward(img, coords, 3, 16); };
  auto base = at::randn({2, 3, 48, 64}, at::kDouble);
  auto channels_last = base.contiguous(at::MemoryFormat::ChannelsLast);
  EXPECT(at::equal(call_patchify(channels_last, coords, 3, 16), want(base)));
  auto tall = at::randn({2, 3, 96, 64}, at::kDouble);
  auto row_slice = tall.slice(2, 0, 96, 2);  // stride 2 along H
  EXPECT(at::equal(call_patchify(row_slice, coords, 3, 16), want(row_slice.contiguous())));
  auto big = at::randn({2, 5, 80, 96}, at::kDouble);
  auto crop = big.slice(1, 1, 4).slice(2, 16, 64).slice(3, 8, 72);  // offset, channel slice
  EXPECT(at::equal(call_patchify(crop, coords, 3, 16), want(crop.contiguous())));
  return true;
}

bool bad_input_errors() {
  auto images = at::randn({1, 3, 32, 48});
  auto coords = at::zeros({1, 2, 2}, at::kInt);
  EXPECT(throws_with([&] { call_patchify(images, coords + 3, 2, 8); },
                     "coords rows (top row of each window) must lie in [0, 2]"));
  EXPECT(throws_with([&] { call_patchify(images, coords.fill_(-1), 2, 8); },
                     "got values in [-1, -1]"));
  coords.zero_();
  EXPECT(throws_with([&] { call_patchify(images, coords.to(at::kLong), 2, 8); },
                     "coords must be int32"));
  EXPECT(throws_with([&] { call_patchify(images, at::zeros({2, 2, 2}, at::kInt), 2, 8); },
                     "coords has batch 2 but the images have batch 1"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 2, 5); },
                     "must be a multiple of patch_size 5"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 5, 8); },
                     "window_size 5 does not fit the patch grid (4, 6)"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 0, 8); }, "window_size must be >= 1"));
  EXPECT(throws_with([&] { call_patchify(images[0], coords, 2, 8); },
                     "images must be (B, C, H, W)"));
  auto m = at::zeros({3}, at::kDouble);
  EXPECT(throws_with([&] { call_patchify(images, coords, 2, 8, m, std::nullopt); },
                     "mean and std go together"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 2, 8, m.to(at::kFloat), m); },
                     "mean must be float64"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 2, 8, m, at::ones({2}, at::kDouble)); },
                     "std must be (C,) = (3,)"));
  EXPECT(throws_with([&] { call_patchify(images, coords, 2, 8, std::nullopt, std::nullopt,
                                         at::kInt); },
                     "out_dtype must be float16, bfloat16, float32 or float64"));
  EXPECT(throws_with([&] { call_patchify(images.to(at::kInt), coords, 2, 8); },
                     "images must be uint8, uint16, float16, bfloat16, float32 or float64"));
  EXPECT(throws_with([&] { call_patchify_backward(at::randn({1, 2, 4, 100}), coords, 2, 8,
                                                  32, 48); },
                     "grad_out must be (B, n, K*K, p*p*C)"));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<bool()>> cases = {
      {"forward_float", [] { return forward_matches(at::kFloat); }},
      {"forward_double", [] { return forward_matches(at::kDouble); }},
      {"forward_half", [] { return forward_matches(at::kHalf); }},
      {"forward_bfloat16", [] { return forward_matches(at::kBFloat16); }},
      {"backward_float", [] { return backward_matches(at::kFloat, 1e-5); }},
      {"backward_double", [] { return backward_matches(at::kDouble, 1e-12); }},
      {"backward_half", [] { return backward_matches(at::kHalf, 1e-3); }},
      {"backward_bfloat16", [] { return backward_matches(at::kBFloat16, 8e-3); }},
      {"uint8_normalised_float", [] { return integer_normalised(at::kByte, at::kFloat, 0); }},
      {"uint8_normalised_bfloat16",
       [] { return integer_normalised(at::kByte, at::kBFloat16, 1.6e-2); }},
      {"uint8_normalised_double",
       [] { return integer_normalised(at::kByte, at::kDouble, 1e-6); }},
      {"uint16_normalised_float",
       [] { return integer_normalised(at::kUInt16, at::kFloat, 0); }},
      {"uint16_normalised_bfloat16",
       [] { return integer_normalised(at::kUInt16, at::kBFloat16, 1.6e-2); }},
      {"uint16_normalised_double",
       [] { return integer_normalised(at::kUInt16, at::kDouble, 1e-6); }},
      {"non_contiguous_images", non_contiguous_images},
      {"bad_input_errors", bad_input_errors},
  };
  return lomar_ops_test::run_cases(argc, argv, cases);
}
