// Small CUDA kernels that exercise what the emulation offers beyond what csrc/cuda/
// uses today (3-D grids, every shuffle, votes, atomics, static and dynamic shared
// memory, asynchronous copies, launch limits), the misuse it must report, and kernels
// whose traffic counts are known (run.sh --count); check_emulator.cpp runs them.
// Plain CUDA: emulate_cu.py rewrites it like the kernel files.
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>
#include <string>

namespace selftest {

// Each thread writes where it is: ((block, thread) coordinates packed in 5 bits each).
__global__ void where_kernel(uint32_t* out) {
  const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  out[block * nthreads + thread] = blockIdx.x | blockIdx.y << 5 | blockIdx.z << 10 |
                                   threadIdx.x << 15 | threadIdx.y << 20 | threadIdx.z << 25;
}

// Per lane: idx, up, down, xor shuffles (some within segments of 8 or 16 lanes), a
// ballot, any and all, a float and a 64-bit value.
__global__ void shuffle_kernel(int* out, double* wide) {
  const int lane = threadIdx.x & 31, t = threadIdx.x;
  int* o = out + 9 * t;
  o[0] = __shfl_sync(0xffffffffu, 100 + lane, 7);
  o[1] = __shfl_sync(0xffffffffu, 100 + lane, lane + 3, 8);
  o[2] = __shfl_up_sync(0xffffffffu, 100 + lane, 2);
  o[3] = __shfl_down_sync(0xffffffffu, 100 + lane, 5, 16);
  o[4] = __shfl_xor_sync(0xffffffffu, 100 + lane, 9);
  o[5] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[6] = __any_sync(0xffffffffu, lane == 31) + 2 * __all_sync(0xffffffffu, lane < 31);
  o[7] = static_cast<int>(__shfl_xor_sync(0xffffffffu, 0.5f * lane, 1) * 2);
  o[8] = 0;
  wide[t] = __shfl_down_sync(0xffffffffu, 1e15 + lane, 1);
}

// Every thread of every block adds into the same cells.
__global__ void atomic_kernel(float* f, int* i, unsigned long long* u, int* lo, int* hi) {
  atomicAdd(f, 1.0f);
  atomicAdd(i, 2);
  atomicAdd(u, 3ull);
  const int v = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicMin(lo, v);
  atomicMax(hi, v);
  int old = atomicAdd(i, 0), seen;
  do {  // an increment by compare-and-swap
    seen = old;
    old = atomicCAS(i, seen, seen + 1);
  } while (old != seen);
}

// Static and dynamic shared memory: reversed through a __shared__ array, summed
// through the dynamic one (n doubles).
__global__ void __launch_bounds__(256) shared_kernel(int* out, double* sums, int n) {
  __shared__ int s[256];
  extern __shared__ __align__(16) double dyn[];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  for (int k = threadIdx.x; k < n; k += blockDim.x) dyn[k] = k;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
  if (threadIdx.x == 0) {
    double total = 0;
    for (int k = 0; k < n; ++k) total += dyn[k];
    sums[blockIdx.x] = total;
  }
}

// What fresh shared memory holds: the fill pattern.
__global__ void fresh_kernel(float* f, int* i) {
  extern __shared__ __align__(16) unsigned char raw[];
  *f = reinterpret_cast<float*>(raw)[1];
  *i = reinterpret_cast<int*>(raw)[2];
}

// ---- asynchronous copies (sm_80 cp.async), as the kernels write them --------------
__device__ __forceinline__ void cp_async_16(void* dst_shared, const void* src_global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src_global) : "memory");
#endif
}
template <int Bytes>
__device__ __forceinline__ void cp_async_ca(void* dst_shared, const void* src_global) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(s), "l"(src_global), "n"(Bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Each block copies its 2 x blockDim uint4 into shared memory in two groups (the
// first into a __shared__ array, the second into the dynamic shared memory), waits
// for them (wait_group 1, then 0), and writes them back reversed (other threads'
// elements: the barrier matters).
__global__ void async_copy_kernel(const uint4* in, uint4* out) {
  __shared__ uint4 first[128];
  extern __shared__ __align__(16) uint4 second[];
  const int t = threadIdx.x, n = blockDim.x, base = 2 * n * blockIdx.x;
  cp_async_16(&first[t], &in[base + t]);
  cp_async_commit();
  cp_async_16(&second[t], &in[base + n + t]);
  cp_async_commit();
  cp_async_wait<1>();
  cp_async_wait<0>();
  __syncthreads();
  out[base + t] = second[n - 1 - t];
  out[base + n + t] = first[n - 1 - t];
}

// .ca copies of 4 and 8 bytes (32 threads): in[0, 32) by 4 bytes in a group waited
// for with a literal "wait_group 0", in[32, 96) by 8 bytes left uncommitted for
// wait_all; written back reversed.
__global__ void async_ca_kernel(const float* in, float* out) {
  __shared__ float single[32];
  __shared__ float2 pairs[32];
  const int t = threadIdx.x;
  cp_async_ca<4>(&single[t], &in[t]);
  cp_async_commit();
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  cp_async_ca<8>(&pairs[t], &in[32 + 2 * t]);
  cp_async_wait_all();
  __syncthreads();
  out[t] = single[31 - t];
  out[32 + 2 * t] = pairs[31 - t].x;
  out[33 + 2 * t] = pairs[31 - t].y;
}

// What each wait completes (32 threads, each reads only its own elements): group A
// (in[0, 32)) and group B (in[32, 64)) committed, C (in[64, 96)) not; after
// wait_group 1 only A has landed, after wait_group 0 B too, C only after wait_all.
// out: A, B, C after wait_group 1; B, C after wait_group 0; C after wait_all.
__global__ void async_pending_kernel(const uint4* in, uint4* out) {
  __shared__ uint4 a[32];
  __shared__ uint4 b[32];
  __shared__ uint4 c[32];
  const int t = threadIdx.x;
  cp_async_16(&a[t], &in[t]);
  cp_async_commit();
  cp_async_16(&b[t], &in[32 + t]);
  cp_async_commit();
  cp_async_16(&c[t], &in[64 + t]);
  cp_async_wait<1>();
  out[t] = a[t];
  out[32 + t] = b[t];
  out[64 + t] = c[t];
  cp_async_wait<0>();
  out[96 + t] = b[t];
  out[128 + t] = c[t];
  cp_async_wait_all();
  out[160 + t] = c[t];
}

// ---- misuse: each ends the process with the emulation's report ------------------
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
}

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void deadlock_kernel(int* out) {
  // Lanes 1-31 wait in a shuffle for lane 0, which waits at the barrier for them.
  if (threadIdx.x > 0 && threadIdx.x < 32) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  __syncthreads();
}

__global__ void missing_lanes_kernel(int* out) {  // launched with 40 threads
  out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
}

__global__ void assert_kernel(const int* in) { CUDA_KERNEL_ASSERT(in[threadIdx.x] >= 0); }

__global__ void cp_async_not_shared_kernel(int* buffer) { cp_async_16(buffer, buffer + 4); }

__global__ void cp_async_misaligned_kernel(const int* buffer, int source) {
  __shared__ uint4 s[4];
  if (source)
    cp_async_16(&s[0], buffer + 1);  // a global source 4 bytes off
  else
    cp_async_16(reinterpret_cast<char*>(s) + 8, buffer);  // a shared destination 8 bytes off
  cp_async_wait_all();
}

__global__ void cp_async_past_end_kernel(const int* buffer) {
  __shared__ float six[6];  // 24 bytes: 16 from offset 16 run past the end
  cp_async_16(&six[4], buffer);
  cp_async_wait_all();
}

__global__ void cp_async_cg_size_kernel(const int* buffer) {
  __shared__ uint4 s[1];
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(s));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 8;\n" ::"r"(a), "l"(buffer) : "memory");
  cp_async_wait_all();
}

