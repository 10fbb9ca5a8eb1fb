// mask_substitute on the CPU: out[s] = [cls_token,] then per row l mask_token
// where mask[s, l] else tokens[s, l] (whole rows, memcpy). The backward is one
// pass over grad_out: it writes grad_tokens (zero at masked rows) and sums each
// sequence's masked rows in fp32 (fp64 for double) into a per-sequence partial;
// the partials (and the cls rows) are then added in sequence order with
// compensated (Kahan) summation, so the error does not grow with S. The order
// is fixed by the shape alone: the result never depends on the thread count.
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

// out[d] = sum over n of rows[k * stride + d], k in order, Kahan-compensated.
template <typename acc_t, typename scalar_t, typename out_t>
void kahan_sum_rows(const scalar_t* rows, int64_t n, int64_t stride, int64_t D, out_t* out) {
  std::vector<acc_t> sum(D, acc_t(0)), comp(D, acc_t(0));
  for (int64_t k = 0; k < n; ++k) {
    const scalar_t* row = rows + k * stride;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t y = static_cast<acc_t>(row[d]) - comp[d];
      const acc_t t = sum[d] + y;
      comp[d] = (t - sum[d]) - y;
      sum[d] = t;
    }
  }
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<out_t>(sum[d]);
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

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "mask_substitute_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_options = grad.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    auto partial = at::zeros({S, D}, acc_options);  // per sequence: its masked rows
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const bool* m = mask.data_ptr<bool>();
    scalar_t* gt = grad_tokens.data_ptr<scalar_t>();
    acc_t* pm = partial.data_ptr<acc_t>();

    at::parallel_for(0, S, grain_rows(T * D), [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const scalar_t* g_seq = g + s * T * D;
        for (int64_t l = 0; l < L; ++l) {
          const scalar_t* src = g_seq + (head + l) * D;
          scalar_t* dst = gt + (s * L + l) * D;
          if (m[s * L + l]) {
            add_row(pm + s * D, src, D);
            std::fill(dst, dst + D, scalar_t(0));
          } else {
            std::memcpy(dst, src, D * sizeof(scalar_t));
          }
        }
      }
    });
    kahan_sum_rows<acc_t>(pm, S, D, D, grad_mask_token.data_ptr<scalar_t>());
    if (has_cls) kahan_sum_rows<acc_t>(g, S, T * D, D, grad_cls_token.data_ptr<scalar_t>());
  });
  return {grad_tokens, grad_mask_token, grad_cls_token};
}

}  // namespace lomar_ops
