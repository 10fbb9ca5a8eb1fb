// window_attention on CUDA: softmax(scale * q k^T + relative term) v per
// (sequence, head), flash-style (the N x N logits never reach device memory),
// forward and backward. The op contract is csrc/cpu/window_attention.cpp's.
//
// Tiles. A tile is ROWS query (or key) rows of one head: ROWS = 64 for
// fp16/bf16, 32 for fp32, 16 for fp64 (smaller tiles keep the wider types'
// shared memory in bounds). When N <= ROWS, pack = ROWS / N whole sequences
// (same head, consecutive s) share one tile, rows of different sequences masked
// from each other: N = 50 fills 50 of 64 rows, N = 17 fills 51. When N > ROWS a
// sequence is cut into ceil(N / ROWS) row tiles and the key loop runs over as
// many key tiles (online softmax), so any N is tiled. Tiles are numbered
// head-major (tile = h * tiles_per_head + u) so that all sequences of a tile,
// and all tiles of a block group below, share one head.
//
// Warps and fragments. Each warp owns 16 rows of a tile; every product is a warp
// GEMM whose 16 x 8n accumulator has mma.sync.m16n8k16's layout (lane = 4 g + t
// holds rows g and g + 8, columns 2t and 2t + 1 of each 8-column slice), so the
// softmax and the gradient formulas are written once for both ways of computing
// it: tensor cores (inline PTX mma.sync m16n8k16, fp32 accumulation) for
// fp16/bf16, CUDA-core FMAs with the same layout for fp32 (no TF32) and fp64.
// Operands come from shared memory (rows padded so that a warp's pair loads hit
// 32 different banks). The head dim d is padded with zeros to DP in {32, 64, 80,
// 128} (a template parameter).
//
// Relative term. The bucket ids of the (query tile, key tile) pair are staged in
// shared memory as 8-bit ids (16-bit when NB >= 255), all ones where the pair is
// masked (padding rows, other sequences), so the mask costs nothing extra; rows of
// ROWS + 8 ids put a warp's fragment reads (a pair of ids as one load) in distinct
// banks. Contextual: the head's table R
// stays in shared memory for a block's run of tiles (stage_table); per query tile
// qR = q R^T (the rows its sequences fill x NB, fp32) is computed once into shared
// memory from it, and each logit adds qR[i][bucket(i, j)]. Bias: the head's NB biases
// are staged. NB is bounded by shared memory (an error says so).
//
// Runs. The forward and dk/dv kernels give each block a run of consecutive tiles
// of one head (plan_runs: up to 8, keeping 8 blocks per SM): the head's bias, and
// when N <= ROWS the one bucket tile all packed tiles share, are staged once per
// run instead of once per tile.
//
// Forward (per tile of the run): S = scale Q K^T + term per key tile, running
// max/sum per row (FlashAttention-2), P into O += P V; out = O / l, lse = m + log l.
// On the tensor cores P stays in registers: the accumulator of two 8-column
// slices of S is, element for element, the A fragment of a 16-wide k step
// (FlashAttention-2's trick), so P is rounded to q's dtype and packed in place;
// the FMA path (fp32, fp64) passes P through shared memory.
//
// Backward, N <= ROWS (LoMaR's windows): one kernel, the dq kernel below, since a tile
// holds its sequences' every query and every key. Per tile: P and dP = dO V^T with
// the warps on query rows, D = rowsum(P * dP) in registers (out is not read),
// dS = P (dP - D), dQ = scale dS K + dT R and dT as below; then P and dS go to
// shared memory (V's and K's buffers, dead by then) and the warps take key rows for
// dV = P^T dO and dK = scale dS^T Q, read down the staged columns. q, k, v and dO
// are read once, dq, dk and dv written once, no atomics.
// Backward, N > ROWS (FlashAttention-2): D = rowsum(dO * O) by a small kernel; then
//  - dK/dV: per key tile of the block's run, looping over the query tiles: P^T recomputed
//    from lse, dV += P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - D),
//    dK += scale dS^T Q (the relative term does not depend on k); P^T and dS^T
//    are A operands straight from registers on the tensor cores, as above;
//  - dQ and d(rpe): the dq kernel, looping over the key tiles.
// The dq kernel (both cases) runs a fixed grid of (blocks, table groups); block x of
// group g takes the group's tiles x, x + blocks, ... (a fixed assignment). Per tile:
// dS as above, dQ += scale dS K, and each row's dS is added into dT[i][bucket(i, j)]
// in a fixed order, no atomics: the 4 lanes holding a row's fragments add their
// columns in turn (on the tensor cores dS stays in registers for the dS K product; the
// FMA path stages it). Then dQ += dT R (contextual, fp32 FMAs) and the block's fp32
// partial of d(rpe) += dT^T Q (contextual) or the column sums of dT (bias), summed in
// shared memory over the block's tiles and written once; a last kernel adds the
// partials of each group in block order. The grid depends only on the device's SM
// count: d(rpe) is bitwise repeatable on a given GPU. Table groups: the heads for
// per-head tables and bias, one group for a shared table.
// q, k, v, grad_out and out are read through their (S, N, H) strides (the head
// dim must be contiguous, else it is made so): qkvpacked views need no copy.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

enum Mode : int { kNone = 0, kBias = 1, kContextual = 2 };

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename T>
constexpr bool kTensorCores = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;
// Row padding of shared tiles, in elements: 16 bytes for 16-bit types (pair loads
// of 8 rows then land in distinct banks), one element otherwise.
template <typename T> constexpr int kPad = sizeof(T) == 2 ? 8 : 1;
template <typename T> constexpr int kRows = sizeof(T) == 8 ? 16 : sizeof(T) == 4 ? 32 : 64;
// Staged bucket ids: 8 bits when NB < 255 (id_bytes), else 16, all ones where the
// (query, key) pair is masked; read back as kNoBucket. Rows of ROWS + 8 ids (18, 10, 6
// words for ROWS = 64, 32, 16 when 8-bit; 36, 20, 12 when 16-bit): a warp's reads of
// (g, 2t..2t+1) for g < 8, t < 4 then fall in distinct banks (int32 ids in rows of
// ROWS + 1 had 4-way conflicts and four times the bytes). 8-bit ids halve the tile
// (4.6 KB at ROWS = 64), which is what lets the forward keep the head's table resident.
constexpr int kNoBucket = 0xFFFF;
constexpr int kNoBucket8 = 0xFF;
template <int ROWS> constexpr int kIdsLd = ROWS + 8;
__host__ __device__ inline int id_bytes(int NB) { return NB < kNoBucket8 ? 1 : 2; }

// (S, N, H) strides of a (S, N, H, d) tensor whose last dim is contiguous;
// vec: every row starts 16-byte aligned and d fills whole 16-byte chunks.
struct Strides {
  int64_t s, n, h;
  bool vec;
};

struct Params {
  const void *q, *k, *v, *out, *dout;
  Strides q_st, k_st, v_st, out_st, dout_st;
  void *o, *dq, *dk, *dv;       // outputs, contiguous (S, N, H, d)
  void *lse, *delta;            // (S, H, N) in acc type
  const void* rpe;              // contiguous table or nullptr
  const int32_t* ids;           // (N, N) contiguous or nullptr
  void* partial;                // d(rpe) partials (acc type)
  int64_t S, N, H;
  int d, NB, mode, per_head;
  // Row strides of qR and dT, table_width(NB) and dt_width(NB), computed on the host:
  // read from the parameter bank they hold no register (computed in the kernels,
  // ptxas spilled 4 bytes in seven dk/dv instantiations on sm_80).
  int qr_ld, dt_ld;
  // dT's warp blocks (rows 16 w .. 16 w + 15) start dt_block elements apart: 16 dt_ld,
  // or 16 qr_ld when dT shares qR's shared memory (fused_backward, contextual).
  int dt_block;
  double scale;
  int pack;                     // sequences per tile (N <= ROWS), else 1
  int row_tiles;                // row tiles per sequence (1 when packed)
  int64_t tiles_per_head, num_tiles;
  // Forward and dk/dv: each block takes a run of up to run_tiles consecutive tiles of
  // one head (runs_per_head runs per head), so what all its tiles share (the bias,
  // and when N <= ROWS the bucket tile) is staged once per run.
  int64_t run_tiles, runs_per_head;
  int groups;                   // table groups of the dq kernel (1 or H)
  // N <= ROWS: a tile holds whole sequences, every query and every key, so the dq
  // kernel computes the whole backward: D, dQ, dK, dV and d(rpe) (no delta or dk/dv
  // kernel: q, k, v and dO are read once, out not at all).
  int fused_backward;
  int narrow_ids;               // id_bytes(NB) == 1: staged bucket ids are 8-bit
  int qr_rows;                  // the rows of a tile its sequences fill: pack N, or ROWS
  int64_t group_width;          // d(rpe) elements per group
};

// ---- small device helpers ---------------------------------------------------

