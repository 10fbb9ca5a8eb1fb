// window_attention on the CPU: softmax(scale * q k^T + relative term) v per
// (sequence, head), with the relative term of iRPE's contextual mode
// (q_i . R[bucket(i, j)]), of the bias mode (rpe[h, bucket(i, j)]) or none.
//
// A CPU's caches hold the N x N logits of a few short sequences, so the work is cut
// into groups of whole sequences (a group's logits fit in about half a megabyte)
// and each group runs start to finish on one thread: its q, k, v copied heads first
// and cast (a memcpy per d-vector), the matrix products (q k^T, P v, their
// gradients, the contextual table q R^T) as ATen batched GEMMs (BLAS) in fp32 (fp64
// for double), and everything between them (scale, the bucket gather of the
// relative term, the row max, D, dS = P * (dP - D), the scatter of dS back into
// buckets) fused into passes over each logits row; the exponentials go through
// ATen's vectorised exp. The relative term's (S, H, N, NB) and (S, H, N, N)
// tensors of the unfused formula never exist; the results are written once,
// permuted into (S, N, H, d). The one full-size intermediate is P (S*H, N, N),
// which the forward keeps for the backward as the unfused formula does
// (recomputing it cost a GEMM and a pass per group, a fifth of the backward at
// N = 50).
// The table gradient is a reduction over all sequences: each group adds into its
// own partial, and the partials are summed in group order; groups depend on the
// shapes only, so d(rpe) does not depend on how groups fall to threads: bitwise
// repeatable run to run. (Its last bits may change with the thread count: with
// fewer groups than threads, the groups run one after the other with
// multi-threaded GEMMs.)
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int64_t kGroupElements = 1 << 17;  // target size of a group's N x N logits
constexpr int64_t kRowsPerTask = 64;         // logits rows per task inside one group

enum Mode { kNone = 0, kBias = 1, kContextual = 2 };

struct Problem {
  int64_t S, N, H, d, NB = 0;
  Mode mode = kNone;
  bool per_head = false;  // contextual table (H, NB, d) rather than (NB, d)
  at::ScalarType acc;     // fp32, or fp64 for double inputs
  double scale;
  int64_t group = 1;      // sequences per group
  int64_t groups() const { return (S + group - 1) / group; }
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
  const int64_t per_sequence = std::max<int64_t>(1, p.H * p.N * std::max({p.N, p.d, p.NB}));
  p.group = std::clamp<int64_t>(kGroupElements / per_sequence, 1, std::max<int64_t>(p.S, 1));
  return p;
}

// Runs fn(first sequence, count) for every group: in parallel when there are enough
// groups to share out, else one after the other with ATen's ops multi-threaded.
// Worker threads start in grad mode while the caller (an autograd backward) may not
// be: each group runs under NoGradGuard, so its views and in-place ops agree.
template <typename Fn>
void for_each_group(const Problem& p, Fn&& fn) {
  auto run = [&](int64_t g) {
    c10::NoGradGuard no_grad;
    fn(g * p.group, std::min(p.group, p.S - g * p.group));
  };
  if (p.groups() >= at::get_num_threads()) {
    at::parallel_for(0, p.groups(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) run(g);
    });
  } else {
    for (int64_t g = 0; g < p.groups(); ++g) run(g);
  }
}

// Runs fn(h, i, row) for the rows of a group's (count*H, N, ·) logits; nested in a
// parallel group loop it runs serially. The name labels the pass in profiler traces.
template <typename Fn>
void for_each_row(const char* name, const Problem& p, int64_t count, Fn&& fn) {
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  at::parallel_for(0, count * p.H * p.N, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) fn((row / p.N) % p.H, row % p.N, row);
  });
}

// Copies the d-vectors of sequences [first, first + count) from a token-layout
// tensor (S, N, H, d) (any strides, last one 1) into a heads-first buffer
// (count*H, N, d), casting: one memcpy per vector when the dtypes agree. (ATen's
// copy_ of the permuted view ran at a quarter of this speed.)
template <typename tok_t, typename acc_t>
void copy_heads_first(const tok_t* tok, const at::IntArrayRef tok_strides, acc_t* heads,
                      int64_t first, int64_t count, const Problem& p) {
  // In parallel when one group is the whole call (few sequences); serial inside a
  // parallel group loop.
  at::parallel_for(0, count * p.H * p.N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // row = (c*H + h)*N + i
      const int64_t c = row / (p.H * p.N), h = (row / p.N) % p.H, i = row % p.N;
      const tok_t* a = tok + (first + c) * tok_strides[0] + i * tok_strides[1] + h * tok_strides[2];
      acc_t* b = heads + row * p.d;
      if constexpr (std::is_same_v<tok_t, acc_t>) {
        std::memcpy(b, a, p.d * sizeof(acc_t));
      } else {
        for (int64_t e = 0; e < p.d; ++e) b[e] = static_cast<acc_t>(a[e]);
      }
    }
  });
}

