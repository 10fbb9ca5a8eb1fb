// C++ unit tests of rpe_gather, through the dispatcher (as Python calls it),
// against naive loops. Run by ctest:
//   test_rpe_gather [case]     (no argument: every case)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "harness.h"

#include <cstdio>
#include <functional>
#include <map>
#include <string>

namespace {

using lomar_ops_test::throws_with;

at::Tensor call_rpe_gather(const at::Tensor& table, const at::Tensor& ids) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::rpe_gather", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(table, ids);
}

at::Tensor call_rpe_gather_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t nb) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lomar_ops::rpe_gather_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
  return op.call(grad, ids, nb);
}

at::Tensor random_ids(int64_t n, int64_t nb) {
  return at::randint(0, nb, {n, n}, at::TensorOptions().dtype(at::kInt));
}

// Naive double-precision forward and backward.
at::Tensor naive_forward(const at::Tensor& table, const at::Tensor& ids) {
  auto t = table.to(at::kDouble);
  const int64_t S = t.size(0), H = t.size(1), N = t.size(2);
  auto out = at::empty({S, H, N, N}, t.options());
  auto ta = t.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto ia = ids.accessor<int32_t, 2>();
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) oa[s][h][i][j] = ta[s][h][i][ia[i][j]];
  return out;
}

at::Tensor naive_backward(const at::Tensor& grad, const at::Tensor& ids, int64_t nb) {
  auto g = grad.to(at::kDouble);
  const int64_t S = g.size(0), H = g.size(1), N = g.size(2);
  auto out = at::zeros({S, H, N, nb}, g.options());
  auto ga = g.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  auto ia = ids.accessor<int32_t, 2>();
  for (int64_t s = 0; s < S; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < N; ++j) oa[s][h][i][ia[i][j]] += ga[s][h][i][j];
  return out;
}

bool forward_matches(at::ScalarType dtype) {
  for (int64_t n : {1, 7, 50, 65}) {
    auto table = at::randn({2, 3, n, 50}).to(dtype);
    auto ids = random_ids(n, 50);
    auto out = call_rpe_gather(table, ids);
    EXPECT(out.scalar_type() == dtype);
    EXPECT(out.sizes() == at::IntArrayRef({2, 3, n, n}));
    // A gather is a copy: exact in every dtype.
    EXPECT(at::equal(out.to(at::kDouble), naive_forward(table, ids)));
  }
  return true;
}

bool backward_matches(at::ScalarType dtype, double tol) {
  for (int64_t n : {1, 17, 50}) {
    auto grad = at::randn({2, 3, n, n}).to(dtype);
    auto ids = random_ids(n, 50);
    auto got = call_rpe_gather_backward(grad, ids, 50);
    EXPECT(got.scalar_type() == dtype);
    auto want = naive_backward(grad, ids, 50);
    // fp32 accumulation: the only error is the final rounding to dtype.
    EXPECT(at::allclose(got.to(at::kDouble), want, tol, tol));
  }
  return true;
}

bool non_contiguous_table() {
  auto base = at::randn({3, 2, 17, 50}, at::kDouble);
  auto table = base.transpose(0, 1);  // (2, 3, 17, 50), not contiguous
  auto ids = random_ids(17, 50);
  EXPECT(at::equal(call_rpe_gather(table, ids), naive_forward(table.contiguous(), ids)));
  return true;
}

bool bad_input_errors() {
  auto table = at::randn({1, 1, 4, 5});
  EXPECT(throws_with([&] { call_rpe_gather(table, at::full({4, 4}, 5, at::kInt)); },
                     "bucket_ids must lie in [0, 5)"));
  EXPECT(throws_with([&] { call_rpe_gather(table, at::zeros({4, 4}, at::kLong)); },
                     "bucket_ids must be int32"));
  EXPECT(throws_with([&] { call_rpe_gather(table, at::zeros({3, 3}, at::kInt)); },
                     "sequence length N is 4"));
  EXPECT(throws_with([&] { call_rpe_gather(at::randn({4, 5}), at::zeros({4, 4}, at::kInt)); },
                     "table must be (S, H, N, NB)"));
  EXPECT(throws_with([&] { call_rpe_gather_backward(at::randn({1, 1, 4, 4}),
                                                    at::zeros({4, 4}, at::kInt), 0); },
                     "num_buckets must be positive"));
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
      {"non_contiguous_table", non_contiguous_table},
      {"bad_input_errors", bad_input_errors},
  };
  return lomar_ops_test::run_cases(argc, argv, cases);
}
