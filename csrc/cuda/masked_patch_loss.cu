// masked_patch_loss on CUDA. One warp per row (patch): lanes read the row's P
// values with stride 32 (coalesced), warp-reduce (fixed butterfly, lane 0's
// result broadcast) the mean, the unbiased variance and the squared error, all
// in fp32 (fp64 for double); unmasked rows are never read. The forward writes
// one loss per row, then a single block sums them and counts the mask in a
// fixed order: deterministic. The backward recomputes each masked row's mean and
// rstd (the normalised target is never stored) and writes
// dpred = grad * 2 * (pred - t) / (P * num_masked); unmasked rows get 0. The
// gradient and the count are read on the device: no host synchronisation.
// pred and target are read through their (S, L) strides when each patch is
// contiguous (pred is typically the head's output sliced past its cls row).
// A mask with no True entry gives NaN here (0/0): the Python layer rejects it in
// eager mode; checking on the device would need a synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kSumThreads = 512;

int64_t grid_for(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, sms * 32));
}

at::Tensor rows_contiguous(const at::Tensor& x) {
  return (x.size(2) <= 1 || x.stride(2) == 1) ? x : x.contiguous();
}

// Row r = s * L + l of an (S, L, P) tensor whose rows are contiguous.
struct RowStrides {
  int64_t s, l, L;
  __device__ int64_t offset(int64_t r) const {
    const int64_t q = r / L;
    return q * s + (r - q * L) * l;
  }
};

RowStrides row_strides(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.size(1)}; }

__device__ inline float device_sqrt(float x) { return sqrtf(x); }
__device__ inline double device_sqrt(double x) { return sqrt(x); }

// Sum over the warp in a fixed butterfly; every lane gets lane 0's total.
template <typename acc_t>
__device__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return __shfl_sync(0xffffffffu, v, 0);
}

// Mean and 1/sqrt(unbiased var + eps) of one target row (identity without norm_pix).
template <typename scalar_t, typename acc_t>
__device__ void row_stats(const scalar_t* __restrict__ t, int64_t P, bool norm_pix, acc_t eps,
                          int lane, acc_t& mean, acc_t& rstd) {
  mean = 0;
  rstd = 1;
  if (!norm_pix) return;
  acc_t sum = 0;
  for (int64_t i = lane; i < P; i += kWarp) sum += static_cast<acc_t>(t[i]);
  mean = warp_sum(sum) / static_cast<acc_t>(P);
  acc_t ss = 0;
  for (int64_t i = lane; i < P; i += kWarp) {
    const acc_t c = static_cast<acc_t>(t[i]) - mean;
    ss += c * c;
  }
  rstd = acc_t(1) / device_sqrt(warp_sum(ss) / static_cast<acc_t>(P - 1) + eps);
}

template <typename scalar_t, typename acc_t>
__global__ void loss_rows_kernel(const scalar_t* __restrict__ pred, RowStrides pred_rows,
                                 const scalar_t* __restrict__ target, RowStrides target_rows,
                                 const bool* __restrict__ mask, acc_t* __restrict__ row_loss,
                                 int64_t rows, int64_t P, bool norm_pix, acc_t eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / kWarp; row < rows;
       row += (int64_t)gridDim.x * warps_per_block) {
    if (!mask[row]) {  // the same for the whole warp
      if (lane == 0) row_loss[row] = 0;
      continue;
    }
    const scalar_t* p = pred + pred_rows.offset(row);
    const scalar_t* t = target + target_rows.offset(row);
    acc_t mean, rstd;
    row_stats(t, P, norm_pix, eps, lane, mean, rstd);
    acc_t se = 0;
    for (int64_t i = lane; i < P; i += kWarp) {
      const acc_t diff = static_cast<acc_t>(p[i]) - (static_cast<acc_t>(t[i]) - mean) * rstd;
      se += diff * diff;
    }
    se = warp_sum(se);
    if (lane == 0) row_loss[row] = se / static_cast<acc_t>(P);
  }
}

