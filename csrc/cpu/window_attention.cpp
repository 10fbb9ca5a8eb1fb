// window_attention on the CPU: softmax(scale * q k^T + relative term) v per
// (sequence, head), with the relative term of iRPE's contextual mode
// (q_i . R[bucket(i, j)]), of the bias mode (rpe[h, bucket(i, j)]) or none.
//
// On a CPU the N x N logits of a short sequence fit in cache, so this kernel does
// not tile like flash attention: the matrix products (q k^T, P v, their gradients
// and the contextual table q R^T) go through ATen's batched GEMM (BLAS) in fp32
// (fp64 for double), and everything between them (scale, the bucket gather of the
// relative term, softmax and log-sum-exp, dS = P * (dP - D), the scatter of dS back
// into buckets) is one fused pass over each logits row, so none of those
// (sequences, N, N) intermediates is written, read back or zero-filled.
// The forward returns each row's log-sum-exp, so the backward recomputes the
// probabilities from the inputs. The table gradient is a reduction over all
// sequences: (sequence, head) pairs are summed in fixed groups, each by one thread,
// whose partial sums are added in group order, so it does not depend on how the
// groups fall to threads: bitwise repeatable run to run. (The bias gradient is a
// plain loop and the same for any thread count; the contextual one uses a BLAS GEMM
// per group, whose last bits may change with the thread count.)
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int64_t kPairsPerGroup = 16;  // (s, h) pairs per partial sum of d(rpe)
constexpr int64_t kRowsPerTask = 64;    // logits rows per parallel task

enum Mode { kNone = 0, kBias = 1, kContextual = 2 };

struct Problem {
  int64_t S, N, H, d, NB = 0;
  Mode mode = kNone;
  bool per_head = false;  // contextual table (H, NB, d) rather than (NB, d)
  at::ScalarType acc;     // fp32, or fp64 for double inputs
  double scale;
};

Problem problem_of(const at::Tensor& q, const c10::optional<at::Tensor>& rpe,
                   c10::string_view rpe_mode, double scale) {
  Problem p{q.size(0), q.size(1), q.size(2), q.size(3)};
  p.mode = rpe_mode == "contextual" ? kContextual : rpe_mode == "bias" ? kBias : kNone;
  if (p.mode == kContextual) {
    p.per_head = rpe->dim() == 3;
    p.NB = rpe->size(p.per_head ? 1 : 0);
  } else if (p.mode == kBias) {
    p.NB = rpe->size(1);
  }
  p.acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  p.scale = scale;
  return p;
}

// (S, N, H, d) -> (S*H, N, d) contiguous in the accumulation type.
at::Tensor heads_first(const at::Tensor& t, const Problem& p) {
  return t.permute({0, 2, 1, 3}).to(p.acc).contiguous().view({p.S * p.H, p.N, p.d});
}

// m @ x per (sequence, head), m (S*H, N, N) (or its transpose), x (S*H, N, d),
// written straight into an (S, N, H, d) tensor: a GEMM batch per head whose output
// rows are strided (BLAS takes that at full speed), instead of a transposed copy.
at::Tensor to_tokens(const at::Tensor& m, bool transpose, const at::Tensor& x, const Problem& p) {
  auto out = at::empty({p.S, p.N, p.H, p.d}, x.options());
  const auto m4 = m.view({p.S, p.H, p.N, p.N});
  const auto x4 = x.view({p.S, p.H, p.N, p.d});
  for (int64_t h = 0; h < p.H; ++h) {
    auto slot = out.select(2, h);
    const auto mh = m4.select(1, h);
    at::bmm_out(slot, transpose ? mh.transpose(1, 2) : mh, x4.select(1, h));
  }
  return out;
}

// q @ R^T per bucket: (S*H, N, NB).
at::Tensor contextual_table(const at::Tensor& qh, const at::Tensor& R, const Problem& p) {
  if (!p.per_head) return at::matmul(qh, R.t());
  return at::matmul(qh.view({p.S, p.H, p.N, p.d}), R.transpose(1, 2)).view({p.S * p.H, p.N, p.NB});
}

// What the fused row pass reads to add the relative term: the contextual table
// q R^T (S*H, N, NB) or the bias table (H, NB), and the bucket map.
struct Relative {
  at::Tensor table, ids64;
};

Relative relative_of(const at::Tensor& qh, const at::Tensor& R, const c10::optional<at::Tensor>& ids,
                     const Problem& p) {
  Relative r;
  if (p.mode == kNone) return r;
  r.ids64 = ids->to(at::kLong).contiguous();
  r.table = p.mode == kContextual ? contextual_table(qh, R, p).contiguous() : R;
  return r;
}