template <typename To, typename From>
__device__ __forceinline__ To to(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else if constexpr (sizeof(To) == 2 || sizeof(From) == 2) {
    return static_cast<To>(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }

// Sum or max over the 4 lanes of a quad (the lanes that share a fragment row).
template <typename T>
__device__ __forceinline__ T quad_sum(T v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
template <typename T>
__device__ __forceinline__ T quad_max(T v) {
  v = fmax(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmax(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// A shared-memory matrix seen as M(x, y): row-major p[x * ld + y] or
// column-major p[y * ld + x]. Pairs (y, y + 1) are contiguous in row-major views.
template <typename T, bool kRowMajor>
struct View {
  T* p;
  int ld;
  __device__ __forceinline__ T& at(int x, int y) const {
    return kRowMajor ? p[x * ld + y] : p[y * ld + x];
  }
};
template <typename T> __device__ View<T, true> rows_of(T* p, int ld) { return {p, ld}; }
template <typename T> __device__ View<T, false> cols_of(T* p, int ld) { return {p, ld}; }

// M(x, y), M(x, y + 1) as scalar_t bits in one register (lower half first).
template <typename scalar_t, typename T, bool R>
__device__ __forceinline__ uint32_t pair_bits(const View<T, R>& m, int x, int y) {
  if constexpr (R && std::is_same_v<std::remove_const_t<T>, scalar_t>) {
    return *reinterpret_cast<const uint32_t*>(&m.at(x, y));
  } else {
    const scalar_t lo = to<scalar_t>(m.at(x, y)), hi = to<scalar_t>(m.at(x, y + 1));
    return static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(hi.x) << 16);
  }
}

template <typename scalar_t>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#endif
}

// Ampere's asynchronous copies (cp.async): 16 bytes from global to shared memory
// without a register round trip, in flight while the thread goes on; a group is
// what was issued since the last commit, and wait<N> blocks until at most N groups
// are pending. Shared memory is written only when the copy completes: a thread
// waits for its own copies, then a barrier shows them to the block (tiles_landed).
__device__ __forceinline__ void cp_async_16(void* dst_shared, const void* src_global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src_global) : "memory");
#else
  *reinterpret_cast<uint4*>(dst_shared) = *reinterpret_cast<const uint4*>(src_global);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// Every tile this thread loaded has landed, then the block barrier: after it every
// thread sees every tile loaded before it.
__device__ __forceinline__ void tiles_landed() {
  cp_async_wait<0>();
  __syncthreads();
}

// acc (16 x 8 NT) += A (16 x K) B (K x 8 NT), for the calling warp: A(r, k) read
// as a.at(r, k), B(k, n) as bt.at(n, k). kTC: tensor cores (K a multiple of 16,
// operands rounded to scalar_t); else FMAs in acc_t.
template <typename scalar_t, bool kTC, int NT, typename acc_t, typename TA, bool RA, typename TB,
          bool RB>
__device__ __forceinline__ void warp_gemm(acc_t (&acc)[NT][4], const View<TA, RA>& a,
                                          const View<TB, RB>& bt, int K) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if constexpr (kTC) {
    for (int k0 = 0; k0 < K; k0 += 16) {
      const uint32_t a0 = pair_bits<scalar_t>(a, g, k0 + 2 * t);
      const uint32_t a1 = pair_bits<scalar_t>(a, g + 8, k0 + 2 * t);
      const uint32_t a2 = pair_bits<scalar_t>(a, g, k0 + 2 * t + 8);
      const uint32_t a3 = pair_bits<scalar_t>(a, g + 8, k0 + 2 * t + 8);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const uint32_t b0 = pair_bits<scalar_t>(bt, 8 * n + g, k0 + 2 * t);
        const uint32_t b1 = pair_bits<scalar_t>(bt, 8 * n + g, k0 + 2 * t + 8);
        mma_16816<scalar_t>(acc[n], a0, a1, a2, a3, b0, b1);
      }
    }
  } else {
    for (int k = 0; k < K; ++k) {
      const acc_t lo = to<acc_t>(a.at(g, k)), hi = to<acc_t>(a.at(g + 8, k));
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const acc_t b0 = to<acc_t>(bt.at(8 * n + 2 * t, k));
        const acc_t b1 = to<acc_t>(bt.at(8 * n + 2 * t + 1, k));
        acc[n][0] += lo * b0;
        acc[n][1] += lo * b1;
        acc[n][2] += hi * b0;
        acc[n][3] += hi * b1;
      }
    }
  }
}

// Fragment element e of slice n: its row within the warp's 16 and its column.
__device__ __forceinline__ int frag_row(int e) { return ((threadIdx.x & 31) >> 2) + 8 * (e >> 1); }
__device__ __forceinline__ int frag_col(int n, int e) { return 8 * n + 2 * (threadIdx.x & 3) + (e & 1); }

template <typename acc_t, int NT>
__device__ __forceinline__ void zero(acc_t (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = acc_t(0);
}

// The staged buckets of (r, c) and (r, c + 1), c even, in one load (16-bit when the
// ids are 8-bit, else 32-bit), as two 16-bit halves (kNoBucket where masked): the
// lower half is (r, c).
template <int ROWS>
__device__ __forceinline__ uint32_t bucket_pair(const Params& p, const unsigned char* ids, int r, int c) {
  if (p.narrow_ids) {
    const uint32_t two = *reinterpret_cast<const uint16_t*>(ids + r * kIdsLd<ROWS> + c);
    const uint32_t lo = two & 0xFFu, hi = two >> 8;
    return (lo == kNoBucket8 ? kNoBucket : lo) | ((hi == kNoBucket8 ? kNoBucket : hi) << 16);
  }
  return *reinterpret_cast<const uint32_t*>(ids + 2 * (r * kIdsLd<ROWS> + c));
}
// The staged bucket of (r, c) alone.
template <int ROWS>
__device__ __forceinline__ int bucket_at(const Params& p, const unsigned char* ids, int r, int c) {
  if (p.narrow_ids) {
    const int b = ids[r * kIdsLd<ROWS> + c];
    return b == kNoBucket8 ? kNoBucket : b;
  }
  return reinterpret_cast<const uint16_t*>(ids)[r * kIdsLd<ROWS> + c];
}
__device__ __forceinline__ int pair_half(uint32_t two, int x) {
  return x ? static_cast<int>(two >> 16) : static_cast<int>(two & 0xFFFFu);
}

// lo, hi rounded to scalar_t and packed as one register (lower half first).
template <typename scalar_t>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  return static_cast<uint32_t>(to<scalar_t>(lo).x) | (static_cast<uint32_t>(to<scalar_t>(hi).x) << 16);
}

// An accumulator (16 x 8 KT) rounded to scalar_t and packed as warp_gemm_a_regs's A.
template <typename scalar_t, int KT>
__device__ __forceinline__ void pack_fragments(uint32_t (&a)[KT][2], const float (&acc)[KT][4]) {
#pragma unroll
  for (int n = 0; n < KT; ++n)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) a[n][hh] = pack_pair<scalar_t>(acc[n][2 * hh], acc[n][2 * hh + 1]);
}

// acc (16 x 8 NT) += A (16 x 8 KT) B, A held in registers: a[n][hh] packs A's
// row g + 8 hh, columns 8 n + 2t and + 1 (the accumulator layout of an
// 8-column slice, rounded by pack_pair), so slices 2 kk and 2 kk + 1 are the
// A fragment of k step kk. B(k, n) read as bt.at(n, k). Tensor cores only.
template <typename scalar_t, int NT, int KT, typename TB, bool RB>
__device__ __forceinline__ void warp_gemm_a_regs(float (&acc)[NT][4], const uint32_t (&a)[KT][2],
                                                 const View<TB, RB>& bt) {
  static_assert(KT % 2 == 0, "k steps of 16");
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int kk = 0; kk < KT / 2; ++kk) {
    const int k0 = 16 * kk;
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const uint32_t b0 = pair_bits<scalar_t>(bt, 8 * n + g, k0 + 2 * t);
      const uint32_t b1 = pair_bits<scalar_t>(bt, 8 * n + g, k0 + 2 * t + 8);
      mma_16816<scalar_t>(acc[n], a[2 * kk][0], a[2 * kk][1], a[2 * kk + 1][0], a[2 * kk + 1][1],
                          b0, b1);
    }
  }
}

// acc (16 x 8 NT) += A B, A being the calling warp's accumulator fragments (16 x 8
// KT): on the tensor cores packed straight into A fragments; on the FMA path, whose
// GEMM reads whole rows of A that a lane does not hold, through the warp's 16 rows
// of `stage` (row stride ld, values rounded to T). B(k, n) read as bt.at(n, k).
template <typename scalar_t, int NT, int KT, typename acc_t, typename T, typename TB, bool RB>
__device__ __forceinline__ void warp_gemm_a_frags(acc_t (&acc)[NT][4], const acc_t (&a)[KT][4],
                                                  T* stage, int ld, const View<TB, RB>& bt) {
  if constexpr (kTensorCores<scalar_t>) {
    uint32_t packed[KT][2];
    pack_fragments<scalar_t>(packed, a);
    warp_gemm_a_regs<scalar_t, NT>(acc, packed, bt);
  } else {
    T* rows = stage + (threadIdx.x >> 5) * 16 * ld;
#pragma unroll
    for (int n = 0; n < KT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) rows[frag_row(e) * ld + frag_col(n, e)] = to<T>(a[n][e]);
    __syncwarp();
    warp_gemm<scalar_t, false, NT>(acc, rows_of(rows, ld), bt, 8 * KT);
  }
}

// Shared memory carved in 16-byte-aligned pieces; the host runs the same code
// (with a null base) to size the launch.
struct Carver {
  unsigned char* base;
  size_t used = 0;
  template <typename T>
  __host__ __device__ T* take(size_t count) {
    used = (used + 15) & ~size_t(15);
    T* p = reinterpret_cast<T*>(base + used);
    used += count * sizeof(T);
    return p;
  }
};

// ---- tiles ------------------------------------------------------------------

struct TileCoord {
  int h;
  int64_t s0;  // first sequence
  int m0;      // first row within the sequence
};

template <int ROWS>
__device__ TileCoord tile_coord(const Params& p, int64_t tile) {
  TileCoord c;
  c.h = static_cast<int>(tile / p.tiles_per_head);
  const int64_t u = tile - c.h * p.tiles_per_head;
  if (p.N <= ROWS) {
    c.s0 = u * p.pack;
    c.m0 = 0;
  } else {
    c.s0 = u / p.row_tiles;
    c.m0 = static_cast<int>(u - c.s0 * p.row_tiles) * ROWS;
  }
  return c;
}

