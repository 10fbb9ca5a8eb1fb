// The small harness the C++ unit tests share: EXPECT (fails the current case
// with its file, line and condition), throws_with (an error whose message holds
// a given text), and run_cases (all cases, or the one named on the command line;
// each case seeded from its name, so it sees the same inputs alone or in the full
// run, whatever ran before it; PASS/FAIL per case; exit status for ctest).
#pragma once

#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>

#define EXPECT(cond)                                                              \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: expectation failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                        \
      return false;                                                               \
    }                                                                             \
  } while (0)

namespace lomar_ops_test {

template <typename F>
bool throws_with(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    if (msg.find(needle) != std::string::npos) return true;
    std::fprintf(stderr, "error message lacks '%s': %s\n", needle.c_str(), msg.c_str());
    return false;
  }
  std::fprintf(stderr, "no error raised (expected '%s')\n", needle.c_str());
  return false;
}

inline int run_cases(int argc, char** argv,
                     const std::map<std::string, std::function<bool()>>& cases) {
  int failed = 0, ran = 0;
  for (const auto& [name, fn] : cases) {
    if (argc > 1 && name != argv[1]) continue;
    ++ran;
    uint64_t seed = 1469598103934665603ull;  // FNV-1a of the case's name
    for (unsigned char c : name) seed = (seed ^ c) * 1099511628211ull;
    at::manual_seed(seed);
    const bool ok = fn();
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", name.c_str());
    failed += ok ? 0 : 1;
  }
  if (ran == 0) {
    std::fprintf(stderr, "no test case named %s\n", argc > 1 ? argv[1] : "");
    return 2;
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace lomar_ops_test
