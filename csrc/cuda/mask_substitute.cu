// mask_substitute on CUDA. Forward: threadIdx.y picks a row of the output,
// threadIdx.x walks along the row (coalesced), one index division per row, int64
// offsets. The forward only copies rows, so when rows are whole multiples of 16
// bytes and every pointer is 16-byte aligned it copies 16-byte words (uint4)
// whatever the dtype; otherwise element by element. Backward, deterministically (no atomics): stage 1, one block per
// (chunk of sequences, tile of D columns) walks its rows in order, writes
// grad_tokens (zero at masked rows) and sums masked rows and cls rows per column
// in fp32 (fp64 for double) into per-chunk partials; stage 2 adds the partials
// in chunk order with compensated (Kahan) summation, so the error does not grow
// with the number of chunks. The chunking depends on the shape only.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxChunks = 1024;  // stage-1 chunks along S (fewer for small S)

int64_t grid_for(int64_t work_items, int64_t items_per_block) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t wanted = (work_items + items_per_block - 1) / items_per_block;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, sms * 32));
}

// Threads along D: a multiple of the warp size covering D, at most kThreads.
int threads_along(int64_t D) {
  return static_cast<int>(std::min<int64_t>(kThreads, std::max<int64_t>(32, (D + 31) / 32 * 32)));
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// word_t: the element type, or uint4 to move 16 bytes at a time; D counts words.
template <typename word_t>
__global__ void mask_substitute_forward_kernel(const word_t* __restrict__ tokens,
                                               const bool* __restrict__ mask,
                                               const word_t* __restrict__ mask_token,
                                               const word_t* __restrict__ cls_token,
                                               word_t* __restrict__ out, int64_t rows,
                                               int64_t L, int64_t T, int64_t D, int64_t head) {
  for (int64_t row = blockIdx.x * (int64_t)blockDim.y + threadIdx.y; row < rows;
       row += (int64_t)gridDim.x * blockDim.y) {
    const int64_t s = row / T;
    const int64_t j = row - s * T;
    const word_t* src;
    if (j < head) {
      src = cls_token;
    } else {
      const int64_t i = s * L + (j - head);
      src = mask[i] ? mask_token : tokens + i * D;
    }
    word_t* dst = out + row * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = src[d];
  }
}

template <typename word_t>
void launch_forward(const void* tokens, const bool* mask, const void* mask_token,
                    const void* cls_token, void* out, int64_t rows, int64_t L, int64_t T,
                    int64_t words_per_row, cudaStream_t stream) {
  const int tx = threads_along(words_per_row);
  const dim3 block(tx, kThreads / tx);
  mask_substitute_forward_kernel<word_t><<<grid_for(rows, block.y), block, 0, stream>>>(
      static_cast<const word_t*>(tokens), mask, static_cast<const word_t*>(mask_token),
      static_cast<const word_t*>(cls_token), static_cast<word_t*>(out), rows, L, T,
      words_per_row, T - L);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
__global__ void mask_substitute_backward_rows_kernel(
    const scalar_t* __restrict__ grad, const bool* __restrict__ mask,
    scalar_t* __restrict__ grad_tokens, acc_t* __restrict__ partial_mask,
    acc_t* __restrict__ partial_cls, int64_t S, int64_t L, int64_t T, int64_t D, int64_t head,
    int64_t chunk) {
  const int64_t c = blockIdx.x;
  const int64_t d = blockIdx.y * (int64_t)blockDim.x + threadIdx.x;
  if (d >= D) return;  // no block-wide synchronisation below
  acc_t acc_mask = 0, acc_cls = 0;
  const int64_t s_end = min(S, (c + 1) * chunk);
  for (int64_t s = c * chunk; s < s_end; ++s) {
    const scalar_t* g_seq = grad + s * T * D;
    if (head) acc_cls += static_cast<acc_t>(g_seq[d]);
#pragma unroll 4
    for (int64_t l = 0; l < L; ++l) {
      const int64_t i = s * L + l;
      const scalar_t g = g_seq[(head + l) * D + d];
      if (mask[i]) {
        acc_mask += static_cast<acc_t>(g);
        grad_tokens[i * D + d] = scalar_t(0);
      } else {
        grad_tokens[i * D + d] = g;
      }
    }
  }
  partial_mask[c * D + d] = acc_mask;
  if (head) partial_cls[c * D + d] = acc_cls;
}

// out[d] = sum over chunks, in chunk order, of partial[c, d] (Kahan-compensated).
template <typename scalar_t, typename acc_t>
__global__ void sum_chunks_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ out,
                                  int64_t num_chunks, int64_t D) {
  const int64_t d = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (d >= D) return;
  acc_t sum = 0, comp = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const acc_t y = partial[c * D + d] - comp;
    const acc_t t = sum + y;
    comp = (t - sum) - y;
    sum = t;
  }
  out[d] = static_cast<scalar_t>(sum);
}

}  // namespace