// Sequences [first, first + count) of an (S, N, H, d) tensor as (count*H, N, d),
// heads first, in the accumulation type.
at::Tensor heads_first(const at::Tensor& t, int64_t first, int64_t count, const Problem& p) {
  RECORD_FUNCTION("window_attention_cpu::heads_first", std::vector<c10::IValue>());
  auto out = at::empty({count * p.H, p.N, p.d}, t.options().dtype(p.acc));
  if (t.stride(3) != 1) {
    out.view({count, p.H, p.N, p.d}).copy_(t.narrow(0, first, count).permute({0, 2, 1, 3}));
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "heads_first", [&] {
    using tok_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(p.acc, "heads_first_acc", [&] {
      copy_heads_first<tok_t, scalar_t>(t.const_data_ptr<tok_t>(), t.strides(),
                                        out.data_ptr<scalar_t>(), first, count, p);
    });
  });
  return out;
}

// Results are (S, N, H, d) views of heads-major (S, H, N, d) memory, as the unfused
// formula returns them ((P v).transpose(1, 2)): each group's GEMMs write their rows
// in place, and no permuting copy into token order (which cost as much as a GEMM)
// is made; the consumer's reshape makes the one copy either way.
// heads_major is the (S, H, N, d) memory; as_tokens gives the result's view.
at::Tensor heads_major(const Problem& p, const at::TensorOptions& options) {
  return at::empty({p.S, p.H, p.N, p.d}, options);
}

at::Tensor as_tokens(const at::Tensor& heads) { return heads.permute({0, 2, 1, 3}); }

// The group's rows of a heads_major tensor as (count*H, N, d).
at::Tensor group_rows(const at::Tensor& heads, int64_t first, int64_t count, const Problem& p) {
  return heads.narrow(0, first, count).view({count * p.H, p.N, p.d});
}

// rows = a @ b into a heads_major result's group rows, through a buffer in the
// accumulation type when the result is float16/bfloat16.
void bmm_into(const at::Tensor& rows, const at::Tensor& a, const at::Tensor& b) {
  if (rows.scalar_type() == a.scalar_type()) {
    auto out = rows;
    at::bmm_out(out, a, b);
  } else {
    rows.copy_(at::bmm(a, b));
  }
}

// The relative term's inputs for one group: the contextual table q R^T
// (count*H, N, NB) or the bias table (H, NB), and the bucket map.
struct Relative {
  at::Tensor table;
  const int64_t* ids = nullptr;
  int64_t table_row(const Problem& p, int64_t h, int64_t row) const {
    return p.mode == kBias ? h : row;
  }
};

Relative relative_of(const at::Tensor& qg, const at::Tensor& R, const at::Tensor& ids64,
                     int64_t count, const Problem& p) {
  Relative r;
  if (p.mode == kNone) return r;
  r.ids = ids64.data_ptr<int64_t>();
  if (p.mode == kBias) {
    r.table = R;
  } else if (p.per_head) {  // (count, H, N, d) @ (H, d, NB)
    r.table = at::matmul(qg.view({count, p.H, p.N, p.d}), R.transpose(1, 2))
                  .view({count * p.H, p.N, p.NB});
  } else {
    r.table = at::matmul(qg, R.t());
  }
  return r;
}

// Logits row in place: x_j = scale * (q k^T)_j + term_j. Returns its max.
template <typename acc_t>
acc_t finish_logits(acc_t* x, const Problem& p, const Relative& r, int64_t h, int64_t i,
                    int64_t row) {
  const acc_t scale = static_cast<acc_t>(p.scale);
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  if (p.mode == kNone) {
    for (int64_t j = 0; j < p.N; ++j) m = std::max(m, x[j] = scale * x[j]);
    return m;
  }
  const int64_t* id = r.ids + i * p.N;
  const acc_t* t = r.table.data_ptr<acc_t>() + r.table_row(p, h, row) * p.NB;
  for (int64_t j = 0; j < p.N; ++j) m = std::max(m, x[j] = scale * x[j] + t[id[j]]);
  return m;
}

// Probabilities of a group from its logits (count*H, N, N), in place, with lse.
template <typename acc_t>
void softmax_rows(at::Tensor& logits, acc_t* lse, const Problem& p, const Relative& r,
                  int64_t count) {
  acc_t* P = logits.data_ptr<acc_t>();
  for_each_row("window_attention_cpu::logits", p, count, [&](int64_t h, int64_t i, int64_t row) {
    acc_t* x = P + row * p.N;
    const acc_t m = finish_logits(x, p, r, h, i, row);
    for (int64_t j = 0; j < p.N; ++j) x[j] -= m;
    lse[row] = m;
  });
  logits.exp_();
  const auto sum = logits.sum(-1, /*keepdim=*/true);
  logits.div_(sum);
  const acc_t* su = sum.data_ptr<acc_t>();
  for (int64_t row = 0; row < count * p.H * p.N; ++row) lse[row] += std::log(su[row]);
}

