// CPU emulation of the CUDA execution model that csrc/cuda/*.cu use, for checking the
// kernels on machines without a GPU (see run.sh). Each CUDA thread is a std::thread;
// the threads of a block meet at real barriers, so ThreadSanitizer sees exactly the
// ordering CUDA guarantees (and reports the races a GPU would hide), and
// AddressSanitizer sees shared memory allocated at exactly the launch's size.
//
// What it models: grids and blocks in 1 to 3 dimensions (two blocks run at a time,
// so races between blocks show too), __syncthreads (every thread must reach the same
// one; exited threads count as arrived, as in PTX), warps of 32 lanes (__syncwarp,
// shuffles, votes, mma.sync m16n8k16 from PTX's fragment layout: every lane named in
// a mask must take part, none may have exited), dynamic and static shared memory
// filled with a NaN pattern and given addresses in a 32-bit shared window
// (__cvta_generic_to_shared), Ampere's asynchronous copies (cp.async.ca/.cg of 4, 8 or
// 16 bytes, commit_group, wait_group N, wait_all: each thread's source bytes are read
// at the cp.async, its shared memory is written only at the wait that completes the
// copy's group, by the waiting thread, so a missing or short wait reads the NaN fill
// and ThreadSanitizer sees a missing barrier after the wait; a thread may not exit
// with copies pending), atomics, __launch_bounds__, cudaFuncSetAttribute, and
// the launch limits of the emulated device (sm_80 or sm_90). Misuse is reported with
// the kernel, block, thread and source line, then the process aborts, as a device
// trap would end a CUDA context. emulate_cu.py rewrites what C++ cannot express
// (<<<...>>>, __shared__ declarations, __launch_bounds__, inline PTX). Counting builds
// (-DEMU_COUNT, run.sh --count) also tell count.h's traffic counters about launches,
// blocks, shared memory, barriers, warp collectives, atomics and cp.async (EMU_COUNTING
// lines; nothing of them in the other builds).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef EMU_COUNT  // run.sh --count: the traffic counters (count.h), a model
#include "count.h"
#define EMU_COUNTING(...) __VA_ARGS__
#define EMU_COUNT_NOINLINE __attribute__((noinline))  // a call's return address: its site
// Memory accesses the counters must not see (cp.async's, counted at its issue instead).
#define EMU_COUNT_UNSEEN __attribute__((noinline, no_sanitize_thread))
#else
#define EMU_COUNTING(...)
#define EMU_COUNT_NOINLINE
#define EMU_COUNT_UNSEEN
#endif

// ---- CUDA C++ keywords ----------------------------------------------------------
#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) alignas(n)
#ifndef EMU_CUDA_ARCH  // stands for __CUDA_ARCH__ in the kernel sources (emulate_cu.py)
#define EMU_CUDA_ARCH 800
#endif

// ---- runtime types ----------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};
using cudaStream_t = struct CUstream_st*;

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
constexpr int warpSize = 32;

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

// cudaDeviceProp's fields that host code reads.
struct cudaDeviceProp {
  const char* name;
  int major, minor, multiProcessorCount, maxThreadsPerBlock, warpSize;
  size_t sharedMemPerBlock, sharedMemPerBlockOptin, sharedMemPerMultiprocessor;
  int maxThreadsDim[3], maxGridSize[3];
};

namespace emu {

// ---- the emulated device ------------------------------------------------------------
// A100 and H100 limits (CUDA programming guide, compute capabilities table). Few SMs:
// host code sizes grids by the SM count, and small grids exercise grid-stride loops.
inline cudaDeviceProp props_for(int arch, int sms) {
  cudaDeviceProp p{};
  p.name = arch >= 90 ? "emulated sm_90" : "emulated sm_80";
  p.major = arch / 10;
  p.minor = arch % 10;
  p.multiProcessorCount = sms;
  p.maxThreadsPerBlock = 1024;
  p.warpSize = 32;
  p.sharedMemPerBlock = 48 * 1024;
  p.sharedMemPerBlockOptin = arch >= 90 ? 227 * 1024 : 163 * 1024;
  p.sharedMemPerMultiprocessor = arch >= 90 ? 228 * 1024 : 164 * 1024;
  p.maxThreadsDim[0] = p.maxThreadsDim[1] = 1024;
  p.maxThreadsDim[2] = 64;
  p.maxGridSize[0] = std::numeric_limits<int>::max();
  p.maxGridSize[1] = p.maxGridSize[2] = 65535;
  return p;
}

inline int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

struct Device {
  cudaDeviceProp props = props_for(env_int("LOMAR_EMU_ARCH", 80), env_int("LOMAR_EMU_SMS", 2));
  int concurrent_blocks = std::max(1, env_int("LOMAR_EMU_CONCURRENT_BLOCKS", 2));
  std::mutex m;  // kernel attributes, last error
  std::vector<std::pair<const void*, int>> max_dynamic_smem;  // cudaFuncSetAttribute
  cudaError_t last_error = cudaSuccess;
  std::string last_error_detail;
};
inline Device& device() {
  static Device d;
  return d;
}
// Which card the host code and the launch checks see (the tests switch it); a new
// device starts without kernel attributes.
inline void set_arch(int arch) {
  std::lock_guard<std::mutex> g(device().m);
  device().props = props_for(arch, device().props.multiProcessorCount);
  device().max_dynamic_smem.clear();
}

inline void set_error(cudaError_t e, const std::string& detail) {
  std::lock_guard<std::mutex> g(device().m);
  device().last_error = e;
  device().last_error_detail = detail;
}

inline int max_dynamic_smem_of(const void* kernel) {
  std::lock_guard<std::mutex> g(device().m);
  for (auto& [k, v] : device().max_dynamic_smem)
    if (k == kernel) return v;
  return -1;
}

// The pattern every fresh shared-memory and device allocation is filled with: NaN
// in fp64, fp32, fp16 and bf16 at any 2-byte offset, INT_MAX as int32, and not a
// valid bool, so a read before write changes the result or trips a sanitizer.
inline void fill_garbage(void* p, size_t n) {
  static const unsigned char pattern[4] = {0xFF, 0xFF, 0xFF, 0x7F};
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = pattern[i & 3];
}

// ---- a block: its threads, barriers and shared memory ------------------------------------

// Sleeps until *word != old (a futex: no spinning, which on a few cores only delays
// the threads being waited for). Ordering comes from the acquire load around it.
inline void wait_while_equal(std::atomic<uint32_t>& word, uint32_t old) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  while (word.load(std::memory_order_acquire) == old)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, old, nullptr,
            nullptr, 0);
}
inline void wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// Arrivals are counted under the block's mutex; waiters sleep on the generation
// outside the mutex, so a release wakes them without a convoy.
struct Barrier {
  std::atomic<uint32_t> gen{0};
  int waiting = 0;
  int site = 0;           // __syncthreads: the source line of the first arrival
  int kind = 0;           // warp collectives: what the first lane called
  unsigned mask = 0;
};