__global__ void cp_async_pending_exit_kernel(const int* buffer) {
  __shared__ uint4 s[32];
  cp_async_16(&s[threadIdx.x], buffer + 4 * threadIdx.x);
  cp_async_commit();  // and no wait
}

// Thread 0's copy lands in shared memory at its wait; thread 1 reads it with no
// barrier in between: a race (ThreadSanitizer builds).
__global__ void cp_async_race_kernel(const int* buffer, int* out) {
  extern __shared__ __align__(16) int dyn_ints[];
  if (threadIdx.x == 0) {
    cp_async_16(dyn_ints, buffer);
    cp_async_wait_all();
  } else {
    out[0] = dyn_ints[0];
  }
}

// A source past the end of its allocation (AddressSanitizer builds): buffer holds 64 ints.
__global__ void cp_async_overflow_kernel(const int* buffer) {
  __shared__ uint4 s[1];
  cp_async_16(s, buffer + 64);
  cp_async_wait_all();
}

__global__ void bounds_kernel(int* out) { out[threadIdx.x] = 1; }
__global__ void __launch_bounds__(32) bounded_kernel(int* out) { out[threadIdx.x] = 1; }

// ---- traffic counters (run.sh --count): kernels whose counts are known ---------------
// One warp: lane l < lanes reads in[l * stride] (stride 1: one request of 4 sectors of
// 32 bytes; 32: 32 sectors; 16 lanes: 2 sectors), every lane writes out[l].
__global__ void count_load_kernel(const float* in, float* out, int stride, int lanes) {
  const int lane = threadIdx.x;
  float v = 0;
  if (lane < lanes) v = in[lane * stride];
  out[lane] = v;
}

