// Checks cuda_emu.h itself with emulator_selftest.cu's kernels: thread and block
// coordinates of 3-D launches, every shuffle and vote against PTX's definitions,
// atomics, static/dynamic shared memory and its fill pattern, asynchronous copies
// (cp.async: exact copies, and that a wait leaves the groups it should pending), the
// launch limits (threads, grid, 48 KB without opt-in, the card's opt-in maximum,
// __launch_bounds__), that misuse ends the run with a report (in a child process
// each; under ThreadSanitizer a missing barrier after a cp.async wait, under
// AddressSanitizer a cp.async source out of bounds), and, in counting builds (run.sh
// --count), the traffic counters on kernels whose counts are known.
#include "emulator_selftest_emulated.cpp"  // written by emulate_cu.py

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <sstream>

#include "check_common.h"

extern char** environ;

namespace {

using emu_check::Case;
using emu_check::verdict;

at::Tensor ints(int64_t n) { return at::empty({n}, at::kInt); }

void coordinates() {
  for (auto [grid, block] : {std::pair{dim3(2, 3, 2), dim3(4, 2, 3)}, std::pair{dim3(5), dim3(33)},
                             std::pair{dim3(1, 1, 3), dim3(1, 7, 1)}}) {
    const int64_t nb = grid.x * grid.y * grid.z, nt = block.x * block.y * block.z;
    auto out = at::empty({nb * nt}, at::kInt);
    selftest::where(reinterpret_cast<uint32_t*>(out.data_ptr<int>()), grid, block);
    bool ok = true;
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx)
          for (unsigned tz = 0; tz < block.z; ++tz)
            for (unsigned ty = 0; ty < block.y; ++ty)
              for (unsigned tx = 0; tx < block.x; ++tx) {
                const int64_t at = ((bz * grid.y + by) * grid.x + bx) * nt + (tz * block.y + ty) * block.x + tx;
                const uint32_t want = bx | by << 5 | bz << 10 | tx << 15 | ty << 20 | tz << 25;
                ok &= static_cast<uint32_t>(out[at].item<int>()) == want;
              }
    verdict(ok, "grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
                    std::to_string(grid.z) + ", block " + std::to_string(block.x) + "x" +
                    std::to_string(block.y) + "x" + std::to_string(block.z));
  }
}

// Each shuffle's result as PTX defines it (shfl.sync: a source outside the lane's
// segment of `width` lanes gives the lane's own value for up/down/bfly).
void shuffles() {
  const int threads = 64;
  auto out = ints(9 * threads);
  auto wide = at::empty({threads}, at::kDouble);
  selftest::shuffles(out.data_ptr<int>(), wide.data_ptr<double>(), threads);
  bool ok = true;
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) ballot |= (l % 3 == 0) << l;
  for (int t = 0; t < threads; ++t) {
    const int lane = t & 31, seg8 = lane & ~7, seg16 = lane & ~15;
    const int want[9] = {107,
                         100 + seg8 + ((lane + 3) & 7),
                         100 + (lane >= 2 ? lane - 2 : lane),
                         100 + (lane + 5 < seg16 + 16 ? lane + 5 : lane),
                         100 + (lane ^ 9),
                         static_cast<int>(ballot),
                         1,
                         lane ^ 1,
                         0};
    for (int k = 0; k < 9; ++k) ok &= out[9 * t + k].item<int>() == want[k];
    ok &= wide[t].item<double>() == 1e15 + (lane < 31 ? lane + 1 : lane);
  }
  verdict(ok, "idx/up/down/xor shuffles, widths 8 and 16, votes");
}

void atomics() {
  const int blocks = 6, threads = 96, n = blocks * threads;
  auto f = at::zeros({1}, at::kFloat);
  auto i = at::zeros({1}, at::kInt), lo = at::full({1}, 1 << 30, at::kInt), hi = at::full({1}, -1, at::kInt);
  auto u = at::zeros({1}, at::kLong);
  selftest::atomics(f.data_ptr<float>(), i.data_ptr<int>(),
                    reinterpret_cast<unsigned long long*>(u.data_ptr<int64_t>()), lo.data_ptr<int>(),
                    hi.data_ptr<int>(), blocks, threads);
  verdict(f.item<float>() == n && i.item<int>() == 3 * n && u.item<int64_t>() == 3 * n &&
              lo.item<int>() == 0 && hi.item<int>() == n - 1,
          "atomicAdd/Min/Max/CAS from " + std::to_string(n) + " threads");
}