// What a lane hands to a warp collective (a shuffle value, a vote, mma fragments).
struct LaneSlot {
  alignas(16) unsigned char bytes[32];
};

enum Kind : int { kSyncwarp = 1, kShfl, kVote, kMma };
EMU_COUNTING(static_assert(int{kSyncwarp} == count::kSyncwarp && int{kShfl} == count::kShfl &&
                           int{kVote} == count::kVote && int{kMma} == count::kMma);)

struct Block {
  const char* kernel;
  const char* file;
  int line;
  dim3 grid, block;
  unsigned nthreads, nwarps;
  size_t dynamic_bytes;
  int total_limit;  // static plus dynamic shared memory (48 KB, or the opt-in maximum)

  uint3 index;
  std::mutex m;
  Barrier block_bar;
  std::vector<Barrier> warp_bar;
  std::unique_ptr<LaneSlot[]> slots[2];  // [gen & 1][thread]
  std::vector<char> exited;
  unsigned exited_count = 0, blocked = 0;

  unsigned char* dynamic_smem = nullptr;
  struct Static {
    int site;
    size_t bytes;
    unsigned char* p;
  };
  std::vector<Static> statics;
  size_t static_bytes = 0;
  EMU_COUNTING(count::BlockCounts* counts = nullptr;)

  // The shared window: the 32-bit shared addresses __cvta_generic_to_shared gives and
  // cp.async takes. Each allocation of the block has its own range: the dynamic one
  // at 0x400 (sm_80 and later keep the first KB), the __shared__ variables after it in
  // the order the block first reaches them, each 128-byte aligned with at least 128
  // bytes between two (an overrun lands in no allocation). Appended under m (the
  // dynamic one before the threads start), published by nwindows.
  struct Window {
    uint32_t base;
    size_t bytes;
    unsigned char* p;
    int site;  // the __shared__ declaration's line; 0: the dynamic shared memory
  };
  static constexpr int kMaxWindows = 64;
  Window windows[kMaxWindows] = {};
  std::atomic<int> nwindows{0};
  uint64_t next_window = 0x400;
  bool add_window(unsigned char* p, size_t bytes, int site) {
    const int k = nwindows.load(std::memory_order_relaxed);
    if (k == kMaxWindows || next_window + bytes > 0xffffffffull) return false;
    windows[k] = {static_cast<uint32_t>(next_window), bytes, p, site};
    next_window = (next_window + bytes + 128 + 127) & ~uint64_t{127};
    nwindows.store(k + 1, std::memory_order_release);
    return true;
  }

  Block(const char* k, const char* f, int l, dim3 g, dim3 b, size_t smem, int limit, uint3 idx)
      : kernel(k), file(f), line(l), grid(g), block(b), nthreads(b.x * b.y * b.z),
        nwarps((nthreads + 31) / 32), dynamic_bytes(smem), total_limit(limit), index(idx),
        warp_bar(nwarps), exited(nthreads, 0) {
    slots[0] = std::make_unique_for_overwrite<LaneSlot[]>(nthreads);
    slots[1] = std::make_unique_for_overwrite<LaneSlot[]>(nthreads);
    // Exactly the launch's size (no slack for an overrun to hide in).
    dynamic_smem = static_cast<unsigned char*>(::operator new[](smem, std::align_val_t(16)));
    fill_garbage(dynamic_smem, smem);
    add_window(dynamic_smem, smem, 0);  // (smem fits: the launch checked it)
  }
  ~Block() {
    ::operator delete[](dynamic_smem, std::align_val_t(16));
    for (auto& s : statics) ::operator delete[](s.p, std::align_val_t(16));
  }
  unsigned lanes_in_warp(unsigned w) const { return std::min(32u, nthreads - 32 * w); }
  unsigned existing_mask(unsigned w) const {
    const unsigned n = lanes_in_warp(w);
    return n == 32 ? 0xffffffffu : (1u << n) - 1;
  }
};

struct ThreadCtx {
  Block* block = nullptr;
  unsigned tid = 0, warp = 0, lane = 0;
};
inline thread_local ThreadCtx ctx;

[[noreturn]] inline void vfail(const char* fmt, va_list ap) {
  char msg[2048];
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  if (Block* blk = ctx.block) {
    std::fprintf(stderr,
                 "\ncuda emulation: %s\n  in kernel %s (launched at %s:%d), block (%u,%u,%u) "
                 "thread (%u,%u,%u)\n",
                 msg, blk->kernel, blk->file, blk->line, blk->index.x, blk->index.y, blk->index.z,
                 threadIdx.x, threadIdx.y, threadIdx.z);
  } else {
    std::fprintf(stderr, "\ncuda emulation: %s\n", msg);
  }
  std::fflush(stderr);
  std::abort();
}
[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfail(fmt, ap);
}

