// rpe_gather on the CPU: out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]], and its
// backward, a per-row scatter-add into the buckets accumulated in fp32 (fp64
// for double), in a fixed order, so results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

// Rows per parallel chunk so that a chunk moves at least ~32K elements.
int64_t grain_rows(int64_t row_len) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len));
}

}  // namespace

at::Tensor rpe_gather_cpu(const at::Tensor& table_in, const at::Tensor& bucket_ids_in) {
  check_rpe_gather_args(table_in, bucket_ids_in);
  const auto table = table_in.contiguous();
  const auto ids = bucket_ids_in.contiguous();
  const int64_t S = table.size(0), H = table.size(1), N = table.size(2), NB = table.size(3);
  check_bucket_ids_range(ids, NB, "rpe_gather");
  auto out = at::empty({S, H, N, N}, table.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, table.scalar_type(), "rpe_gather_cpu", [&] {
    const scalar_t* tab = table.data_ptr<scalar_t>();
    const int32_t* id = ids.data_ptr<int32_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, S * H * N, grain_rows(N), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % N;
        const scalar_t* src_row = tab + row * NB;
        const int32_t* id_row = id + i * N;
        scalar_t* dst_row = dst + row * N;
        for (int64_t j = 0; j < N; ++j) dst_row[j] = src_row[id_row[j]];
      }
    });
  });
  return out;
}

at::Tensor rpe_gather_backward_cpu(const at::Tensor& grad_in, const at::Tensor& bucket_ids_in,
                                   int64_t num_buckets) {
  check_rpe_gather_backward_args(grad_in, bucket_ids_in, num_buckets);
  const auto grad = grad_in.contiguous();
  const auto ids = bucket_ids_in.contiguous();
  const int64_t S = grad.size(0), H = grad.size(1), N = grad.size(2), NB = num_buckets;
  check_bucket_ids_range(ids, NB, "rpe_gather_backward");
  auto grad_table = at::empty({S, H, N, NB}, grad.options());
  if (grad_table.numel() == 0) return grad_table;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "rpe_gather_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int32_t* id = ids.data_ptr<int32_t>();
    scalar_t* dst = grad_table.data_ptr<scalar_t>();
    at::parallel_for(0, S * H * N, grain_rows(N), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(NB);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row % N;
        const scalar_t* g_row = g + row * N;
        const int32_t* id_row = id + i * N;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t j = 0; j < N; ++j) acc[id_row[j]] += static_cast<acc_t>(g_row[j]);
        scalar_t* dst_row = dst + row * NB;
        for (int64_t b = 0; b < NB; ++b) dst_row[b] = static_cast<scalar_t>(acc[b]);
      }
    });
  });
  return grad_table;
}

}  // namespace lomar_ops
