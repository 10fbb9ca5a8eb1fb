// The one place where lomar_ops' operators are declared (schemas) and where
// their CPU and CUDA kernels are bound to them. Autograd and fake-tensor rules
// are registered once, in Python (lomar_ops/ops/<op>.py).
#include <torch/library.h>

#include "lomar_ops.h"

TORCH_LIBRARY(lomar_ops, m) {
  m.def("rpe_gather(Tensor table, Tensor bucket_ids) -> Tensor");
  m.def("rpe_gather_backward(Tensor grad_out, Tensor bucket_ids, int num_buckets) -> Tensor");
  m.def("window_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? rpe, Tensor? bucket_ids, "
        "str rpe_mode, float scale) -> (Tensor out, Tensor lse, Tensor probs)");
  m.def("window_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor probs, Tensor? rpe, Tensor? bucket_ids, str rpe_mode, float scale) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("window_patchify(Tensor images, Tensor coords, int window_size, int patch_size, "
        "Tensor? mean=None, Tensor? std=None, ScalarType? out_dtype=None) -> Tensor");
  m.def("window_patchify_backward(Tensor grad_out, Tensor coords, int window_size, "
        "int patch_size, int height, int width) -> Tensor");
  // CPU only (the data loader's workers): rectangles of a bicubic antialiased resize.
  m.def("resize_region(Tensor image, float[] box, int[] size, int[] regions) -> Tensor");
  m.def("mask_substitute(Tensor tokens, Tensor mask, Tensor mask_token, Tensor? cls_token) -> Tensor");
  // grad_cls_token is an empty (0,) tensor when has_cls is false.
  m.def("mask_substitute_backward(Tensor grad_out, Tensor mask, bool has_cls) "
        "-> (Tensor grad_tokens, Tensor grad_mask_token, Tensor grad_cls_token)");
  m.def("masked_patch_loss(Tensor pred, Tensor target, Tensor mask, bool norm_pix, float eps) -> Tensor");
  m.def("masked_patch_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor mask, "
        "bool norm_pix, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(lomar_ops, CPU, m) {
  m.impl("rpe_gather", &lomar_ops::rpe_gather_cpu);
  m.impl("rpe_gather_backward", &lomar_ops::rpe_gather_backward_cpu);
  m.impl("window_attention_fwd", &lomar_ops::window_attention_fwd_cpu);
  m.impl("window_attention_bwd", &lomar_ops::window_attention_bwd_cpu);
  m.impl("window_patchify", &lomar_ops::window_patchify_cpu);
  m.impl("window_patchify_backward", &lomar_ops::window_patchify_backward_cpu);
  m.impl("resize_region", &lomar_ops::resize_region_cpu);
  m.impl("mask_substitute", &lomar_ops::mask_substitute_cpu);
  m.impl("mask_substitute_backward", &lomar_ops::mask_substitute_backward_cpu);
  m.impl("masked_patch_loss", &lomar_ops::masked_patch_loss_cpu);
  m.impl("masked_patch_loss_backward", &lomar_ops::masked_patch_loss_backward_cpu);
}

#ifdef LOMAR_WITH_CUDA
TORCH_LIBRARY_IMPL(lomar_ops, CUDA, m) {
  m.impl("rpe_gather", &lomar_ops::rpe_gather_cuda);
  m.impl("rpe_gather_backward", &lomar_ops::rpe_gather_backward_cuda);
  m.impl("window_attention_fwd", &lomar_ops::window_attention_fwd_cuda);
  m.impl("window_attention_bwd", &lomar_ops::window_attention_bwd_cuda);
  m.impl("window_patchify", &lomar_ops::window_patchify_cuda);
  m.impl("window_patchify_backward", &lomar_ops::window_patchify_backward_cuda);
  m.impl("mask_substitute", &lomar_ops::mask_substitute_cuda);
  m.impl("mask_substitute_backward", &lomar_ops::mask_substitute_backward_cuda);
  m.impl("masked_patch_loss", &lomar_ops::masked_patch_loss_cuda);
  m.impl("masked_patch_loss_backward", &lomar_ops::masked_patch_loss_backward_cuda);
}
#endif
