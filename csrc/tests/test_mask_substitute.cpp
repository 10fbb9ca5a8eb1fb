// C++ unit tests of mask_substitute, through the dispatcher (as Python calls
// it), against naive loops. Run by ctest:
//   test_mask_substitute [case]     (no argument: every case)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "harness.h"

#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <tuple>

namespace {

using lomar_ops_test::throws_with;

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

at::Tensor call_forward(const at::Tensor& tokens, const at::Tensor& mask,
                        const at::Tensor& mask_token, const std::optional<at::Tensor>& cls) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::mask_substitute", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&)>();
  return op.call(tokens, mask, mask_token, cls);
}

Grads call_backward(const at::Tensor& grad, const at::Tensor& mask, bool has_cls) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::mask_substitute_backward", "")
                       .typed<Grads(const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, mask, has_cls);
}

at::Tensor random_mask(int64_t S, int64_t L) { return at::rand({S, L}) < 0.7; }

// Naive double-precision forward and backward.
at::Tensor naive_forward(const at::Tensor& tokens, const at::Tensor& mask,
                         const at::Tensor& mask_token, const std::optional<at::Tensor>& cls) {
  auto t = tokens.to(at::kDouble);
  auto mt = mask_token.to(at::kDouble);
  const int64_t S = t.size(0), L = t.size(1), D = t.size(2), head = cls ? 1 : 0;
  auto out = at::empty({S, L + head, D}, t.options());
  auto ta = t.accessor<double, 3>();
  auto oa = out.accessor<double, 3>();
  auto ma = mask.accessor<bool, 2>();
  auto mta = mt.accessor<double, 1>();
  for (int64_t s = 0; s < S; ++s) {
    if (cls) {
      auto c = cls->to(at::kDouble);
      auto ca = c.accessor<double, 1>();
      for (int64_t d = 0; d < D; ++d) oa[s][0][d] = ca[d];
    }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t d = 0; d < D; ++d) oa[s][head + l][d] = ma[s][l] ? mta[d] : ta[s][l][d];
  }
  return out;
}

Grads naive_backward(const at::Tensor& grad, const at::Tensor& mask, bool has_cls) {
  auto g = grad.to(at::kDouble);
  const int64_t S = g.size(0), head = has_cls ? 1 : 0, L = g.size(1) - head, D = g.size(2);
  auto gt = at::zeros({S, L, D}, g.options());
  auto gm = at::zeros({D}, g.options());
  auto gc = at::zeros({has_cls ? D : 0}, g.options());
  auto ga = g.accessor<double, 3>();
  auto gta = gt.accessor<double, 3>();
  auto gma = gm.accessor<double, 1>();
  auto gca = gc.accessor<double, 1>();
  auto ma = mask.accessor<bool, 2>();
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t d = 0; d < D && has_cls; ++d) gca[d] += ga[s][0][d];
    for (int64_t l = 0; l < L; ++l)
      for (int64_t d = 0; d < D; ++d) {
        if (ma[s][l]) gma[d] += ga[s][head + l][d];
        else gta[s][l][d] = ga[s][head + l][d];
      }
  }
  return {gt, gm, gc};
}

bool forward_matches(at::ScalarType dtype) {
  for (int64_t K : {1, 3, 7, 14}) {
    for (bool with_cls : {true, false}) {
      const int64_t S = 5, L = K * K, D = 17;
      auto tokens = at::randn({S, L, D}).to(dtype);
      auto mask = random_mask(S, L);
      auto mask_token = at::randn({D}).to(dtype);
      std::optional<at::Tensor> cls;
      if (with_cls) cls = at::randn({D}).to(dtype);
      auto out = call_forward(tokens, mask, mask_token, cls);
      EXPECT(out.scalar_type() == dtype);
      EXPECT(out.sizes() == at::IntArrayRef({S, L + (with_cls ? 1 : 0), D}));
      // A copy: exact in every dtype.
      EXPECT(at::equal(out.to(at::kDouble), naive_forward(tokens, mask, mask_token, cls)));
    }
  }
  return true;
}

