// rpe_gather on CUDA: out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]], and its
// backward. The backward is a segmented sum rather than an atomic scatter: the
// bucket map is shared by all (s, h), so its inverse (for each query row i, the
// key columns j grouped by bucket) is built once per call, and each warp then sums
// one row's buckets in a fixed order, in fp32 (fp64 for double): deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

int64_t grid_for(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, sms * 32));
}

template <typename scalar_t>
__global__ void rpe_gather_forward_kernel(const scalar_t* __restrict__ table,
                                          const int32_t* __restrict__ ids,
                                          scalar_t* __restrict__ out, int64_t total, int64_t N,
                                          int64_t NB) {
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = idx / N;  // (s * H + h) * N + i
    const int64_t j = idx - row * N;
    const int64_t i = row % N;
    const int32_t b = ids[i * N + j];
    CUDA_KERNEL_ASSERT(b >= 0 && b < NB);
    out[idx] = table[row * NB + b];
  }
}

template <typename scalar_t>
__global__ void rpe_gather_backward_kernel(const scalar_t* __restrict__ grad,
                                           const int32_t* __restrict__ order,
                                           const int32_t* __restrict__ offsets,
                                           scalar_t* __restrict__ grad_table, int64_t rows,
                                           int64_t N, int64_t NB) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_per_block = blockDim.x / kWarp;
  for (int64_t row = blockIdx.x * warps_per_block + threadIdx.x / kWarp; row < rows;
       row += (int64_t)gridDim.x * warps_per_block) {
    const int64_t i = row % N;
    const scalar_t* g = grad + row * N;
    const int32_t* ord = order + i * N;
    const int32_t* off = offsets + i * (NB + 1);
    for (int64_t b = lane; b < NB; b += kWarp) {
      acc_t acc = 0;
      for (int32_t k = off[b]; k < off[b + 1]; ++k) acc += static_cast<acc_t>(g[ord[k]]);
      grad_table[row * NB + b] = static_cast<scalar_t>(acc);
    }
  }
}

}  // namespace

at::Tensor rpe_gather_cuda(const at::Tensor& table_in, const at::Tensor& bucket_ids_in) {
  check_rpe_gather_args(table_in, bucket_ids_in);
  const c10::cuda::CUDAGuard guard(table_in.device());
  const auto table = table_in.contiguous();
  const auto ids = bucket_ids_in.contiguous();
  const int64_t S = table.size(0), H = table.size(1), N = table.size(2), NB = table.size(3);
  auto out = at::empty({S, H, N, N}, table.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "rpe_gather_cuda", [&] {
    rpe_gather_forward_kernel<scalar_t><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        table.data_ptr<scalar_t>(), ids.data_ptr<int32_t>(), out.data_ptr<scalar_t>(), total, N,
        NB);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor rpe_gather_backward_cuda(const at::Tensor& grad_in, const at::Tensor& bucket_ids_in,
                                    int64_t num_buckets) {
  check_rpe_gather_backward_args(grad_in, bucket_ids_in, num_buckets);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto ids = bucket_ids_in.contiguous();
  const int64_t S = grad.size(0), H = grad.size(1), N = grad.size(2), NB = num_buckets;
  auto grad_table = at::empty({S, H, N, NB}, grad.options());
  const int64_t rows = S * H * N;
  if (grad_table.numel() == 0) return grad_table;

  // Inverse of the bucket map: per row i, columns sorted by bucket (stable, so
  // ascending j within a bucket) and where each bucket starts.
  auto [sorted_ids, order64] = at::sort(ids, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  const auto order = order64.to(at::kInt);
  const auto bounds = at::arange(NB + 1, ids.options()).expand({N, NB + 1}).contiguous();
  const auto offsets = at::searchsorted(sorted_ids, bounds, /*out_int32=*/true).contiguous();

  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rpe_gather_backward_cuda", [&] {
    rpe_gather_backward_kernel<scalar_t><<<grid_for(rows, kThreads / kWarp), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), order.data_ptr<int32_t>(), offsets.data_ptr<int32_t>(),
        grad_table.data_ptr<scalar_t>(), rows, N, NB);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_table;
}

}  // namespace lomar_ops