// The tiles [first, end) of the forward / dk/dv block `block`: a run of one head.
struct TileRun {
  int64_t first, end;
};
__device__ __forceinline__ TileRun tile_run(const Params& p, int64_t block) {
  const int64_t h = block / p.runs_per_head, u0 = (block - h * p.runs_per_head) * p.run_tiles;
  const int64_t u1 = u0 + p.run_tiles < p.tiles_per_head ? u0 + p.run_tiles : p.tiles_per_head;
  return {h * p.tiles_per_head + u0, h * p.tiles_per_head + u1};
}

// Sequence (or -1 for padding) and position of each of a tile's ROWS rows.
template <int ROWS>
__device__ void tile_rows(const Params& p, int64_t s0, int m0, int* seq, int* pos) {
  for (int r = threadIdx.x; r < ROWS; r += blockDim.x) {
    int64_t s = s0;
    int64_t i = m0 + r;
    bool valid;
    if (p.N <= ROWS) {
      const int g = r / static_cast<int>(p.N);
      s = s0 + g;
      i = r - g * p.N;
      valid = g < p.pack && s < p.S;
    } else {
      valid = i < p.N;
    }
    seq[r] = valid ? static_cast<int>(s) : -1;
    pos[r] = static_cast<int>(i);
  }
}

// ROWS x DP tile of a (S, N, H, d) tensor into shared memory (row stride LD),
// zeros in padding rows and past d. 16-bit rows that are 16-byte aligned (st.vec)
// arrive by cp.async; the other paths store at once. Every call commits one group
// (empty on the other paths), so callers can count: cp_async_wait<1>() after loading
// K then V waits for K alone. Read nothing of it before tiles_landed (or such a wait
// and a barrier); compute in between.
template <typename scalar_t, int DP, int ROWS, int LD>
__device__ void load_tile(scalar_t* dst, const scalar_t* __restrict__ src, Strides st, int h,
                          const int* seq, const int* pos, int d) {
  if constexpr (sizeof(scalar_t) == 2) {  // 16-byte copies (shared rows are 16-byte aligned)
    constexpr int V = 8, CHUNKS = DP / V;
    if (st.vec) {
      for (int e = threadIdx.x; e < ROWS * CHUNKS; e += blockDim.x) {
        const int r = e / CHUNKS, c = (e - r * CHUNKS) * V;
        if (seq[r] >= 0 && c < d)
          cp_async_16(dst + r * LD + c, src + seq[r] * st.s + pos[r] * st.n + h * st.h + c);
        else
          *reinterpret_cast<uint4*>(dst + r * LD + c) = make_uint4(0, 0, 0, 0);
      }
      cp_async_commit();
      return;
    }
  }
  for (int e = threadIdx.x; e < ROWS * DP; e += blockDim.x) {
    const int r = e / DP, c = e - r * DP;
    scalar_t val = to<scalar_t>(0.f);
    if (seq[r] >= 0 && c < d) val = src[seq[r] * st.s + pos[r] * st.n + h * st.h + c];
    dst[r * LD + c] = val;
  }
  cp_async_commit();
}

// Buckets [b0, b0 + ROWS) of the table R (NB, d) as a ROWS x DP tile.
template <typename scalar_t, int DP, int ROWS, int LD>
__device__ void load_table_chunk(scalar_t* dst, const scalar_t* __restrict__ R, int b0, int NB,
                                 int d) {
  for (int e = threadIdx.x; e < ROWS * DP; e += blockDim.x) {
    const int r = e / DP, c = e - r * DP;
    scalar_t val = to<scalar_t>(0.f);
    if (b0 + r < NB && c < d) val = R[static_cast<int64_t>(b0 + r) * d + c];
    dst[r * LD + c] = val;
  }
}

// ids_s[r][c]: the bucket of (query row r, key row c), kNoBucket where masked.
template <int ROWS>
__device__ void load_buckets(const Params& p, const int* qseq, const int* qpos, const int* kseq,
                             const int* kpos, unsigned char* ids_s) {
  for (int e = threadIdx.x; e < ROWS * ROWS; e += blockDim.x) {
    const int r = e / ROWS, c = e - r * ROWS;
    int b = kNoBucket;
    if (qseq[r] >= 0 && qseq[r] == kseq[c]) {
      b = 0;
      if (p.mode != kNone) {
        b = p.ids[static_cast<int64_t>(qpos[r]) * p.N + kpos[c]];
        CUDA_KERNEL_ASSERT(b >= 0 && b < p.NB);
      }
    }
    if (p.narrow_ids)
      ids_s[r * kIdsLd<ROWS> + c] = static_cast<unsigned char>(b == kNoBucket ? kNoBucket8 : b);
    else
      reinterpret_cast<uint16_t*>(ids_s)[r * kIdsLd<ROWS> + c] = static_cast<uint16_t>(b);
  }
}

// N <= ROWS: every tile packs whole sequences at the same rows, so one bucket tile,
// staged from the first tile's rows, serves all of a block's tiles: a tile's missing
// sequences are other slots, masked for its present rows, and its missing rows are
// never stored (forward) or have lse = +inf, so P = 0 (backward). The N x N bucket
// map is then read once per block, not once per tile. When N > ROWS it does nothing
// (the kernels load each key tile's buckets, `if (p.N > ROWS) load_buckets`). The row
// arrays are scratch: the barrier at the end lets the tiles' rows replace them.
template <int ROWS>
__device__ void stage_shared_buckets(const Params& p, int* qseq, int* qpos, int* kseq, int* kpos,
                                     unsigned char* ids) {
  if (p.N > ROWS) return;
  tile_rows<ROWS>(p, 0, 0, qseq, qpos);
  tile_rows<ROWS>(p, 0, 0, kseq, kpos);
  __syncthreads();
  load_buckets<ROWS>(p, qseq, qpos, kseq, kpos, ids);
  __syncthreads();  // the tiles' rows replace the scratch rows next
}

// The dT row stride (dq kernel): NB made odd. dT is read down its columns (the
// dT R product: rows g, g + 8 of a column per lane; the d(rpe) partial) and added
// into by one lane per row: an odd stride puts 32 consecutive rows of a column in
// 32 banks (the qR stride would give the product 2-way conflicts).
__host__ __device__ inline int dt_width(int NB) { return NB | 1; }

// p[0], p[1] = lo, hi in one store (p aligned to the pair: table_width is even).
__device__ __forceinline__ void store_pair(float* p, float lo, float hi) {
  *reinterpret_cast<float2*>(p) = make_float2(lo, hi);
}
__device__ __forceinline__ void store_pair(double* p, double lo, double hi) {
  *reinterpret_cast<double2*>(p) = make_double2(lo, hi);
}

// The head's table R (NB, d) as table_rows(NB) x DP, zeros past NB and d (row stride LD).
template <int ROWS> __host__ __device__ inline int table_rows(int NB) { return (NB + ROWS - 1) / ROWS * ROWS; }
template <typename scalar_t, int DP, int ROWS, int LD>
__device__ void stage_table(const Params& p, int h, scalar_t* Rs) {
  const scalar_t* R =
      static_cast<const scalar_t*>(p.rpe) + (p.per_head ? static_cast<int64_t>(h) * p.NB * p.d : 0);
  for (int b0 = 0; b0 < p.NB; b0 += ROWS) load_table_chunk<scalar_t, DP, ROWS, LD>(Rs + b0 * LD, R, b0, p.NB, p.d);
}

// qR[r][b] = Q_r . R[b] for the tile's rows r < p.qr_rows (the rows its sequences
// fill; no other row's qR is read), R resident in shared memory (stage_table's
// layout). Each warp writes its own rows; the barrier at the end shows them to the
// warp's lanes (and orders the next stage).
template <typename scalar_t, int DP, int ROWS, typename acc_t>
__device__ void contextual_table(const Params& p, const scalar_t* Qs, const scalar_t* Rs, acc_t* qR,
                                 int ldr) {
  constexpr int LD = DP + kPad<scalar_t>;
  const int warp = threadIdx.x >> 5;
  for (int b0 = 0; b0 < p.NB; b0 += ROWS) {
    acc_t acc[ROWS / 8][4];
    zero(acc);
    warp_gemm<scalar_t, kTensorCores<scalar_t>, ROWS / 8>(acc, rows_of(Qs + warp * 16 * LD, LD),
                                                          rows_of(Rs + b0 * LD, LD), DP);
    // Columns b < NB only (the row stride leaves no room for the chunk's padding),
    // each fragment pair as one 8-byte (fp32) or 16-byte (fp64) store.
    // Rows past p.qr_rows store nothing: their column bound is b0.
    const int r_lo = warp * 16 + frag_row(0);
    const int end[2] = {r_lo < p.qr_rows ? p.NB : b0, r_lo + 8 < p.qr_rows ? p.NB : b0};
#pragma unroll
    for (int n = 0; n < ROWS / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const int b = b0 + frag_col(n, e);
        if (b < end[e >> 1]) store_pair(qR + (r_lo + 8 * (e >> 1)) * ldr + b, acc[n][e], acc[n][e + 1]);
      }
  }
  __syncthreads();
}

template <typename acc_t>
__device__ __forceinline__ acc_t relative_term(const Params& p, const acc_t* qR, int ldr,
                                               const acc_t* bias, int r, int b) {
  if (p.mode == kContextual) return qR[r * ldr + b];
  if (p.mode == kBias) return bias[b];
  return acc_t(0);
}