void shared_memory() {
  for (int n : {100, 8000}) {  // 800 bytes, then 64000 (over 48 KB: opt-in)
    auto out = ints(3 * 256);
    auto sums = at::empty({3}, at::kDouble);
    selftest::shared(out.data_ptr<int>(), sums.data_ptr<double>(), n, 3, n * 8 > 48 * 1024);
    bool ok = true;
    for (int b = 0; b < 3; ++b) {
      for (int t = 0; t < 256; ++t) ok &= out[b * 256 + t].item<int>() == 255 - t;
      ok &= sums[b].item<double>() == n * (n - 1) / 2.0;
    }
    verdict(ok, "static and dynamic shared memory, " + std::to_string(n * 8) + " bytes");
  }
  auto f = at::empty({1}, at::kFloat);
  auto i = ints(1);
  selftest::fresh(f.data_ptr<float>(), i.data_ptr<int>());
  verdict(std::isnan(f.item<float>()) && i.item<int>() == INT_MAX, "fresh shared memory is NaN / INT_MAX");
}

// cp.async: two committed groups waited for, copied back exactly (several blocks, a
// __shared__ array and the dynamic shared memory); .ca of 4 and 8 bytes; then what
// each wait completes: the rest still holds the fill pattern (INT_MAX words).
void cp_async_checks() {
  for (int threads : {64, 128}) {
    const int blocks = 3, n = 2 * threads * blocks;
    auto in = at::randint(0, 1 << 30, {n, 4}, at::kInt), out = at::empty({n, 4}, at::kInt);
    selftest::async_copy(reinterpret_cast<const uint4*>(in.data_ptr<int>()),
                         reinterpret_cast<uint4*>(out.data_ptr<int>()), blocks, threads);
    auto want = in.view({blocks, 2, threads, 4}).flip({1, 2}).reshape({n, 4});
    verdict(at::equal(out, want), "cp.async.cg, 2 groups, " + std::to_string(blocks) + " blocks of " +
                                      std::to_string(threads));
  }
  {
    auto in = at::randn({96}, at::kFloat), out = at::empty({96}, at::kFloat);
    selftest::async_ca(in.data_ptr<float>(), out.data_ptr<float>());
    auto want = at::cat({in.slice(0, 0, 32).flip(0), in.slice(0, 32).view({32, 2}).flip(0).reshape({64})});
    verdict(at::equal(out, want), "cp.async.ca of 4 and 8 bytes, wait_all");
  }
  auto in = at::randint(0, 1 << 30, {96, 4}, at::kInt), out = at::empty({192, 4}, at::kInt);
  selftest::async_pending(reinterpret_cast<const uint4*>(in.data_ptr<int>()),
                          reinterpret_cast<uint4*>(out.data_ptr<int>()));
  auto fill = at::full({32, 4}, INT_MAX, at::kInt);
  auto part = [&](int k) { return out.slice(0, 32 * k, 32 * (k + 1)); };
  auto group = [&](int k) { return in.slice(0, 32 * k, 32 * (k + 1)); };
  verdict(at::equal(part(0), group(0)), "wait_group 1: the older group has landed");
  verdict(at::equal(part(1), fill), "wait_group 1: the newest group is pending");
  verdict(at::equal(part(2), fill), "wait_group 1: uncommitted copies are pending");
  verdict(at::equal(part(3), group(1)), "wait_group 0: every committed group landed");
  verdict(at::equal(part(4), fill), "wait_group 0: uncommitted copies still pending");
  verdict(at::equal(part(5), group(2)), "wait_all: the uncommitted copies landed");
}

