// Declarations shared by the op registration, the kernels and the C++ tests.
// Each op has a CPU kernel in csrc/cpu/<op>.cpp and a CUDA kernel in
// csrc/cuda/<op>.cu; csrc/registration.cpp binds both to one op name.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace lomar_ops {

// ---- rpe_gather: out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]] ----------------
// Argument checks shared by the CPU and CUDA kernels (they name the argument).
void check_rpe_gather_args(const at::Tensor& table, const at::Tensor& bucket_ids);
void check_rpe_gather_backward_args(const at::Tensor& grad_out,
                                    const at::Tensor& bucket_ids,
                                    int64_t num_buckets);

at::Tensor rpe_gather_cpu(const at::Tensor& table, const at::Tensor& bucket_ids);
at::Tensor rpe_gather_backward_cpu(const at::Tensor& grad_out,
                                   const at::Tensor& bucket_ids,
                                   int64_t num_buckets);

// ---- mask_substitute: masked rows -> mask_token, cls_token prepended ------
// tokens (S, L, D), mask (S, L) bool, mask_token (D,), cls_token (D,) or none
// -> (S, [1+]L, D). The backward returns (grad_tokens (S, L, D), grad_mask_token
// (D,), grad_cls_token): (D,) when has_cls, else an empty (0,) tensor (a schema
// return cannot be None). Both sums are fp32 (fp64 for double), deterministic.
void check_mask_substitute_args(const at::Tensor& tokens, const at::Tensor& mask,
                                const at::Tensor& mask_token,
                                const std::optional<at::Tensor>& cls_token);
void check_mask_substitute_backward_args(const at::Tensor& grad_out, const at::Tensor& mask,
                                         bool has_cls);

at::Tensor mask_substitute_cpu(const at::Tensor& tokens, const at::Tensor& mask,
                               const at::Tensor& mask_token,
                               const std::optional<at::Tensor>& cls_token);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_substitute_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& mask, bool has_cls);

// ---- masked_patch_loss: normalised-pixel MSE averaged over masked patches ----
// pred, target (S, L, P) of one float dtype, mask (S, L) bool -> 0-dim tensor,
// float32 (float64 for double inputs). The backward gives d/dpred only (the
// target is data); grad is that 0-dim tensor's gradient.
void check_masked_patch_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                  const at::Tensor& mask, bool norm_pix, double eps,
                                  const char* op);
void check_masked_patch_loss_backward_args(const at::Tensor& grad, const at::Tensor& pred,
                                           const at::Tensor& target, const at::Tensor& mask,
                                           bool norm_pix, double eps);

at::Tensor masked_patch_loss_cpu(const at::Tensor& pred, const at::Tensor& target,
                                 const at::Tensor& mask, bool norm_pix, double eps);
at::Tensor masked_patch_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred,
                                          const at::Tensor& target, const at::Tensor& mask,
                                          bool norm_pix, double eps);

#ifdef LOMAR_WITH_CUDA
at::Tensor rpe_gather_cuda(const at::Tensor& table, const at::Tensor& bucket_ids);
at::Tensor rpe_gather_backward_cuda(const at::Tensor& grad_out,
                                    const at::Tensor& bucket_ids,
                                    int64_t num_buckets);
at::Tensor mask_substitute_cuda(const at::Tensor& tokens, const at::Tensor& mask,
                                const at::Tensor& mask_token,
                                const std::optional<at::Tensor>& cls_token);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_substitute_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& mask, bool has_cls);
at::Tensor masked_patch_loss_cuda(const at::Tensor& pred, const at::Tensor& target,
                                  const at::Tensor& mask, bool norm_pix, double eps);
at::Tensor masked_patch_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& pred,
                                           const at::Tensor& target, const at::Tensor& mask,
                                           bool norm_pix, double eps);
// The SM architectures nvcc compiled the CUDA kernels for, e.g. "800,900"
// (nvcc's __CUDA_ARCH_LIST__, so it reports what was built, not what was asked).
std::string cuda_arch_list();
std::string cuda_runtime_version_at_build();
#endif

// ---- build facts ------------------------------------------------------------
struct BuildInfo {
  bool cuda = false;              // CUDA kernels compiled in
  std::string cuda_archs;         // "800,900" or ""
  std::string cuda_version;       // CUDA runtime headers the kernels were built with
  std::string compiler;           // host C++ compiler
  std::string torch_version;      // torch the extension was built against
  bool openmp = false;            // CPU kernels parallelised with OpenMP
};
BuildInfo build_info();

}  // namespace lomar_ops