at::Tensor rpe_in_acc(const c10::optional<at::Tensor>& rpe, const Problem& p) {
  return p.mode ? rpe->to(p.acc).contiguous() : at::Tensor();
}

at::Tensor ids_long(const c10::optional<at::Tensor>& ids, const Problem& p) {
  return p.mode ? ids->to(at::kLong).contiguous() : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& ids,
    c10::string_view rpe_mode, double scale) {
  // Under autocast the op runs in its inputs' dtype; the GEMMs below must keep the
  // fp32/fp64 accumulators they are given (autocast would recast them to bf16/fp16).
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  check_window_attention_args(q, k, v, rpe, ids, rpe_mode);
  const Problem p = problem_of(q, rpe, rpe_mode, scale);
  if (p.mode) check_bucket_ids_range(*ids, p.NB, "window_attention");
  auto out = heads_major(p, q.options());
  auto lse = at::empty({p.S, p.H, p.N}, q.options().dtype(p.acc));
  auto probs = at::empty({p.S * p.H, p.N, p.N}, q.options().dtype(p.acc));
  if (q.numel() == 0) return {as_tokens(out), lse, probs};
  const auto R = rpe_in_acc(rpe, p);
  const auto ids64 = ids_long(ids, p);
  AT_DISPATCH_FLOATING_TYPES(p.acc, "window_attention_fwd_cpu", [&] {
    for_each_group(p, [&](int64_t first, int64_t count) {
      const auto qg = heads_first(q, first, count, p), kg = heads_first(k, first, count, p);
      const Relative r = relative_of(qg, R, ids64, count, p);
      auto pg = probs.narrow(0, first * p.H, count * p.H);  // logits, then P in place
      at::bmm_out(pg, qg, kg.transpose(1, 2));
      softmax_rows(pg, lse.data_ptr<scalar_t>() + first * p.H * p.N, p, r, count);
      bmm_into(group_rows(out, first, count, p), pg, heads_first(v, first, count, p));
    });
  });
  return {as_tokens(out), lse, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& probs,
    const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& ids,
    c10::string_view rpe_mode, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // as above
  check_window_attention_args(q, k, v, rpe, ids, rpe_mode);
  const Problem p = problem_of(q, rpe, rpe_mode, scale);
  TORCH_CHECK(probs.dim() == 3 && probs.size(0) == p.S * p.H && probs.size(1) == p.N &&
                  probs.size(2) == p.N && probs.scalar_type() == p.acc && probs.is_contiguous(),
              "window_attention_bwd: probs must be the forward's contiguous (S*H, N, N) = (",
              p.S * p.H, ", ", p.N, ", ", p.N, ") ", p.acc, " probabilities, got ", probs.sizes(),
              " ", probs.scalar_type());
  (void)out, (void)lse;  // D comes from P and dP, P from the forward
  auto dq = heads_major(p, q.options()), dk = heads_major(p, q.options()),
       dv = heads_major(p, q.options());
  if (q.numel() == 0) {
    return {as_tokens(dq.zero_()), as_tokens(dk.zero_()), as_tokens(dv.zero_()),
            p.mode ? at::zeros_like(*rpe) : at::empty({0}, q.options())};
  }
  const auto R = rpe_in_acc(rpe, p);
  const auto ids64 = ids_long(ids, p);
  const int64_t* id_map = p.mode ? ids64.data_ptr<int64_t>() : nullptr;
  // Per-group partial sums of d(rpe): (groups, H or 1, NB, d) or (groups, H, NB).
  const int64_t heads_out = p.per_head ? p.H : 1;
  auto partial = p.mode == kContextual ? at::zeros({p.groups(), heads_out, p.NB, p.d}, R.options())
                 : p.mode == kBias     ? at::zeros({p.groups(), p.H, p.NB}, R.options())
                                       : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(p.acc, "window_attention_bwd_cpu", [&] {
    const scalar_t factor = static_cast<scalar_t>(p.scale);
    for_each_group(p, [&](int64_t first, int64_t count) {
      const auto qg = heads_first(q, first, count, p), kg = heads_first(k, first, count, p);
      const auto vg = heads_first(v, first, count, p), gg = heads_first(grad_out, first, count, p);
      const auto pg = probs.narrow(0, first * p.H, count * p.H);
      const scalar_t* P = pg.data_ptr<scalar_t>();
      auto dS = at::bmm(gg, vg.transpose(1, 2));  // dP, then scale * dS in place
      // contextual: dT[row, b] = sum of dS[row, j] over the j in bucket b. bias: dS
      // summed over the group's sequences per (h, i, j) (a vector add), scattered into
      // the group's partial of d(bias) once per group rather than once per row.
      auto dT = p.mode == kContextual ? at::zeros({count * p.H, p.N, p.NB}, dS.options())
                                      : at::Tensor();
      auto dsum = p.mode == kBias ? at::zeros({p.H, p.N, p.N}, dS.options()) : at::Tensor();
      scalar_t* T = dT.defined() ? dT.data_ptr<scalar_t>() : nullptr;
      scalar_t* U = dsum.defined() ? dsum.data_ptr<scalar_t>() : nullptr;
      scalar_t* G = dS.data_ptr<scalar_t>();
      auto ds_row = [&](int64_t h, int64_t i, int64_t row) {
        const scalar_t* x = P + row * p.N;
        scalar_t* g = G + row * p.N;
        // D_i = sum_j P_ij dP_ij (= dO_i . O_i): the whole row is here, so no read of O.
        scalar_t D_row = 0;
        for (int64_t j = 0; j < p.N; ++j) D_row += x[j] * g[j];
        if (T) {
          scalar_t* t = T + row * p.NB;
          const int64_t* id = id_map + i * p.N;
          for (int64_t j = 0; j < p.N; ++j) {
            const scalar_t ds = x[j] * (g[j] - D_row);  // dS = P * (dP - D)
            t[id[j]] += ds;
            g[j] = ds * factor;
          }
        } else if (U) {
          scalar_t* u = U + (h * p.N + i) * p.N;
          for (int64_t j = 0; j < p.N; ++j) {
            const scalar_t ds = x[j] * (g[j] - D_row);
            u[j] += ds;
            g[j] = ds * factor;
          }
        } else {
          for (int64_t j = 0; j < p.N; ++j) g[j] = x[j] * (g[j] - D_row) * factor;
        }
      };
      if (U) {  // rows (h, i) in parallel, each over the group's sequences in order
        RECORD_FUNCTION("window_attention_cpu::dS", std::vector<c10::IValue>());
        at::parallel_for(0, p.H * p.N, kRowsPerTask, [&](int64_t begin, int64_t end) {
          for (int64_t hi = begin; hi < end; ++hi)
            for (int64_t c = 0; c < count; ++c) ds_row(hi / p.N, hi % p.N, c * p.H * p.N + hi);
        });
        scalar_t* dB = partial.select(0, first / p.group).data_ptr<scalar_t>();
        for (int64_t h = 0; h < p.H; ++h)
          for (int64_t e = 0; e < p.N * p.N; ++e) dB[h * p.NB + id_map[e]] += U[h * p.N * p.N + e];
      } else {
        for_each_row("window_attention_cpu::dS", p, count, ds_row);
      }
      const auto dq_rows = group_rows(dq, first, count, p);
      auto dqg = dq_rows.scalar_type() == p.acc ? dq_rows : at::empty(dq_rows.sizes(), dS.options());
      at::bmm_out(dqg, dS, kg);
      if (p.mode == kContextual) {  // + dT @ R, the relative term's share of dq
        if (p.per_head) {
          dqg.view({count, p.H, p.N, p.d}).add_(at::matmul(dT.view({count, p.H, p.N, p.NB}), R));
        } else {
          dqg.view({-1, p.d}).addmm_(dT.view({-1, p.NB}), R);
        }
        // dR += dT^T q over the group's rows (per head: over its sequences and rows).
        auto part = partial.select(0, first / p.group);
        if (p.per_head) {
          part.baddbmm_(dT.view({count, p.H, p.N, p.NB}).permute({1, 3, 0, 2}).reshape({p.H, p.NB, -1}),
                        qg.view({count, p.H, p.N, p.d}).transpose(0, 1).reshape({p.H, -1, p.d}));
        } else {
          part.select(0, 0).addmm_(dT.view({-1, p.NB}).t(), qg.view({-1, p.d}));
        }
      }
      if (!dqg.is_same(dq_rows)) dq_rows.copy_(dqg);
      bmm_into(group_rows(dk, first, count, p), dS.transpose(1, 2), qg);
      bmm_into(group_rows(dv, first, count, p), pg.transpose(1, 2), gg);
    });
  });
  at::Tensor drpe = at::empty({0}, q.options());
  if (p.mode) {
    RECORD_FUNCTION("window_attention_cpu::table_grad", std::vector<c10::IValue>());
    auto total = partial.select(0, 0).clone();
    for (int64_t g = 1; g < p.groups(); ++g) total.add_(partial.select(0, g));  // fixed order
    drpe = (p.mode == kContextual && !p.per_head ? total.select(0, 0) : total).to(q.scalar_type());
  }
  return {as_tokens(dq), as_tokens(dk), as_tokens(dv), drpe};
}

}  // namespace lomar_ops