void launch_limits() {
  auto out = ints(2048);
  int* p = out.data_ptr<int>();
  emu_check::expect_error("1025 threads", [&] { selftest::launch_with(p, dim3(1), dim3(1025)); },
                          "invalid configuration");
  emu_check::expect_error("block z = 65", [&] { selftest::launch_with(p, dim3(1), dim3(1, 1, 65)); },
                          "invalid configuration");
  emu_check::expect_error("grid y = 65536", [&] { selftest::launch_with(p, dim3(1, 65536), dim3(1)); },
                          "invalid configuration");
  emu_check::expect_error("empty grid", [&] { selftest::launch_with(p, dim3(0), dim3(1)); },
                          "invalid configuration");
  auto sums = at::empty({1}, at::kDouble);
  emu::set_arch(80);  // a fresh device: no attribute from the cases before
  emu_check::expect_error("64000 bytes without opt-in", [&] {
    selftest::shared(p, sums.data_ptr<double>(), 8000, 1, false);
  }, "48 KB without cudaFuncSetAttribute");
  emu_check::expect_error("sm_80: opt-in to 200000 bytes", [&] {
    selftest::shared(p, sums.data_ptr<double>(), 25000, 1, true);
  }, "opt-in limit of 166912");
  emu::set_arch(90);
  auto out3 = ints(256);
  selftest::shared(out3.data_ptr<int>(), sums.data_ptr<double>(), 25000, 1, true);
  verdict(sums[0].item<double>() == 25000.0 * 24999 / 2, "sm_90: 200000 bytes of dynamic shared memory");
  emu::set_arch(emu::env_int("LOMAR_EMU_ARCH", 80));
  selftest::bounded(p, 32);
  verdict(true, "__launch_bounds__(32) with 32 threads");
}

// Misuse ends the run: the child's stderr must hold the report.
void misuse(const char* self, const char* what, const char* needle) {
  const std::string log = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                          "/lomar_emu_misuse_" + std::to_string(getpid()) + ".log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  char* argv[] = {const_cast<char*>(self), const_cast<char*>("--misuse"), const_cast<char*>(what), nullptr};
  pid_t pid;
  int status = 0;
  const bool spawned = posix_spawn(&pid, self, &actions, nullptr, argv, environ) == 0 &&
                       waitpid(pid, &status, 0) == pid;
  posix_spawn_file_actions_destroy(&actions);
  std::stringstream text;
  text << std::ifstream(log).rdbuf();
  std::remove(log.c_str());
  const bool died = spawned && !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const bool ok = died && text.str().find(needle) != std::string::npos;
  verdict(ok, std::string(what) + ": reported");
  if (!ok) std::printf("      child said: %s\n", text.str().c_str());
}

#ifdef EMU_COUNT
// The traffic counters (count.h) on kernels whose counts are known.
const emu::count::LaunchRecord& last_launch() { return emu::count::case_launches().back(); }

void counter(const std::string& what, uint64_t got, uint64_t want) {
  verdict(got == want, what + " = " + std::to_string(want) + (got == want ? "" : " (got " + std::to_string(got) + ")"));
}

