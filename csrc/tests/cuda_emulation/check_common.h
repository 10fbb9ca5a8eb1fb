// What the check_<op>.cpp programs share: device allocations filled with the NaN
// pattern, the comparisons (bitwise for copies; for sums, within 3x the CPU op's own
// error in that dtype), expected errors, and cases run by name (--quick: the CI set).
// In counting builds (run.sh --count, count.h) every allocation is registered as
// device memory, each case's launches are written as JSON, and the model cases run.
//   check_<op> [--quick] [--list] [NAME-SUBSTRING ...]
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace emu_check {

// Every CPU allocation (so every output and workspace the emulated kernels get from
// at::empty) starts as the NaN pattern: an element a kernel forgets to write, or
// reads before writing, shows in the comparison.
class GarbageAllocator final : public c10::Allocator {
 public:
  explicit GarbageAllocator(c10::Allocator* base) : base_(base) {
#ifdef EMU_COUNT
    base_deleter() = base->raw_deleter();
#endif
  }
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr p = base_->allocate(n);
    if (n) emu::fill_garbage(p.get(), n);
#ifdef EMU_COUNT
    // Device memory for the counters: registered until freed (the CPU allocator's
    // pointers are their own context, freed by its raw deleter).
    if (n) {
      TORCH_CHECK(p.get() == p.get_context() && p.get_deleter() == base_deleter(),
                  "counting build: the CPU allocator's pointers are not their own context");
      const c10::Device device = p.device();
      void* data = p.release_context();
      emu::count::register_global(data, n);
      return {data, data, &counted_delete, device};
    }
#endif
    return p;
  }
#ifdef EMU_COUNT
  c10::DeleterFnPtr raw_deleter() const override { return &counted_delete; }
#else
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
#endif
  void copy_data(void* dst, const void* src, size_t n) const override { std::memcpy(dst, src, n); }

 private:
  c10::Allocator* base_;
#ifdef EMU_COUNT
  static c10::DeleterFnPtr& base_deleter() {
    static c10::DeleterFnPtr d = nullptr;
    return d;
  }
  static void counted_delete(void* p) {
    emu::count::unregister_global(p);
    base_deleter()(p);
  }
#endif
};

inline int& failures() {
  static int n = 0;
  return n;
}

inline void verdict(bool ok, const std::string& line) {
  if (!ok) ++failures();
  std::printf("    %-44s %s\n", line.c_str(), ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

inline std::string fmt(const char* f, double a, double b = 0, double c = 0) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a, b, c);
  return buf;
}

// Copies and gathers: the same dtype, shape and bits (a NaN anywhere fails).
inline void same(const std::string& what, const at::Tensor& got, const at::Tensor& want) {
  const bool ok = got.scalar_type() == want.scalar_type() && got.sizes() == want.sizes() &&
                  at::equal(got, want);
  verdict(ok, what + " bitwise");
}

// Machine epsilon of the inputs' dtype.
inline double eps_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return std::ldexp(1.0, -52);
    case at::kFloat: return std::ldexp(1.0, -23);
    case at::kHalf: return std::ldexp(1.0, -10);
    default: return std::ldexp(1.0, -7);  // bfloat16
  }
}

// A reduction computed in dtype dt: the emulated kernel's error against ref64 (the
// CPU op in fp64 on the same rounded inputs) may be at most 3x the CPU op's own
// error (cpu: the CPU op in dt) plus two units of dt's rounding at the result's
// scale (when the CPU op happens to be exact). fp64: 1e-10 of the scale (summation
// order only).
inline void close(const std::string& what, const at::Tensor& got, const at::Tensor& cpu,
                  const at::Tensor& ref64, at::ScalarType dt) {
  if (got.sizes() != ref64.sizes() || got.scalar_type() != cpu.scalar_type()) {
    verdict(false, what + " shape/dtype " + std::string(c10::toString(got.scalar_type())));
    return;
  }
  if (ref64.numel() == 0) {
    verdict(true, what + " (empty)");
    return;
  }
  const auto r = ref64.to(at::kDouble);
  const double scale = std::max(1.0, r.abs().max().item<double>());
  const double err = (got.to(at::kDouble) - r).abs().max().item<double>();
  const double base = (cpu.to(at::kDouble) - r).abs().max().item<double>();
  const double tol = dt == at::kDouble ? 1e-10 * scale : 3 * base + 2 * eps_of(dt) * scale;
  verdict(err <= tol, what + fmt(" err %.1e (cpu %.1e, tol %.1e)", err, base, tol));
}

