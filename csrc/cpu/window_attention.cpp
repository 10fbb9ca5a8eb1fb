// window_attention on the CPU: softmax(scale * q k^T + relative term) v per
// (sequence, head), with the relative term of iRPE's contextual mode
// (q_i . R[bucket(i, j)]) or of the bias mode (rpe[h, bucket(i, j)]) or none.
//
// Forward saves the log-sum-exp of every row (fp32; fp64 for double), as flash
// attention does, so the backward recomputes the probabilities instead of storing
// them. Everything accumulates in fp32 (fp64 for double). The table gradient is a reduction over
// all sequences: (sequence, head) pairs are summed in fixed groups whose partial
// sums are then added in group order, so the result does not depend on the
// number of threads: bitwise repeatable.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

constexpr int64_t kPairsPerGroup = 16;  // (s, h) pairs per partial sum of d(rpe)

// Strided (S, N, H, d) view with a contiguous last dim.
template <typename T>
struct SNHD {
  const T* data;
  int64_t ss, sn, sh;
  const T* row(int64_t s, int64_t n, int64_t h) const { return data + s * ss + n * sn + h * sh; }
};

template <typename T>
SNHD<T> view_of(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

template <typename acc_t, typename T, typename U>
acc_t dot(const T* a, const U* b, int64_t d) {
  acc_t sum = 0;
  for (int64_t x = 0; x < d; ++x) sum += static_cast<acc_t>(a[x]) * static_cast<acc_t>(b[x]);
  return sum;
}

struct Shape {
  int64_t S, N, H, d, NB;
  int mode;      // 0 none, 1 bias, 2 contextual
  bool per_head;  // contextual table (H, NB, d) rather than (NB, d)
};

// Logits of query row i against all keys, into `logits` (length N).
template <typename scalar_t, typename acc_t>
void row_logits(const Shape& sh, const SNHD<scalar_t>& q, const SNHD<scalar_t>& k,
                const scalar_t* rpe, const int32_t* ids, const std::vector<acc_t>& T,
                int64_t s, int64_t h, int64_t i, double scale, acc_t* logits) {
  const scalar_t* qi = q.row(s, i, h);
  for (int64_t j = 0; j < sh.N; ++j) {
    acc_t l = static_cast<acc_t>(scale) * dot<acc_t>(qi, k.row(s, j, h), sh.d);
    if (sh.mode == 2) l += T[i * sh.NB + ids[i * sh.N + j]];
    if (sh.mode == 1) l += static_cast<acc_t>(rpe[h * sh.NB + ids[i * sh.N + j]]);
    logits[j] = l;
  }
}

// T[i][b] = q_i . R[b] for one (s, h): the contextual term per bucket.
template <typename scalar_t, typename acc_t>
void contextual_table(const Shape& sh, const SNHD<scalar_t>& q, const scalar_t* rpe, int64_t s,
                      int64_t h, std::vector<acc_t>& T) {
  const scalar_t* R = rpe + (sh.per_head ? h * sh.NB * sh.d : 0);
  for (int64_t i = 0; i < sh.N; ++i) {
    const scalar_t* qi = q.row(s, i, h);
    for (int64_t b = 0; b < sh.NB; ++b) T[i * sh.NB + b] = dot<acc_t>(qi, R + b * sh.d, sh.d);
  }
}

Shape shape_of(const at::Tensor& q, const c10::optional<at::Tensor>& rpe,
               c10::string_view rpe_mode) {
  Shape sh{q.size(0), q.size(1), q.size(2), q.size(3), 0, 0, false};
  sh.mode = rpe_mode == "contextual" ? 2 : rpe_mode == "bias" ? 1 : 0;
  if (sh.mode == 2) {
    sh.per_head = rpe->dim() == 3;
    sh.NB = rpe->size(sh.per_head ? 1 : 0);
  } else if (sh.mode == 1) {
    sh.NB = rpe->size(1);
  }
  return sh;
}

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> window_attention_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& rpe_in, const c10::optional<at::Tensor>& ids_in,
    c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q_in, k_in, v_in, rpe_in, ids_in, rpe_mode);
  const auto q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in),
             v = last_dim_contiguous(v_in);
  const Shape sh = shape_of(q, rpe_in, rpe_mode);
  const at::Tensor rpe = sh.mode ? rpe_in->contiguous() : at::Tensor();
  const at::Tensor ids = sh.mode ? ids_in->contiguous() : at::Tensor();
  if (sh.mode) check_bucket_ids_range(ids, sh.NB, "window_attention");
  auto out = at::empty({sh.S, sh.N, sh.H, sh.d}, q.options());
  // fp32 log-sum-exp (fp64 for double inputs, so float64 gradients stay exact)
  auto lse = at::empty({sh.S, sh.H, sh.N},
                       q.options().dtype(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return {out, lse};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "window_attention_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto qv = view_of<scalar_t>(q), kv = view_of<scalar_t>(k), vv = view_of<scalar_t>(v);
    const scalar_t* rp = sh.mode ? rpe.data_ptr<scalar_t>() : nullptr;
    const int32_t* id = sh.mode ? ids.data_ptr<int32_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    acc_t* ls = lse.data_ptr<acc_t>();
    at::parallel_for(0, sh.S * sh.H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> T(sh.mode == 2 ? sh.N * sh.NB : 0), logits(sh.N), acc(sh.d);
      for (int64_t pair = begin; pair < end; ++pair) {
        const int64_t s = pair / sh.H, h = pair % sh.H;
        if (sh.mode == 2) contextual_table(sh, qv, rp, s, h, T);
        for (int64_t i = 0; i < sh.N; ++i) {
          row_logits(sh, qv, kv, rp, id, T, s, h, i, scale, logits.data());
          acc_t m = -std::numeric_limits<acc_t>::infinity();
          for (int64_t j = 0; j < sh.N; ++j) m = std::max(m, logits[j]);
          acc_t l = 0;
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t j = 0; j < sh.N; ++j) {
            const acc_t p = std::exp(logits[j] - m);
            l += p;
            const scalar_t* vj = vv.row(s, j, h);
            for (int64_t x = 0; x < sh.d; ++x) acc[x] += p * static_cast<acc_t>(vj[x]);
          }
          scalar_t* oi = o + ((s * sh.N + i) * sh.H + h) * sh.d;
          for (int64_t x = 0; x < sh.d; ++x) oi[x] = static_cast<scalar_t>(acc[x] / l);
          ls[(s * sh.H + h) * sh.N + i] = m + std::log(l);
        }
      }
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cpu(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const c10::optional<at::Tensor>& rpe_in, const c10::optional<at::Tensor>& ids_in,
    c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q_in, k_in, v_in, rpe_in, ids_in, rpe_mode);
  const auto q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in),
             v = last_dim_contiguous(v_in), go = last_dim_contiguous(grad_in),
             o = last_dim_contiguous(out_in);
  const auto lse = lse_in.contiguous();
  const Shape sh = shape_of(q, rpe_in, rpe_mode);
  const at::Tensor rpe = sh.mode ? rpe_in->contiguous() : at::Tensor();
  const at::Tensor ids = sh.mode ? ids_in->contiguous() : at::Tensor();
  auto dq = at::empty({sh.S, sh.N, sh.H, sh.d}, q.options());
  auto dk = at::empty_like(dq), dv = at::empty_like(dq);
  at::Tensor drpe = sh.mode ? at::empty_like(rpe) : at::empty({0}, q.options());
  if (dq.numel() == 0) {
    if (sh.mode) drpe.zero_();
    return {dq, dk, dv, drpe};
  }
  const int64_t pairs = sh.S * sh.H;
  const int64_t groups = (pairs + kPairsPerGroup - 1) / kPairsPerGroup;
  const int64_t table_numel = sh.mode == 2 ? (sh.per_head ? sh.H : 1) * sh.NB * sh.d
                              : sh.mode == 1 ? sh.H * sh.NB : 0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "window_attention_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto qv = view_of<scalar_t>(q), kv = view_of<scalar_t>(k), vv = view_of<scalar_t>(v),
               gv = view_of<scalar_t>(go), ov = view_of<scalar_t>(o);
    const scalar_t* rp = sh.mode ? rpe.data_ptr<scalar_t>() : nullptr;
    const int32_t* id = sh.mode ? ids.data_ptr<int32_t>() : nullptr;
    const acc_t* ls = lse.data_ptr<acc_t>();
    std::vector<acc_t> partial(groups * table_numel, acc_t(0));
    scalar_t *dqp = dq.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>(),
             *dvp = dv.data_ptr<scalar_t>();

    at::parallel_for(0, groups, 1, [&](int64_t g_begin, int64_t g_end) {
      std::vector<acc_t> T(sh.mode == 2 ? sh.N * sh.NB : 0), dT(sh.mode == 2 ? sh.NB : 0);
      std::vector<acc_t> logits(sh.N), dqi(sh.d), dkb(sh.N * sh.d), dvb(sh.N * sh.d);
      for (int64_t g = g_begin; g < g_end; ++g) {
        acc_t* part = partial.data() + g * table_numel;
        for (int64_t pair = g * kPairsPerGroup; pair < std::min(pairs, (g + 1) * kPairsPerGroup); ++pair) {
          const int64_t s = pair / sh.H, h = pair % sh.H;
          if (sh.mode == 2) contextual_table(sh, qv, rp, s, h, T);
          const scalar_t* R = sh.mode == 2 ? rp + (sh.per_head ? h * sh.NB * sh.d : 0) : nullptr;
          acc_t* dR = sh.mode == 2 ? part + (sh.per_head ? h * sh.NB * sh.d : 0) : nullptr;
          std::fill(dkb.begin(), dkb.end(), acc_t(0));
          std::fill(dvb.begin(), dvb.end(), acc_t(0));
          for (int64_t i = 0; i < sh.N; ++i) {
            row_logits(sh, qv, kv, rp, id, T, s, h, i, scale, logits.data());
            const scalar_t* qi = qv.row(s, i, h);
            const scalar_t* gi = gv.row(s, i, h);
            const acc_t Di = dot<acc_t>(gi, ov.row(s, i, h), sh.d);
            const acc_t lse_i = ls[(s * sh.H + h) * sh.N + i];
            std::fill(dqi.begin(), dqi.end(), acc_t(0));
            if (sh.mode == 2) std::fill(dT.begin(), dT.end(), acc_t(0));
            for (int64_t j = 0; j < sh.N; ++j) {
              const acc_t p = std::exp(logits[j] - lse_i);
              const scalar_t* vj = vv.row(s, j, h);
              const scalar_t* kj = kv.row(s, j, h);
              const acc_t ds = p * (dot<acc_t>(gi, vj, sh.d) - Di);
              for (int64_t x = 0; x < sh.d; ++x) {
                dqi[x] += ds * static_cast<acc_t>(scale) * static_cast<acc_t>(kj[x]);
                dkb[j * sh.d + x] += ds * static_cast<acc_t>(scale) * static_cast<acc_t>(qi[x]);
                dvb[j * sh.d + x] += p * static_cast<acc_t>(gi[x]);
              }
              if (sh.mode == 2) dT[id[i * sh.N + j]] += ds;
              if (sh.mode == 1) part[h * sh.NB + id[i * sh.N + j]] += ds;
            }
            if (sh.mode == 2) {
              for (int64_t b = 0; b < sh.NB; ++b) {
                if (dT[b] == acc_t(0)) continue;
                for (int64_t x = 0; x < sh.d; ++x) {
                  dqi[x] += dT[b] * static_cast<acc_t>(R[b * sh.d + x]);
                  dR[b * sh.d + x] += dT[b] * static_cast<acc_t>(qi[x]);
                }
              }
            }
            scalar_t* dqo = dqp + ((s * sh.N + i) * sh.H + h) * sh.d;
            for (int64_t x = 0; x < sh.d; ++x) dqo[x] = static_cast<scalar_t>(dqi[x]);
          }
          for (int64_t j = 0; j < sh.N; ++j) {
            const int64_t off = ((s * sh.N + j) * sh.H + h) * sh.d;
            for (int64_t x = 0; x < sh.d; ++x) {
              dkp[off + x] = static_cast<scalar_t>(dkb[j * sh.d + x]);
              dvp[off + x] = static_cast<scalar_t>(dvb[j * sh.d + x]);
            }
          }
        }
      }
    });

    if (sh.mode) {  // fixed-order sum of the group partials
      std::vector<acc_t> total(table_numel, acc_t(0));
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t e = 0; e < table_numel; ++e) total[e] += partial[g * table_numel + e];
      scalar_t* dr = drpe.data_ptr<scalar_t>();
      for (int64_t e = 0; e < table_numel; ++e) dr[e] = static_cast<scalar_t>(total[e]);
    }
  });
  return {dq, dk, dv, drpe};
}

}  // namespace lomar_ops
