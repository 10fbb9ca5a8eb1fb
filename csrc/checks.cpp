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

// ---- mask_substitute ----------------------------------------------------------

namespace {

void check_same_float_vector(const at::Tensor& v, const char* name, const at::Tensor& tokens) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == tokens.size(2), "mask_substitute: ", name,
              " must be (D,) = (", tokens.size(2), ",) to match tokens, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == tokens.scalar_type(), "mask_substitute: ", name,
              " must have the dtype of tokens (", tokens.scalar_type(), "), got ",
              v.scalar_type());
  TORCH_CHECK(v.device() == tokens.device(), "mask_substitute: ", name, " is on ", v.device(),
              " but tokens is on ", tokens.device());
}

void check_sequence_mask(const char* op, const at::Tensor& mask, int64_t S, int64_t L,
                         const at::Tensor& like) {
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ",
              mask.scalar_type());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == S && mask.size(1) == L, op,
              ": mask must be (S, L) = (", S, ", ", L, "), got shape ", mask.sizes());
  TORCH_CHECK(mask.device() == like.device(), op, ": mask is on ", mask.device(),
              " but the data is on ", like.device());
}

}  // namespace

void check_mask_substitute_args(const at::Tensor& tokens, const at::Tensor& mask,
                                const at::Tensor& mask_token,
                                const std::optional<at::Tensor>& cls_token) {
  TORCH_CHECK(tokens.dim() == 3, "mask_substitute: tokens must be (S, L, D), got shape ",
              tokens.sizes());
  TORCH_CHECK(is_float_type(tokens.scalar_type()),
              "mask_substitute: tokens must be float16, bfloat16, float32 or float64, got ",
              tokens.scalar_type());
  check_sequence_mask("mask_substitute", mask, tokens.size(0), tokens.size(1), tokens);
  check_same_float_vector(mask_token, "mask_token", tokens);
  if (cls_token.has_value()) check_same_float_vector(*cls_token, "cls_token", tokens);
}

void check_mask_substitute_backward_args(const at::Tensor& grad_out, const at::Tensor& mask,
                                         bool has_cls) {
  TORCH_CHECK(grad_out.dim() == 3, "mask_substitute_backward: grad_out must be (S, [1+]L, D), "
              "got shape ", grad_out.sizes());
  TORCH_CHECK(is_float_type(grad_out.scalar_type()),
              "mask_substitute_backward: grad_out must be a float tensor, got ",
              grad_out.scalar_type());
  const int64_t L = grad_out.size(1) - (has_cls ? 1 : 0);
  TORCH_CHECK(L >= 0, "mask_substitute_backward: grad_out has no cls row (shape ",
              grad_out.sizes(), ") but has_cls is true");
  check_sequence_mask("mask_substitute_backward", mask, grad_out.size(0), L, grad_out);
}

// ---- masked_patch_loss ----------------------------------------------------------

void check_masked_patch_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                  const at::Tensor& mask, bool norm_pix, double eps,
                                  const char* op) {
  TORCH_CHECK(pred.dim() == 3, op, ": pred must be (S, L, P), got shape ", pred.sizes());
  TORCH_CHECK(is_float_type(pred.scalar_type()), op,
              ": pred must be float16, bfloat16, float32 or float64, got ", pred.scalar_type());
  TORCH_CHECK(target.sizes() == pred.sizes(), op, ": target must have the shape of pred ",
              pred.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.scalar_type() == pred.scalar_type(), op,
              ": target must have the dtype of pred (", pred.scalar_type(), "), got ",
              target.scalar_type());
  TORCH_CHECK(target.device() == pred.device(), op, ": target is on ", target.device(),
              " but pred is on ", pred.device());
  check_sequence_mask(op, mask, pred.size(0), pred.size(1), pred);
  TORCH_CHECK(pred.size(2) >= 1, op, ": patches must have at least one value (P >= 1)");
  TORCH_CHECK(!norm_pix || pred.size(2) >= 2, op,
              ": norm_pix needs P >= 2 values per patch (unbiased variance), got P = ",
              pred.size(2));
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

void check_masked_patch_loss_backward_args(const at::Tensor& grad, const at::Tensor& pred,
                                           const at::Tensor& target, const at::Tensor& mask,
                                           bool norm_pix, double eps) {
  const char* op = "masked_patch_loss_backward";
  check_masked_patch_loss_args(pred, target, mask, norm_pix, eps, op);
  TORCH_CHECK(grad.numel() == 1, op, ": grad must hold one value (the loss's gradient), got shape ",
              grad.sizes());
  TORCH_CHECK(grad.device() == pred.device(), op, ": grad is on ", grad.device(),
              " but pred is on ", pred.device());
}

}  // namespace lomar_ops
