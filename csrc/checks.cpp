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

void check_bucket_ids_range(const at::Tensor& bucket_ids, int64_t num_buckets, const char* op) {
  // Reads the values: for CPU tensors (CUDA kernels assert on the device instead).
  if (bucket_ids.numel() == 0 || !bucket_ids.device().is_cpu()) return;
  auto [lo, hi] = at::aminmax(bucket_ids);
  const int64_t min_id = lo.item<int64_t>(), max_id = hi.item<int64_t>();
  TORCH_CHECK(min_id >= 0 && max_id < num_buckets, op, ": bucket_ids must lie in [0, ",
              num_buckets, "), got values in [", min_id, ", ", max_id, "]");
}

void check_window_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& rpe,
                                 const c10::optional<at::Tensor>& bucket_ids,
                                 c10::string_view rpe_mode) {
  constexpr const char* op = "window_attention";
  TORCH_CHECK(q.dim() == 4, op, ": q must be (S, N, H, d), got shape ", q.sizes());
  TORCH_CHECK(is_float_type(q.scalar_type()), op, ": q must be a float tensor, got ",
              q.scalar_type());
  for (const auto* t : {&k, &v}) {
    TORCH_CHECK(t->sizes() == q.sizes(), op, ": k and v must have q's shape ", q.sizes(),
                ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->device() == q.device(), op,
                ": q, k and v must share dtype and device");
  }
  const bool has_rpe = rpe.has_value() && rpe->defined();
  const bool has_ids = bucket_ids.has_value() && bucket_ids->defined();
  const int64_t N = q.size(1), H = q.size(2), d = q.size(3);
  if (rpe_mode == "none") {
    TORCH_CHECK(!has_rpe && !has_ids, op, ": rpe_mode none takes no rpe or bucket_ids");
    return;
  }
  TORCH_CHECK(rpe_mode == "contextual" || rpe_mode == "bias", op,
              ": rpe_mode must be contextual, bias or none, got ", rpe_mode);
  TORCH_CHECK(has_rpe && has_ids, op, ": rpe_mode ", rpe_mode, " needs rpe and bucket_ids");
  TORCH_CHECK(rpe->scalar_type() == q.scalar_type() && rpe->device() == q.device(), op,
              ": rpe must have q's dtype and device, got ", rpe->scalar_type(), " on ",
              rpe->device());
  if (rpe_mode == "contextual") {
    const bool ok = (rpe->dim() == 2 && rpe->size(1) == d) ||
                    (rpe->dim() == 3 && rpe->size(0) == H && rpe->size(2) == d);
    TORCH_CHECK(ok, op, ": contextual rpe must be (NB, d) or (H, NB, d) = (", H, ", NB, ", d,
                "), got ", rpe->sizes());
  } else {
    TORCH_CHECK(rpe->dim() == 2 && rpe->size(0) == H, op, ": bias rpe must be (H, NB) = (", H,
                ", NB), got ", rpe->sizes());
  }
  TORCH_CHECK(bucket_ids->dim() == 2 && bucket_ids->size(0) == N && bucket_ids->size(1) == N, op,
              ": bucket_ids must be (N, N) = (", N, ", ", N, "), got ", bucket_ids->sizes());
  TORCH_CHECK(bucket_ids->scalar_type() == at::kInt, op, ": bucket_ids must be int32, got ",
              bucket_ids->scalar_type());
  TORCH_CHECK(bucket_ids->device() == q.device(), op, ": bucket_ids must be on ", q.device());
}

}  // namespace lomar_ops