// 16 bytes per lane: one request of 16 sectors each way; in shared memory 4 phases of
// 8 lanes, none with a conflict.
__global__ void count_vector_kernel(const uint4* in, uint4* out) {
  __shared__ uint4 s[32];
  s[threadIdx.x] = in[threadIdx.x];
  __syncwarp();
  out[threadIdx.x] = s[31 - threadIdx.x];
}

// A 32 x 32 float tile staged in shared memory in rows of 32 + pad floats, written by
// rows and read by columns (lane = row): without padding the 32 lanes of each read
// hit one bank (32-way), with one float of padding 32 banks (1-way). times: how many
// times the tile is loaded from global memory.
__global__ void count_tile_kernel(const float* in, float* out, int pad, int times) {
  __shared__ float tile[32 * 33];
  const int lane = threadIdx.x, ld = 32 + pad;
  for (int t = 0; t < times; ++t)
    for (int r = 0; r < 32; ++r) tile[r * ld + lane] = in[r * 32 + lane];
  __syncwarp();
  float sum = 0;
  for (int c = 0; c < 32; ++c) sum += tile[lane * ld + c];
  out[lane] = sum;
}

__global__ void count_barrier_kernel(int* out, int n) {
  for (int k = 0; k < n; ++k) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = n;
}

// n tensor-core instructions per warp.
__global__ void count_mma_kernel(float* out, int n) {
  float c[4] = {0, 0, 0, 0};
  const uint32_t a = 0x3f803f80u, b = 0x3f803f80u;  // bf16 pairs (1, 1)
  for (int k = 0; k < n; ++k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a), "r"(a), "r"(a), "r"(a), "r"(b), "r"(b));
#endif
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = c[0];
}

// 64 threads (two warps) stage 2 x 64 uint4 in shared memory, by cp.async (async) or
// by plain 16-byte loads and stores, then write them back reversed: the counters must
// see the same traffic either way (one 16-byte global load and shared store per lane
// and copy), plus 4 warp-wide cp.async instructions.
__global__ void count_copy_kernel(const uint4* in, uint4* out, int async) {
  __shared__ uint4 s[2][64];
  const int t = threadIdx.x;
  if (async) {
    cp_async_16(&s[0][t], &in[t]);
    cp_async_commit();
    cp_async_16(&s[1][t], &in[64 + t]);
    cp_async_commit();
    cp_async_wait<0>();
  } else {
    s[0][t] = in[t];
    s[1][t] = in[64 + t];
  }
  __syncthreads();
  out[t] = s[0][63 - t];
  out[64 + t] = s[1][63 - t];
}