// The qR row stride in elements: the first even number above dt_width(NB) (pairs
// are stored whole; a row of dT then fits in a row of qR, which the fused backward
// needs, dT sharing qR's memory), then rounded to 8 mod 16. A half-warp's 8-byte pair stores (fp32: rows g < 4,
// columns 2t, 2t + 1) then hit words {0, 8, 16, 24} + 2t + {0, 1} mod 32, all 32
// banks, and a quarter-warp's 16-byte ones (fp64) likewise; rows padded to the next
// chunk of ROWS plus one (the stride before) had 4-way conflicts and took more room
// (NB = 50: 56 instead of 65).
__host__ __device__ inline int table_width(int NB) {
  const int even = dt_width(NB) + 1;
  return even + (24 - even % 16) % 16;
}


// ---- shared-memory layouts (device carving and host sizing in one place) ------

template <typename scalar_t, int DP, int ROWS>
struct FwdSmem {
  using acc_t = typename AccType<scalar_t>::type;
  static constexpr int LD = DP + kPad<scalar_t>, LDP = ROWS + kPad<acc_t>;
  scalar_t *Qs, *Ks, *Vs;
  acc_t* Ps;  // FMA path only: P for the P V product (the tensor cores keep it in registers)
  unsigned char* ids;  // bucket ids, id_bytes(NB) each
  int *qseq, *qpos, *kseq, *kpos;
  scalar_t* Rs;  // the head's table, resident for the block's run (contextual)
  acc_t *qR, *bias;
  size_t bytes;
  // qr_rows: the rows of a tile its sequences fill (p.qr_rows), the rows of qR kept.
  __host__ __device__ FwdSmem(unsigned char* base, int NB, int mode, int qr_rows) {
    Carver c{base};
    Qs = c.take<scalar_t>(ROWS * LD);
    Ks = c.take<scalar_t>(ROWS * LD);
    Vs = c.take<scalar_t>(ROWS * LD);
    Ps = c.take<acc_t>(kTensorCores<scalar_t> ? 0 : ROWS * LDP);
    ids = c.take<unsigned char>(ROWS * kIdsLd<ROWS> * id_bytes(NB));
    qseq = c.take<int>(ROWS);
    qpos = c.take<int>(ROWS);
    kseq = c.take<int>(ROWS);
    kpos = c.take<int>(ROWS);
    Rs = c.take<scalar_t>(mode == kContextual ? table_rows<ROWS>(NB) * LD : 0);
    qR = c.take<acc_t>(mode == kContextual ? qr_rows * table_width(NB) : 0);
    bias = c.take<acc_t>(mode == kBias ? NB : 0);
    bytes = c.used;
  }
};

// Shared by both backward kernels (dT, the partial and the fused backward's tiles
// only used by the dq kernel). fused (p.fused_backward): V's buffer then stages P and,
// on the tensor cores, K's buffer dS (ROWS x LDQ each, for the products down their
// columns: dV = P^T dO, dK = dS^T Q), and dT shares qR's memory (each warp's rows of
// qR are dead when it adds into its rows of dT), and the block's d(rpe) partial (width =
// p.group_width elements) is summed in shared memory over its tiles (N > ROWS: in the
// global workspace, whose 12.8 KB more would cost the A100 a block per SM there).
template <typename scalar_t, int DP, int ROWS>
struct BwdSmem {
  using acc_t = typename AccType<scalar_t>::type;
  static constexpr int LD = DP + kPad<scalar_t>, LDP = ROWS + kPad<acc_t>, LDS = ROWS + 1,
                       LDQ = ROWS + kPad<scalar_t>;
  scalar_t *Qs, *dOs, *Ks, *Vs;
  acc_t* Ps;   // dk/dv kernel, FMA path: P^T then dS^T (the tensor cores keep them in registers)
  acc_t* dSs;  // dq kernel, FMA path: dS in acc type (the tensor cores keep it in registers)
  unsigned char* ids;  // bucket ids, id_bytes(NB) each
  int *qseq, *qpos, *kseq, *kpos;
  scalar_t* Rs;  // the head's table, resident for the block (contextual)
  acc_t *lse, *delta, *qR, *dT, *bias, *part;
  size_t bytes;
  __host__ __device__ BwdSmem(unsigned char* base, int NB, int mode, bool dq_kernel, bool fused,
                              int64_t width) {
    Carver c{base};
    const int kv = dq_kernel && fused && ROWS * LDQ > ROWS * LD ? ROWS * LDQ : ROWS * LD;
    Qs = c.take<scalar_t>(ROWS * LD);
    dOs = c.take<scalar_t>(ROWS * LD);
    Ks = c.take<scalar_t>(kv);
    Vs = c.take<scalar_t>(kv);
    Ps = c.take<acc_t>(dq_kernel || kTensorCores<scalar_t> ? 0 : ROWS * LDP);
    dSs = c.take<acc_t>(dq_kernel && !kTensorCores<scalar_t> ? ROWS * LDS : 0);
    ids = c.take<unsigned char>(ROWS * kIdsLd<ROWS> * id_bytes(NB));
    qseq = c.take<int>(ROWS);
    qpos = c.take<int>(ROWS);
    kseq = c.take<int>(ROWS);
    kpos = c.take<int>(ROWS);
    lse = c.take<acc_t>(ROWS);
    delta = c.take<acc_t>(dq_kernel && fused ? 0 : ROWS);
    part = c.take<acc_t>(dq_kernel && fused && mode != kNone ? width : 0);
    Rs = c.take<scalar_t>(mode == kContextual ? table_rows<ROWS>(NB) * LD : 0);
    qR = c.take<acc_t>(mode == kContextual ? ROWS * table_width(NB) : 0);
    const bool shared_dt = dq_kernel && fused && mode == kContextual;
    dT = shared_dt ? qR : c.take<acc_t>(dq_kernel && mode != kNone ? ROWS * dt_width(NB) : 0);
    bias = c.take<acc_t>(mode == kBias ? NB : 0);
    bytes = c.used;
  }
};

// Row r of the dq kernel's dT (see Params::dt_block).
template <typename acc_t>
__device__ __forceinline__ acc_t* dt_row(acc_t* dT, const Params& p, int r) {
  return dT + (r >> 4) * p.dt_block + (r & 15) * p.dt_ld;
}

// The calling warp's accumulator fragments (16 x 8 NT, rows row0...) into a shared
// tile (row stride ld) as scalar_t, each pair in one store (one 32-bit store when
// 16-bit); rounded as pack_fragments rounds the tensor cores' A operands.
template <typename scalar_t, int NT, typename acc_t>
__device__ __forceinline__ void stage_fragments(scalar_t* dst, int ld, int row0, const acc_t (&acc)[NT][4]) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      scalar_t* at = dst + (row0 + frag_row(e)) * ld + frag_col(n, e);
      if constexpr (sizeof(scalar_t) == 2) {
        *reinterpret_cast<uint32_t*>(at) = pack_pair<scalar_t>(acc[n][e], acc[n][e + 1]);
      } else {
        at[0] = to<scalar_t>(acc[n][e]);
        at[1] = to<scalar_t>(acc[n][e + 1]);
      }
    }
}

// lse and D of a query tile's rows; in padding rows lse = +inf and D = 0, so their
// P = exp(x - lse) is 0 even where the staged buckets do not mask them (the dq
// kernel's one bucket tile for all packed tiles). delta null: lse only (the dq
// kernel computes D itself when p.fused_backward).
template <int ROWS, typename acc_t>
__device__ void load_row_stats(const Params& p, int h, const int* seq, const int* pos,
                               acc_t* lse, acc_t* delta) {
  for (int r = threadIdx.x; r < ROWS; r += blockDim.x) {
    acc_t l = INFINITY, dl = 0;
    if (seq[r] >= 0) {
      const int64_t at = (static_cast<int64_t>(seq[r]) * p.H + h) * p.N + pos[r];
      l = static_cast<const acc_t*>(p.lse)[at];
      if (delta) dl = static_cast<const acc_t*>(p.delta)[at];
    }
    lse[r] = l;
    if (delta) delta[r] = dl;
  }
}

template <typename scalar_t, typename acc_t>
__device__ void stage_bias(const Params& p, int h, acc_t* bias) {
  if (p.mode != kBias) return;
  const scalar_t* rpe = static_cast<const scalar_t*>(p.rpe) + static_cast<int64_t>(h) * p.NB;
  for (int b = threadIdx.x; b < p.NB; b += blockDim.x) bias[b] = to<acc_t>(rpe[b]);
}

// Fragment rows of (S, N, H, d) output tensors, element (r, c) written for c < d:
// the calling warp's 16 rows (row0...) go through `stage` (a ROWS x DP shared tile,
// row stride LD, free for the warp's own rows) so that each row leaves as whole
// 16-byte stores (lanes on consecutive chunks) instead of one store per fragment
// element. The values are the same: each is rounded once from acc * mul.
template <typename scalar_t, int LD, int NT, typename acc_t>
__device__ void store_rows(scalar_t* dst, const Params& p, int h, int row0, const int* seq,
                           const int* pos, const acc_t (&acc)[NT][4], const acc_t (&mul)[2],
                           scalar_t* stage) {
  const int lane = threadIdx.x & 31;
  scalar_t* w = stage + row0 * LD;
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; e += 2) {
      const int r = frag_row(e), c = frag_col(n, e);
      const scalar_t lo = to<scalar_t>(acc[n][e] * mul[e >> 1]);
      const scalar_t hi = to<scalar_t>(acc[n][e + 1] * mul[e >> 1]);
      if constexpr (sizeof(scalar_t) == 2) {  // the pair as one 32-bit store
        *reinterpret_cast<uint32_t*>(w + r * LD + c) =
            static_cast<uint32_t>(lo.x) | (static_cast<uint32_t>(hi.x) << 16);
      } else {
        w[r * LD + c] = lo;
        w[r * LD + c + 1] = hi;
      }
    }
  __syncwarp();
  constexpr int V = 16 / sizeof(scalar_t);
  if (p.d % V == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    const int chunks = p.d / V;
    for (int e = lane; e < 16 * chunks; e += 32) {
      const int r = e / chunks, c = (e - r * chunks) * V;
      if (seq[row0 + r] < 0) continue;
      const int64_t at = ((static_cast<int64_t>(seq[row0 + r]) * p.N + pos[row0 + r]) * p.H + h) * p.d + c;
      uint4 val;
      if constexpr (sizeof(scalar_t) == 2) {  // shared rows are 16-byte aligned
        val = *reinterpret_cast<const uint4*>(w + r * LD + c);
      } else {
        alignas(16) scalar_t tmp[V];
#pragma unroll
        for (int i = 0; i < V; ++i) tmp[i] = w[r * LD + c + i];
        val = *reinterpret_cast<const uint4*>(tmp);
      }
      *reinterpret_cast<uint4*>(dst + at) = val;
    }
  } else {
    for (int e = lane; e < 16 * p.d; e += 32) {
      const int r = e / p.d, c = e - r * p.d;
      if (seq[row0 + r] < 0) continue;
      const int64_t at = ((static_cast<int64_t>(seq[row0 + r]) * p.N + pos[row0 + r]) * p.H + h) * p.d + c;
      dst[at] = w[r * LD + c];
    }
  }
  __syncwarp();  // the warp's rows of `stage` may be written again after this
}

