// Emulated CUDA window_attention against the CPU op (see run.sh).
#include "window_attention_emulated.cpp"  // written by run.sh
#include <cstdio>
#include <ATen/Parallel.h>
using namespace lomar_ops;

static int failures = 0;
double maxerr(const at::Tensor& a, const at::Tensor& b) { return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>(); }

void run_case(at::ScalarType dt, int64_t S, int64_t N, int64_t H, int64_t d, const std::string& mode, bool per_head, bool strided, int64_t NB = 50) {
  at::manual_seed(S * 1000 + N * 10 + H + d);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto q = at::randn({S, N, H, d}, f64), k = at::randn({S, N, H, d}, f64), v = at::randn({S, N, H, d}, f64);
  c10::optional<at::Tensor> rpe, ids;
  if (mode != "none") {
    ids = at::randint(0, NB, {N, N}, at::TensorOptions().dtype(at::kInt));
    rpe = mode == "bias" ? at::randn({H, NB}, f64) : (per_head ? 0.5 * at::randn({H, NB, d}, f64) : 0.5 * at::randn({NB, d}, f64));
  }
  auto go = at::randn({S, N, H, d}, f64);
  const double scale = 1.0 / std::sqrt((double)d);
  auto [o_ref, lse_ref, p_ref] = window_attention_fwd_cpu(q, k, v, rpe, ids, mode, scale);
  auto g_ref = window_attention_bwd_cpu(go, q, k, v, o_ref, lse_ref, p_ref, rpe, ids, mode, scale);
  at::Tensor ql, kl, vl;
  if (strided) {
    auto qkv = at::stack({q, k, v}, 2).to(dt); ql = qkv.select(2, 0); kl = qkv.select(2, 1); vl = qkv.select(2, 2);
  } else { ql = q.to(dt); kl = k.to(dt); vl = v.to(dt); }
  c10::optional<at::Tensor> rl = rpe ? c10::optional<at::Tensor>(rpe->to(dt)) : c10::nullopt;
  auto gl = go.to(dt);
  auto [o, lse, p_cuda] = window_attention_fwd_cuda(ql, kl, vl, rl, ids, mode, scale);
  auto g = window_attention_bwd_cuda(gl, ql, kl, vl, o, lse, p_cuda, rl, ids, mode, scale);
  auto [o_low, lse_low, p_low] = window_attention_fwd_cpu(ql, kl, vl, rl, ids, mode, scale);
  auto g_low = window_attention_bwd_cpu(gl, ql, kl, vl, o_low, lse_low, p_low, rl, ids, mode, scale);
  std::vector<at::Tensor> got = {o, lse, std::get<0>(g), std::get<1>(g), std::get<2>(g)};
  std::vector<at::Tensor> want = {o_ref, lse_ref, std::get<0>(g_ref), std::get<1>(g_ref), std::get<2>(g_ref)};
  std::vector<at::Tensor> low = {o_low, lse_low, std::get<0>(g_low), std::get<1>(g_low), std::get<2>(g_low)};
  if (mode != "none") { got.push_back(std::get<3>(g)); want.push_back(std::get<3>(g_ref)); low.push_back(std::get<3>(g_low)); }
  const char* names[] = {"out", "lse", "dq", "dk", "dv", "drpe"};
  printf("%-9s S=%ld N=%ld H=%ld d=%ld %-10s%s%s:", c10::toString(dt), S, N, H, d, mode.c_str(), per_head ? " per_head" : "", strided ? " strided" : "");
  for (size_t i = 0; i < got.size(); ++i) {
    double e = maxerr(got[i], want[i]), base = maxerr(low[i], want[i]);
    double tol = dt == at::kDouble ? 1e-10 : 3 * base + (dt == at::kFloat ? 1e-5 : dt == at::kHalf ? 1e-3 : 8e-3);
    bool ok = e <= tol && std::isfinite(e);
    if (!ok) ++failures;
    printf(" %s %.1e/%.1e%s", names[i], e, base, ok ? "" : " FAIL");
  }
  if (mode != "none") {
    auto g2 = window_attention_bwd_cuda(gl, ql, kl, vl, o, lse, p_cuda, rl, ids, mode, scale);
    bool same = at::equal(std::get<3>(g2), std::get<3>(g));
    if (!same) ++failures;
    printf(" repeat=%s", same ? "ok" : "FAIL");
  }
  printf("\n");
  fflush(stdout);
}

int main(int argc, char** argv) {
  at::set_num_threads(1);
  std::string which = argc > 1 ? argv[1] : "f64";
  std::vector<at::ScalarType> dts;
  if (which == "f64") dts = {at::kDouble};
  else if (which == "f32") dts = {at::kFloat};
  else if (which == "extra") {
    for (auto dt : {at::kBFloat16, at::kFloat}) {
      run_case(dt, 20, 50, 1, 64, "contextual", false, false, 100);  // blocks loop over tiles; 2 R chunks
      run_case(dt, 40, 17, 2, 32, "bias", false, false);             // packed, partial tiles, per-head groups
      run_case(dt, 5, 32, 2, 64, "contextual", true, true, 70);
      run_case(dt, 1, 197, 1, 64, "contextual", false, false);        // 4 row tiles, tail 5
      run_case(dt, 2, 64, 1, 80, "bias", false, false, 3);
    }
    printf("failures: %d\n", failures);
    return failures != 0;
  }
  else dts = {at::kBFloat16, at::kHalf};
  for (auto dt : dts) {
    run_case(dt, 3, 2, 1, 32, "contextual", false, false);
    run_case(dt, 2, 17, 2, 64, "contextual", true, false);
    run_case(dt, 2, 50, 2, 64, "bias", false, true);
    run_case(dt, 1, 65, 1, 80, "none", false, false);
    run_case(dt, 1, 100, 2, 128, "contextual", false, true);
    run_case(dt, 3, 33, 1, 24, "contextual", false, false);
  }
  printf("failures: %d\n", failures);
  return failures != 0;
}