// ---- host side ------------------------------------------------------------------
void where(uint32_t* out, dim3 grid, dim3 block) {
  where_kernel<<<grid, block>>>(out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void shuffles(int* out, double* wide, int threads) {
  shuffle_kernel<<<1, threads>>>(out, wide);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void atomics(float* f, int* i, unsigned long long* u, int* lo, int* hi, int blocks, int threads) {
  atomic_kernel<<<blocks, threads>>>(f, i, u, lo, hi);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
// Opts in to the dynamic size when it is over 48 KB (optin: whether to ask).
void shared(int* out, double* sums, int n, int blocks, bool optin) {
  const size_t bytes = n * sizeof(double);
  if (optin)
    C10_CUDA_CHECK(cudaFuncSetAttribute(shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  shared_kernel<<<blocks, 256, bytes, at::cuda::getCurrentCUDAStream()>>>(out, sums, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void fresh(float* f, int* i) {
  fresh_kernel<<<1, 1, 64>>>(f, i);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void launch_with(int* out, dim3 grid, dim3 block) {
  bounds_kernel<<<grid, block>>>(out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void bounded(int* out, int threads) {
  bounded_kernel<<<1, threads>>>(out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_load(const float* in, float* out, int stride, int lanes) {
  count_load_kernel<<<1, 32>>>(in, out, stride, lanes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_vector(const uint4* in, uint4* out) {
  count_vector_kernel<<<1, 32>>>(in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_tile(const float* in, float* out, int pad, int times) {
  count_tile_kernel<<<1, 32>>>(in, out, pad, times);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_barriers(int* out, int blocks, int threads, int n) {
  count_barrier_kernel<<<blocks, threads>>>(out, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_mma(float* out, int blocks, int threads, int n) {
  count_mma_kernel<<<blocks, threads>>>(out, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void async_copy(const uint4* in, uint4* out, int blocks, int threads) {
  async_copy_kernel<<<blocks, threads, threads * sizeof(uint4)>>>(in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void async_ca(const float* in, float* out) {
  async_ca_kernel<<<1, 32>>>(in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void async_pending(const uint4* in, uint4* out) {
  async_pending_kernel<<<1, 32>>>(in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void count_copy(const uint4* in, uint4* out, bool async) {
  count_copy_kernel<<<1, 64>>>(in, out, async ? 1 : 0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
void misuse(const char* what, int* buffer) {
  const std::string w = what;
  if (w == "cp-async-not-shared") cp_async_not_shared_kernel<<<1, 32>>>(buffer);
  if (w == "cp-async-misaligned-dst") cp_async_misaligned_kernel<<<1, 32>>>(buffer, 0);
  if (w == "cp-async-misaligned-src") cp_async_misaligned_kernel<<<1, 32>>>(buffer, 1);
  if (w == "cp-async-past-end") cp_async_past_end_kernel<<<1, 1>>>(buffer);
  if (w == "cp-async-cg-size") cp_async_cg_size_kernel<<<1, 1>>>(buffer);
  if (w == "cp-async-pending-exit") cp_async_pending_exit_kernel<<<1, 16>>>(buffer);
  if (w == "cp-async-race") cp_async_race_kernel<<<1, 2, 16>>>(buffer, buffer + 32);
  if (w == "cp-async-overflow") cp_async_overflow_kernel<<<1, 1>>>(buffer);
  if (w == "divergent-barrier") divergent_barrier_kernel<<<1, 64>>>();
  if (w == "exited-lane") exited_lane_kernel<<<1, 32>>>(buffer);
  if (w == "deadlock") deadlock_kernel<<<1, 64>>>(buffer);
  if (w == "missing-lanes") missing_lanes_kernel<<<1, 40>>>(buffer);
  if (w == "assert") assert_kernel<<<1, 32>>>(buffer);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace selftest