// Every live thread of the block waits on something none of them will signal.
inline void check_deadlock(Block& blk) {
  if (blk.blocked + blk.exited_count < blk.nthreads) return;
  std::string where;
  if (blk.block_bar.waiting)
    where += " " + std::to_string(blk.block_bar.waiting) + " at __syncthreads (line " +
             std::to_string(blk.block_bar.site) + ");";
  for (unsigned w = 0; w < blk.nwarps; ++w)
    if (blk.warp_bar[w].waiting)
      where += " " + std::to_string(blk.warp_bar[w].waiting) + " of warp " + std::to_string(w) +
               " in a warp collective;";
  fail("deadlock: every live thread of the block waits:%s %u exited", where.c_str(),
       blk.exited_count);
}

// Waits for bar's generation to move on (the caller holds blk.m and has arrived;
// returns without it).
inline void wait_for(Block& blk, Barrier& bar, std::unique_lock<std::mutex>& lock) {
  const uint32_t gen = bar.gen.load(std::memory_order_relaxed);
  ++blk.blocked;
  check_deadlock(blk);
  lock.unlock();
  wait_while_equal(bar.gen, gen);
}

// Lets bar's waiters go; waiters: how many of its arrivals are blocked in wait_for.
inline void release(Block& blk, Barrier& bar, int waiters) {
  blk.blocked -= waiters;
  bar.waiting = 0;
  bar.gen.fetch_add(1, std::memory_order_release);
  wake_all(bar.gen);
}

// Block barrier: every thread at the same __syncthreads; exited threads count as
// arrived (PTX: a barrier held up only by exited threads is released).
inline void syncthreads(int site) {
  Block& blk = *ctx.block;
  std::unique_lock<std::mutex> lock(blk.m);
  Barrier& bar = blk.block_bar;
  if (bar.waiting == 0) {
    bar.site = site;
  } else if (bar.site != site) {
    fail("__syncthreads at line %d while %d thread(s) of the block wait at the one at line %d "
         "(a barrier in divergent code)",
         site, bar.waiting, bar.site);
  }
  ++bar.waiting;
  if (bar.waiting + blk.exited_count == blk.nthreads) {
    EMU_COUNTING(count::barrier(blk.counts);)
    release(blk, bar, bar.waiting - 1);
    return;
  }
  wait_for(blk, bar, lock);
}

// A warp collective: the lanes named in mask each put a slot in, wait for one
// another, then each reads what it needs (read(slots of this generation)).
template <typename Put, typename Get>
inline void warp_collective(int kind, unsigned mask, Put&& put, Get&& get) {
  Block& blk = *ctx.block;
  const unsigned w = ctx.warp, lane = ctx.lane;
  std::unique_lock<std::mutex> lock(blk.m);
  if (!(mask >> lane & 1u)) fail("warp collective: the calling lane %u is not in mask 0x%08x", lane, mask);
  if (mask & ~blk.existing_mask(w))
    fail("warp collective: mask 0x%08x names lanes that do not exist (warp %u has %u lanes)", mask,
         w, blk.lanes_in_warp(w));
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && blk.exited[32 * w + l])
      fail("warp collective: mask 0x%08x names lane %u, which has exited", mask, l);
  Barrier& bar = blk.warp_bar[w];
  if (bar.waiting == 0) {
    bar.kind = kind;
    bar.mask = mask;
  } else if (bar.kind != kind || bar.mask != mask) {
    fail("warp collective (kind %d, mask 0x%08x) meets another (kind %d, mask 0x%08x) in the "
         "same warp: lanes diverged",
         kind, mask, bar.kind, bar.mask);
  }
  // Two buffers: a lane can be at most one collective ahead, so none overwrites a slot
  // that another still reads.
  LaneSlot* slots = blk.slots[bar.gen.load(std::memory_order_relaxed) & 1].get() + 32 * w;
  put(slots[lane]);
  ++bar.waiting;
  if (static_cast<unsigned>(bar.waiting) == static_cast<unsigned>(std::popcount(mask))) {
    EMU_COUNTING(count::collective(blk.counts, w, kind, mask == blk.existing_mask(w));)
    release(blk, bar, bar.waiting - 1);
    lock.unlock();
  } else {
    wait_for(blk, bar, lock);
  }
  get(static_cast<const LaneSlot*>(slots));
}

inline void syncwarp(unsigned mask) {
  warp_collective(kSyncwarp, mask, [](LaneSlot&) {}, [](const LaneSlot*) {});
}

// Shuffles (PTX shfl.sync): the source lane within the lane's width-segment; a
// source outside the segment (up/down/bfly) returns the caller's own value.
enum ShflMode { kIdx, kUp, kDown, kBfly };
template <typename T>
inline T shfl(unsigned mask, T v, int arg, int width, ShflMode mode) {
  static_assert(sizeof(T) <= sizeof(LaneSlot::bytes) && std::is_trivially_copyable_v<T>);
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail("shuffle width %d is not a power of two in [1, 32]", width);
  const int lane = static_cast<int>(ctx.lane), base = lane & ~(width - 1);
  int src;
  switch (mode) {
    case kIdx: src = base + (arg & (width - 1)); break;
    case kUp: src = lane - arg >= base ? lane - arg : lane; break;
    case kDown: src = lane + arg < base + width ? lane + arg : lane; break;
    default: src = (lane ^ arg) < base + width && (lane ^ arg) >= base ? lane ^ arg : lane; break;
  }
  if (!(mask >> src & 1u)) fail("shuffle reads lane %d, which is not in mask 0x%08x", src, mask);
  T out;
  warp_collective(
      kShfl, mask, [&](LaneSlot& s) { std::memcpy(s.bytes, &v, sizeof(T)); },
      [&](const LaneSlot* s) { std::memcpy(&out, s[src].bytes, sizeof(T)); });
  return out;
}