// Key tile kt of a query tile's sequence(s) (forward, dq kernel): its rows, K and V
// (by cp.async) and, when N > ROWS, its bucket tile. Returns when K and the buckets
// are there for the whole block; V may still be in flight (S = Q K^T is computed
// meanwhile): tiles_landed() before reading it.
template <typename scalar_t, int DP, int ROWS, int LD, typename Smem>
__device__ void load_key_tile(const Params& p, const TileCoord& tc, int kt, const Smem& sm) {
  tile_rows<ROWS>(p, tc.s0, kt * ROWS, sm.kseq, sm.kpos);
  __syncthreads();
  load_tile<scalar_t, DP, ROWS, LD>(sm.Ks, static_cast<const scalar_t*>(p.k), p.k_st, tc.h,
                                    sm.kseq, sm.kpos, p.d);
  load_tile<scalar_t, DP, ROWS, LD>(sm.Vs, static_cast<const scalar_t*>(p.v), p.v_st, tc.h,
                                    sm.kseq, sm.kpos, p.d);
  if (p.N > ROWS) load_buckets<ROWS>(p, sm.qseq, sm.qpos, sm.kseq, sm.kpos, sm.ids);
  cp_async_wait<1>();  // K has landed (one group, V's, may be pending)
  __syncthreads();
}

// ---- forward ------------------------------------------------------------------

// The forward's blocks per SM, stated to ptxas (its register cap is then 64 K / (2 ROWS
// x this)): what shared memory allows at NB ~ 50, 4 on Hopper and 3 on the A100 for
// DP <= 64, one fewer for DP = 80, 128. Without it ptxas took exactly 128 or 96
// registers for the run loop and spilled 12-20 bytes (sm_80).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
template <int DP> constexpr int kFwdMinBlocks = DP <= 64 ? 4 : 3;
#else
template <int DP> constexpr int kFwdMinBlocks = DP <= 64 ? 3 : 2;
#endif

template <typename scalar_t, int DP, int ROWS>
__global__ void __launch_bounds__(2 * ROWS, kFwdMinBlocks<DP>) window_attention_fwd_kernel(const Params p) {
  using acc_t = typename AccType<scalar_t>::type;
  using L = FwdSmem<scalar_t, DP, ROWS>;
  constexpr bool kTC = kTensorCores<scalar_t>;
  constexpr int LD = L::LD, LDP = L::LDP, NTS = ROWS / 8, NTO = DP / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const L sm(smem_raw, p.NB, p.mode, p.qr_rows);
  const int ldr = p.qr_ld;
  const int warp = threadIdx.x >> 5, row0 = warp * 16;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const acc_t neg_inf = -INFINITY;

  const TileRun run = tile_run(p, blockIdx.x);
  const int run_head = tile_coord<ROWS>(p, run.first).h;
  stage_bias<scalar_t>(p, run_head, sm.bias);
  // The head's table, staged once for the run's tiles (their qR products), not once a
  // tile; the barriers in stage_shared_buckets or the first tile's show it.
  if (p.mode == kContextual) stage_table<scalar_t, DP, ROWS, LD>(p, run_head, sm.Rs);
  stage_shared_buckets<ROWS>(p, sm.qseq, sm.qpos, sm.kseq, sm.kpos, sm.ids);
  // A 32-bit count (at most kMaxRunTiles), and p.N > ROWS re-read from the parameters
  // rather than kept as a flag: registers live across the loop are what ptxas spilled.
  const int run_len = static_cast<int>(run.end - run.first);
  for (int i = 0; i < run_len; ++i) {
    const TileCoord tc = tile_coord<ROWS>(p, run.first + i);
    tile_rows<ROWS>(p, tc.s0, tc.m0, sm.qseq, sm.qpos);
    __syncthreads();
    load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,
                                      sm.qseq, sm.qpos, p.d);
    tiles_landed();
    if (p.mode == kContextual)
      contextual_table<scalar_t, DP, ROWS>(p, sm.Qs, sm.Rs, sm.qR, ldr);

    acc_t o[NTO][4];
    zero(o);
    acc_t m[2] = {neg_inf, neg_inf}, l[2] = {0, 0};
    const int key_tiles = p.N <= ROWS ? 1 : p.row_tiles;
    for (int kt = 0; kt < key_tiles; ++kt) {
      load_key_tile<scalar_t, DP, ROWS, LD>(p, tc, kt, sm);

      acc_t s[NTS][4];
      zero(s);
      warp_gemm<scalar_t, kTC, NTS>(s, rows_of(sm.Qs + row0 * LD, LD), rows_of(sm.Ks, LD), DP);
      acc_t tile_max[2] = {neg_inf, neg_inf};
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int r = row0 + frag_row(e), c = frag_col(n, e);
          const uint32_t two = bucket_pair<ROWS>(p, sm.ids, r, c);
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const int b = pair_half(two, x);
            s[n][e + x] = b == kNoBucket
                              ? neg_inf
                              : scale * s[n][e + x] + relative_term(p, sm.qR, ldr, sm.bias, r, b);
            tile_max[e >> 1] = fmax(tile_max[e >> 1], s[n][e + x]);
          }
        }
      acc_t alpha[2], base[2];
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const acc_t m_new = fmax(m[hh], quad_max(tile_max[hh]));
        base[hh] = m_new == neg_inf ? acc_t(0) : m_new;  // a row with no key yet: no NaN
        alpha[hh] = dev_exp(m[hh] - base[hh]);
        m[hh] = m_new;
        l[hh] *= alpha[hh];
      }
#pragma unroll
      for (int n = 0; n < NTO; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e >> 1];
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] = dev_exp(s[n][e] - base[e >> 1]);  // P
          l[e >> 1] += s[n][e];
        }
      tiles_landed();  // V
      warp_gemm_a_frags<scalar_t, NTO>(o, s, sm.Ps, LDP, cols_of(sm.Vs, LD));
      __syncthreads();  // K, V, the buckets and the key rows are replaced next
    }

    acc_t inv[2];
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      l[hh] = quad_sum(l[hh]);
      inv[hh] = l[hh] > 0 ? acc_t(1) / l[hh] : acc_t(0);
    }
    // Q is dead (the key loop ended with a barrier): its rows stage O.
    store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.o), p, tc.h, row0, sm.qseq, sm.qpos, o, inv,
                             sm.Qs);
    if ((threadIdx.x & 3) == 0) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r = row0 + frag_row(2 * hh);
        if (sm.qseq[r] < 0) continue;
        const int64_t at = (static_cast<int64_t>(sm.qseq[r]) * p.H + tc.h) * p.N + sm.qpos[r];
        static_cast<acc_t*>(p.lse)[at] = m[hh] + dev_log(l[hh]);
      }
    }
    __syncthreads();  // the next tile replaces Q (O's staging) and the query rows
  }
}

// ---- backward -------------------------------------------------------------------

// D[s, h, i] = dO_i . O_i, one warp per row (rows ordered like lse).
template <typename scalar_t>
__global__ void window_attention_delta_kernel(const Params p) {
  using acc_t = typename AccType<scalar_t>::type;
  const int lane = threadIdx.x & 31;
  const int64_t rows = p.S * p.H * p.N, warps = (int64_t)gridDim.x * (blockDim.x >> 5);
  const scalar_t* O = static_cast<const scalar_t*>(p.out);
  const scalar_t* dO = static_cast<const scalar_t*>(p.dout);
  for (int64_t row = blockIdx.x * (int64_t)(blockDim.x >> 5) + (threadIdx.x >> 5); row < rows;
       row += warps) {
    const int64_t i = row % p.N, sh = row / p.N, h = sh % p.H, s = sh / p.H;
    const scalar_t* o = O + s * p.out_st.s + i * p.out_st.n + h * p.out_st.h;
    const scalar_t* g = dO + s * p.dout_st.s + i * p.dout_st.n + h * p.dout_st.h;
    acc_t acc = 0;
    for (int c = lane; c < p.d; c += 32) acc += to<acc_t>(o[c]) * to<acc_t>(g[c]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) static_cast<acc_t*>(p.delta)[row] = acc;
  }
}

// dK, dV of one key tile; the warps own its key rows.
// The dk/dv kernel's, likewise: 16-bit at DP <= 64 fits 3 blocks per SM on Hopper
// and 2 on the A100 (shared memory); the rest states 1 (ptxas's cap 255): left to its
// own choice, ptxas capped fp32 instantiations at 128 registers and spilled 4-12 bytes.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
template <typename T, int DP> constexpr int kDkdvMinBlocks = sizeof(T) == 2 && DP <= 64 ? 3 : 1;
#else
template <typename T, int DP> constexpr int kDkdvMinBlocks = sizeof(T) == 2 && DP <= 64 ? 2 : 1;
#endif