at::Tensor mask_substitute_cuda(const at::Tensor& tokens_in, const at::Tensor& mask_in,
                                const at::Tensor& mask_token_in,
                                const std::optional<at::Tensor>& cls_token_in) {
  check_mask_substitute_args(tokens_in, mask_in, mask_token_in, cls_token_in);
  const c10::cuda::CUDAGuard guard(tokens_in.device());
  const bool has_cls = cls_token_in.has_value();
  const auto tokens = tokens_in.contiguous();
  const auto mask = mask_in.contiguous();
  const auto mask_token = mask_token_in.contiguous();
  const auto cls_token = has_cls ? cls_token_in->contiguous() : mask_token;
  const int64_t S = tokens.size(0), L = tokens.size(1), D = tokens.size(2);
  const int64_t T = L + (has_cls ? 1 : 0), rows = S * T;
  auto out = at::empty({S, T, D}, tokens.options());
  if (out.numel() == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t row_bytes = D * tokens.element_size();
  const bool by_words = row_bytes % 16 == 0 && aligned16(tokens.data_ptr()) &&
                        aligned16(mask_token.data_ptr()) && aligned16(cls_token.data_ptr()) &&
                        aligned16(out.data_ptr());
  if (by_words) {
    launch_forward<uint4>(tokens.data_ptr(), mask.data_ptr<bool>(), mask_token.data_ptr(),
                          cls_token.data_ptr(), out.data_ptr(), rows, L, T, row_bytes / 16,
                          stream);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "mask_substitute_cuda", [&] {
    launch_forward<scalar_t>(tokens.data_ptr(), mask.data_ptr<bool>(), mask_token.data_ptr(),
                             cls_token.data_ptr(), out.data_ptr(), rows, L, T, D, stream);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_substitute_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& mask_in, bool has_cls) {
  check_mask_substitute_backward_args(grad_in, mask_in, has_cls);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto grad = grad_in.contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t head = has_cls ? 1 : 0;
  const int64_t S = grad.size(0), T = grad.size(1), D = grad.size(2), L = T - head;
  auto grad_tokens = at::empty({S, L, D}, grad.options());
  auto grad_mask_token = at::empty({D}, grad.options());
  // No cls token: an empty (0,) tensor, as a schema return cannot be None.
  auto grad_cls_token = at::empty({has_cls ? D : 0}, grad.options());
  if (D == 0) return {grad_tokens, grad_mask_token, grad_cls_token};

  const int64_t chunk = std::max<int64_t>(1, (S + kMaxChunks - 1) / kMaxChunks);
  const int64_t num_chunks = (S + chunk - 1) / chunk;
  const int tx = threads_along(D);
  const int64_t d_tiles = (D + tx - 1) / tx;
  TORCH_CHECK(d_tiles <= 65535, "mask_substitute_backward: D = ", D, " is too large");
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mask_substitute_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    // S == 0: no chunk, and the sums below are zero.
    auto partial_mask = at::empty({num_chunks, D}, acc_options);
    auto partial_cls = at::empty({has_cls ? num_chunks : 0, D}, acc_options);
    if (num_chunks > 0) {
      const dim3 grid(num_chunks, d_tiles);
      mask_substitute_backward_rows_kernel<scalar_t, acc_t><<<grid, tx, 0, stream>>>(
          grad.data_ptr<scalar_t>(), mask.data_ptr<bool>(), grad_tokens.data_ptr<scalar_t>(),
          partial_mask.data_ptr<acc_t>(), partial_cls.data_ptr<acc_t>(), S, L, T, D, head, chunk);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    sum_chunks_kernel<scalar_t, acc_t><<<d_tiles, tx, 0, stream>>>(
        partial_mask.data_ptr<acc_t>(), grad_mask_token.data_ptr<scalar_t>(), num_chunks, D);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (has_cls) {
      sum_chunks_kernel<scalar_t, acc_t><<<d_tiles, tx, 0, stream>>>(
          partial_cls.data_ptr<acc_t>(), grad_cls_token.data_ptr<scalar_t>(), num_chunks, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_tokens, grad_mask_token, grad_cls_token};
}

}  // namespace lomar_ops
