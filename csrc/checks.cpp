// Argument checks shared by the CPU and CUDA kernels. The Python layer checks
// the same things first with Python exceptions; these guard direct calls through
// torch.ops.lomar_ops.* and every message names the argument.
#include "lomar_ops.h"

#include <c10/util/Exception.h>

namespace lomar_ops {

namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_bucket_ids(const at::Tensor& bucket_ids, int64_t n, const at::Tensor& like) {
  TORCH_CHECK(bucket_ids.dim() == 2 && bucket_ids.size(0) == bucket_ids.size(1),
              "rpe_gather: bucket_ids must be a square (N, N) tensor, got shape ",
              bucket_ids.sizes());
  TORCH_CHECK(bucket_ids.scalar_type() == at::kInt,
              "rpe_gather: bucket_ids must be int32, got ", bucket_ids.scalar_type());
  TORCH_CHECK(bucket_ids.size(0) == n, "rpe_gather: bucket_ids is (", bucket_ids.size(0),
              ", ", bucket_ids.size(1), ") but the sequence length N is ", n);
  TORCH_CHECK(bucket_ids.device() == like.device(), "rpe_gather: bucket_ids is on ",
              bucket_ids.device(), " but the data is on ", like.device());
}

}  // namespace

void check_rpe_gather_args(const at::Tensor& table, const at::Tensor& bucket_ids) {
  TORCH_CHECK(table.dim() == 4, "rpe_gather: table must be (S, H, N, NB), got shape ",
              table.sizes());
  TORCH_CHECK(is_float_type(table.scalar_type()),
              "rpe_gather: table must be float16, bfloat16, float32 or float64, got ",
              table.scalar_type());
  TORCH_CHECK(table.size(3) > 0, "rpe_gather: table has no buckets (NB = 0)");
  check_bucket_ids(bucket_ids, table.size(2), table);
}

void check_rpe_gather_backward_args(const at::Tensor& grad_out,
                                    const at::Tensor& bucket_ids,
                                    int64_t num_buckets) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(2) == grad_out.size(3),
              "rpe_gather_backward: grad_out must be (S, H, N, N), got shape ",
              grad_out.sizes());
  TORCH_CHECK(is_float_type(grad_out.scalar_type()),
              "rpe_gather_backward: grad_out must be a float tensor, got ",
              grad_out.scalar_type());
  TORCH_CHECK(num_buckets > 0, "rpe_gather_backward: num_buckets must be positive, got ",
              num_buckets);
  check_bucket_ids(bucket_ids, grad_out.size(2), grad_out);
}

}  // namespace lomar_ops