template <typename scalar_t, int DP, int ROWS>
__global__ void __launch_bounds__(2 * ROWS, (kDkdvMinBlocks<scalar_t, DP>)) window_attention_dkdv_kernel(const Params p) {
  using acc_t = typename AccType<scalar_t>::type;
  using L = BwdSmem<scalar_t, DP, ROWS>;
  constexpr bool kTC = kTensorCores<scalar_t>;
  constexpr int LD = L::LD, LDP = L::LDP, NTS = ROWS / 8, NTO = DP / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const L sm(smem_raw, p.NB, p.mode, /*dq_kernel=*/false, /*fused=*/false, 0);
  const int ldr = p.qr_ld;
  const int warp = threadIdx.x >> 5, row0 = warp * 16;
  const acc_t scale = static_cast<acc_t>(p.scale);

  const TileRun run = tile_run(p, blockIdx.x);
  const int run_head = tile_coord<ROWS>(p, run.first).h;
  stage_bias<scalar_t>(p, run_head, sm.bias);
  if (p.mode == kContextual) stage_table<scalar_t, DP, ROWS, LD>(p, run_head, sm.Rs);  // as the forward
  stage_shared_buckets<ROWS>(p, sm.qseq, sm.qpos, sm.kseq, sm.kpos, sm.ids);
  const int run_len = static_cast<int>(run.end - run.first);  // as the forward's
  for (int i = 0; i < run_len; ++i) {
    const TileCoord tc = tile_coord<ROWS>(p, run.first + i);
    tile_rows<ROWS>(p, tc.s0, tc.m0, sm.kseq, sm.kpos);
    __syncthreads();
    load_tile<scalar_t, DP, ROWS, LD>(sm.Ks, static_cast<const scalar_t*>(p.k), p.k_st, tc.h,
                                      sm.kseq, sm.kpos, p.d);
    load_tile<scalar_t, DP, ROWS, LD>(sm.Vs, static_cast<const scalar_t*>(p.v), p.v_st, tc.h,
                                      sm.kseq, sm.kpos, p.d);

    acc_t dk[NTO][4], dv[NTO][4];
    zero(dk);
    zero(dv);
    const int query_tiles = p.N <= ROWS ? 1 : p.row_tiles;
    for (int qt = 0; qt < query_tiles; ++qt) {
      tile_rows<ROWS>(p, tc.s0, qt * ROWS, sm.qseq, sm.qpos);
      __syncthreads();
      load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,
                                        sm.qseq, sm.qpos, p.d);
      load_row_stats<ROWS>(p, tc.h, sm.qseq, sm.qpos, sm.lse, sm.delta);
      if (p.N > ROWS) load_buckets<ROWS>(p, sm.qseq, sm.qpos, sm.kseq, sm.kpos, sm.ids);
      tiles_landed();  // K, V (first query tile) and Q
      if (p.mode == kContextual) contextual_table<scalar_t, DP, ROWS>(p, sm.Qs, sm.Rs, sm.qR, ldr);
      // dO is in flight while P^T is computed.
      load_tile<scalar_t, DP, ROWS, LD>(sm.dOs, static_cast<const scalar_t*>(p.dout), p.dout_st,
                                        tc.h, sm.qseq, sm.qpos, p.d);

      // P^T (key rows j, query columns i), recomputed from lse.
      acc_t pt[NTS][4];
      zero(pt);
      warp_gemm<scalar_t, kTC, NTS>(pt, rows_of(sm.Ks + row0 * LD, LD), rows_of(sm.Qs, LD), DP);
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int j = row0 + frag_row(e), i = frag_col(n, e);
          // Read across the staged rows (query i, key j): with rows of ROWS + 8 ids a
          // warp's 32 reads still fall in distinct banks (lanes g, g + 1 share a word).
          const int b = bucket_at<ROWS>(p, sm.ids, i, j);
          pt[n][e] = b == kNoBucket
                         ? acc_t(0)
                         : dev_exp(scale * pt[n][e] + relative_term(p, sm.qR, ldr, sm.bias, i, b) -
                                   sm.lse[i]);
        }
      tiles_landed();  // dO
      acc_t dpt[NTS][4];
      zero(dpt);
      warp_gemm<scalar_t, kTC, NTS>(dpt, rows_of(sm.Vs + row0 * LD, LD), rows_of(sm.dOs, LD), DP);
      warp_gemm_a_frags<scalar_t, NTO>(dv, pt, sm.Ps, LDP, cols_of(sm.dOs, LD));
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) pt[n][e] *= dpt[n][e] - sm.delta[frag_col(n, e)];  // dS^T
      if constexpr (!kTC) __syncwarp();  // every lane is done reading P^T before dS^T replaces it
      warp_gemm_a_frags<scalar_t, NTO>(dk, pt, sm.Ps, LDP, cols_of(sm.Qs, LD));
      __syncthreads();  // Q, dO, the buckets and the query rows are replaced next
    }
    const acc_t dk_mul[2] = {scale, scale}, one[2] = {1, 1};
    // Q and dO are dead (the query loop ended with a barrier): their rows stage dK, dV.
    store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.dk), p, tc.h, row0, sm.kseq, sm.kpos, dk,
                             dk_mul, sm.Qs);
    store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.dv), p, tc.h, row0, sm.kseq, sm.kpos, dv, one,
                             sm.dOs);
    __syncthreads();  // the next tile replaces K, V, Q, dO and the key rows
  }
}

// dQ of the group's tiles taken by this block, and the block's d(rpe) partial; when
// p.fused_backward (N <= ROWS: a tile holds its sequences' every query and every key)
// dK and dV too, from P and dS staged in shared memory: the whole backward in one pass.
// (..., 1): ptxas otherwise caps this kernel at 128 registers and spills; shared
// memory allows two blocks per SM anyway.
template <typename scalar_t, int DP, int ROWS>
__global__ void __launch_bounds__(2 * ROWS, 1) window_attention_dq_kernel(const Params p) {
  using acc_t = typename AccType<scalar_t>::type;
  using L = BwdSmem<scalar_t, DP, ROWS>;
  constexpr bool kTC = kTensorCores<scalar_t>;
  constexpr int LD = L::LD, LDS = L::LDS, LDQ = L::LDQ, NTS = ROWS / 8, NTO = DP / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const L sm(smem_raw, p.NB, p.mode, /*dq_kernel=*/true, p.fused_backward, p.group_width);
  const int ldr = p.qr_ld;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = warp * 16;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t group_tiles = p.num_tiles / p.groups;

  // The block's d(rpe) partial: fused, summed in shared memory over its tiles and
  // written once at the end (not read and written back per tile); else summed in its
  // row of the workspace (zeroed by the host). Element e is only ever touched by thread
  // e mod blockDim.x, so it needs no barrier.
  acc_t* part = nullptr;
  if (p.mode != kNone) {
    part = p.fused_backward ? sm.part
                            : static_cast<acc_t*>(p.partial) +
                                  (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * p.group_width;
    if (p.fused_backward)
      for (int64_t e = threadIdx.x; e < p.group_width; e += blockDim.x) part[e] = acc_t(0);
  }
  // The group's table, staged once for all the block's tiles (its qR and dT R products).
  if (p.mode == kContextual)
    stage_table<scalar_t, DP, ROWS, LD>(p, tile_coord<ROWS>(p, blockIdx.y * group_tiles).h, sm.Rs);
  stage_shared_buckets<ROWS>(p, sm.qseq, sm.qpos, sm.kseq, sm.kpos, sm.ids);
  for (int64_t u = blockIdx.x; u < group_tiles; u += gridDim.x) {
    const TileCoord tc = tile_coord<ROWS>(p, blockIdx.y * group_tiles + u);
    tile_rows<ROWS>(p, tc.s0, tc.m0, sm.qseq, sm.qpos);
    stage_bias<scalar_t>(p, tc.h, sm.bias);
    __syncthreads();
    load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,
                                      sm.qseq, sm.qpos, p.d);
    load_tile<scalar_t, DP, ROWS, LD>(sm.dOs, static_cast<const scalar_t*>(p.dout), p.dout_st,
                                      tc.h, sm.qseq, sm.qpos, p.d);
    load_row_stats<ROWS>(p, tc.h, sm.qseq, sm.qpos, sm.lse, p.fused_backward ? nullptr : sm.delta);
    tiles_landed();  // Q, dO
    if (p.mode == kContextual) contextual_table<scalar_t, DP, ROWS>(p, sm.Qs, sm.Rs, sm.qR, ldr);

    acc_t dq[NTO][4];
    zero(dq);
    const int key_tiles = p.N <= ROWS ? 1 : p.row_tiles;
    for (int kt = 0; kt < key_tiles; ++kt) {
      load_key_tile<scalar_t, DP, ROWS, LD>(p, tc, kt, sm);

      acc_t s[NTS][4], dp[NTS][4];
      zero(s);
      zero(dp);
      warp_gemm<scalar_t, kTC, NTS>(s, rows_of(sm.Qs + row0 * LD, LD), rows_of(sm.Ks, LD), DP);
      tiles_landed();  // V
      warp_gemm<scalar_t, kTC, NTS>(dp, rows_of(sm.dOs + row0 * LD, LD), rows_of(sm.Vs, LD), DP);
      if (p.fused_backward) __syncthreads();  // every warp is done with V: its buffer takes P
      // P into s, then dS = P (dP - D).
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int r = row0 + frag_row(e), c = frag_col(n, e);
          const uint32_t two = bucket_pair<ROWS>(p, sm.ids, r, c);
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            const int b = pair_half(two, x);
            s[n][e + x] = b == kNoBucket ? acc_t(0)
                                         : dev_exp(scale * s[n][e + x] +
                                                   relative_term(p, sm.qR, ldr, sm.bias, r, b) -
                                                   sm.lse[r]);
          }
        }
      acc_t row_d[2];  // D of the fragment rows g and g + 8
      if (p.fused_backward) {
        stage_fragments<scalar_t>(sm.Vs, LDQ, row0, s);  // P, for dV = P^T dO below
        // One key tile holds the row's keys: D = sum_j P_ij dP_ij (= dO_i . O_i, from
        // fp32 P and dP rather than the rounded O), each lane over its columns, then
        // the quad.
        acc_t part[2] = {0, 0};
#pragma unroll
        for (int n = 0; n < NTS; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[e >> 1] += s[n][e] * dp[n][e];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) row_d[hh] = quad_sum(part[hh]);
      } else {
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) row_d[hh] = sm.delta[row0 + frag_row(2 * hh)];
      }