inline unsigned ballot(unsigned mask, bool pred) {
  unsigned out = 0;
  warp_collective(
      kVote, mask, [&](LaneSlot& s) { s.bytes[0] = pred; },
      [&](const LaneSlot* s) {
        for (unsigned l = 0; l < 32; ++l)
          if ((mask >> l & 1u) && s[l].bytes[0]) out |= 1u << l;
      });
  return out;
}

// mma.sync.aligned.m16n8k16.row.col.f32.<AB>.<AB>.f32: D = A B + C for the warp, A
// 16x16 and B 16x8 in registers as PTX documents (lane = 4 g + t holds A rows g and
// g + 8, columns 2t, 2t + 1, 2t + 8, 2t + 9; B rows 2t, 2t + 1, 2t + 8, 2t + 9 of
// column g; D rows g and g + 8, columns 2t and 2t + 1). Products are exact in fp32;
// they are summed in k order (the hardware's order and rounding are its own).
template <typename AB>
inline void mma_m16n8k16(float* d0, float* d1, float* d2, float* d3, uint32_t a0, uint32_t a1,
                         uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1, float c0, float c1,
                         float c2, float c3) {
  auto half_of = [](uint32_t bits, int hi) {
    return static_cast<float>(AB(static_cast<uint16_t>(hi ? bits >> 16 : bits & 0xffff),
                                 AB::from_bits()));
  };
  float out[4] = {c0, c1, c2, c3};
  warp_collective(
      kMma, 0xffffffffu,
      [&](LaneSlot& s) {
        const uint32_t regs[6] = {a0, a1, a2, a3, b0, b1};
        std::memcpy(s.bytes, regs, sizeof regs);
      },
      [&](const LaneSlot* s) {
        float A[16][16], B[16][8];
        for (int L = 0; L < 32; ++L) {
          uint32_t r[6];
          std::memcpy(r, s[L].bytes, sizeof r);
          const int g = L >> 2, t = L & 3;
          for (int hi = 0; hi < 2; ++hi) {
            A[g][2 * t + hi] = half_of(r[0], hi);
            A[g + 8][2 * t + hi] = half_of(r[1], hi);
            A[g][2 * t + 8 + hi] = half_of(r[2], hi);
            A[g + 8][2 * t + 8 + hi] = half_of(r[3], hi);
            B[2 * t + hi][g] = half_of(r[4], hi);
            B[2 * t + 8 + hi][g] = half_of(r[5], hi);
          }
        }
        const int g = static_cast<int>(ctx.lane) >> 2, t = static_cast<int>(ctx.lane) & 3;
        for (int k = 0; k < 16; ++k) {
          out[0] += A[g][k] * B[k][2 * t];
          out[1] += A[g][k] * B[k][2 * t + 1];
          out[2] += A[g + 8][k] * B[k][2 * t];
          out[3] += A[g + 8][k] * B[k][2 * t + 1];
        }
      });
  *d0 = out[0];
  *d1 = out[1];
  *d2 = out[2];
  *d3 = out[3];
}

// ---- shared memory ------------------------------------------------------------------

template <typename T>
inline T* dynamic_shared(size_t align) {
  if (align > 16) fail("extern __shared__ aligned to %zu bytes: the emulation aligns to 16", align);
  return reinterpret_cast<T*>(ctx.block->dynamic_smem);
}

// A __shared__ variable: one allocation per block, made by the first thread that
// reaches the declaration (site: its source line), exactly its size.
template <typename T>
inline T& static_shared(int site) {
  Block& blk = *ctx.block;
  std::lock_guard<std::mutex> g(blk.m);
  for (auto& s : blk.statics)
    if (s.site == site) return *reinterpret_cast<T*>(s.p);
  static_assert(alignof(T) <= 16, "__shared__ variables aligned beyond 16 bytes");
  blk.static_bytes += sizeof(T);
  const size_t per_block = device().props.sharedMemPerBlock;
  if (blk.static_bytes > per_block)
    fail("static shared memory of %zu bytes exceeds the %zu a block may declare", blk.static_bytes,
         per_block);
  if (blk.static_bytes + blk.dynamic_bytes > static_cast<size_t>(blk.total_limit))
    fail("static (%zu) plus dynamic (%zu) shared memory exceeds this kernel's %d bytes",
         blk.static_bytes, blk.dynamic_bytes, blk.total_limit);
  auto* p = static_cast<unsigned char*>(::operator new[](sizeof(T), std::align_val_t(16)));
  fill_garbage(p, sizeof(T));
  blk.statics.push_back({site, sizeof(T), p});
  if (!blk.add_window(p, sizeof(T), site))
    fail("more than %d __shared__ variables in a block (the emulation's shared window)",
         Block::kMaxWindows - 1);
  EMU_COUNTING(count::add_shared(blk.counts, p, sizeof(T));)
  return *reinterpret_cast<T*>(p);
}

// ---- the shared window and asynchronous copies (sm_80: cp.async) ----------------------

inline std::string describe_windows(const Block& blk) {
  std::string out;
  const int n = blk.nwindows.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    const Block::Window& w = blk.windows[i];
    char buf[128];
    if (w.site)
      std::snprintf(buf, sizeof buf, "%s__shared__ of line %d [0x%x, 0x%llx)", i ? ", " : "",
                    w.site, w.base, static_cast<unsigned long long>(w.base + w.bytes));
    else
      std::snprintf(buf, sizeof buf, "%sdynamic [0x%x, 0x%llx)", i ? ", " : "", w.base,
                    static_cast<unsigned long long>(w.base + w.bytes));
    out += buf;
  }
  return out.empty() ? "none" : out;
}