template <typename F>
void expect_error(const std::string& what, F&& f, const std::string& needle) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    const bool ok = msg.find(needle) != std::string::npos;
    verdict(ok, what + " raises '" + needle + "'");
    if (!ok) std::printf("      got: %s\n", msg.c_str());
    return;
  }
  verdict(false, what + " raises '" + needle + "' (nothing raised)");
}

// The same values in a non-contiguous tensor: every other element of a buffer twice
// as long in the last dimension (the rest of it holds the NaN pattern).
inline at::Tensor strided(const at::Tensor& t) {
  auto sizes = t.sizes().vec();
  const int64_t last = sizes.empty() ? 1 : sizes.back();
  if (sizes.empty()) return t.clone();
  sizes.back() = 2 * std::max<int64_t>(last, 1);
  auto big = at::empty(sizes, t.options());
  auto view = big.slice(-1, 0, 2 * last, 2);
  view.copy_(t);
  return view;
}

inline at::Tensor randn(at::IntArrayRef sizes, at::ScalarType dt) {
  return at::randn(sizes, at::kDouble).to(dt);
}

inline const at::ScalarType kAllTypes[] = {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16};

struct Case {
  std::string name;
  bool quick;  // in the CI set
  std::function<void()> run;
  bool model = false;  // counting builds only (run.sh --count), quick or not
};

#ifdef EMU_COUNT
inline constexpr bool kCounting = true;
#else
inline constexpr bool kCounting = false;
#endif

inline uint64_t seed_of(const std::string& s) {  // FNV-1a: one fixed seed per case
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

inline int main(int argc, char** argv, const std::vector<Case>& cases) {
  static GarbageAllocator garbage(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&garbage, /*priority=*/100);
  at::set_num_threads(1);  // no OpenMP threads next to the emulated ones
  bool quick = false, list = false;
  std::vector<std::string> filters;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--list") list = true;
    else filters.push_back(a);
  }
  if (!list) std::printf("  kernel source: %s\n", emu::kernel_source);
  EMU_COUNTING(emu::count::set_program(argv[0]);)
  int ran = 0, errors = 0;
  for (const auto& c : cases) {
    if (c.model && !kCounting) continue;
    if (quick && !c.quick && !c.model) continue;
    bool wanted = filters.empty();
    for (const auto& f : filters) wanted |= c.name.find(f) != std::string::npos;
    if (!wanted) continue;
    if (list) {
      std::printf("%s%s\n", c.name.c_str(), c.model ? "  (model: --count)" : c.quick ? "  (quick)" : "");
      continue;
    }
    ++ran;
    std::printf("  %s\n", c.name.c_str());
    std::fflush(stdout);
    at::manual_seed(seed_of(c.name));
    const auto start = std::chrono::steady_clock::now();
    EMU_COUNTING(emu::count::begin_case(c.name);)
    try {
      c.run();
    } catch (const c10::Error& e) {
      ++errors;
      std::printf("    FAIL: unexpected error: %s\n", e.what_without_backtrace());
    } catch (const std::exception& e) {
      ++errors;
      std::printf("    FAIL: unexpected error: %s\n", e.what());
    }
    EMU_COUNTING(emu::count::end_case();)
    std::printf("    (%.1f s)\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (list) return 0;
  std::printf("  %d cases, %d failed comparisons, %d errors\n", ran, failures(), errors);
  return ran > 0 && failures() == 0 && errors == 0 ? 0 : 1;
}

}  // namespace emu_check
