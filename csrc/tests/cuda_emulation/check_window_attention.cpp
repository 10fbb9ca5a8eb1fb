// Emulated CUDA window_attention (csrc/cuda/window_attention.cu) against the CPU op:
// out, lse and the four gradients of every dtype (tensor-core mma for fp16/bf16),
// each within 3x the CPU op's own error in that dtype, d(rpe) bitwise repeatable; and
// the shared-memory limits: a table that needs the opt-in beyond 48 KB, and one that
// fits an H100 (sm_90) but not an A100 (sm_80), where the op must say so. Counting
// builds (run.sh --count) add the model cases: a pretraining-like shape for the
// traffic counters, whose launches carry the shape for the report's floors.
#include "window_attention_emulated.cpp"  // written by emulate_cu.py

#include "check_common.h"

namespace {

using namespace lomar_ops;
using emu_check::Case;

struct Shape {
  int64_t S, N, H, d;
  const char* mode;  // contextual, bias or none
  bool per_head = false;
  bool strided = false;  // q, k, v as views of one (S, N, 3, H, d) tensor
  int64_t NB = 50;
  bool lomar_map = false;  // LoMaR's bucket map (below) instead of random ids
};

// LoMaR's iRPE bucket map (lomar_ops/irpe.py, ratio 1.9): a cls token then a side x side
// patch grid in raster order; two patches (i, j) get (idx(dr) + 3) * 7 + idx(dc) + 3, idx
// the piecewise index (alpha, beta, gamma = 1.9, 3.8, 15.2: 0, 1, 2, 2, 3, 3, ... for
// |x| = 0, 1, 2, 3, 4, 5, ...), a pair with the cls token the last bucket, 49. Which
// buckets a warp's lanes gather sets the shared-memory bank conflicts of the qR and dT
// accesses, so the model shape counts them on this map as well as on random ids.
at::Tensor lomar_bucket_map(int64_t N) {
  const int side = static_cast<int>(std::lround(std::sqrt(static_cast<double>(N - 1))));
  TORCH_CHECK(side * side + 1 == N, "lomar_bucket_map: N = ", N, " is not 1 + side^2");
  const double alpha = 1.9, beta = 3.8, gamma = 15.2;
  auto idx = [&](int x) {
    const double ax = std::abs(x);
    if (ax <= alpha) return x;
    const double far = std::min(beta, std::round(alpha + std::log(ax / alpha) / std::log(gamma / alpha) *
                                                             (beta - alpha)));
    return static_cast<int>(x < 0 ? -far : far);
  };
  auto ids = at::full({N, N}, 49, at::TensorOptions().dtype(at::kInt));
  auto a = ids.accessor<int32_t, 2>();
  for (int i = 1; i < N; ++i)
    for (int j = 1; j < N; ++j) {
      const int dr = (i - 1) / side - (j - 1) / side, dc = (i - 1) % side - (j - 1) % side;
      a[i][j] = (idx(dr) + 3) * 7 + idx(dc) + 3;
    }
  return ids;
}

void check(at::ScalarType dt, const Shape& s) {
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto q = at::randn({s.S, s.N, s.H, s.d}, f64), k = at::randn({s.S, s.N, s.H, s.d}, f64),
       v = at::randn({s.S, s.N, s.H, s.d}, f64);
  const std::string mode = s.mode;
  std::optional<at::Tensor> rpe, ids;
  if (mode != "none") {
    ids = s.lomar_map ? lomar_bucket_map(s.N)
                      : at::randint(0, s.NB, {s.N, s.N}, at::TensorOptions().dtype(at::kInt));
    rpe = mode == "bias" ? at::randn({s.H, s.NB}, f64)
          : s.per_head   ? 0.5 * at::randn({s.H, s.NB, s.d}, f64)
                         : 0.5 * at::randn({s.NB, s.d}, f64);
  }
  auto go = at::randn({s.S, s.N, s.H, s.d}, f64);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  // The inputs rounded to dt; the fp64 reference takes the same rounded values.
  at::Tensor ql, kl, vl;
  if (s.strided) {
    auto qkv = at::stack({q, k, v}, 2).to(dt);
    ql = qkv.select(2, 0), kl = qkv.select(2, 1), vl = qkv.select(2, 2);
  } else {
    ql = q.to(dt), kl = k.to(dt), vl = v.to(dt);
  }
  std::optional<at::Tensor> rl = rpe ? std::optional<at::Tensor>(rpe->to(dt)) : std::nullopt;
  const auto gl = go.to(dt);
  auto up = [](const std::optional<at::Tensor>& t) {
    return t ? std::optional<at::Tensor>(t->to(at::kDouble)) : std::nullopt;
  };
  const auto q64 = ql.to(at::kDouble), k64 = kl.to(at::kDouble), v64 = vl.to(at::kDouble),
             g64 = gl.to(at::kDouble);
  auto [o_ref, lse_ref, p_ref] = window_attention_fwd_cpu(q64, k64, v64, up(rl), ids, mode, scale);
  auto g_ref = window_attention_bwd_cpu(g64, q64, k64, v64, o_ref, lse_ref, p_ref, up(rl), ids,
                                        mode, scale);
  auto [o_cpu, lse_cpu, p_cpu] = window_attention_fwd_cpu(ql, kl, vl, rl, ids, mode, scale);
  auto g_cpu = window_attention_bwd_cpu(gl, ql, kl, vl, o_cpu, lse_cpu, p_cpu, rl, ids, mode, scale);
  // The shapes the counters' report needs for the floors (counting builds only).
  [[maybe_unused]] auto mark = [&](const char* pass) {
    EMU_COUNTING(emu::count::mark(
        std::string("{\"pass\": \"") + pass + "\", \"dtype\": \"" + c10::toString(dt) +
        "\", \"element_size\": " + std::to_string(c10::elementSize(dt)) + ", \"S\": " + std::to_string(s.S) +
        ", \"N\": " + std::to_string(s.N) + ", \"H\": " + std::to_string(s.H) + ", \"d\": " +
        std::to_string(s.d) + ", \"NB\": " + std::to_string(mode == "none" ? 0 : s.NB) + ", \"mode\": \"" +
        mode + "\", \"per_head\": " + (s.per_head ? "true" : "false") + ", \"strided\": " +
        (s.strided ? "true" : "false") + ", \"sms\": " +
        std::to_string(emu::device().props.multiProcessorCount) + "}");)
  };
  mark("forward");
  auto [o, lse, p] = window_attention_fwd_cuda(ql, kl, vl, rl, ids, mode, scale);
  mark("backward");
  auto g = window_attention_bwd_cuda(gl, ql, kl, vl, o, lse, p, rl, ids, mode, scale);
  mark("backward again");

  const std::string t = std::string(c10::toString(dt)) + " ";
  const auto acc = dt == at::kDouble ? at::kDouble : at::kFloat;
  emu_check::close(t + "out", o, o_cpu, o_ref, dt);
  emu_check::close(t + "lse", lse, lse_cpu, lse_ref, acc);
  emu_check::close(t + "dq", std::get<0>(g), std::get<0>(g_cpu), std::get<0>(g_ref), dt);
  emu_check::close(t + "dk", std::get<1>(g), std::get<1>(g_cpu), std::get<1>(g_ref), dt);
  emu_check::close(t + "dv", std::get<2>(g), std::get<2>(g_cpu), std::get<2>(g_ref), dt);
  if (mode != "none") {
    emu_check::close(t + "drpe", std::get<3>(g), std::get<3>(g_cpu), std::get<3>(g_ref), dt);
    auto again = window_attention_bwd_cuda(gl, ql, kl, vl, o, lse, p, rl, ids, mode, scale);
    emu_check::same(t + "drpe repeat", std::get<3>(again), std::get<3>(g));
  }
}

const at::ScalarType kLowp[] = {at::kBFloat16, at::kHalf};

Case attention(std::string name, bool quick, Shape s, std::vector<at::ScalarType> dts = {}) {
  if (dts.empty()) dts.assign(std::begin(emu_check::kAllTypes), std::end(emu_check::kAllTypes));
  return {name, quick, [=] {
            for (auto dt : dts) check(dt, s);
          }};
}

// The forward and dk/dv kernels' tile runs are planned from the SM count (8 blocks
// per SM, runs of up to 8 tiles); cases that check the runs or model the pretraining
// launch shape set the emulated card's SMs to reach the runs a GPU's shape gets.
Case with_sms(Case c, int sms) {
  auto run = c.run;
  c.run = [run, sms] {
    const int before = emu::device().props.multiProcessorCount;
    emu::device().props.multiProcessorCount = sms;
    run();
    emu::device().props.multiProcessorCount = before;
  };
  return c;
}

// One SM: S = 32, H = 2 gives 64 tiles, runs of 8 as at the pretraining shape on a
// GPU (S = 1024, H = 12, 132 SMs), and 4 dq blocks of 16 tiles each.
Case model(std::string name, Shape s, std::vector<at::ScalarType> dts) {
  Case c = with_sms(attention(std::move(name), false, s, std::move(dts)), 1);
  c.model = true;
  return c;
}

// The dq kernel's shared memory for a bf16 contextual table of NB buckets, d = 32 and
// N <= 64 (the fused backward, with its d(rpe) partial of NB x d), by its own sizing
// code: the limits cases below are chosen by it and say so if it moves.
size_t dq_smem_bf16(int NB) {
  return BwdSmem<c10::BFloat16, 32, 64>(nullptr, NB, kContextual, true, true, int64_t{NB} * 32).bytes;
}

// NB = 100: the backward kernels need more than 48 KB (the cudaFuncSetAttribute opt-in)
// and fit an A100.
void opt_in_case() {
  const size_t bytes = dq_smem_bf16(100);
  emu_check::verdict(bytes > 48 * 1024 && bytes <= 163 * 1024,
                     "dq kernel shared memory " + std::to_string(bytes) + " in (48 KB, 163 KB]");
  check(at::kBFloat16, {2, 50, 1, 32, "contextual", false, false, 100});
}

// NB = 400: the dq kernel fits an H100's 227 KB but not an A100's 163 KB.
void h100_only_case() {
  const size_t bytes = dq_smem_bf16(400);
  emu_check::verdict(bytes > 163 * 1024 && bytes <= 227 * 1024,
                     "dq kernel shared memory " + std::to_string(bytes) + " in (163 KB, 227 KB]");
  const Shape s{1, 50, 1, 32, "contextual", false, false, 400};
  emu::set_arch(80);
  emu_check::expect_error("sm_80 backward", [&] { check(at::kBFloat16, s); },
                          "more than this GPU's 166912 per block");
  emu::set_arch(90);
  check(at::kBFloat16, s);
  emu::set_arch(emu::env_int("LOMAR_EMU_ARCH", 80));
}

}  // namespace