// The window of the block's allocation that holds host pointer q, or null. A pointer
// one past an allocation's end is a valid pointer too, so it counts, but only where it
// is not the start of another (host allocations may be adjacent).
inline const Block::Window* window_holding(const Block& blk, const void* q) {
  const auto c = reinterpret_cast<uintptr_t>(q);
  const int n = blk.nwindows.load(std::memory_order_acquire);
  const Block::Window* end_of = nullptr;
  for (int i = 0; i < n; ++i) {
    const Block::Window& w = blk.windows[i];
    const auto lo = reinterpret_cast<uintptr_t>(w.p);
    if (c - lo < w.bytes) return &w;
    if (c == lo + w.bytes) end_of = &w;
  }
  return end_of;
}

// __cvta_generic_to_shared(p): p's address in the shared window. p must point into the
// calling block's shared memory (on a GPU anything else gives an address that means
// nothing, or another allocation's).
inline size_t cvta_generic_to_shared(const void* p, int line) {
  Block& blk = *ctx.block;
  const Block::Window* w = window_holding(blk, p);
  if (!w)
    fail("__cvta_generic_to_shared at line %d: %p is not in this block's shared memory "
         "(its allocations: %s)",
         line, p, describe_windows(blk).c_str());
  return w->base + static_cast<size_t>(static_cast<const unsigned char*>(p) - w->p);
}

// One aligned access of 4, 8 or 16 bytes, as the kernel's own loads and stores are (so
// ThreadSanitizer and AddressSanitizer see it), except in counting builds: there
// cp.async is counted at its issue (count::async_copy) and these accesses are hidden.
struct __attribute__((may_alias, aligned(16))) CopyBytes16 {
  uint64_t lo, hi;
};
typedef uint64_t __attribute__((may_alias)) CopyBytes8;
typedef uint32_t __attribute__((may_alias)) CopyBytes4;
EMU_COUNT_UNSEEN inline void copy_access(void* dst, const void* src, unsigned size) {
  switch (size) {
    case 16: *static_cast<CopyBytes16*>(dst) = *static_cast<const CopyBytes16*>(src); break;
    case 8: *static_cast<CopyBytes8*>(dst) = *static_cast<const CopyBytes8*>(src); break;
    default: *static_cast<CopyBytes4*>(dst) = *static_cast<const CopyBytes4*>(src); break;
  }
}

// The calling thread's copies in flight: read from global memory at their issue, not
// yet written to shared memory. Uncommitted ones belong to no group; committed groups
// complete oldest first (PTX: cp.async.commit_group, cp.async.wait_group).
struct AsyncCopy {
  unsigned char* dst;
  unsigned size;
  int line;
  alignas(16) unsigned char data[16];
};
struct AsyncCopies {
  std::vector<AsyncCopy> uncommitted;
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first; a group may be empty
};
inline thread_local AsyncCopies async_copies;

enum CpAsyncKind { kCpAsyncCA, kCpAsyncCG };

// cp.async.{ca,cg}.shared.global [dst], [src], cp-size: dst a shared-window address
// (__cvta_generic_to_shared), src a global address, both aligned to cp-size (4, 8 or
// 16; .cg: 16 only), the cp-size bytes at dst inside one of the block's shared
// allocations. The source is read now; the shared memory is written only when a
// cp.async.wait_group or wait_all of this thread completes the copy's group, by this
// thread (so until then the destination holds what it held, the NaN fill at first,
// and ThreadSanitizer sees the write where the kernel waits).
template <CpAsyncKind K, typename D, typename S>
EMU_COUNT_NOINLINE inline void cp_async(D dst, S src, long size, int line) {
  static_assert(std::is_integral_v<D>,
                "cp.async's destination is a shared-window address (a 32-bit register from "
                "__cvta_generic_to_shared), not a pointer");
  const char* const name = K == kCpAsyncCG ? "cp.async.cg" : "cp.async.ca";
  const void* from;
  if constexpr (std::is_pointer_v<S>) {
    from = static_cast<const void*>(src);
  } else {
    static_assert(std::is_integral_v<S>, "cp.async's source: a global address");
    from = reinterpret_cast<const void*>(static_cast<uintptr_t>(src));
  }
  Block& blk = *ctx.block;
  if (K == kCpAsyncCG ? size != 16 : size != 4 && size != 8 && size != 16)
    fail("%s at line %d: cp-size %ld (PTX: .cg copies 16 bytes, .ca 4, 8 or 16)", name, line, size);
  if (static_cast<unsigned long long>(dst) > 0xffffffffull)
    fail("%s at line %d: shared address 0x%llx does not fit the 32-bit shared window", name, line,
         static_cast<unsigned long long>(dst));
  const uint32_t a = static_cast<uint32_t>(dst);
  if (a % size)
    fail("%s at line %d: misaligned shared destination 0x%x (cp-size %ld: both addresses must be "
         "aligned to it)",
         name, line, a, size);
  if (reinterpret_cast<uintptr_t>(from) % size)
    fail("%s at line %d: misaligned global source %p (cp-size %ld: both addresses must be aligned "
         "to it)",
         name, line, from, size);
  const int n = blk.nwindows.load(std::memory_order_acquire);
  const Block::Window* w = nullptr;
  for (int i = 0; i < n && !w; ++i)
    if (a >= blk.windows[i].base && a - blk.windows[i].base < blk.windows[i].bytes) w = &blk.windows[i];
  if (!w)
    fail("%s at line %d: shared address 0x%x is in none of this block's shared allocations (%s)",
         name, line, a, describe_windows(blk).c_str());
  if (a - w->base + size > w->bytes)
    fail("%s at line %d: the %ld bytes at shared address 0x%x run past the end of the allocation "
         "[0x%x, 0x%llx)",
         name, line, size, a, w->base, static_cast<unsigned long long>(w->base + w->bytes));
  if (window_holding(blk, from))
    fail("%s at line %d: the source %p is this block's shared memory (cp.async reads global memory)",
         name, line, from);
  AsyncCopy c;
  c.dst = w->p + (a - w->base);
  c.size = static_cast<unsigned>(size);
  c.line = line;
  copy_access(c.data, from, c.size);
  EMU_COUNTING(count::async_copy(from, c.dst, c.size, __builtin_return_address(0));)
  async_copies.uncommitted.push_back(c);
}