void traffic_counters() {
  auto in = at::randn({32 * 32 * 4}, at::kFloat), out = at::empty({32 * 4}, at::kFloat);
  const float* i = in.data_ptr<float>();
  float* o = out.data_ptr<float>();
  selftest::count_load(i, o, 1, 32);  // 32 lanes x 4 bytes, consecutive
  {
    const auto& r = last_launch();
    counter("coalesced: load requests", r.global_load.requests, 1);
    counter("coalesced: load bytes", r.global_load.bytes, 128);
    counter("coalesced: load sectors", r.global_load.sectors, 4);
    counter("coalesced: ideal sectors", r.global_load.sectors_ideal, 4);
    counter("coalesced: store sectors", r.global_store.sectors, 4);
  }
  selftest::count_load(i, o, 32, 32);  // a transposed read: 128 bytes apart
  {
    const auto& r = last_launch();
    counter("strided: load requests", r.global_load.requests, 1);
    counter("strided: load bytes", r.global_load.bytes, 128);
    counter("strided: load sectors", r.global_load.sectors, 32);
    counter("strided: ideal sectors", r.global_load.sectors_ideal, 4);
  }
  selftest::count_load(i, o, 1, 16);  // half the lanes (divergent): still one request
  {
    const auto& r = last_launch();
    counter("16 lanes: load requests", r.global_load.requests, 1);
    counter("16 lanes: load sectors", r.global_load.sectors, 2);
  }
  auto vin = at::randint(0, 1 << 20, {32 * 4}, at::kInt), vout = at::empty({32 * 4}, at::kInt);
  selftest::count_vector(reinterpret_cast<const uint4*>(vin.data_ptr<int>()),
                         reinterpret_cast<uint4*>(vout.data_ptr<int>()));
  {
    const auto& r = last_launch();
    verdict(at::equal(vout.view({32, 4}), vin.view({32, 4}).flip(0)), "16-byte copy reversed through shared memory");
    counter("16-byte: load requests", r.global_load.requests, 1);
    counter("16-byte: load sectors", r.global_load.sectors, 16);
    counter("16-byte: shared store requests", r.shared_store.requests, 1);
    counter("16-byte: shared store wavefronts (4 phases)", r.shared_store.wavefronts, 4);
    counter("16-byte: shared load conflict degree", r.shared_load.max_degree, 1);
  }
  selftest::count_tile(i, o, 0, 1);  // an unpadded 32 x 32 float tile read by columns
  {
    const auto& r = last_launch();
    counter("unpadded tile: shared loads", r.shared_load.requests, 32);
    counter("unpadded tile: conflict degree", r.shared_load.max_degree, 32);
    counter("unpadded tile: load wavefronts", r.shared_load.wavefronts, 32 * 32);
    counter("unpadded tile: store conflict degree", r.shared_store.max_degree, 1);
    counter("tile: global bytes read", r.global_load.bytes, 4096);
    counter("tile: distinct bytes read", r.unique_read_bytes, 4096);
  }
  selftest::count_tile(i, o, 1, 1);  // padded to 33
  {
    const auto& r = last_launch();
    counter("padded tile: conflict degree", r.shared_load.max_degree, 1);
    counter("padded tile: load wavefronts", r.shared_load.wavefronts, 32);
  }
  selftest::count_tile(i, o, 1, 2);  // the tile loaded twice
  {
    const auto& r = last_launch();
    counter("tile loaded twice: global bytes read", r.global_load.bytes, 2 * 4096);
    counter("tile loaded twice: sectors", r.global_load.sectors, 2 * 128);
    counter("tile loaded twice: distinct bytes read", r.unique_read_bytes, 4096);
  }
  auto ints = at::empty({3 * 64}, at::kInt);
  selftest::count_barriers(ints.data_ptr<int>(), 3, 64, 5);
  {
    const auto& r = last_launch();
    counter("5 barriers x 3 blocks", r.barriers, 15);
    counter("barriers per block", r.barriers_max_per_block, 5);
    counter("blocks", r.blocks, 3);
  }
  auto f = at::empty({2 * 64}, at::kFloat);
  selftest::count_mma(f.data_ptr<float>(), 2, 64, 3);
  {
    const auto& r = last_launch();
    verdict(f[0].item<float>() == 48.0f, "mma: 3 x 16 products of 1 x 1");
    counter("mma: 3 per warp x 4 warps", r.mma, 12);
  }
  // cp.async against plain 16-byte loads and stores of the same elements.
  auto cin = at::randint(0, 1 << 20, {128, 4}, at::kInt), cout = at::empty({128, 4}, at::kInt);
  const auto* src = reinterpret_cast<const uint4*>(cin.data_ptr<int>());
  auto* dst = reinterpret_cast<uint4*>(cout.data_ptr<int>());
  selftest::count_copy(src, dst, false);
  const emu::count::LaunchRecord plain = last_launch();
  selftest::count_copy(src, dst, true);
  const emu::count::LaunchRecord& async = last_launch();
  verdict(at::equal(cout.view({2, 64, 4}), cin.view({2, 64, 4}).flip(1)), "cp.async: the tiles copied back");
  auto same = [&](const std::string& what, const emu::count::Traffic& a, const emu::count::Traffic& p) {
    const bool ok = a.requests == p.requests && a.lanes == p.lanes && a.bytes == p.bytes &&
                    a.sectors == p.sectors && a.sectors_ideal == p.sectors_ideal &&
                    a.wavefronts == p.wavefronts && a.wavefronts_ideal == p.wavefronts_ideal &&
                    a.max_degree == p.max_degree && std::equal(a.degrees, a.degrees + 33, p.degrees);
    verdict(ok, "cp.async = plain copy: " + what);
    if (!ok)
      std::printf("      cp.async: %llu requests, %llu bytes, %llu sectors, %llu wavefronts; plain: %llu, %llu, "
                  "%llu, %llu\n",
                  (unsigned long long)a.requests, (unsigned long long)a.bytes, (unsigned long long)a.sectors,
                  (unsigned long long)a.wavefronts, (unsigned long long)p.requests, (unsigned long long)p.bytes,
                  (unsigned long long)p.sectors, (unsigned long long)p.wavefronts);
  };
  same("global loads", async.global_load, plain.global_load);
  same("global stores", async.global_store, plain.global_store);
  same("shared loads", async.shared_load, plain.shared_load);
  same("shared stores", async.shared_store, plain.shared_store);
  counter("cp.async: global load requests (2 per warp)", async.global_load.requests, 4);
  counter("cp.async: global load sectors", async.global_load.sectors, 64);
  counter("cp.async: shared store wavefronts", async.shared_store.wavefronts, 16);
  counter("cp.async: distinct bytes read", async.unique_read_bytes, plain.unique_read_bytes);
  counter("cp.async instructions (2 per warp)", async.cp_async, 4);
  counter("plain copy: cp.async instructions", plain.cp_async, 0);
  int async_sites = 0;
  for (const auto& site : async.sites)
    if (site.kind.find("(cp.async)") != std::string::npos &&
        site.where.find("emulator_selftest.cu:") != std::string::npos)
      ++async_sites;
  counter("cp.async sites (a global load and a shared store, 2 lines)", async_sites, 4);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--misuse") {
    auto buffer = at::zeros({64}, at::kInt);
    buffer[5] = -1;
    selftest::misuse(argv[2], buffer.data_ptr<int>());
    return 0;  // not reached when the misuse is reported
  }
  const char* self = "/proc/self/exe";
  static std::string exe;
  exe.resize(4096);
  exe.resize(std::max<ssize_t>(0, readlink(self, exe.data(), exe.size())));
  return emu_check::main(argc, argv, {
      {"3-D grids and blocks", true, coordinates},
      {"shuffles and votes", true, shuffles},
      {"atomics", true, atomics},
      {"shared memory", true, shared_memory},
      {"asynchronous copies", true, cp_async_checks},
      {"launch limits", true, launch_limits},
      {"misuse is reported", true, [] {
         misuse(exe.c_str(), "divergent-barrier", "barrier in divergent code");
         misuse(exe.c_str(), "exited-lane", "exit");
         misuse(exe.c_str(), "deadlock", "deadlock: every live thread of the block waits");
         misuse(exe.c_str(), "missing-lanes", "names lanes that do not exist");
         misuse(exe.c_str(), "assert", "device-side assert failed");
         misuse(exe.c_str(), "cp-async-not-shared", "is not in this block's shared memory");
         misuse(exe.c_str(), "cp-async-misaligned-dst", "misaligned shared destination");
         misuse(exe.c_str(), "cp-async-misaligned-src", "misaligned global source");
         misuse(exe.c_str(), "cp-async-past-end", "run past the end of the allocation");
         misuse(exe.c_str(), "cp-async-cg-size", "cp-size 8");
         misuse(exe.c_str(), "cp-async-pending-exit", "exits with 1 cp.async copies pending");
#if defined(__SANITIZE_THREAD__) && !defined(EMU_COUNT)
         misuse(exe.c_str(), "cp-async-race", "ThreadSanitizer: data race");
#endif
#if defined(__SANITIZE_ADDRESS__)
         misuse(exe.c_str(), "cp-async-overflow", "heap-buffer-overflow");
#endif
       }},
#ifdef EMU_COUNT
      {"traffic counters", true, traffic_counters},
#endif
  });
}
