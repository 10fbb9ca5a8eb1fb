// window_attention on the CPU: softmax(scale * q k^T + relative term) v per
// (sequence, head), with the relative term of iRPE's contextual mode
// (q_i . R[bucket(i, j)]), of the bias mode (rpe[h, bucket(i, j)]) or none.
//
// On a CPU the N x N logits of a short sequence fit in cache, so this kernel
// does not tile like flash attention: the four matrix products go through ATen's
// batched GEMM (BLAS) in fp32 (fp64 for double), and the parts GEMM cannot do
// (the bucket gather, the softmax statistics, the table gradient) are loops here.
// The forward returns each row's log-sum-exp, so the backward recomputes the
// probabilities from the inputs. The table gradient is a reduction over all
// sequences: (sequence, head) pairs are summed in fixed groups whose partial sums
// are added in group order, so it does not depend on the thread count: bitwise
// repeatable.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int64_t kPairsPerGroup = 16;  // (s, h) pairs per partial sum of d(rpe)

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

// (S*H, N, d) -> (S, N, H, d) in dtype.
at::Tensor tokens_first(const at::Tensor& t, const Problem& p, at::ScalarType dtype) {
  return t.view({p.S, p.H, p.N, p.d}).permute({0, 2, 1, 3}).to(dtype).contiguous();
}

// q @ R^T per bucket: (S*H, N, NB).
at::Tensor contextual_table(const at::Tensor& qh, const at::Tensor& R, const Problem& p) {
  if (!p.per_head) return at::matmul(qh, R.t());
  return at::matmul(qh.view({p.S, p.H, p.N, p.d}), R.transpose(1, 2)).view({p.S * p.H, p.N, p.NB});
}

// scale * q k^T + the relative term: (S*H, N, N).
at::Tensor logits_of(const at::Tensor& qh, const at::Tensor& kh, const at::Tensor& R,
                     const at::Tensor& ids64, const Problem& p) {
  auto logits = at::bmm(qh, kh.transpose(1, 2)).mul_(p.scale);
  if (p.mode == kContextual) {
    logits.add_(at::gather(contextual_table(qh, R, p), 2, ids64.expand({p.S * p.H, p.N, p.N})));
  } else if (p.mode == kBias) {
    logits.view({p.S, p.H, p.N, p.N}).add_(R.index_select(1, ids64.flatten()).view({p.H, p.N, p.N}));
  }
  return logits;
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
  const auto ids64 = p.mode ? ids->to(at::kLong) : at::Tensor();
  auto logits = logits_of(qh, kh, R, ids64, p);
  auto lse = at::logsumexp(logits, {2}, /*keepdim=*/true);
  auto out = at::bmm(logits.sub_(lse).exp_(), vh);
  return {tokens_first(out, p, q.scalar_type()), lse.view({p.S, p.H, p.N})};
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
  const auto ids64 = p.mode ? ids->to(at::kLong).contiguous() : at::Tensor();

  // P = softmax(logits), recomputed; dS = P * (dO v^T - rowsum(dO * O)).
  auto P = logits_of(qh, kh, R, ids64, p).sub_(lse.to(p.acc).view({p.S * p.H, p.N, 1})).exp_();
  auto dv = at::bmm(P.transpose(1, 2), gh);
  // D_i = dO_i . O_i, read in the (S, N, H, d) layout: no copy of O.
  auto D = (grad_out.to(p.acc) * out.to(p.acc)).sum(3).permute({0, 2, 1}).reshape({p.S * p.H, p.N, 1});
  auto dS = P.mul_(at::bmm(gh, vh.transpose(1, 2)).sub_(D));  // P's storage reused
  auto dq = at::bmm(dS, kh).mul_(p.scale);
  auto dk = at::bmm(dS.transpose(1, 2), qh).mul_(p.scale);

  at::Tensor drpe = at::empty({0}, q.options());
  if (p.mode == kContextual) {
    // dT[pair, i, b] = sum_j dS[pair, i, j] over the j in bucket b (scatter within a row).
    auto dT = at::zeros({p.S * p.H, p.N, p.NB}, dS.options())
                  .scatter_add_(2, ids64.expand({p.S * p.H, p.N, p.N}), dS);
    dq.add_(p.per_head ? at::matmul(dT.view({p.S, p.H, p.N, p.NB}), R).view({p.S * p.H, p.N, p.d})
                       : at::matmul(dT, R));
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
      const int64_t* id = ids64.data_ptr<int64_t>();
      auto total = fixed_order_sum<scalar_t>(p, p.H, p.NB, [&](int64_t pair, scalar_t* dB) {
        const scalar_t* rows = dSp + pair * p.N * p.N;
        for (int64_t e = 0; e < p.N * p.N; ++e) dB[id[e]] += rows[e];
      });
      drpe = total.to(dtype);
    });
  }
  return {tokens_first(dq, p, dtype), tokens_first(dk, p, dtype), tokens_first(dv, p, dtype),
          drpe};
}

}  // namespace lomar_ops
