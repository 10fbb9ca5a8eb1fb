// window_patchify on the CPU: copies the pixels of each K x K-patch window into
// (B, n, K*K, p*p*C), patch by patch, reading the image through its strides (only
// the windows' pixels are touched, so the cost does not grow with the image).
// With integer (uint8, uint16) images, mean/std or another output dtype, each pixel
// goes through the input pipeline's transform on the way (PixelTransform); otherwise
// it is a copy.
// Backward: one pass per image row that sums, in window order, the gradients of
// the windows covering it, in fp32 (fp64 for double): deterministic, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

// Parallel chunks of at least ~32K elements.
int64_t grain_for(int64_t row_len) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len));
}

// The strides of one image, in elements.
struct ImageStrides {
  int64_t b, c, h, w;
};

// Copies one patch row (p pixels x C channels) to dst in (px, ch) order.
template <typename scalar_t>
inline void copy_patch_row(const scalar_t* src, scalar_t* dst, int64_t p, int64_t C,
                           const ImageStrides& s) {
  if ((s.c == 1 || C == 1) && s.w == C) {  // channels-last, or one W-contiguous channel
    std::memcpy(dst, src, sizeof(scalar_t) * p * C);
    return;
  }
  if (C == 3 && s.w == 1) {  // RGB NCHW: three runs, written interleaved in one pass
    const scalar_t *r = src, *g = src + s.c, *b = src + 2 * s.c;
    for (int64_t px = 0; px < p; ++px) {
      dst[3 * px] = r[px];
      dst[3 * px + 1] = g[px];
      dst[3 * px + 2] = b[px];
    }
    return;
  }
  for (int64_t ch = 0; ch < C; ++ch) {
    const scalar_t* src_ch = src + ch * s.c;
    if (s.w == 1) {  // NCHW: a contiguous run of p pixels per channel
      for (int64_t px = 0; px < p; ++px) dst[px * C + ch] = src_ch[px];
    } else {
      for (int64_t px = 0; px < p; ++px) dst[px * C + ch] = src_ch[px * s.w];
    }
  }
}

// Asks for the cache lines of [ptr, ptr + bytes) ahead of their use: a window row
// reads short runs scattered over a large image, so its DRAM latency, not the
// bandwidth, is what a step waits for.
inline void prefetch_range(const void* ptr, int64_t bytes) {
  const char* p = static_cast<const char*>(ptr);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}

// The pixel transform of the input pipeline (lomar_ops.h), in acc_t: value (/ 255
// for uint8, / 65535 for uint16: each type's maximum), then (x - mean[ch]) / std[ch];
// the same operations, in the same order, as the reference, so float32 results agree
// to the bit.
template <typename in_t, typename out_t, typename acc_t>
struct PixelTransform {
  std::vector<acc_t> mean, std;  // empty: no normalisation
  out_t operator()(in_t v, int64_t ch) const {
    acc_t x = static_cast<acc_t>(v);
    if constexpr (std::is_same_v<in_t, uint8_t>) x = x / acc_t(255);
    if constexpr (std::is_same_v<in_t, uint16_t>) x = x / acc_t(65535);
    if (!mean.empty()) x = (x - mean[ch]) / std[ch];
    return static_cast<out_t>(x);
  }
};

// copy_patch_row with the transform: dst[px*C + ch] = tf(pixel (px, ch)).
template <typename in_t, typename out_t, typename Tf>
inline void transform_patch_row(const in_t* src, out_t* dst, int64_t p, int64_t C,
                                const ImageStrides& s, const Tf& tf) {
  for (int64_t ch = 0; ch < C; ++ch) {
    const in_t* src_ch = src + ch * s.c;
    for (int64_t px = 0; px < p; ++px) dst[px * C + ch] = tf(src_ch[px * s.w], ch);
  }
}

template <typename acc_t>
std::vector<acc_t> channel_values(const std::optional<at::Tensor>& t) {
  std::vector<acc_t> out;
  if (!t) return out;
  const auto d = t->contiguous();
  const double* v = d.const_data_ptr<double>();
  for (int64_t i = 0; i < d.numel(); ++i) out.push_back(static_cast<acc_t>(v[i]));
  return out;
}

// One work item per (b, w, window row r, pixel row py): K patch rows of p*C.
// copy_row(src, dst) writes one patch row; prefetching follows the image layout.
template <typename in_t, typename out_t, typename CopyRow>
void gather_window_rows(const in_t* img, const int32_t* xy, out_t* dst, int64_t B, int64_t n,
                        int64_t K, int64_t p, int64_t C, const ImageStrides& s,
                        const CopyRow& copy_row) {
  const int64_t P = p * p * C;
  // window_row: the image pixel where that row of the window starts.
  const auto window_row = [&](int64_t item) {
    const int64_t py = item % p;
    const int64_t r = (item / p) % K;
    const int64_t bw = item / (p * K);  // b * n + w
    const int64_t y = (xy[bw * 2] + r) * p + py;
    return img + (bw / n) * s.b + y * s.h + xy[bw * 2 + 1] * p * s.w;
  };
  const bool one_run = (s.c == 1 || C == 1) && s.w == C;
  const int64_t run_bytes = ((K * p - 1) * s.w + 1) * sizeof(in_t);
  constexpr int64_t kAhead = 2;  // work items prefetched ahead
  at::parallel_for(0, B * n * K * p, grain_for(K * p * C), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      if (item + kAhead < end) {
        const in_t* next = window_row(item + kAhead);
        if (one_run) {
          prefetch_range(next, K * p * C * sizeof(in_t));
        } else {
          for (int64_t ch = 0; ch < C; ++ch) prefetch_range(next + ch * s.c, run_bytes);
        }
      }
      const int64_t py = item % p;
      const int64_t r = (item / p) % K;
      const int64_t bw = item / (p * K);  // b * n + w
      const in_t* src = window_row(item);
      out_t* dst_row = dst + (bw * K * K + r * K) * P + py * p * C;
      for (int64_t c = 0; c < K; ++c) copy_row(src + c * p * s.w, dst_row + c * P);
    }
  });
}

}  // namespace