int main(int argc, char** argv) {
  using at::kBFloat16, at::kHalf, at::kFloat, at::kDouble;
  // (S, N, H, d, mode, per_head, strided, NB). Tiles: 64 rows (fp16/bf16), 32 (fp32),
  // 16 (fp64); sequences with N <= rows are packed several to a tile. The quick set
  // covers each dtype packed and with a tail tile, every mode and head-dim padding.
  return emu_check::main(argc, argv, {
      // The C++ tests' shapes.
      attention("S=2 N=7 H=3 d=8 contextual per-head", true, {2, 7, 3, 8, "contextual", true, false, 9}),
      attention("S=2 N=7 H=3 d=8 contextual", false, {2, 7, 3, 8, "contextual", false, false, 9}),
      attention("S=2 N=7 H=3 d=8 bias", false, {2, 7, 3, 8, "bias", false, false, 9}),
      attention("S=2 N=50 H=2 d=16 none", false, {2, 50, 2, 16, "none"}),
      attention("one element", true, {1, 1, 1, 1, "contextual", false, false, 1}),
      // Tails of each dtype's tile (N = rows + 1); head dims 24 (padded to 32), 64,
      // 80, 128; strided (qkv-packed) inputs.
      attention("tails fp64: S=2 N=17 H=2 d=24 bias", true, {2, 17, 2, 24, "bias"}, {kDouble}),
      // dq blocks that take several tiles (10 tiles, 8 blocks), in fp64's small tiles.
      attention("dq blocks loop: S=5 N=17 H=1 d=24 contextual", true,
                {5, 17, 1, 24, "contextual", false, false, 20}, {kDouble}),
      attention("tails fp32: S=2 N=33 H=1 d=128 contextual strided", true,
                {2, 33, 1, 128, "contextual", false, true, 40}, {kFloat}),
      attention("tails fp16/bf16: S=1 N=65 H=1 d=80 none", true, {1, 65, 1, 80, "none"}, {kBFloat16, kHalf}),
      attention("S=2 N=50 H=2 d=64 bias strided", true, {2, 50, 2, 64, "bias", false, true}, {kBFloat16}),
      attention("S=2 N=50 H=2 d=64 bias strided (all dtypes)", false, {2, 50, 2, 64, "bias", false, true}),
      attention("tails: S=1 N=65 H=1 d=80 none", false, {1, 65, 1, 80, "none"}),
      attention("tails: S=2 N=33 H=1 d=128 contextual strided", false,
                {2, 33, 1, 128, "contextual", false, true, 40}),
      attention("tails: S=3 N=17 H=1 d=24 bias", false, {3, 17, 1, 24, "bias"}),
      attention("S=3 N=2 H=1 d=32 contextual", false, {3, 2, 1, 32, "contextual"}),
      attention("S=2 N=17 H=2 d=64 contextual per-head", false, {2, 17, 2, 64, "contextual", true}),
      attention("S=1 N=100 H=2 d=128 contextual strided", false, {1, 100, 2, 128, "contextual", false, true}),
      attention("S=3 N=33 H=1 d=24 contextual", false, {3, 33, 1, 24, "contextual"}),
      // Blocks that loop over tiles (d(rpe) partials), several table chunks, 4 row
      // tiles with a tail of 5, fewer buckets than a warp.
      attention("S=20 N=50 H=1 d=64 contextual NB=100", false,
                {20, 50, 1, 64, "contextual", false, false, 100}, {kBFloat16, kFloat}),
      attention("S=40 N=17 H=2 d=32 bias", false, {40, 17, 2, 32, "bias"}, {kBFloat16, kFloat}),
      attention("S=5 N=32 H=2 d=64 contextual per-head strided NB=70", false,
                {5, 32, 2, 64, "contextual", true, true, 70}, {kBFloat16, kFloat}),
      // Tile runs (one SM): one sequence per tile, 19 tiles per head in runs of 4 and
      // a last run of 3, per-head tables; two row tiles per sequence (N = 50 in
      // fp32's 32 rows), 26 tiles per head in runs of 6 and a last run of 2.
      with_sms(attention("runs: S=19 N=50 H=2 d=32 contextual per-head", true,
                         {19, 50, 2, 32, "contextual", true, false, 50}, {kBFloat16}), 1),
      with_sms(attention("runs: S=13 N=50 H=2 d=32 bias", false, {13, 50, 2, 32, "bias"},
                         {kFloat}), 1),
      attention("S=1 N=197 H=1 d=64 contextual", false, {1, 197, 1, 64, "contextual"},
                {kBFloat16, kFloat}),
      attention("S=2 N=64 H=1 d=80 bias NB=3", false, {2, 64, 1, 80, "bias", false, false, 3},
                {kBFloat16, kFloat}),
      {"shared memory over 48 KB (opt-in)", true, opt_in_case},
      {"shared memory for sm_90 only", false, h100_only_case},
      // The traffic counters' pretraining-like shape (counting builds only): LoMaR's
      // N = 50 (four 7 x 7 windows and cls), d = 64, the shared contextual table of
      // NB = 50 buckets; S and H small enough for the emulation.
      model("model: S=32 N=50 H=2 d=64 contextual NB=50", {32, 50, 2, 64, "contextual", false, false, 50},
            {kBFloat16, kFloat}),
      // The same on LoMaR's own bucket map (one 7 x 7 window and cls), whose structure
      // sets the gathers' bank conflicts (random ids are the worst case).
      model("model on LoMaR's map: S=32 N=50 H=2 d=64 contextual NB=50",
            {32, 50, 2, 64, "contextual", false, false, 50, true}, {kBFloat16}),
  });
}
