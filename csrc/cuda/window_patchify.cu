// window_patchify on CUDA: copies the pixels of each K x K-patch window into
// (B, n, K*K, p*p*C), reading the image through its strides (only the windows'
// pixels are read, so the cost does not grow with the image).
//
// Forward: one block per window pixel row (b, w, r, py), i.e. K*p*C elements.
// Each element goes through the input pipeline's pixel transform on its way out
// (PixelTransform: uint8 -> / 255, uint16 -> / 65535, (x - mean) / std, out_dtype), a
// plain copy when there is none.
// For NCHW images its threads read (channel, K*p consecutive pixels) with the
// pixel fastest (coalesced) into shared memory in output order, then write the
// K contiguous runs of p*C; for channels-last images they walk (patch column, px,
// channel) with the channel fastest, contiguous on both sides, without staging.
// Backward: one block per image row (b, y); each thread owns pixels of that row
// and sums, in window order, the gradients of the windows covering it, in fp32
// (fp64 for double): deterministic, no atomics; pixels outside every window get 0.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <type_traits>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

int64_t grid_for_rows(int64_t rows) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>(rows, sms * 64));
}

// Threads per block for rows of `len` elements: whole warps, 64 to 256.
int threads_for(int64_t len) {
  const int64_t warps = (len + 31) / 32;
  return static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(2, warps) * 32));
}

struct Geometry {
  int64_t n, K, p, C, grid_h, grid_w;
  int64_t sb, sc, sh, sw;  // image strides in elements (forward)
};

// The pixel transform (lomar_ops.h) in acc_t: value (/ 255 for uint8, / 65535 for
// uint16), then (x - mean[ch]) / std[ch] when mean is set; the operations and their
// order are the reference's, so float32 results agree with it to the bit (IEEE
// division).
template <typename in_t, typename out_t>
struct PixelTransform {
  using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>,
                                   double, float>;
  const double* mean;  // (C,) on the device, or nullptr
  const double* std;
  __device__ __forceinline__ out_t operator()(in_t v, int32_t ch) const {
    acc_t x = static_cast<acc_t>(v);
    if constexpr (std::is_same_v<in_t, uint8_t>) x = x / acc_t(255);
    if constexpr (std::is_same_v<in_t, uint16_t>) x = x / acc_t(65535);
    if (mean != nullptr) x = (x - static_cast<acc_t>(mean[ch])) / static_cast<acc_t>(std[ch]);
    return static_cast<out_t>(x);
  }
};

// One window pixel row (b, w, r, py) per block iteration: K patch rows of p*C.
// STAGED (NCHW-like images): threads read in image order (channel, then the row's
// K*p consecutive pixels: coalesced) into shared memory, laid out as the output,
// then write the K runs of p*C elements contiguously. Otherwise (channels-last)
// the image order already is the output order, and threads copy directly.
template <typename in_t, typename out_t, bool STAGED>
__global__ void window_patchify_forward_kernel(const in_t* __restrict__ img,
                                               const int32_t* __restrict__ coords,
                                               out_t* __restrict__ out, Geometry g,
                                               int64_t rows, PixelTransform<in_t, out_t> tf) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  in_t* tile = reinterpret_cast<in_t*>(smem_raw);  // K*p*C, output order
  const int64_t K = g.K, p = g.p, C = g.C, P = p * p * C;
  const int32_t len = static_cast<int32_t>(K * p * C);  // elements of one window pixel row
  const int32_t p32 = static_cast<int32_t>(p), K32 = static_cast<int32_t>(K);
  const int32_t C32 = static_cast<int32_t>(C), run = p32 * C32;
  for (int64_t item = blockIdx.x; item < rows; item += gridDim.x) {  // block-uniform loop
    // item = ((b * n + w) * K + r) * p + py
    const int64_t py = item % p;
    const int64_t r = (item / p) % K;
    const int64_t bw = item / (p * K);
    const int64_t b = bw / g.n;
    const int64_t row = coords[bw * 2], col = coords[bw * 2 + 1];
    CUDA_KERNEL_ASSERT(row >= 0 && row <= g.grid_h - K && col >= 0 && col <= g.grid_w - K);
    const in_t* src = img + b * g.sb + ((row + r) * p + py) * g.sh + col * p * g.sw;
    out_t* dst = out + (bw * K * K + r * K) * P + py * p * C;
    if (STAGED) {
      for (int32_t j = threadIdx.x; j < len; j += blockDim.x) {
        const int32_t x = j % (K32 * p32), ch = j / (K32 * p32);  // x: from the window's left
        const int32_t c = x / p32, px = x % p32;
        tile[c * run + px * C32 + ch] = src[ch * g.sc + static_cast<int64_t>(x) * g.sw];
      }
      __syncthreads();
      for (int32_t k = threadIdx.x; k < len; k += blockDim.x) {
        const int32_t c = k / run;
        dst[c * P + (k - c * run)] = tf(tile[k], k % C32);
      }
      __syncthreads();  // the tile is reused by the next item
    } else {
      for (int32_t j = threadIdx.x; j < len; j += blockDim.x) {
        const int32_t ch = j % C32, px = (j / C32) % p32, c = j / run;
        const int64_t x = static_cast<int64_t>(c) * p + px;
        dst[c * P + px * C + ch] = tf(src[ch * g.sc + x * g.sw], ch);
      }
    }
  }
}

