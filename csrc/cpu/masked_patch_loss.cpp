// masked_patch_loss on the CPU. Each masked row (patch) gets its loss
// mean_i (pred_i - t_i)^2 with t = (target - mean) / sqrt(var + eps) (unbiased
// var) under norm_pix, computed in fp32 (fp64 for double) from the row in
// cache; unmasked rows are never read. The per-row losses are then summed in
// row order (Kahan-compensated): deterministic. The backward recomputes each row's mean and rstd
// (the normalised target is never stored) and writes
// dpred = grad * 2 * (pred - t) / (P * num_masked) on masked rows, 0 elsewhere.
// pred and target are read through their strides over (S, L) as long as each
// patch is contiguous: pred is typically a slice of the head's output without
// its cls row, and copying it would cost as much as the loss itself.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

// sum_{i < n} term(i) over 8 interleaved partial sums (so the compiler can
// vectorise it), combined in a fixed order: deterministic.
template <typename acc_t, typename F>
acc_t lane_sum(int64_t n, F term) {
  constexpr int kLanes = 8;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) lanes[k] += term(i + k);
  for (int k = 0; i < n; ++i, ++k) lanes[k] += term(i);
  acc_t total = 0;
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

template <typename acc_t>
struct RowStats {
  acc_t mean = 0;
  acc_t rstd = 1;
};

// Mean and 1/sqrt(unbiased var + eps) of one target row (identity without norm_pix).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
RowStats<acc_t> row_stats(const scalar_t* t, int64_t P, bool norm_pix, acc_t eps) {
  RowStats<acc_t> st;
  if (!norm_pix) return st;
  st.mean = lane_sum<acc_t>(P, [&](int64_t i) { return static_cast<acc_t>(t[i]); }) / P;
  const acc_t ss = lane_sum<acc_t>(P, [&](int64_t i) {
    const acc_t c = static_cast<acc_t>(t[i]) - st.mean;
    return c * c;
  });
  st.rstd = acc_t(1) / std::sqrt(ss / static_cast<acc_t>(P - 1) + eps);
  return st;
}

// x itself when each (s, l) row of P values is contiguous, else a contiguous copy.
at::Tensor rows_contiguous(const at::Tensor& x) {
  return (x.size(2) <= 1 || x.stride(2) == 1) ? x : x.contiguous();
}

// Row r = s * L + l of an (S, L, P) tensor whose rows are contiguous.
template <typename scalar_t>
struct Rows {
  const scalar_t* base;
  int64_t stride_s, stride_l, L;
  explicit Rows(const at::Tensor& x)
      : base(x.const_data_ptr<scalar_t>()), stride_s(x.stride(0)), stride_l(x.stride(1)),
        L(x.size(1)) {}
  const scalar_t* operator[](int64_t r) const {
    const int64_t s = r / L;
    return base + s * stride_s + (r - s * L) * stride_l;
  }
};

int64_t grain_rows(int64_t P) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, P)); }

int64_t count_masked(const at::Tensor& mask, const char* op) {
  const bool* m = mask.data_ptr<bool>();
  int64_t count = 0;
  for (int64_t i = 0; i < mask.numel(); ++i) count += m[i] ? 1 : 0;
  TORCH_CHECK(count > 0, op, ": mask has no True entry; the loss is a mean over masked patches");
  return count;
}

}  // namespace

at::Tensor masked_patch_loss_cpu(const at::Tensor& pred_in, const at::Tensor& target_in,
                                 const at::Tensor& mask_in, bool norm_pix, double eps) {
  check_masked_patch_loss_args(pred_in, target_in, mask_in, norm_pix, eps, "masked_patch_loss");
  const auto pred = rows_contiguous(pred_in);
  const auto target = rows_contiguous(target_in);
  const auto mask = mask_in.contiguous();
  const int64_t rows = pred.size(0) * pred.size(1), P = pred.size(2);
  const int64_t count = count_masked(mask, "masked_patch_loss");
  at::Tensor loss;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_patch_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> p(pred), t(target);
    const bool* m = mask.data_ptr<bool>();
    std::vector<acc_t> row_loss(rows, acc_t(0));
    at::parallel_for(0, rows, grain_rows(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (!m[r]) continue;
        const scalar_t* p_row = p[r];
        const scalar_t* t_row = t[r];
        const auto st = row_stats(t_row, P, norm_pix, static_cast<acc_t>(eps));
        row_loss[r] = lane_sum<acc_t>(P, [&](int64_t i) {
          const acc_t diff = static_cast<acc_t>(p_row[i]) -
                             (static_cast<acc_t>(t_row[i]) - st.mean) * st.rstd;
          return diff * diff;
        }) / static_cast<acc_t>(P);
      }
    });
    acc_t total = 0, comp = 0;  // row order, Kahan-compensated
    for (int64_t r = 0; r < rows; ++r) {
      const acc_t y = row_loss[r] - comp;
      const acc_t t = total + y;
      comp = (t - total) - y;
      total = t;
    }
    loss = at::scalar_tensor(total / static_cast<acc_t>(count),
                             pred.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  });
  return loss;
}

at::Tensor masked_patch_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred_in,
                                          const at::Tensor& target_in, const at::Tensor& mask_in,
                                          bool norm_pix, double eps) {
  check_masked_patch_loss_backward_args(grad, pred_in, target_in, mask_in, norm_pix, eps);
  const auto pred = rows_contiguous(pred_in);
  const auto target = rows_contiguous(target_in);
  const auto mask = mask_in.contiguous();
  const int64_t rows = pred.size(0) * pred.size(1), P = pred.size(2);
  const int64_t count = count_masked(mask, "masked_patch_loss_backward");
  const double g = grad.item<double>();
  auto grad_pred = at::empty(pred.sizes(), pred.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "masked_patch_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> p(pred), t(target);
    const bool* m = mask.data_ptr<bool>();
    scalar_t* dp = grad_pred.data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(2.0 * g / (static_cast<double>(P) * count));
    at::parallel_for(0, rows, grain_rows(P), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* dp_row = dp + r * P;
        if (!m[r]) {
          std::fill(dp_row, dp_row + P, scalar_t(0));
          continue;
        }
        const scalar_t* p_row = p[r];
        const scalar_t* t_row = t[r];
        const auto st = row_stats(t_row, P, norm_pix, static_cast<acc_t>(eps));
        for (int64_t i = 0; i < P; ++i) {
          const acc_t tn = (static_cast<acc_t>(t_row[i]) - st.mean) * st.rstd;
          dp_row[i] = static_cast<scalar_t>(scale * (static_cast<acc_t>(p_row[i]) - tn));
        }
      }
    });
  });
  return grad_pred;
}

}  // namespace lomar_ops