// One block: the row losses and the mask count, each thread in row order, then
// a fixed tree in shared memory. loss = sum / count.
template <typename acc_t>
__global__ void loss_sum_kernel(const acc_t* __restrict__ row_loss, const bool* __restrict__ mask,
                                int64_t rows, acc_t* __restrict__ loss) {
  __shared__ acc_t s_loss[kSumThreads];
  __shared__ int64_t s_count[kSumThreads];
  acc_t acc = 0, comp = 0;  // Kahan-compensated, in row order
  int64_t count = 0;
  for (int64_t i = threadIdx.x; i < rows; i += kSumThreads) {
    const acc_t y = row_loss[i] - comp;
    const acc_t t = acc + y;
    comp = (t - acc) - y;
    acc = t;
    count += mask[i] ? 1 : 0;
  }
  s_loss[threadIdx.x] = acc;
  s_count[threadIdx.x] = count;
  __syncthreads();
  for (int stride = kSumThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      s_loss[threadIdx.x] += s_loss[threadIdx.x + stride];
      s_count[threadIdx.x] += s_count[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = s_loss[0] / static_cast<acc_t>(s_count[0]);
}

template <typename scalar_t, typename acc_t>
__global__ void loss_backward_kernel(const acc_t* __restrict__ grad,
                                     const int64_t* __restrict__ count,
                                     const scalar_t* __restrict__ pred, RowStrides pred_rows,
                                     const scalar_t* __restrict__ target, RowStrides target_rows,
                                     const bool* __restrict__ mask, scalar_t* __restrict__ dpred,
                                     int64_t rows, int64_t P, bool norm_pix, acc_t eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  const acc_t scale = acc_t(2) * grad[0] / (static_cast<acc_t>(P) * static_cast<acc_t>(count[0]));
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / kWarp; row < rows;
       row += (int64_t)gridDim.x * warps_per_block) {
    scalar_t* dp = dpred + row * P;
    if (!mask[row]) {
      for (int64_t i = lane; i < P; i += kWarp) dp[i] = scalar_t(0);
      continue;
    }
    const scalar_t* p = pred + pred_rows.offset(row);
    const scalar_t* t = target + target_rows.offset(row);
    acc_t mean, rstd;
    row_stats(t, P, norm_pix, eps, lane, mean, rstd);
    for (int64_t i = lane; i < P; i += kWarp) {
      const acc_t tn = (static_cast<acc_t>(t[i]) - mean) * rstd;
      dp[i] = static_cast<scalar_t>(scale * (static_cast<acc_t>(p[i]) - tn));
    }
  }
}

}  // namespace

at::Tensor masked_patch_loss_cuda(const at::Tensor& pred_in, const at::Tensor& target_in,
                                  const at::Tensor& mask_in, bool norm_pix, double eps) {
  check_masked_patch_loss_args(pred_in, target_in, mask_in, norm_pix, eps, "masked_patch_loss");
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const auto pred = rows_contiguous(pred_in);
  const auto target = rows_contiguous(target_in);
  const auto mask = mask_in.contiguous();
  const int64_t rows = pred.size(0) * pred.size(1), P = pred.size(2);
  const auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_patch_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = pred.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    loss = at::empty({}, acc_options);
    auto row_loss = at::empty({rows}, acc_options);
    if (rows > 0) {
      loss_rows_kernel<scalar_t, acc_t><<<grid_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(
          pred.const_data_ptr<scalar_t>(), row_strides(pred), target.const_data_ptr<scalar_t>(),
          row_strides(target), mask.data_ptr<bool>(), row_loss.data_ptr<acc_t>(), rows, P,
          norm_pix, static_cast<acc_t>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    loss_sum_kernel<acc_t><<<1, kSumThreads, 0, stream>>>(
        row_loss.data_ptr<acc_t>(), mask.data_ptr<bool>(), rows, loss.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return loss;
}

at::Tensor masked_patch_loss_backward_cuda(const at::Tensor& grad_in, const at::Tensor& pred_in,
                                           const at::Tensor& target_in, const at::Tensor& mask_in,
                                           bool norm_pix, double eps) {
  check_masked_patch_loss_backward_args(grad_in, pred_in, target_in, mask_in, norm_pix, eps);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const auto pred = rows_contiguous(pred_in);
  const auto target = rows_contiguous(target_in);
  const auto mask = mask_in.contiguous();
  const int64_t rows = pred.size(0) * pred.size(1), P = pred.size(2);
  auto grad_pred = at::empty(pred.sizes(), pred.options());
  if (rows == 0) return grad_pred;
  const auto count = mask.sum(at::kLong).reshape({1});  // on the device, no sync
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_patch_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto grad = grad_in.to(c10::CppTypeToScalarType<acc_t>::value).reshape({1}).contiguous();
    loss_backward_kernel<scalar_t, acc_t><<<grid_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(
        grad.data_ptr<acc_t>(), count.data_ptr<int64_t>(), pred.const_data_ptr<scalar_t>(),
        row_strides(pred), target.const_data_ptr<scalar_t>(), row_strides(target),
        mask.data_ptr<bool>(), grad_pred.data_ptr<scalar_t>(), rows, P, norm_pix,
        static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_pred;
}

}  // namespace lomar_ops
