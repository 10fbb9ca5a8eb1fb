// C++ unit tests of masked_patch_loss, through the dispatcher (as Python calls
// it), against naive loops in double. Run by ctest:
//   test_masked_patch_loss [case]     (no argument: every case)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "harness.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace {

using lomar_ops_test::throws_with;

at::Tensor call_loss(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& mask,
                     bool norm_pix, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::masked_patch_loss", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         bool, double)>();
  return op.call(pred, target, mask, norm_pix, eps);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                         const at::Tensor& mask, bool norm_pix, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::masked_patch_loss_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, bool, double)>();
  return op.call(grad, pred, target, mask, norm_pix, eps);
}

at::Tensor random_mask(int64_t S, int64_t L) {
  auto mask = at::rand({S, L}) < 0.7;
  mask.index_put_({0, 0}, true);
  return mask;
}

// The normalised target of one row, in double.
std::vector<double> normalised_row(const double* t, int64_t P, bool norm_pix, double eps) {
  std::vector<double> out(t, t + P);
  if (!norm_pix) return out;
  double mean = 0, ss = 0;
  for (int64_t i = 0; i < P; ++i) mean += t[i];
  mean /= P;
  for (int64_t i = 0; i < P; ++i) ss += (t[i] - mean) * (t[i] - mean);
  const double rstd = 1.0 / std::sqrt(ss / (P - 1) + eps);
  for (int64_t i = 0; i < P; ++i) out[i] = (t[i] - mean) * rstd;
  return out;
}

// Naive loss and dloss/dpred (for a loss gradient g), in double.
std::pair<double, at::Tensor> naive(const at::Tensor& pred, const at::Tensor& target,
                                    const at::Tensor& mask, bool norm_pix, double eps, double g) {
  auto p = pred.to(at::kDouble).contiguous();
  auto t = target.to(at::kDouble).contiguous();
  auto m = mask.contiguous();
  const int64_t rows = p.size(0) * p.size(1), P = p.size(2);
  auto dpred = at::zeros_like(p);
  const double* pp = p.data_ptr<double>();
  const double* tp = t.data_ptr<double>();
  const bool* mp = m.data_ptr<bool>();
  double* dp = dpred.data_ptr<double>();
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) count += mp[r];
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!mp[r]) continue;
    auto tn = normalised_row(tp + r * P, P, norm_pix, eps);
    double se = 0;
    for (int64_t i = 0; i < P; ++i) {
      const double diff = pp[r * P + i] - tn[i];
      se += diff * diff;
      dp[r * P + i] = g * 2 * diff / (P * static_cast<double>(count));
    }
    total += se / P;
  }
  return {total / count, dpred};
}

bool matches(at::ScalarType dtype, double loss_rtol, double grad_tol) {
  for (int64_t K : {1, 2, 7, 14}) {
    for (int64_t P : {2, 17, 768}) {
      for (bool norm_pix : {true, false}) {
        const int64_t S = 3, L = K * K;
        auto pred = at::randn({S, L, P}).to(dtype);
        auto target = at::randn({S, L, P}).to(dtype);
        auto mask = random_mask(S, L);
        auto loss = call_loss(pred, target, mask, norm_pix, 1e-6);
        EXPECT(loss.dim() == 0);
        EXPECT(loss.scalar_type() == (dtype == at::kDouble ? at::kDouble : at::kFloat));
        auto [want, want_grad] = naive(pred, target, mask, norm_pix, 1e-6, 0.5);
        EXPECT(std::abs(loss.item<double>() - want) <= loss_rtol * std::abs(want));
        auto grad = call_backward(at::scalar_tensor(0.5, loss.options()), pred, target, mask,
                                  norm_pix, 1e-6);
        EXPECT(grad.scalar_type() == dtype && grad.sizes() == pred.sizes());
        const double scale = want_grad.abs().max().item<double>();
        EXPECT(at::allclose(grad.to(at::kDouble), want_grad, grad_tol, grad_tol * scale));
      }
    }
  }
  return true;
}

// pred sliced past a cls row (read in place through its strides) and a target
// with a strided last dim (copied first): the same values as contiguous copies.
bool strided_inputs() {
  auto head_out = at::randn({4, 10, 17}, at::kDouble);
  auto pred = head_out.narrow(1, 1, 9);
  auto target = at::randn({4, 9, 34}, at::kDouble).slice(2, 0, 34, 2);
  auto mask = random_mask(4, 9);
  auto [want, want_grad] = naive(pred, target, mask, true, 1e-6, 1.0);
  EXPECT(std::abs(call_loss(pred, target, mask, true, 1e-6).item<double>() - want) <=
         1e-12 * std::abs(want));
  auto grad = call_backward(at::scalar_tensor(1.0, at::kDouble), pred, target, mask, true, 1e-6);
  EXPECT(grad.is_contiguous());
  EXPECT(at::allclose(grad, want_grad, 1e-10, 1e-12));
  return true;
}

bool deterministic() {
  auto pred = at::randn({64, 49, 192});
  auto target = at::randn({64, 49, 192});
  auto mask = random_mask(64, 49);
  auto a = call_loss(pred, target, mask, true, 1e-6);
  auto b = call_loss(pred, target, mask, true, 1e-6);
  EXPECT(at::equal(a, b));
  auto g = at::scalar_tensor(1.0);
  EXPECT(at::equal(call_backward(g, pred, target, mask, true, 1e-6),
                   call_backward(g, pred, target, mask, true, 1e-6)));
  return true;
}

bool bad_input_errors() {
  auto pred = at::randn({2, 4, 5});
  auto target = at::randn({2, 4, 5});
  auto mask = random_mask(2, 4);
  EXPECT(throws_with([&] { call_loss(pred, target, at::zeros({2, 4}, at::kBool), true, 1e-6); },
                     "mask has no True entry"));
  EXPECT(throws_with([&] { call_loss(pred, target.to(at::kDouble), mask, true, 1e-6); },
                     "target must have the dtype of pred"));
  EXPECT(throws_with([&] { call_loss(pred, target.narrow(2, 0, 4), mask, true, 1e-6); },
                     "target must have the shape of pred"));
  EXPECT(throws_with([&] { call_loss(pred, target, mask.to(at::kFloat), true, 1e-6); },
                     "mask must be bool"));
  EXPECT(throws_with([&] { call_loss(pred.narrow(2, 0, 1), target.narrow(2, 0, 1), mask, true,
                                     1e-6); },
                     "norm_pix needs P >= 2"));
  EXPECT(throws_with([&] { call_loss(pred, target, mask, true, -1.0); }, "eps must be >= 0"));
  EXPECT(throws_with([&] { call_backward(at::ones({2}), pred, target, mask, true, 1e-6); },
                     "grad must hold one value"));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<bool()>> cases = {
      // fp32 arithmetic for every dtype below double: the loss to a few fp32 ulps
      // of sums; dpred to fp32 statistics, then the rounding to the dtype.
      {"float", [] { return matches(at::kFloat, 1e-5, 1e-5); }},
      {"double", [] { return matches(at::kDouble, 1e-12, 1e-10); }},
      {"half", [] { return matches(at::kHalf, 1e-5, 2e-3); }},
      {"bfloat16", [] { return matches(at::kBFloat16, 1e-5, 1e-2); }},
      {"strided_inputs", strided_inputs},
      {"deterministic", deterministic},
      {"bad_input_errors", bad_input_errors},
  };
  return lomar_ops_test::run_cases(argc, argv, cases);
}
