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

// Values of a bucket map in [0, num_buckets) (CPU tensors; a no-op for others).
void check_bucket_ids_range(const at::Tensor& bucket_ids, int64_t num_buckets, const char* op);

// ---- window_attention: softmax(scale q k^T + relative term) v ----------------
// q, k, v (S, N, H, d); rpe_mode "contextual" (rpe (NB, d) or (H, NB, d)), "bias"
// (rpe (H, NB)) or "none". Forward returns (out (S, N, H, d), lse (S, H, N) fp32,
// probs): probs is what the backward reuses, the softmax (S*H, N, N) on the CPU
// (as the unfused formula keeps it) and empty on CUDA (the flash backward recomputes
// it from lse). Backward takes them back and returns (dq, dk, dv, drpe) (drpe empty
// for "none").
void check_window_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const c10::optional<at::Tensor>& rpe,
                                 const c10::optional<at::Tensor>& bucket_ids,
                                 c10::string_view rpe_mode);
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& bucket_ids,
    c10::string_view rpe_mode, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& probs,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& bucket_ids,
    c10::string_view rpe_mode, double scale);
// ---- window_patchify: the pixels of K x K-patch windows, patch by patch -----
// out[b, w, r*K + c, (py*p + px)*C + ch]
//   = images[b, ch, (coords[b,w,0] + r)*p + py, (coords[b,w,1] + c)*p + px]
// images (B, C, H, W) with any strides (read through them, never copied whole),
// coords (B, n, 2) int32 (top row, left column in patch units). Optionally the
// pixel transform of the input pipeline, in float32 (float64 when images or output
// are float64), rounded once to out_dtype (default: images' dtype, float32 for
// uint8 and uint16): x = value (/ 255 for uint8, / 65535 for uint16 images); with
// mean and std (float64 (C,)),
// (x - mean[ch]) / std[ch]. Without any of these it is an exact copy.
void check_window_patchify_args(const at::Tensor& images, const at::Tensor& coords,
                                int64_t window_size, int64_t patch_size,
                                const std::optional<at::Tensor>& mean,
                                const std::optional<at::Tensor>& std,
                                std::optional<at::ScalarType> out_dtype);
void check_window_patchify_backward_args(const at::Tensor& grad_out, const at::Tensor& coords,
                                         int64_t window_size, int64_t patch_size,
                                         int64_t height, int64_t width);
// Every window inside the (H/p, W/p) patch grid (data-dependent: syncs on CUDA).
void check_window_coords_range(const at::Tensor& coords, int64_t grid_h, int64_t grid_w,
                               int64_t window_size, const char* op);

at::Tensor window_patchify_cpu(const at::Tensor& images, const at::Tensor& coords,
                               int64_t window_size, int64_t patch_size,
                               const std::optional<at::Tensor>& mean,
                               const std::optional<at::Tensor>& std,
                               std::optional<at::ScalarType> out_dtype);
// grad_images (B, C, height, width), contiguous: zero outside the windows,
// overlapping windows summed in window order, in fp32 (fp64 for double).
at::Tensor window_patchify_backward_cpu(const at::Tensor& grad_out, const at::Tensor& coords,
                                        int64_t window_size, int64_t patch_size,
                                        int64_t height, int64_t width);
// ---- resize_region: rectangles of a bicubic antialiased resize ----------------
// image (H, W, C) uint8, uint16 or float32 (the decoder's layout, any C); box (top,
// left, height, width) in
// source pixels (fractional allowed); size (out_h, out_w) of the whole resize;
// regions: n rectangles (y0, x0, rows, cols), flattened, all of one size
// -> (n, C, rows, cols) in the image's dtype (integers rounded and clamped per pass);
// for uint8, rectangle i equals torchvision's resized_crop(..., BICUBIC,
// antialias=True)[:, y0:y0+rows, x0:x0+cols] for an integer box. CPU only: it runs
// in the data loader's workers.
at::Tensor resize_region_cpu(const at::Tensor& image, at::ArrayRef<double> box,
                             at::IntArrayRef size, at::IntArrayRef regions);

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
at::Tensor window_patchify_cuda(const at::Tensor& images, const at::Tensor& coords,
                                int64_t window_size, int64_t patch_size,
                                const std::optional<at::Tensor>& mean,
                                const std::optional<at::Tensor>& std,
                                std::optional<at::ScalarType> out_dtype);
at::Tensor window_patchify_backward_cuda(const at::Tensor& grad_out, const at::Tensor& coords,
                                         int64_t window_size, int64_t patch_size,
                                         int64_t height, int64_t width);
at::Tensor rpe_gather_cuda(const at::Tensor& table, const at::Tensor& bucket_ids);
at::Tensor rpe_gather_backward_cuda(const at::Tensor& grad_out,
                                    const at::Tensor& bucket_ids,
                                    int64_t num_buckets);
at::Tensor mask_substitute_cuda(const at::Tensor& tokens, const at::Tensor& mask,
                                const at::Tensor& mask_token,
                                const std::optional<at::Tensor>& cls_token);
std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_substitute_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& mask, bool has_cls);
// Flash-style (csrc/cuda/window_attention.cu): head dim d <= 128; the shared
// memory of a block bounds NB (an error names it); d(rpe) bitwise repeatable on
// a given GPU.
std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& bucket_ids,
    c10::string_view rpe_mode, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& probs,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& bucket_ids,
    c10::string_view rpe_mode, double scale);
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