// cp.async.commit_group: the thread's uncommitted copies become its newest group (an
// empty group when there are none, as in PTX).
inline void cp_async_commit_group(int) {
  AsyncCopies& q = async_copies;
  q.committed.emplace_back(std::move(q.uncommitted));
  q.uncommitted.clear();
}

// cp.async.wait_group n: completes the thread's oldest committed groups until at most
// the n newest are pending; the copies of a completed group are written to shared
// memory here, by this thread. Uncommitted copies stay pending.
inline void cp_async_wait_group(long n, int line) {
  if (n < 0) fail("cp.async.wait_group at line %d: a negative group count %ld", line, n);
  AsyncCopies& q = async_copies;
  while (q.committed.size() > static_cast<size_t>(n)) {
    for (const AsyncCopy& c : q.committed.front()) copy_access(c.dst, c.data, c.size);
    q.committed.pop_front();
  }
}

// cp.async.wait_all: commit_group, then wait_group 0 (PTX).
inline void cp_async_wait_all(int line) {
  cp_async_commit_group(line);
  cp_async_wait_group(0, line);
}

// A thread must not end with copies in flight: on a GPU they would land after it,
// unordered with everything else (a latent race), and here they would never land.
inline void check_async_copies_done() {
  const AsyncCopies& q = async_copies;
  size_t pending = q.uncommitted.size(), groups = 0;
  const AsyncCopy* oldest = nullptr;
  for (const auto& g : q.committed) {
    if (g.empty()) continue;
    pending += g.size();
    ++groups;
    if (!oldest) oldest = &g.front();
  }
  if (!oldest && !q.uncommitted.empty()) oldest = &q.uncommitted.front();
  if (pending)
    fail("the thread exits with %zu cp.async copies pending (%zu never committed, the others in %zu "
         "committed group(s) not waited for; the oldest issued at line %d): complete them with "
         "cp.async.wait_group / wait_all before the kernel ends",
         pending, q.uncommitted.size(), groups, oldest->line);
}

// __launch_bounds__(max threads[, min blocks per SM[, max blocks per cluster]]): a
// launch with more threads per block fails on a GPU.
inline void check_launch_bounds(long max_threads, long = 0, long = 0) {
  if (ctx.block->nthreads > static_cast<unsigned long>(max_threads))
    fail("a launch of %u threads per block exceeds the kernel's __launch_bounds__(%ld)",
         ctx.block->nthreads, max_threads);
}

// The thread leaves the kernel: it no longer holds up block barriers, and no warp
// collective may still wait for it.
inline void exit_thread() {
  check_async_copies_done();
  Block& blk = *ctx.block;
  std::unique_lock<std::mutex> lock(blk.m);
  blk.exited[ctx.tid] = 1;
  ++blk.exited_count;
  Barrier& wb = blk.warp_bar[ctx.warp];
  if (wb.waiting && (wb.mask >> ctx.lane & 1u))
    fail("lane %u exits while lanes of its warp wait for it in a warp collective (mask 0x%08x)",
         ctx.lane, wb.mask);
  if (blk.block_bar.waiting && blk.block_bar.waiting + blk.exited_count == blk.nthreads) {
    EMU_COUNTING(count::barrier(blk.counts);)
    release(blk, blk.block_bar, blk.block_bar.waiting);
  }
  if (blk.exited_count < blk.nthreads) check_deadlock(blk);
  EMU_COUNTING(if (blk.exited_count == blk.nthreads) {
    count::block_end(blk.counts);
    blk.counts = nullptr;
  })
}

// ---- atomics (on global or shared memory) ------------------------------------------------
// (Counting builds: one read-modify-write of the cell per call, at the caller's site.)
#define EMU_COUNT_ATOMIC(p) EMU_COUNTING(emu::count::atomic(p, sizeof(*p), __builtin_return_address(0));)
template <typename T>
EMU_COUNT_NOINLINE inline T atomic_add(T* p, T v) {
  EMU_COUNT_ATOMIC(p)
  return std::atomic_ref<T>(*p).fetch_add(v);
}
template <typename T, typename F>
EMU_COUNT_NOINLINE inline T atomic_update(T* p, F f) {
  EMU_COUNT_ATOMIC(p)
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (!a.compare_exchange_weak(old, f(old))) {
  }
  return old;
}

