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

namespace {

void check_coords(const at::Tensor& coords, int64_t batch, const at::Tensor& like,
                  const char* op) {
  TORCH_CHECK(coords.dim() == 3 && coords.size(2) == 2, op,
              ": coords must be (B, n, 2) (top row, left column), got shape ", coords.sizes());
  TORCH_CHECK(coords.scalar_type() == at::kInt, op, ": coords must be int32, got ",
              coords.scalar_type());
  TORCH_CHECK(coords.size(0) == batch, op, ": coords has batch ", coords.size(0),
              " but the images have batch ", batch);
  TORCH_CHECK(coords.device() == like.device(), op, ": coords is on ", coords.device(),
              " but the data is on ", like.device());
}

void check_window_geometry(int64_t window_size, int64_t patch_size, int64_t height,
                           int64_t width, const char* op) {
  TORCH_CHECK(window_size >= 1, op, ": window_size must be >= 1, got ", window_size);
  TORCH_CHECK(patch_size >= 1, op, ": patch_size must be >= 1, got ", patch_size);
  TORCH_CHECK(height % patch_size == 0 && width % patch_size == 0, op,
              ": the image size (H, W) = (", height, ", ", width,
              ") must be a multiple of patch_size ", patch_size);
  TORCH_CHECK(window_size <= height / patch_size && window_size <= width / patch_size, op,
              ": window_size ", window_size, " does not fit the patch grid (",
              height / patch_size, ", ", width / patch_size, ")");
}

}  // namespace

void check_window_patchify_args(const at::Tensor& images, const at::Tensor& coords,
                                int64_t window_size, int64_t patch_size,
                                const std::optional<at::Tensor>& mean,
                                const std::optional<at::Tensor>& std,
                                std::optional<at::ScalarType> out_dtype) {
  const char* op = "window_patchify";
  TORCH_CHECK(images.dim() == 4, op, ": images must be (B, C, H, W), got shape ",
              images.sizes());
  TORCH_CHECK(is_float_type(images.scalar_type()) || images.scalar_type() == at::kByte ||
                  images.scalar_type() == at::kUInt16,
              op, ": images must be uint8, uint16, float16, bfloat16, float32 or float64, got ",
              images.scalar_type());
  TORCH_CHECK(!out_dtype || is_float_type(*out_dtype), op,
              ": out_dtype must be float16, bfloat16, float32 or float64, got ",
              out_dtype ? c10::toString(*out_dtype) : "none");
  TORCH_CHECK(mean.has_value() == std.has_value(), op, ": mean and std go together, got ",
              mean ? "mean" : "no mean", " and ", std ? "std" : "no std");
  for (const auto* t : {&mean, &std}) {
    if (!t->has_value()) continue;
    const char* name = t == &mean ? "mean" : "std";
    TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == images.size(1), op, ": ", name,
                " must be (C,) = (", images.size(1), ",), got shape ", (*t)->sizes());
    TORCH_CHECK((*t)->scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ",
                (*t)->scalar_type());
    TORCH_CHECK((*t)->device() == images.device(), op, ": ", name, " is on ", (*t)->device(),
                " but images are on ", images.device());
  }
  check_window_geometry(window_size, patch_size, images.size(2), images.size(3), op);
  check_coords(coords, images.size(0), images, op);
}

void check_window_patchify_backward_args(const at::Tensor& grad_out, const at::Tensor& coords,
                                         int64_t window_size, int64_t patch_size,
                                         int64_t height, int64_t width) {
  const char* op = "window_patchify_backward";
  TORCH_CHECK(is_float_type(grad_out.scalar_type()), op,
              ": grad_out must be a float tensor, got ", grad_out.scalar_type());
  check_window_geometry(window_size, patch_size, height, width, op);
  const int64_t pp = patch_size * patch_size;
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(2) == window_size * window_size &&
                  grad_out.size(3) % pp == 0 && grad_out.size(3) >= pp,
              op, ": grad_out must be (B, n, K*K, p*p*C) with K = ", window_size, ", p = ",
              patch_size, ", got shape ", grad_out.sizes());
  check_coords(coords, grad_out.size(0), grad_out, op);
  TORCH_CHECK(coords.size(1) == grad_out.size(1), op, ": coords has ", coords.size(1),
              " windows per image but grad_out has ", grad_out.size(1));
}

void check_window_coords_range(const at::Tensor& coords, int64_t grid_h, int64_t grid_w,
                               int64_t window_size, const char* op) {
  if (coords.numel() == 0) return;
  const auto rows = coords.select(2, 0), cols = coords.select(2, 1);
  auto [rlo, rhi] = at::aminmax(rows);
  auto [clo, chi] = at::aminmax(cols);
  const int64_t max_row = grid_h - window_size, max_col = grid_w - window_size;
  TORCH_CHECK(rlo.item<int64_t>() >= 0 && rhi.item<int64_t>() <= max_row, op,
              ": coords rows (top row of each window) must lie in [0, ", max_row,
              "] (grid height ", grid_h, " - window_size ", window_size, "), got values in [",
              rlo.item<int64_t>(), ", ", rhi.item<int64_t>(), "]");
  TORCH_CHECK(clo.item<int64_t>() >= 0 && chi.item<int64_t>() <= max_col, op,
              ": coords columns (left column of each window) must lie in [0, ", max_col,
              "] (grid width ", grid_w, " - window_size ", window_size, "), got values in [",
              clo.item<int64_t>(), ", ", chi.item<int64_t>(), "]");
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