at::Tensor window_patchify_cpu(const at::Tensor& images, const at::Tensor& coords_in,
                               int64_t window_size, int64_t patch_size,
                               const std::optional<at::Tensor>& mean,
                               const std::optional<at::Tensor>& std,
                               std::optional<at::ScalarType> out_dtype) {
  check_window_patchify_args(images, coords_in, window_size, patch_size, mean, std, out_dtype);
  const auto coords = coords_in.contiguous();
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t K = window_size, p = patch_size, n = coords.size(1);
  check_window_coords_range(coords, H / p, W / p, K, "window_patchify");
  const auto in_type = images.scalar_type();
  const bool int_pixels = in_type == at::kByte || in_type == at::kUInt16;
  const auto out_type = out_dtype.value_or(int_pixels ? at::kFloat : in_type);
  auto out = at::empty({B, n, K * K, p * p * C}, images.options().dtype(out_type));
  if (out.numel() == 0) return out;
  const ImageStrides s{images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const int32_t* xy = coords.const_data_ptr<int32_t>();

  if (in_type == out_type && !mean) {  // a plain copy
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_type, "window_patchify_cpu", [&] {
      gather_window_rows(images.const_data_ptr<scalar_t>(), xy, out.data_ptr<scalar_t>(), B, n,
                         K, p, C, s, [&](const scalar_t* src, scalar_t* dst) {
                           copy_patch_row(src, dst, p, C, s);
                         });
    });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND4(at::kHalf, at::kBFloat16, at::kByte, at::kUInt16, in_type, "window_patchify_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_type, "window_patchify_cpu", [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>,
                                       double, float>;
      const PixelTransform<in_t, out_t, acc_t> tf{channel_values<acc_t>(mean),
                                                  channel_values<acc_t>(std)};
      gather_window_rows(images.const_data_ptr<in_t>(), xy, out.data_ptr<out_t>(), B, n, K, p,
                         C, s, [&](const in_t* src, out_t* dst) {
                           transform_patch_row(src, dst, p, C, s, tf);
                         });
    });
  });
  return out;
}

at::Tensor window_patchify_backward_cpu(const at::Tensor& grad_in, const at::Tensor& coords_in,
                                        int64_t window_size, int64_t patch_size,
                                        int64_t height, int64_t width) {
  check_window_patchify_backward_args(grad_in, coords_in, window_size, patch_size, height,
                                      width);
  const auto grad = grad_in.contiguous();
  const auto coords = coords_in.contiguous();
  const int64_t K = window_size, p = patch_size, H = height, W = width;
  const int64_t B = grad.size(0), n = grad.size(1), P = grad.size(3), C = P / (p * p);
  check_window_coords_range(coords, H / p, W / p, K, "window_patchify_backward");
  auto grad_images = at::empty({B, C, H, W}, grad.options());
  if (grad_images.numel() == 0) return grad_images;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "window_patchify_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const int32_t* xy = coords.const_data_ptr<int32_t>();
    scalar_t* dst = grad_images.data_ptr<scalar_t>();
    // One work item per image row (b, y), all channels: its sum over the windows
    // that cover it, window by window in index order.
    at::parallel_for(0, B * H, grain_for(C * W), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(C * W);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / H, y = item % H;
        const int64_t R = y / p, py = y % p;
        bool covered = false;
        for (int64_t w = 0; w < n; ++w) {
          const int64_t bw = b * n + w;
          const int64_t r = R - xy[bw * 2];
          if (r < 0 || r >= K) continue;
          if (!covered) std::fill(acc.begin(), acc.end(), acc_t(0));
          covered = true;
          const int64_t col = xy[bw * 2 + 1];
          const scalar_t* src = g + (bw * K * K + r * K) * P + py * p * C;
          for (int64_t c = 0; c < K; ++c) {
            const scalar_t* src_patch = src + c * P;
            const int64_t x0 = (col + c) * p;
            for (int64_t px = 0; px < p; ++px)
              for (int64_t ch = 0; ch < C; ++ch)
                acc[ch * W + x0 + px] += static_cast<acc_t>(src_patch[px * C + ch]);
          }
        }
        for (int64_t ch = 0; ch < C; ++ch) {
          scalar_t* dst_row = dst + ((b * C + ch) * H + y) * W;
          if (!covered) {
            std::fill(dst_row, dst_row + W, scalar_t(0));
          } else {
            const acc_t* a = acc.data() + ch * W;
            for (int64_t x = 0; x < W; ++x) dst_row[x] = static_cast<scalar_t>(a[x]);
          }
        }
      }
    });
  });
  return grad_images;
}

}  // namespace lomar_ops
