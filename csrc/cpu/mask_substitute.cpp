// mask_substitute on the CPU: out[s] = [cls_token,] then per row l mask_token
// where mask[s, l] else tokens[s, l] (whole rows, memcpy). The backward is one
// pass over grad_out: it writes grad_tokens (zero at masked rows) and sums the
// masked rows and the cls rows per fixed chunk of sequences in fp32 (fp64 for
// double); the chunk partials are then added in chunk order. The chunking is a
// function of the shape only, so the result never depends on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

// Rows per parallel chunk so that a chunk moves at least ~32K elements.
int64_t grain_rows(int64_t row_len) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_len));
}

template <typename acc_t, typename scalar_t>
void add_row(acc_t* acc, const scalar_t* row, int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<acc_t>(row[d]);
}

}  // namespace

at::Tensor mask_substitute_cpu(const at::Tensor& tokens_in, const at::Tensor& mask_in,
                               const at::Tensor& mask_token_in,
                               const std::optional<at::Tensor>& cls_token_in) {
  check_mask_substitute_args(tokens_in, mask_in, mask_token_in, cls_token_in);
  const bool has_cls = cls_token_in.has_value();
  const auto tokens = tokens_in.contiguous();
  const auto mask = mask_in.contiguous();
  const auto mask_token = mask_token_in.contiguous();
  const auto cls_token = has_cls ? cls_token_in->contiguous() : mask_token;
  const int64_t S = tokens.size(0), L = tokens.size(1), D = tokens.size(2);
  const int64_t T = L + (has_cls ? 1 : 0);
  auto out = at::empty({S, T, D}, tokens.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "mask_substitute_cpu", [&] {
    const scalar_t* tok = tokens.data_ptr<scalar_t>();
    const bool* m = mask.data_ptr<bool>();
    const scalar_t* mt = mask_token.data_ptr<scalar_t>();
    const scalar_t* cls = cls_token.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t head = has_cls ? 1 : 0;
    at::parallel_for(0, S * T, grain_rows(D), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row / T;
        const int64_t j = row - s * T;
        const scalar_t* src;
        if (j < head) {
          src = cls;
        } else {
          const int64_t i = s * L + (j - head);  // (s, l) in tokens and mask
          src = m[i] ? mt : tok + i * D;
        }
        std::memcpy(dst + row * D, src, D * sizeof(scalar_t));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_substitute_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& mask_in, bool has_cls) {
  check_mask_substitute_backward_args(grad_in, mask_in, has_cls);
  const auto grad = grad_in.contiguous();
  const auto mask = mask_in.contiguous();
  const int64_t head = has_cls ? 1 : 0;
  const int64_t S = grad.size(0), T = grad.size(1), D = grad.size(2), L = T - head;
  auto grad_tokens = at::empty({S, L, D}, grad.options());
  auto grad_mask_token = at::empty({D}, grad.options());
  // No cls token: an empty (0,) tensor, as a schema return cannot be None.
  auto grad_cls_token = at::empty({has_cls ? D : 0}, grad.options());
  if (D == 0) return {grad_tokens, grad_mask_token, grad_cls_token};

  // Sequences per reduction chunk: from the shape only (never the thread count).
  const int64_t chunk = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, T * D));
  const int64_t num_chunks = (S + chunk - 1) / chunk;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mask_substitute_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto partial_mask = at::zeros({num_chunks, D}, acc_options);
    auto partial_cls = at::zeros({has_cls ? num_chunks : 0, D}, acc_options);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const bool* m = mask.data_ptr<bool>();
    scalar_t* gt = grad_tokens.data_ptr<scalar_t>();
    acc_t* pm = partial_mask.data_ptr<acc_t>();
    acc_t* pc = partial_cls.data_ptr<acc_t>();

    at::parallel_for(0, num_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t s_end = std::min(S, (c + 1) * chunk);
        for (int64_t s = c * chunk; s < s_end; ++s) {
          const scalar_t* g_seq = g + s * T * D;
          if (has_cls) add_row(pc + c * D, g_seq, D);
          for (int64_t l = 0; l < L; ++l) {
            const scalar_t* src = g_seq + (head + l) * D;
            scalar_t* dst = gt + (s * L + l) * D;
            if (m[s * L + l]) {
              add_row(pm + c * D, src, D);
              std::fill(dst, dst + D, scalar_t(0));
            } else {
              std::memcpy(dst, src, D * sizeof(scalar_t));
            }
          }
        }
      }
    });

    // The chunk partials, added in chunk order.
    auto finish = [&](const acc_t* partial, scalar_t* out) {
      std::vector<acc_t> total(D, acc_t(0));
      for (int64_t c = 0; c < num_chunks; ++c) add_row(total.data(), partial + c * D, D);
      for (int64_t d = 0; d < D; ++d) out[d] = static_cast<scalar_t>(total[d]);
    };
    finish(pm, grad_mask_token.data_ptr<scalar_t>());
    if (has_cls) finish(pc, grad_cls_token.data_ptr<scalar_t>());
  });
  return {grad_tokens, grad_mask_token, grad_cls_token};
}

}  // namespace lomar_ops