// ---- the threads that play CUDA threads ---------------------------------------------------
// Kept from launch to launch (creating threads is what costs most under TSan); a
// launch hands worker i its job and waits for all of them, which orders launches as
// one stream does.
class Pool {
 public:
  void run(unsigned count, const std::function<void(unsigned)>& job) {
    while (workers_.size() < count) workers_.push_back(std::make_unique<Worker>(this, workers_.size()));
    {
      std::lock_guard<std::mutex> g(m_);
      remaining_ = count;
    }
    for (unsigned i = 0; i < count; ++i) workers_[i]->start(&job);
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return remaining_ == 0; });
  }
  ~Pool() {
    for (auto& w : workers_) w->start(nullptr);
    for (auto& w : workers_) w->thread.join();
  }

 private:
  struct Worker {
    Pool* pool;
    unsigned index;
    std::mutex m;
    std::condition_variable cv;
    const std::function<void(unsigned)>* job = nullptr;
    bool go = false;
    std::thread thread;
    Worker(Pool* p, size_t i) : pool(p), index(static_cast<unsigned>(i)), thread([this] { loop(); }) {}
    void start(const std::function<void(unsigned)>* j) {
      std::lock_guard<std::mutex> g(m);
      job = j;
      go = true;
      cv.notify_one();
    }
    void loop() {
      for (;;) {
        const std::function<void(unsigned)>* j;
        {
          std::unique_lock<std::mutex> lock(m);
          cv.wait(lock, [&] { return go; });
          go = false;
          j = job;
        }
        if (!j) return;
        (*j)(index);
        std::lock_guard<std::mutex> g(pool->m_);
        if (--pool->remaining_ == 0) pool->done_.notify_one();
      }
    }
  };
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex m_;
  std::condition_variable done_;
  unsigned remaining_ = 0;
};
inline Pool& pool() {
  static Pool p;
  return p;
}

// ---- launches -------------------------------------------------------------------------

template <typename N>
inline bool to_dim3(N n, dim3& out) {
  if constexpr (std::is_same_v<N, dim3>) {
    out = n;
    return true;
  } else {
    static_assert(std::is_integral_v<N>, "launch configuration: an integer or dim3");
    if constexpr (std::is_signed_v<N>)
      if (n < 0) return false;
    if (static_cast<unsigned long long>(n) > 0xffffffffull) return false;
    out = dim3(static_cast<unsigned>(n));
    return true;
  }
}

// What <<<grid, block, smem, stream>>> becomes (emulate_cu.py): checked against the
// device's limits as the CUDA runtime checks them, then run block by block.
template <typename K>
struct Launch {
  K kernel;
  const char* name;
  const char* file;
  int line;
  dim3 grid, block;
  size_t smem;
  std::string error;  // why the configuration is invalid, if it is

  template <typename... Args>
  void operator()(Args... args) const {
    if (!error.empty()) {
      set_error(cudaErrorInvalidConfiguration,
                std::string(name) + " at " + file + ":" + std::to_string(line) + ": " + error);
      return;
    }
    const cudaDeviceProp& p = device().props;
    const unsigned long long threads = 1ull * block.x * block.y * block.z;
    const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
    std::string bad;
    if (threads == 0 || blocks == 0)
      bad = "an empty grid or block";
    else if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024)
      bad = "a block of more than 1024 threads (or over 1024 x 1024 x 64)";
    else if (grid.x > static_cast<unsigned>(p.maxGridSize[0]) || grid.y > 65535 || grid.z > 65535)
      bad = "a grid over the limits (2^31 - 1, 65535, 65535)";
    const int attr = max_dynamic_smem_of(reinterpret_cast<const void*>(kernel));
    const size_t limit = attr >= 0 ? static_cast<size_t>(attr) : p.sharedMemPerBlock;
    if (bad.empty() && smem > limit)
      bad = std::to_string(smem) + " bytes of dynamic shared memory, over the kernel's " +
            std::to_string(limit) +
            (attr >= 0 ? " (set by cudaFuncSetAttribute)"
                       : " (48 KB without cudaFuncSetAttribute opt-in)");
    if (!bad.empty()) {
      set_error(smem > limit ? cudaErrorInvalidValue : cudaErrorInvalidConfiguration,
                std::string(name) + " at " + file + ":" + std::to_string(line) + " on " + p.name +
                    ": " + bad + " (grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) +
                    "x" + std::to_string(grid.z) + ", block " + std::to_string(block.x) + "x" +
                    std::to_string(block.y) + "x" + std::to_string(block.z) + ", " +
                    std::to_string(smem) + " bytes)");
      return;
    }
    // Threads go from block to block on their own: thread t of a slot runs thread t
    // of blocks s, s + slots, ... and meets its block's other threads only at that
    // block's barriers. A block's state is made by its first thread and dropped once
    // all its threads have moved on. Blocks of different slots run at the same time,
    // so a race between blocks is a race here too.
    EMU_COUNTING(const unsigned grid3[3] = {grid.x, grid.y, grid.z}, block3[3] = {block.x, block.y, block.z};
                 count::LaunchCounts* const counts = count::launch_begin(
                     reinterpret_cast<const void*>(kernel), name, file, line, grid3, block3, smem);)
    const unsigned slots = static_cast<unsigned>(
        std::min<unsigned long long>(blocks, static_cast<unsigned>(device().concurrent_blocks)));
    const int total_limit =  // static plus dynamic shared memory
        static_cast<int>(attr >= 0 ? p.sharedMemPerBlockOptin : p.sharedMemPerBlock);
    struct Made {
      unsigned long long index;
      std::unique_ptr<Block> block;
      unsigned entered;
    };
    struct Slot {
      std::mutex m;
      std::vector<Made> made;  // in block order
    };
    std::vector<Slot> slot(slots);
    const unsigned n = static_cast<unsigned>(threads);
    auto block_for = [&](unsigned s, unsigned long long b) -> Block& {
      std::lock_guard<std::mutex> g(slot[s].m);
      auto& made = slot[s].made;
      auto it = std::find_if(made.begin(), made.end(), [&](const Made& m) { return m.index == b; });
      if (it == made.end()) {
        const uint3 idx{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                        static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
        made.push_back({b, std::make_unique<Block>(name, file, line, grid, block, smem, total_limit, idx), 0});
        it = made.end() - 1;
        EMU_COUNTING(it->block->counts = count::block_begin(counts, n, it->block->dynamic_smem, smem);)
      }
      Block& blk = *it->block;
      // Once every thread has entered block b, all have left the ones before it.
      if (++it->entered == n) made.erase(made.begin(), it);
      return blk;
    };
    const std::tuple<Args...> packed(args...);
    pool().run(slots * n, [&](unsigned worker) {
      const unsigned s = worker / n, tid = worker % n;
      threadIdx = {tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
      blockDim = block;
      gridDim = grid;
      for (unsigned long long b = s; b < blocks; b += slots) {
        Block& blk = block_for(s, b);
        ctx = {&blk, tid, tid / 32, tid % 32};
        blockIdx = blk.index;
        EMU_COUNTING(count::thread_begin(blk.counts, tid);)
        std::apply(kernel, packed);
        EMU_COUNTING(count::thread_end();)
        exit_thread();
      }
      ctx = {};
    });
    EMU_COUNTING(count::launch_end(counts);)
  }
};

// launch(kernel, name, file, line, grid, block[, dynamic shared bytes[, stream]]).
template <typename K, typename G, typename B, typename... Rest>
inline Launch<K> launch(K kernel, const char* name, const char* file, int line, G grid, B block,
                        Rest... rest) {
  static_assert(sizeof...(Rest) <= 2, "<<<grid, block, shared memory, stream>>>");
  Launch<K> l{kernel, name, file, line, {}, {}, 0, {}};
  if constexpr (sizeof...(Rest) >= 1) {
    const auto smem = std::get<0>(std::make_tuple(rest...));
    using S = std::decay_t<decltype(smem)>;
    static_assert(std::is_integral_v<S>, "shared memory size: an integer");
    if constexpr (std::is_signed_v<S>)
      if (smem < 0) l.error = "a negative dynamic shared memory size";
    l.smem = static_cast<size_t>(smem);
  }
  if (!to_dim3(grid, l.grid)) l.error = "the grid size does not fit an unsigned int";
  if (!to_dim3(block, l.block)) l.error = "the block size does not fit an unsigned int";
  return l;
}

inline cudaError_t get_last_error(bool clear) {
  std::lock_guard<std::mutex> g(device().m);
  const cudaError_t e = device().last_error;
  if (clear) device().last_error = cudaSuccess;
  return e;
}

}  // namespace emu

