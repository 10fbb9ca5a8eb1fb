// Traffic counters of the CUDA emulation (run.sh --count): a model of what each kernel
// launch asks of memory, counted on the CPU. Not a GPU measurement: no cache, no
// scheduling, no timing; the accesses are those the host compiler emits for the
// kernel's source (see docs/design.md, "Traffic counters (a model)").
//
// How. A counting build compiles the emulated kernel file with GCC's ThreadSanitizer
// instrumentation (-fsanitize=thread: a call before every load and store the compiled
// code makes, with its address and size) but links count_runtime.cpp in place of the
// TSan runtime: there each access of a thread that runs a CUDA thread is kept when it
// falls in the block's shared memory or in a device allocation (every tensor the
// checks allocate is registered, check_common.h), anything else (registers spilled
// to the stack, kernel parameters, the emulator's own state) is dropped. A warp-wide
// request is the same access site (the call's return address: one instruction of the
// compiled kernel) at the same occurrence in each lane's sequence since the warp's
// last synchronisation point (__syncthreads, or a collective of the whole warp: its
// lanes all stand there, so the logs of that interval are complete). Nothing of this
// exists in the other builds: no cost, no change, sanitizers as before.
//
// Per launch: global loads, stores and atomics (warp requests; bytes the lanes ask
// for, distinct within a request; 32-byte sectors touched and the ideal count for
// those bytes; distinct bytes of the launch, per buffer too), shared loads, stores and
// atomics (requests; bytes; bank-conflict degree = the most distinct 4-byte words any
// of the 32 banks serves in one phase, 16-byte accesses in 4 phases of 8 lanes and
// 8-byte ones in 2 of 16; wavefronts = the degrees summed over phases), __syncthreads
// per block, and warp instructions: mma.sync, shuffles, votes, __syncwarp, cp.async.
// A cp.async is what it is on the GPU: a global load of cp-size bytes by the lane and a
// shared store of cp-size bytes, both counted when it is issued, at its site (the
// emulator writes the shared memory later, at the wait, unseen by the counters), so a
// warp's cp.async is one global load request and one shared store request, as a plain
// load and store of the same size would be; the wait itself moves nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace emu::count {

// One direction of one memory space, summed over a launch's warp-wide requests.
struct Traffic {
  uint64_t requests = 0;          // warp-wide requests (instructions)
  uint64_t lanes = 0;             // lane accesses
  uint64_t bytes = 0;             // distinct bytes each request's lanes ask for
  uint64_t sectors = 0;           // global: 32-byte sectors each request touches
  uint64_t sectors_ideal = 0;     // global: ceil(bytes / 32) per request
  uint64_t wavefronts = 0;        // shared: bank passes (sum over phases of the degree)
  uint64_t wavefronts_ideal = 0;  // shared: phases (one pass each without conflicts)
  uint32_t max_degree = 0;        // shared: worst bank-conflict degree of a request
  uint64_t degrees[33] = {};      // shared: requests by conflict degree (1 to 32)
};

// A device allocation a launch touched (id: its allocation's number, the same tensor
// keeps it from launch to launch).
struct Buffer {
  uint64_t id, size, read, unique_read, written, unique_written;
};

// One access site: an instruction of the compiled kernel, and its traffic.
struct Site {
  uintptr_t pc = 0;
  std::string kind;   // global load, global store, global atomic, shared load, ...
  std::string where;  // its source lines, innermost first ("f.cu:150 <- 187 <- 519")
  Traffic traffic;
};

struct LaunchRecord {
  std::string kernel;  // the kernel function (from the executable's symbols)
  std::string site;    // file:line of the <<<...>>>
  const void* fn = nullptr;
  unsigned grid[3] = {}, block[3] = {};
  uint64_t dynamic_smem = 0, static_smem = 0, blocks = 0;
  Traffic global_load, global_store, global_atomic, shared_load, shared_store, shared_atomic;
  uint64_t unique_read_bytes = 0, unique_written_bytes = 0;      // distinct bytes of the launch
  uint64_t unique_read_sectors = 0, unique_written_sectors = 0;  // distinct 32-byte sectors
  uint64_t barriers = 0, barriers_max_per_block = 0;             // __syncthreads
  uint64_t mma = 0, shfl = 0, vote = 0, syncwarp = 0;            // warp instructions
  uint64_t cp_async = 0;  // warp-wide cp.async instructions (their shared store requests)
  std::vector<Buffer> buffers;
  std::string mark;  // what the check said it was doing (a JSON object), see mark()
  // The sites that cost most beyond the ideal (sectors or wavefronts), worst first.
  std::vector<Site> sites;
};

// ---- host side (check_common.h) ----------------------------------------------------
void register_global(const void* p, size_t n);  // a device allocation
void unregister_global(const void* p);
void set_program(const char* argv0);  // check_<op>: names the JSON files' folder
void begin_case(const std::string& name);
// Writes the case's launches to $LOMAR_EMU_COUNT_OUT/<op>/<case>.json when that is set.
void end_case();
const std::vector<LaunchRecord>& case_launches();  // this case's launches so far
// A JSON object the following launches of the case carry (the check's shapes, dtype,
// forward or backward), for the report's floors.
void mark(const std::string& json_object);

// ---- the emulator (cuda_emu.h) ------------------------------------------------------
struct LaunchCounts;
struct BlockCounts;
// Collective kinds, as cuda_emu.h numbers them.
enum : int { kSyncwarp = 1, kShfl = 2, kVote = 3, kMma = 4 };
LaunchCounts* launch_begin(const void* fn, const char* name, const char* file, int line,
                           const unsigned grid[3], const unsigned block[3], size_t smem);
void launch_end(LaunchCounts* launch);
BlockCounts* block_begin(LaunchCounts* launch, unsigned nthreads, const void* dynamic_smem,
                         size_t dynamic_bytes);
void add_shared(BlockCounts* block, const void* p, size_t n);  // a __shared__ variable
void thread_begin(BlockCounts* block, unsigned tid);  // this thread runs CUDA thread tid
void thread_end();
void barrier(BlockCounts* block);  // a __syncthreads is released (every thread waits)
// A warp collective is released (full: every lane of the warp takes part, so all wait).
void collective(BlockCounts* block, unsigned warp, int kind, bool full);
void block_end(BlockCounts* block);  // every thread has exited
void atomic(const void* p, unsigned size, const void* site);  // atomicAdd and the like
// A lane's cp.async (at its issue): size bytes read at src (global), written at dst (the
// shared allocation's host address); site: the cp.async's call site.
void async_copy(const void* src, const void* dst, unsigned size, const void* site);

}  // namespace emu::count