// Runs fn(h, i, row) for every logits row in parallel; row = (s*H + h)*N + i.
template <typename Fn>
void for_each_row(const Problem& p, Fn&& fn) {
  at::parallel_for(0, p.S * p.H * p.N, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) fn((row / p.N) % p.H, row % p.N, row);
  });
}

// Logits row in place: x_j = scale * (q k^T)_j + term_j. Returns its max.
template <typename acc_t>
acc_t finish_logits(acc_t* x, const Problem& p, const Relative& r, int64_t h, int64_t i,
                    int64_t row) {
  const acc_t scale = static_cast<acc_t>(p.scale);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  if (p.mode == kNone) {
    for (int64_t j = 0; j < p.N; ++j) m = std::max(m, x[j] *= scale);
    return m;
  }
  const int64_t* id = r.ids64.data_ptr<int64_t>() + i * p.N;
  // contextual: this row of q R^T; bias: head h's row of the table.
  const acc_t* t = r.table.data_ptr<acc_t>() + (p.mode == kContextual ? row : h) * p.NB;
  for (int64_t j = 0; j < p.N; ++j) m = std::max(m, x[j] = scale * x[j] + t[id[j]]);
  return m;
}

// Sum over (s, h) of per-pair tables, in fixed groups: table (S*H, X) -> (X) per
// head or shared, written as (H or 1, X) in acc type.
template <typename acc_t, typename PairFn>
at::Tensor fixed_order_sum(const Problem& p, int64_t heads_out, int64_t width, PairFn&& add_pair) {
  const int64_t pairs = p.S * p.H;
  const int64_t groups = (pairs + kPairsPerGroup - 1) / kPairsPerGroup;
  std::vector<acc_t> partial(groups * heads_out * width, acc_t(0));
  at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
    for (int64_t g = g_begin; g < g_end; ++g) {
      acc_t* part = partial.data() + g * heads_out * width;
      const int64_t last = std::min(pairs, (g + 1) * kPairsPerGroup);
      for (int64_t pair = g * kPairsPerGroup; pair < last; ++pair) {
        const int64_t h = pair % p.H;
        add_pair(pair, part + (heads_out == 1 ? 0 : h * width));
      }
    }
  });
  auto total = at::zeros({heads_out, width}, at::TensorOptions().dtype(p.acc));
  acc_t* t = total.data_ptr<acc_t>();
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t e = 0; e < heads_out * width; ++e) t[e] += partial[g * heads_out * width + e];
  return total;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& ids,
    c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q, k, v, rpe, ids, rpe_mode);
  const Problem p = problem_of(q, rpe, rpe_mode, scale);
  if (p.mode) check_bucket_ids_range(*ids, p.NB, "window_attention");
  if (q.numel() == 0) {
    return {at::empty({p.S, p.N, p.H, p.d}, q.options()),
            at::empty({p.S, p.H, p.N}, q.options().dtype(p.acc))};
  }
  const auto qh = heads_first(q, p), kh = heads_first(k, p), vh = heads_first(v, p);
  const auto R = p.mode ? rpe->to(p.acc).contiguous() : at::Tensor();
  const Relative r = relative_of(qh, R, ids, p);
  auto probs = at::bmm(qh, kh.transpose(1, 2));  // logits, then softmax in place
  auto lse = at::empty({p.S, p.H, p.N}, qh.options());
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "window_attention_fwd_cpu", [&] {
    scalar_t* P = probs.data_ptr<scalar_t>();
    scalar_t* L = lse.data_ptr<scalar_t>();
    for_each_row(p, [&](int64_t h, int64_t i, int64_t row) {
      scalar_t* x = P + row * p.N;
      const scalar_t m = finish_logits(x, p, r, h, i, row);
      scalar_t sum = 0;
      for (int64_t j = 0; j < p.N; ++j) sum += (x[j] = std::exp(x[j] - m));
      const scalar_t inv = scalar_t(1) / sum;
      for (int64_t j = 0; j < p.N; ++j) x[j] *= inv;
      L[row] = m + std::log(sum);
    });
  });
  return {to_tokens(probs, false, vh, p).to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& rpe,
    const c10::optional<at::Tensor>& ids, c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q, k, v, rpe, ids, rpe_mode);
  const Problem p = problem_of(q, rpe, rpe_mode, scale);
  const auto dtype = q.scalar_type();
  if (q.numel() == 0) {
    auto z = at::zeros({p.S, p.N, p.H, p.d}, q.options());
    return {z, z.clone(), z.clone(), p.mode ? at::zeros_like(*rpe) : at::empty({0}, q.options())};
  }
  const auto qh = heads_first(q, p), kh = heads_first(k, p), vh = heads_first(v, p);
  const auto gh = heads_first(grad_out, p);
  const auto R = p.mode ? rpe->to(p.acc).contiguous() : at::Tensor();

  const Relative r = relative_of(qh, R, ids, p);
  const auto lse_acc = lse.to(p.acc).contiguous();
  // D_i = dO_i . O_i, read in the (S, N, H, d) layout: no copy of O.
  const auto D = (grad_out.to(p.acc) * out.to(p.acc)).sum(3).contiguous();  // (S, N, H)
  auto probs = at::bmm(qh, kh.transpose(1, 2));  // logits, then P in place
  auto dS = at::bmm(gh, vh.transpose(1, 2));     // dP, then dS in place
  // contextual: dT[pair, i, b] = sum of dS[pair, i, j] over the j in bucket b.
  auto dT = p.mode == kContextual ? at::empty({p.S * p.H, p.N, p.NB}, dS.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "window_attention_bwd_cpu", [&] {
    scalar_t* P = probs.data_ptr<scalar_t>();
    scalar_t* G = dS.data_ptr<scalar_t>();
    const scalar_t* Lp = lse_acc.data_ptr<scalar_t>();
    const scalar_t* Dp = D.data_ptr<scalar_t>();
    scalar_t* T = dT.defined() ? dT.data_ptr<scalar_t>() : nullptr;
    for_each_row(p, [&](int64_t h, int64_t i, int64_t row) {
      scalar_t* x = P + row * p.N;
      scalar_t* g = G + row * p.N;
      finish_logits(x, p, r, h, i, row);
      const scalar_t lse_row = Lp[row];
      const scalar_t D_row = Dp[((row / (p.N * p.H)) * p.N + i) * p.H + h];
      for (int64_t j = 0; j < p.N; ++j) {
        x[j] = std::exp(x[j] - lse_row);
        g[j] = x[j] * (g[j] - D_row);  // dS = P * (dP - D)
      }
      if (T) {
        scalar_t* t = T + row * p.NB;
        const int64_t* id = r.ids64.data_ptr<int64_t>() + i * p.N;
        std::fill(t, t + p.NB, scalar_t(0));
        for (int64_t j = 0; j < p.N; ++j) t[id[j]] += g[j];
      }
    });
  });
  auto dv = to_tokens(probs, true, gh, p);
  auto dq = to_tokens(dS, false, kh, p).mul_(p.scale);
  auto dk = to_tokens(dS, true, qh, p).mul_(p.scale);

  at::Tensor drpe = at::empty({0}, q.options());
  if (p.mode == kContextual) {
    const auto dq_rel = p.per_head ? at::matmul(dT.view({p.S, p.H, p.N, p.NB}), R)
                                   : at::matmul(dT, R).view({p.S, p.H, p.N, p.d});
    dq.permute({0, 2, 1, 3}).add_(dq_rel);
    // dR[b] = sum over pairs and rows of dT[pair, i, b] * q[pair, i]: one GEMM per
    // group of pairs (a shared table) or per pair (per-head tables), single-threaded
    // inside the parallel loop, into the group's partial.
    const int64_t heads_out = p.per_head ? p.H : 1;
    const int64_t pairs = p.S * p.H;
    const int64_t groups = (pairs + kPairsPerGroup - 1) / kPairsPerGroup;
    auto partial = at::zeros({groups, heads_out, p.NB, p.d}, dT.options());
    at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
      for (int64_t g = g_begin; g < g_end; ++g) {
        const int64_t first = g * kPairsPerGroup, last = std::min(pairs, first + kPairsPerGroup);
        if (!p.per_head) {
          partial[g][0].addmm_(dT.narrow(0, first, last - first).reshape({-1, p.NB}).t(),
                               qh.narrow(0, first, last - first).reshape({-1, p.d}));
          continue;
        }
        for (int64_t pair = first; pair < last; ++pair) {
          partial[g][pair % p.H].addmm_(dT[pair].t(), qh[pair]);
        }
      }
    });
    auto total = partial[0].clone();
    for (int64_t g = 1; g < groups; ++g) total.add_(partial[g]);  // fixed order
    drpe = (p.per_head ? total : total[0]).to(dtype);
  } else if (p.mode == kBias) {
    AT_DISPATCH_FLOATING_TYPES(dS.scalar_type(), "window_attention_dbias_cpu", [&] {
      const scalar_t* dSp = dS.data_ptr<scalar_t>();
      const int64_t* id = r.ids64.data_ptr<int64_t>();
      auto total = fixed_order_sum<scalar_t>(p, p.H, p.NB, [&](int64_t pair, scalar_t* dB) {
        const scalar_t* rows = dSp + pair * p.N * p.N;
        for (int64_t e = 0; e < p.N * p.N; ++e) dB[id[e]] += rows[e];
      });
      drpe = total.to(dtype);
    });
  }
  return {dq.to(dtype), dk.to(dtype), dv.to(dtype), drpe};
}

}  // namespace lomar_ops