// ---- the CUDA runtime API and device functions -------------------------------------------
inline cudaError_t cudaGetLastError() { return emu::get_last_error(true); }
inline cudaError_t cudaPeekAtLastError() { return emu::get_last_error(false); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
  }
  return "unknown error";
}

template <typename K>
inline cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  auto& d = emu::device();
  if (value < 0 || static_cast<size_t>(value) > d.props.sharedMemPerBlockOptin) {
    emu::set_error(cudaErrorInvalidValue,
                   "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " + std::to_string(value) +
                       ") over " + d.props.name + "'s opt-in limit of " +
                       std::to_string(d.props.sharedMemPerBlockOptin) + " bytes");
    return cudaErrorInvalidValue;
  }
  std::lock_guard<std::mutex> g(d.m);
  const void* key = reinterpret_cast<const void*>(kernel);
  for (auto& [k, v] : d.max_dynamic_smem)
    if (k == key) {
      v = value;
      return cudaSuccess;
    }
  d.max_dynamic_smem.emplace_back(key, value);
  return cudaSuccess;
}

#define __syncthreads() emu::syncthreads(__LINE__)
#define __cvta_generic_to_shared(p) emu::cvta_generic_to_shared((p), __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return emu::shfl(mask, v, src, width, emu::kIdx);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::shfl(mask, v, lane_mask, width, emu::kBfly);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shfl(mask, v, static_cast<int>(delta), width, emu::kUp);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shfl(mask, v, static_cast<int>(delta), width, emu::kDown);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return emu::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) { return emu::ballot(mask, pred != 0) == mask; }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> inline T __ldg(const T* p) { return *p; }

template <typename T> inline T atomicAdd(T* p, T v) { return emu::atomic_add(p, v); }
template <typename T> inline T atomicSub(T* p, T v) { return emu::atomic_add(p, T(0) - v); }
template <typename T> EMU_COUNT_NOINLINE inline T atomicExch(T* p, T v) {
  EMU_COUNT_ATOMIC(p)
  return std::atomic_ref<T>(*p).exchange(v);
}
template <typename T> inline T atomicMax(T* p, T v) {
  return emu::atomic_update(p, [v](T o) { return o < v ? v : o; });
}
template <typename T> inline T atomicMin(T* p, T v) {
  return emu::atomic_update(p, [v](T o) { return v < o ? v : o; });
}
template <typename T> EMU_COUNT_NOINLINE inline T atomicCAS(T* p, T compare, T v) {
  EMU_COUNT_ATOMIC(p)
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);
  return compare;
}

// Device min/max of mixed integer types, as CUDA's overloads take them.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) emu::fail("device-side assert failed: %s (%s:%d)", #cond, __FILE__, __LINE__); \
  } while (0)
// As c10's: a failed call raises, and the error it left is cleared.
#define C10_CUDA_CHECK(expr)                                                         \
  do {                                                                               \
    const cudaError_t emu_err_ = (expr);                                             \
    if (emu_err_ != cudaSuccess) {                                                   \
      const std::string emu_detail_ = emu::device().last_error_detail;               \
      (void)cudaGetLastError();                                                      \
      TORCH_CHECK(false, "CUDA error: ", cudaGetErrorString(emu_err_), " (", emu_detail_, ")"); \
    }                                                                                \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())

// ---- ATen's CUDA context, as the kernels' host code uses it ------------------------------
namespace at::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline cudaDeviceProp* getCurrentDeviceProperties() { return &emu::device().props; }
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace at::cuda
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