#pragma unroll
      for (int n = 0; n < NTS; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] *= dp[n][e] - row_d[e >> 1];  // dS
      warp_gemm_a_frags<scalar_t, NTO>(dq, s, sm.dSs, LDS, cols_of(sm.Ks, LD));
      // dT[r][bucket] += dS[r][c] from the fragments: the 4 lanes of a quad hold a row's
      // columns (lane t: 8 n + 2t and + 1); they add in turn, t = 0..3, each its
      // columns in order, so every dT element is summed in one fixed order.
      if (p.mode != kNone) {
        if (kt == 0) {
          // The warp's own rows of dT, zeroed by the warp: where dT shares qR's memory
          // they are its own rows of qR, which its lanes have all read (P) by now (the
          // fused D's shuffles already hold the warp together here; the __syncwarp
          // states it for the memory).
          __syncwarp();
          acc_t* mine = dt_row(sm.dT, p, row0);
          for (int e = lane; e < 16 * p.dt_ld; e += 32) mine[e] = acc_t(0);
          __syncwarp();
        }
        const int g = lane >> 2, t = lane & 3;
        for (int tt = 0; tt < 4; ++tt) {
          if (t == tt) {
#pragma unroll
            for (int hh = 0; hh < 2; ++hh) {
              const int r = row0 + g + 8 * hh;
              acc_t* dt = dt_row(sm.dT, p, r);
#pragma unroll
              for (int n = 0; n < NTS; ++n) {
                const uint32_t two = bucket_pair<ROWS>(p, sm.ids, r, 8 * n + 2 * t);
#pragma unroll
                for (int x = 0; x < 2; ++x) {
                  const int b = pair_half(two, x);
                  if (b != kNoBucket) dt[b] += s[n][2 * hh + x];
                }
              }
            }
          }
          __syncwarp();
        }
      }
      if (p.fused_backward) {
        // dV = P^T dO and dK = scale dS^T Q sum over the tile's query rows, which the
        // warps split: P and dS are read from shared memory down their columns, each
        // warp taking 16 key rows (the tile's keys are its queries).
        __syncthreads();  // every warp has staged P (and, FMA path, dS) and is done with K
        scalar_t* dS_staged;
        if constexpr (kTC) {  // dS into K's buffer; the barrier after dV's product shows it
          stage_fragments<scalar_t>(sm.Ks, LDQ, row0, s);
          dS_staged = sm.Ks;
        } else {
          dS_staged = sm.dSs;  // warp_gemm_a_frags staged it (acc_t is scalar_t, LDS = LDQ)
        }
        acc_t kv[NTO][4];
        zero(kv);
        warp_gemm<scalar_t, kTC, NTO>(kv, cols_of(sm.Vs + row0, LDQ), cols_of(sm.dOs, LD), ROWS);
        // Every warp is done with P (V's buffer stages the rows out next) and has staged dS.
        __syncthreads();
        const acc_t one[2] = {1, 1}, dk_mul[2] = {scale, scale};
        store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.dv), p, tc.h, row0, sm.kseq, sm.kpos, kv,
                                 one, sm.Vs);
        zero(kv);
        warp_gemm<scalar_t, kTC, NTO>(kv, cols_of(dS_staged + row0, LDQ), cols_of(sm.Qs, LD), ROWS);
        store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.dk), p, tc.h, row0, sm.kseq, sm.kpos, kv,
                                 dk_mul, sm.Vs);
      }
      __syncthreads();  // K, V, the buckets and the key rows are replaced next
    }
    acc_t mul[2] = {scale, scale};
    if (p.mode == kContextual) {
      // dq = scale * (dS K) + dT R, the latter in acc_t FMAs (no rounding of dT).
#pragma unroll
      for (int n = 0; n < NTO; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dq[n][e] *= scale;
      mul[0] = mul[1] = acc_t(1);
      // The warp's own rows of dT (complete: the key loop ended with a barrier) and the
      // resident table.
      for (int b0 = 0; b0 < p.NB; b0 += ROWS) {
        // K = the chunk's buckets < NB: dT's rows end at dt_width(NB).
        warp_gemm<scalar_t, false, NTO>(dq, rows_of(dt_row(sm.dT, p, row0) + b0, p.dt_ld),
                                        cols_of(sm.Rs + b0 * LD, LD), p.NB - b0 < ROWS ? p.NB - b0 : ROWS);
      }
    }
    // dO is dead (the key loop ended with a barrier; Q still feeds the partial): its
    // rows stage dQ.
    store_rows<scalar_t, LD>(static_cast<scalar_t*>(p.dq), p, tc.h, row0, sm.qseq, sm.qpos, dq, mul,
                             sm.dOs);
    if (p.mode == kContextual) {  // part[b][c] += sum over rows of dT[r][b] q[r][c]
      for (int64_t e = threadIdx.x; e < p.group_width; e += blockDim.x) {
        const int b = static_cast<int>(e / p.d), c = static_cast<int>(e - b * p.d);
        acc_t acc = 0;
        for (int r = 0; r < ROWS; ++r) acc += dt_row(sm.dT, p, r)[b] * to<acc_t>(sm.Qs[r * LD + c]);
        part[e] += acc;
      }
    } else if (p.mode == kBias) {  // part[b] += sum over rows of dT[r][b]
      for (int b = threadIdx.x; b < p.NB; b += blockDim.x) {
        acc_t acc = 0;
        for (int r = 0; r < ROWS; ++r) acc += dt_row(sm.dT, p, r)[b];
        part[b] += acc;
      }
    }
    __syncthreads();  // Q, dO, dT and the query rows are replaced next
  }
  if (p.mode != kNone && p.fused_backward) {
    acc_t* partial = static_cast<acc_t*>(p.partial) +
                     (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * p.group_width;
    for (int64_t e = threadIdx.x; e < p.group_width; e += blockDim.x) partial[e] = part[e];
  }
}

// drpe[g][e] = sum over blocks, in block order, of partial[g][block][e].
template <typename scalar_t, typename acc_t>
__global__ void window_attention_drpe_kernel(const acc_t* __restrict__ partial,
                                             scalar_t* __restrict__ drpe, int groups, int blocks,
                                             int64_t width) {
  const int64_t total = groups * width;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t g = idx / width, e = idx - g * width;
    acc_t acc = 0;
    for (int b = 0; b < blocks; ++b) acc += partial[(g * blocks + b) * width + e];
    drpe[idx] = to<scalar_t>(acc);
  }
}

// ---- host side ------------------------------------------------------------------

constexpr int kHeadDims[] = {32, 64, 80, 128};

int padded_head_dim(int64_t d) {
  for (int dp : kHeadDims)
    if (d <= dp) return dp;
  TORCH_CHECK(false, "window_attention (CUDA): head dim d = ", d,
              " is not supported; the CUDA kernel takes d <= 128 (q, k, v are (S, N, H, d))");
  return 0;
}

template <typename Fn>
void dispatch_head_dim(int dp, Fn&& fn) {
  switch (dp) {
    case 32: fn(std::integral_constant<int, 32>{}); break;
    case 64: fn(std::integral_constant<int, 64>{}); break;
    case 80: fn(std::integral_constant<int, 80>{}); break;
    default: fn(std::integral_constant<int, 128>{}); break;
  }
}

// The head dim contiguous (the kernels read rows through the other strides).
at::Tensor rows_contiguous(const at::Tensor& x) {
  return (x.size(3) <= 1 || x.stride(3) == 1) ? x : x.contiguous();
}