template <typename scalar_t>
__global__ void window_patchify_backward_kernel(const scalar_t* __restrict__ grad,
                                                const int32_t* __restrict__ coords,
                                                scalar_t* __restrict__ grad_img, Geometry g,
                                                int64_t rows, int64_t H, int32_t W) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = g.K, p = g.p, C = g.C, n = g.n, P = p * p * C;
  const int32_t p32 = static_cast<int32_t>(p);
  const int32_t len = static_cast<int32_t>(C) * W;  // elements of one image row, all channels
  for (int64_t item = blockIdx.x; item < rows; item += gridDim.x) {  // item = b * H + y
    const int64_t b = item / H, y = item % H;
    const int64_t R = y / p, py = y % p;
    for (int32_t e = threadIdx.x; e < len; e += blockDim.x) {
      const int32_t ch = e / W, x = e % W;  // x fastest: coalesced writes
      const int32_t patch_col = x / p32, px = x % p32;
      acc_t acc = 0;
      for (int64_t w = 0; w < n; ++w) {  // window order: a fixed summation order
        const int64_t bw = b * n + w;
        const int64_t r = R - coords[bw * 2];  // the same for the whole block
        if (r < 0 || r >= K) continue;
        const int64_t c = patch_col - coords[bw * 2 + 1];
        if (c < 0 || c >= K) continue;
        acc += static_cast<acc_t>(grad[(bw * K * K + r * K + c) * P + (py * p + px) * C + ch]);
      }
      grad_img[((b * C + ch) * H + y) * W + x] = static_cast<scalar_t>(acc);
    }
  }
}

}  // namespace

at::Tensor window_patchify_cuda(const at::Tensor& images, const at::Tensor& coords_in,
                                int64_t window_size, int64_t patch_size,
                                const std::optional<at::Tensor>& mean_in,
                                const std::optional<at::Tensor>& std_in,
                                std::optional<at::ScalarType> out_dtype) {
  check_window_patchify_args(images, coords_in, window_size, patch_size, mean_in, std_in,
                             out_dtype);
  const c10::cuda::CUDAGuard guard(images.device());
  const auto coords = coords_in.contiguous();
  const int64_t B = images.size(0), C = images.size(1), H = images.size(2), W = images.size(3);
  const int64_t K = window_size, p = patch_size, n = coords.size(1);
  const auto in_type = images.scalar_type();
  const bool int_pixels = in_type == at::kByte || in_type == at::kUInt16;
  const auto out_type = out_dtype.value_or(int_pixels ? at::kFloat : in_type);
  auto out = at::empty({B, n, K * K, p * p * C}, images.options().dtype(out_type));
  if (out.numel() == 0) return out;
  TORCH_CHECK(K * p * C < (int64_t(1) << 31), "window_patchify: a window row of K*p*C = ",
              K * p * C, " elements is too long");
  const Geometry g{n, K, p, C, H / p, W / p,
                   images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const at::Tensor mean = mean_in ? mean_in->contiguous() : at::Tensor();
  const at::Tensor std = std_in ? std_in->contiguous() : at::Tensor();
  const double* mean_ptr = mean.defined() ? mean.const_data_ptr<double>() : nullptr;
  const double* std_ptr = std.defined() ? std.const_data_ptr<double>() : nullptr;
  // Channels-last images are read in output order directly; others are staged
  // through shared memory (one window pixel row) when it fits.
  const bool channel_fastest = C > 1 && images.stride(1) < images.stride(3);
  const int64_t rows = B * n * K * p;
  const int threads = threads_for(K * p * C);
  const int64_t blocks = grid_for_rows(rows);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND4(at::kHalf, at::kBFloat16, at::kByte, at::kUInt16, in_type, "window_patchify_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_type, "window_patchify_cuda", [&] {
      using out_t = scalar_t;
      const PixelTransform<in_t, out_t> tf{mean_ptr, std_ptr};
      const size_t tile_bytes = K * p * C * sizeof(in_t);
      const in_t* img = images.const_data_ptr<in_t>();
      const int32_t* xy = coords.const_data_ptr<int32_t>();
      out_t* dst = out.data_ptr<out_t>();
      if (!channel_fastest && tile_bytes <= 48 * 1024) {
        window_patchify_forward_kernel<in_t, out_t, true>
            <<<blocks, threads, tile_bytes, stream>>>(img, xy, dst, g, rows, tf);
      } else {
        window_patchify_forward_kernel<in_t, out_t, false>
            <<<blocks, threads, 0, stream>>>(img, xy, dst, g, rows, tf);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor window_patchify_backward_cuda(const at::Tensor& grad_in, const at::Tensor& coords_in,
                                         int64_t window_size, int64_t patch_size,
                                         int64_t height, int64_t width) {
  check_window_patchify_backward_args(grad_in, coords_in, window_size, patch_size, height,
                                      width);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto coords = coords_in.contiguous();
  const int64_t K = window_size, p = patch_size, H = height, W = width;
  const int64_t B = grad.size(0), n = grad.size(1), C = grad.size(3) / (p * p);
  auto grad_images = at::empty({B, C, H, W}, grad.options());
  if (grad_images.numel() == 0) return grad_images;
  TORCH_CHECK(C * W < (int64_t(1) << 31), "window_patchify_backward: an image row of C*W = ",
              C * W, " elements is too long");
  const Geometry g{n, K, p, C, H / p, W / p, 0, 0, 0, 0};
  const int64_t rows = B * H;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "window_patchify_backward_cuda", [&] {
    window_patchify_backward_kernel<scalar_t>
        <<<grid_for_rows(rows), threads_for(C * W), 0, stream>>>(
            grad.const_data_ptr<scalar_t>(), coords.const_data_ptr<int32_t>(),
            grad_images.data_ptr<scalar_t>(), g, rows, H, static_cast<int32_t>(W));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_images;
}

}  // namespace lomar_ops