bool backward_matches(at::ScalarType dtype, double tol) {
  for (int64_t S : {1, 9, 64}) {
    for (bool with_cls : {true, false}) {
      const int64_t L = 49, D = 33;
      auto grad = at::randn({S, L + (with_cls ? 1 : 0), D}).to(dtype);
      auto mask = random_mask(S, L);
      auto [gt, gm, gc] = call_backward(grad, mask, with_cls);
      auto [wt, wm, wc] = naive_backward(grad, mask, with_cls);
      EXPECT(gt.scalar_type() == dtype && gm.scalar_type() == dtype);
      EXPECT(at::equal(gt.to(at::kDouble), wt));  // copies and zeros: exact
      // fp32 sums; tol covers the final rounding to dtype and fp32 summation.
      EXPECT(at::allclose(gm.to(at::kDouble), wm, tol, tol * S));
      EXPECT(gc.numel() == (with_cls ? D : 0));
      if (with_cls) EXPECT(at::allclose(gc.to(at::kDouble), wc, tol, tol * S));
    }
  }
  return true;
}

bool non_contiguous_tokens() {
  auto base = at::randn({9, 4, 5}, at::kDouble);
  auto tokens = base.transpose(0, 1);  // (4, 9, 5), not contiguous
  auto mask = random_mask(4, 9);
  auto mask_token = at::randn({5}, at::kDouble);
  std::optional<at::Tensor> cls = at::randn({5}, at::kDouble);
  EXPECT(at::equal(call_forward(tokens, mask, mask_token, cls),
                   naive_forward(tokens.contiguous(), mask, mask_token, cls)));
  return true;
}

bool backward_is_deterministic() {
  auto grad = at::randn({64, 50, 96});
  auto mask = random_mask(64, 49);
  auto [a0, a1, a2] = call_backward(grad, mask, true);
  auto [b0, b1, b2] = call_backward(grad, mask, true);
  EXPECT(at::equal(a0, b0) && at::equal(a1, b1) && at::equal(a2, b2));
  return true;
}

bool bad_input_errors() {
  auto tokens = at::randn({2, 4, 5});
  auto mask = random_mask(2, 4);
  auto mt = at::randn({5});
  EXPECT(throws_with([&] { call_forward(tokens, mask.to(at::kInt), mt, std::nullopt); },
                     "mask must be bool"));
  EXPECT(throws_with([&] { call_forward(tokens, random_mask(2, 3), mt, std::nullopt); },
                     "mask must be (S, L) = (2, 4)"));
  EXPECT(throws_with([&] { call_forward(tokens, mask, at::randn({4}), std::nullopt); },
                     "mask_token must be (D,) = (5,)"));
  EXPECT(throws_with([&] { call_forward(tokens, mask, mt.to(at::kDouble), std::nullopt); },
                     "mask_token must have the dtype of tokens"));
  EXPECT(throws_with([&] { call_forward(tokens, mask, mt, at::randn({5}, at::kHalf)); },
                     "cls_token must have the dtype of tokens"));
  EXPECT(throws_with([&] { call_forward(tokens[0], mask, mt, std::nullopt); },
                     "tokens must be (S, L, D)"));
  EXPECT(throws_with([&] { call_forward(tokens.to(at::kInt), mask, mt, std::nullopt); },
                     "tokens must be float16, bfloat16, float32 or float64"));
  EXPECT(throws_with([&] { call_backward(at::randn({2, 5, 5}), mask, false); },
                     "mask_substitute_backward: mask must be (S, L) = (2, 5)"));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::function<bool()>> cases = {
      {"forward_float", [] { return forward_matches(at::kFloat); }},
      {"forward_double", [] { return forward_matches(at::kDouble); }},
      {"forward_half", [] { return forward_matches(at::kHalf); }},
      {"forward_bfloat16", [] { return forward_matches(at::kBFloat16); }},
      {"backward_float", [] { return backward_matches(at::kFloat, 1e-5); }},
      {"backward_double", [] { return backward_matches(at::kDouble, 1e-12); }},
      {"backward_half", [] { return backward_matches(at::kHalf, 1e-3); }},
      {"backward_bfloat16", [] { return backward_matches(at::kBFloat16, 8e-3); }},
      {"non_contiguous_tokens", non_contiguous_tokens},
      {"backward_is_deterministic", backward_is_deterministic},
      {"bad_input_errors", bad_input_errors},
  };
  return lomar_ops_test::run_cases(argc, argv, cases);
}
