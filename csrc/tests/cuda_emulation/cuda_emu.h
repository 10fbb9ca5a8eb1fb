// A minimal CPU emulation of the CUDA features csrc/cuda/window_attention.cu uses (see run.sh).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Half.h>
#include <c10/util/BFloat16.h>
#include <barrier>
#include <thread>
#include <vector>
#include <memory>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(x) do { if (!(x)) { fprintf(stderr, "device assert failed: %s\n", #x); abort(); } } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() do {} while (0)
#define C10_CUDA_CHECK(x) (void)(x)

struct uint3_ { unsigned x = 0, y = 0, z = 0; };
struct dim3 { unsigned x, y, z; dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {} };
inline thread_local uint3_ threadIdx, blockIdx, blockDim, gridDim;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename K> int cudaFuncSetAttribute(K, cudaFuncAttribute, int) { return 0; }

namespace emu {
struct Warp { std::unique_ptr<std::barrier<>> bar; double slot[32]; uint32_t a[32][4], b[32][2]; };
struct Block { std::unique_ptr<std::barrier<>> bar; std::vector<Warp> warps; unsigned char* smem; };
inline thread_local Block* cur = nullptr;
inline void syncthreads() { cur->bar->arrive_and_wait(); }
inline Warp& warp() { return cur->warps[threadIdx.x / 32]; }
inline void syncwarp() { warp().bar->arrive_and_wait(); }
template <typename T> T shfl_xor(T v, int off) {
  Warp& w = warp(); int lane = threadIdx.x & 31;
  w.slot[lane] = static_cast<double>(v); w.bar->arrive_and_wait();
  T r = static_cast<T>(w.slot[lane ^ off]); w.bar->arrive_and_wait(); return r;
}
template <typename S> float unpack(uint32_t bits, int hi) {
  uint16_t u = hi ? (bits >> 16) : (bits & 0xffff);
  return static_cast<float>(S(u, S::from_bits()));
}
template <typename S> void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  Warp& w = warp(); int lane = threadIdx.x & 31;
  w.a[lane][0] = a0; w.a[lane][1] = a1; w.a[lane][2] = a2; w.a[lane][3] = a3; w.b[lane][0] = b0; w.b[lane][1] = b1;
  w.bar->arrive_and_wait();
  float A[16][16], B[16][8];
  for (int L = 0; L < 32; ++L) {
    int g = L >> 2, t = L & 3;
    for (int hi = 0; hi < 2; ++hi) {
      A[g][2 * t + hi] = unpack<S>(w.a[L][0], hi);
      A[g + 8][2 * t + hi] = unpack<S>(w.a[L][1], hi);
      A[g][2 * t + 8 + hi] = unpack<S>(w.a[L][2], hi);
      A[g + 8][2 * t + 8 + hi] = unpack<S>(w.a[L][3], hi);
      B[2 * t + hi][g] = unpack<S>(w.b[L][0], hi);
      B[2 * t + 8 + hi][g] = unpack<S>(w.b[L][1], hi);
    }
  }
  int g = lane >> 2, t = lane & 3;
  for (int k = 0; k < 16; ++k) {
    c[0] += A[g][k] * B[k][2 * t]; c[1] += A[g][k] * B[k][2 * t + 1];
    c[2] += A[g + 8][k] * B[k][2 * t]; c[3] += A[g + 8][k] * B[k][2 * t + 1];
  }
  w.bar->arrive_and_wait();
}
inline unsigned char* smem() { return cur->smem; }
struct Launch {
  dim3 grid, block; size_t smem;
  template <typename K, typename... Args> void operator()(K kernel, Args... args) const {
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk;
        const unsigned n = block.x;
        blk.bar = std::make_unique<std::barrier<>>(n);
        blk.warps.resize((n + 31) / 32);
        for (auto& w : blk.warps) w.bar = std::make_unique<std::barrier<>>(32);
        std::vector<unsigned char> mem(smem + 16, 0xCD);  // garbage, as on a GPU
        blk.smem = mem.data() + (16 - reinterpret_cast<uintptr_t>(mem.data()) % 16) % 16;
        std::vector<std::thread> th;
        for (unsigned t = 0; t < n; ++t)
          th.emplace_back([&, t] {
            threadIdx = {t, 0, 0}; blockIdx = {bx, by, 0}; blockDim = {block.x, 1, 1};
            gridDim = {grid.x, grid.y, 1}; cur = &blk; kernel(args...);
          });
        for (auto& x : th) x.join();
      }
  }
};
inline Launch launch(dim3 g, dim3 b, size_t s = 0, int = 0) { return {g, b, s}; }
}  // namespace emu
#define __syncthreads() emu::syncthreads()
#define __syncwarp() emu::syncwarp()
template <typename T> T __shfl_xor_sync(unsigned, T v, int off) { return emu::shfl_xor(v, off); }

namespace at::cuda {
struct Props { int multiProcessorCount = 3; size_t sharedMemPerBlockOptin = 227 * 1024; };
inline Props* getCurrentDeviceProperties() { static Props p; return &p; }
inline int getCurrentCUDAStream() { return 0; }
}
namespace c10::cuda { struct CUDAGuard { explicit CUDAGuard(c10::Device) {} }; }
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
