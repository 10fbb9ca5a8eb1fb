// window_patchify on the CPU: copies the pixels of each K x K-patch window into
// (B, n, K*K, p*p*C), patch by patch, reading the image through its strides (only
// the windows' pixels are touched, so the cost does not grow with the image).
// Backward: one pass per image row that sums, in window order, the gradients of
// the windows covering it, in fp32 (fp64 for double): deterministic, no atomics.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
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

}  // namespace

at::Tensor window_patchify_cpu(const at::Tensor& images, const at::Tensor& coords_in,
                               int64_t window_size, int64_t patch_size) {
  check_window_patchify_args(images, coords_in, window_size, patch_size);
  const auto coords = coords_in.contiguous();
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t K = window_size, p = patch_size, n = coords.size(1);
  check_window_coords_range(coords, H / p, W / p, K, "window_patchify");
  const int64_t P = p * p * C;
  auto out = at::empty({B, n, K * K, P}, images.options());
  if (out.numel() == 0) return out;
  const ImageStrides s{images.stride(0), images.stride(1), images.stride(2), images.stride(3)};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "window_patchify_cpu", [&] {
    const scalar_t* img = images.const_data_ptr<scalar_t>();
    const int32_t* xy = coords.const_data_ptr<int32_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    // One work item per (b, w, window row r, pixel row py): K patch rows of p*C.
    // window_row: the image pixel where that row of the window starts.
    const auto window_row = [&](int64_t item) {
      const int64_t py = item % p;
      const int64_t r = (item / p) % K;
      const int64_t bw = item / (p * K);  // b * n + w
      const int64_t y = (xy[bw * 2] + r) * p + py;
      return img + (bw / n) * s.b + y * s.h + xy[bw * 2 + 1] * p * s.w;
    };
    const bool one_run = (s.c == 1 || C == 1) && s.w == C;
    const int64_t run_bytes = ((K * p - 1) * s.w + 1) * sizeof(scalar_t);
    constexpr int64_t kAhead = 2;  // work items prefetched ahead
    at::parallel_for(0, B * n * K * p, grain_for(K * p * C), [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        if (item + kAhead < end) {
          const scalar_t* next = window_row(item + kAhead);
          if (one_run) {
            prefetch_range(next, K * p * C * sizeof(scalar_t));
          } else {
            for (int64_t ch = 0; ch < C; ++ch) prefetch_range(next + ch * s.c, run_bytes);
          }
        }
        const int64_t py = item % p;
        const int64_t r = (item / p) % K;
        const int64_t bw = item / (p * K);  // b * n + w
        const scalar_t* src = window_row(item);
        scalar_t* dst_row = dst + (bw * K * K + r * K) * P + py * p * C;
        for (int64_t c = 0; c < K; ++c) {
          copy_patch_row(src + c * p * s.w, dst_row + c * P, p, C, s);
        }
      }
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