Strides strides_of(const at::Tensor& x) {
  const int64_t v = 16 / x.element_size();
  const bool vec = x.element_size() == 2 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                   x.stride(0) % v == 0 && x.stride(1) % v == 0 && x.stride(2) % v == 0 &&
                   x.size(3) % v == 0;
  return {x.stride(0), x.stride(1), x.stride(2), vec};
}

Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const c10::optional<at::Tensor>& rpe, const c10::optional<at::Tensor>& ids,
                   c10::string_view rpe_mode, double scale, int rows) {
  Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_st = strides_of(q);
  p.k_st = strides_of(k);
  p.v_st = strides_of(v);
  p.S = q.size(0);
  p.N = q.size(1);
  p.H = q.size(2);
  p.d = static_cast<int>(q.size(3));
  p.mode = rpe_mode == "contextual" ? kContextual : rpe_mode == "bias" ? kBias : kNone;
  p.scale = scale;
  if (p.mode != kNone) {
    p.rpe = rpe->data_ptr();
    p.ids = ids->data_ptr<int32_t>();
    p.per_head = p.mode == kContextual && rpe->dim() == 3;
    p.NB = static_cast<int>(rpe->size(p.mode == kBias ? 1 : rpe->dim() - 2));
    // Shared memory bounds NB far below this (the launch says so); the check keeps
    // the 16-bit staged ids and their kNoBucket sentinel sound on any card.
    TORCH_CHECK(p.NB < kNoBucket, "window_attention (CUDA): rpe has NB = ", p.NB,
                " buckets; the CUDA kernel takes fewer than ", kNoBucket,
                "; use backend=\"cpu\"/\"torch\"");
  }
  p.qr_ld = table_width(p.NB);
  p.dt_ld = dt_width(p.NB);
  p.pack = p.N <= rows ? static_cast<int>(rows / p.N) : 1;
  p.row_tiles = p.N <= rows ? 1 : static_cast<int>((p.N + rows - 1) / rows);
  p.tiles_per_head = p.N <= rows ? (p.S + p.pack - 1) / p.pack : p.S * p.row_tiles;
  p.num_tiles = p.H * p.tiles_per_head;
  const bool per_group_head = p.mode == kBias || p.per_head;
  p.groups = per_group_head ? static_cast<int>(p.H) : 1;
  p.fused_backward = p.N <= rows;
  p.narrow_ids = id_bytes(p.NB) == 1;
  p.qr_rows = p.N <= rows ? static_cast<int>(p.pack * p.N) : rows;
  p.dt_block = 16 * (p.fused_backward && p.mode == kContextual ? p.qr_ld : p.dt_ld);
  p.group_width = p.mode == kContextual ? static_cast<int64_t>(p.NB) * p.d : p.NB;
  return p;
}

// Tile runs of the forward and dk/dv kernels: as long as leaves 8 blocks per SM
// (two waves at the four blocks the forward fits on Hopper, more on Ampere: the last
// wave's tail stays short), at most 8 tiles (the staged bucket tile, ~10 KB read per
// block at N = 50, is then ~5% of the 8 tiles' own q, k, v, o bytes). The runs change
// no value: each tile is computed as alone.
constexpr int64_t kRunBlocksPerSm = 8, kMaxRunTiles = 8;
void plan_runs(Params& p, int64_t sms) {
  p.run_tiles = std::max<int64_t>(1, std::min<int64_t>(kMaxRunTiles, p.num_tiles / (kRunBlocksPerSm * sms)));
  p.runs_per_head = (p.tiles_per_head + p.run_tiles - 1) / p.run_tiles;
}

template <typename Kernel>
void launch(Kernel kernel, dim3 grid, int threads, size_t smem, const Params& p, const char* what) {
  const size_t optin = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(smem <= optin, "window_attention (CUDA): the ", what,
              " kernel needs ", smem, " bytes of shared memory for rpe with NB = ", p.NB,
              " buckets and head dim ", p.d, ", more than this GPU's ", optin,
              " per block; use fewer buckets or backend=\"cpu\"/\"torch\"");
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  kernel<<<grid, threads, smem, at::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> window_attention_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& rpe_in, const c10::optional<at::Tensor>& ids_in,
    c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q_in, k_in, v_in, rpe_in, ids_in, rpe_mode);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t S = q_in.size(0), N = q_in.size(1), H = q_in.size(2), d = q_in.size(3);
  const int dp = padded_head_dim(d);
  const auto acc = acc_type_of(q_in.scalar_type());
  auto out = at::empty({S, N, H, d}, q_in.options());
  auto lse = at::empty({S, H, N}, q_in.options().dtype(acc));
  auto probs = at::empty({0}, q_in.options().dtype(acc));  // not kept: the backward recomputes P
  if (q_in.numel() == 0) return {out, lse, probs};
  const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  const bool has_table = rpe_mode != "none";
  const auto rpe = has_table ? c10::optional<at::Tensor>(rpe_in->contiguous()) : c10::nullopt;
  const auto ids = has_table ? c10::optional<at::Tensor>(ids_in->contiguous()) : c10::nullopt;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "window_attention_fwd_cuda", [&] {
    constexpr int ROWS = kRows<scalar_t>;
    Params p = make_params(q, k, v, rpe, ids, rpe_mode, scale, ROWS);
    p.o = out.data_ptr();
    p.lse = lse.data_ptr();
    plan_runs(p, at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
    dispatch_head_dim(dp, [&](auto dp_const) {
      constexpr int DP = decltype(dp_const)::value;
      const size_t smem = FwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, p.qr_rows).bytes;
      launch(window_attention_fwd_kernel<scalar_t, DP, ROWS>, dim3(static_cast<unsigned>(p.H * p.runs_per_head)),
             2 * ROWS, smem, p, "forward");
    });
  });
  return {out, lse, probs};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> window_attention_bwd_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const at::Tensor& /*probs: empty, P is recomputed from lse*/,
    const c10::optional<at::Tensor>& rpe_in, const c10::optional<at::Tensor>& ids_in,
    c10::string_view rpe_mode, double scale) {
  check_window_attention_args(q_in, k_in, v_in, rpe_in, ids_in, rpe_mode);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t S = q_in.size(0), N = q_in.size(1), H = q_in.size(2), d = q_in.size(3);
  TORCH_CHECK(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "window_attention_bwd: grad_out and out must have q's shape ", q_in.sizes(),
              ", got ", grad_out_in.sizes(), " and ", out_in.sizes());
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == S && lse_in.size(1) == H && lse_in.size(2) == N,
              "window_attention_bwd: lse must be (S, H, N) = (", S, ", ", H, ", ", N, "), got ",
              lse_in.sizes());
  const int dp = padded_head_dim(d);
  const auto dtype = q_in.scalar_type();
  const auto acc = acc_type_of(dtype);
  const bool has_table = rpe_mode != "none";
  auto dq = at::empty({S, N, H, d}, q_in.options());
  auto dk = at::empty({S, N, H, d}, q_in.options());
  auto dv = at::empty({S, N, H, d}, q_in.options());
  auto drpe = has_table ? at::empty(rpe_in->sizes(), rpe_in->options()) : at::empty({0}, q_in.options());
  if (q_in.numel() == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    drpe.zero_();
    return {dq, dk, dv, drpe};
  }
  const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  const auto grad_out = rows_contiguous(grad_out_in.to(dtype)), out = rows_contiguous(out_in);
  const auto lse = lse_in.to(acc).contiguous();
  // D: the delta kernel's, for the dq and dk/dv kernels (N > ROWS only; the fused
  // backward sums it in registers), sized in the dispatch below.
  at::Tensor delta;
  const auto rpe = has_table ? c10::optional<at::Tensor>(rpe_in->contiguous()) : c10::nullopt;
  const auto ids = has_table ? c10::optional<at::Tensor>(ids_in->contiguous()) : c10::nullopt;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "window_attention_bwd_cuda", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    constexpr int ROWS = kRows<scalar_t>;
    Params p = make_params(q, k, v, rpe, ids, rpe_mode, scale, ROWS);
    p.out = out.data_ptr();
    p.out_st = strides_of(out);
    p.dout = grad_out.data_ptr();
    p.dout_st = strides_of(grad_out);
    p.dq = dq.data_ptr();
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    p.lse = lse.data_ptr();
    plan_runs(p, sms);

    const int64_t rows = S * H * N;
    const int64_t delta_blocks = std::min<int64_t>((rows + 7) / 8, sms * 32);
    if (!p.fused_backward) {
      delta = at::empty({S, H, N}, q_in.options().dtype(acc));
      p.delta = delta.data_ptr();
      window_attention_delta_kernel<scalar_t><<<static_cast<unsigned>(delta_blocks), 256, 0, stream>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    // A fixed number of blocks per table group: the d(rpe) partials (and so the
    // summation order) depend only on the shapes and the GPU's SM count.
    const int64_t group_tiles = p.num_tiles / p.groups;
    const int64_t blocks = p.mode == kNone
                               ? group_tiles
                               : std::max<int64_t>(1, std::min<int64_t>(
                                                          group_tiles, (4 * sms + p.groups - 1) / p.groups));
    at::Tensor partial;
    if (p.mode != kNone) {
      // Fused, every block writes its whole partial once, at its end; else it sums
      // into it from zero.
      partial = p.fused_backward ? at::empty({p.groups, blocks, p.group_width}, q.options().dtype(acc))
                                 : at::zeros({p.groups, blocks, p.group_width}, q.options().dtype(acc));
      p.partial = partial.data_ptr();
    }
    dispatch_head_dim(dp, [&](auto dp_const) {
      constexpr int DP = decltype(dp_const)::value;
      const size_t dq_smem = BwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, true, p.fused_backward, p.group_width).bytes;
      launch(window_attention_dq_kernel<scalar_t, DP, ROWS>, dim3(static_cast<unsigned>(blocks), p.groups), 2 * ROWS,
             dq_smem, p, p.fused_backward ? "backward (fused)" : "backward dq");
      if (p.fused_backward) return;  // the dq kernel wrote dK and dV
      const size_t dkdv_smem = BwdSmem<scalar_t, DP, ROWS>(nullptr, p.NB, p.mode, false, false, 0).bytes;
      launch(window_attention_dkdv_kernel<scalar_t, DP, ROWS>, dim3(static_cast<unsigned>(p.H * p.runs_per_head)),
             2 * ROWS, dkdv_smem, p, "backward dk/dv");
    });
    if (p.mode != kNone) {
      const int64_t total = p.groups * p.group_width;
      const int64_t threads = 256, grid = std::min<int64_t>((total + threads - 1) / threads, sms * 8);
      window_attention_drpe_kernel<scalar_t, acc_t><<<static_cast<unsigned>(grid), threads, 0, stream>>>(
          partial.data_ptr<acc_t>(), drpe.data_ptr<scalar_t>(), p.groups, static_cast<int>(blocks),
          p.group_width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dq, dk, dv, drpe};
}

}  // namespace lomar_ops
