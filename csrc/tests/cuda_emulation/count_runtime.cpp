// The counting runtime of run.sh --count builds (count.h says what is counted and why
// this way). The emulated kernel's object is compiled with -fsanitize=thread, so each
// of its loads and stores calls __tsan_read<N>/__tsan_write<N> below; this file is
// compiled without instrumentation and linked instead of the ThreadSanitizer runtime.
// Atomic operations of the instrumented code arrive as __tsan_atomic* and are only
// performed here (the emulator's own barriers use them); a kernel's atomicAdd and the
// like are counted by cuda_emu.h through count::atomic.
#include "count.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace emu::count {
namespace {

constexpr uint8_t kWrite = 1, kAtomicRmw = 2, kShared = 4;
constexpr uint8_t kAsync = 8;  // the global load or the shared store of a cp.async
constexpr int kMaxShared = 32;  // shared ranges of a block: dynamic plus __shared__ variables
constexpr size_t kTopSites = 12;  // sites kept per launch

struct Entry {
  uintptr_t site, addr;
  int32_t range;  // index of the global buffer, -1 in shared memory
  uint16_t size;
  uint8_t flags;
};

struct ThreadState {
  BlockCounts* block = nullptr;
  std::vector<Entry> log;  // since the warp's last synchronisation point
};

// The std::thread's CUDA thread while it runs kernel code; null otherwise (the host,
// the emulator's barriers and this runtime's own work are never logged).
thread_local ThreadState* current = nullptr;

struct Range {
  uintptr_t lo, hi;
  uint64_t id;
};

struct Registry {
  std::mutex m;
  std::map<uintptr_t, std::pair<size_t, uint64_t>> live;  // start -> (bytes, id)
  uint64_t next_id = 0;
};
Registry& registry() {
  static Registry r;
  return r;
}

// While the runtime itself works on a kernel thread: nothing it touches is logged.
struct Quiet {
  ThreadState* saved = current;
  Quiet() { current = nullptr; }
  ~Quiet() { current = saved; }
};

void add(Traffic& a, const Traffic& b) {
  a.requests += b.requests;
  a.lanes += b.lanes;
  a.bytes += b.bytes;
  a.sectors += b.sectors;
  a.sectors_ideal += b.sectors_ideal;
  a.wavefronts += b.wavefronts;
  a.wavefronts_ideal += b.wavefronts_ideal;
  a.max_degree = std::max(a.max_degree, b.max_degree);
  for (int k = 0; k < 33; ++k) a.degrees[k] += b.degrees[k];
}

}  // namespace

struct LaunchCounts {
  LaunchRecord rec;
  std::vector<Range> ranges;  // the device allocations alive at the launch, by address
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  std::unique_ptr<std::atomic<uint64_t*>[]> read_bits, write_bits;  // per range, per byte
  std::unique_ptr<uint64_t[]> range_read, range_written;             // bytes per range
  std::map<std::pair<uintptr_t, uint8_t>, Traffic> sites;  // (pc, flags) of the requests
  std::mutex m;  // the blocks' totals are merged under it
  ~LaunchCounts() {
    for (size_t r = 0; r < ranges.size(); ++r) {
      delete[] read_bits[r].load();
      delete[] write_bits[r].load();
    }
  }
};

struct BlockCounts {
  LaunchCounts* launch;
  std::atomic<int> nshared{0};
  uintptr_t shared_lo[kMaxShared] = {}, shared_size[kMaxShared] = {};
  uint64_t static_bytes = 0;
  std::vector<ThreadState> threads;
  // Totals of the block (changed under the block's mutex only: the emulator calls
  // barrier, collective and block_end holding it).
  Traffic global_load, global_store, global_atomic, shared_load, shared_store, shared_atomic;
  uint64_t barriers = 0, mma = 0, shfl = 0, vote = 0, syncwarp = 0, cp_async = 0;
  std::map<std::pair<uintptr_t, uint8_t>, Traffic> sites;
};

namespace {

inline void record(const void* a, size_t size, uint8_t flags, const void* site) {
  ThreadState* t = current;
  if (!t) return;
  const uintptr_t x = reinterpret_cast<uintptr_t>(a);
  BlockCounts* b = t->block;
  const uint16_t sz = static_cast<uint16_t>(std::min<size_t>(size, 65535));
  const int n = b->nshared.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i)
    if (x - b->shared_lo[i] < b->shared_size[i]) {
      t->log.push_back({reinterpret_cast<uintptr_t>(site), x, -1, sz, static_cast<uint8_t>(flags | kShared)});
      return;
    }
  const LaunchCounts* l = b->launch;
  if (x < l->lo || x >= l->hi) return;
  auto it = std::upper_bound(l->ranges.begin(), l->ranges.end(), x,
                             [](uintptr_t v, const Range& r) { return v < r.lo; });
  if (it == l->ranges.begin()) return;
  --it;
  if (x >= it->hi) return;
  t->log.push_back({reinterpret_cast<uintptr_t>(site), x, static_cast<int32_t>(it - l->ranges.begin()), sz, flags});
}

uint64_t* bitmap(std::atomic<uint64_t*>* maps, const Range& r, size_t index) {
  uint64_t* p = maps[index].load(std::memory_order_acquire);
  if (p) return p;
  uint64_t* fresh = new uint64_t[(r.hi - r.lo + 63) / 64]();
  if (maps[index].compare_exchange_strong(p, fresh)) return fresh;
  delete[] fresh;
  return p;
}

void set_bits(uint64_t* bits, uintptr_t from, uintptr_t to) {  // bytes [from, to) of the range
  for (uintptr_t i = from; i < to;) {
    const uintptr_t word = i / 64, bit = i % 64, n = std::min<uintptr_t>(64 - bit, to - i);
    const uint64_t m = n == 64 ? ~0ull : ((1ull << n) - 1) << bit;
    __atomic_fetch_or(&bits[word], m, __ATOMIC_RELAXED);
    i += n;
  }
}

struct Item {
  uintptr_t site;
  uint32_t occ;
  uint32_t lane;
  const Entry* e;
};

// Distinct bytes of a request: its lanes' [addr, addr + size) merged.
uint64_t distinct_bytes(const Item* g, size_t n) {
  std::vector<std::pair<uintptr_t, uintptr_t>> iv;
  iv.reserve(n);
  for (size_t k = 0; k < n; ++k) iv.emplace_back(g[k].e->addr, g[k].e->addr + g[k].e->size);
  std::sort(iv.begin(), iv.end());
  uint64_t total = 0;
  uintptr_t lo = iv[0].first, hi = iv[0].second;
  for (size_t k = 1; k < iv.size(); ++k) {
    if (iv[k].first > hi) {
      total += hi - lo;
      lo = iv[k].first;
    }
    hi = std::max(hi, iv[k].second);
  }
  return total + (hi - lo);
}

void global_request(BlockCounts* b, const Item* g, size_t n) {
  const uint8_t flags = g[0].e->flags;
  Traffic& tr = flags & kAtomicRmw ? b->global_atomic : flags & kWrite ? b->global_store : b->global_load;
  const uint64_t bytes = distinct_bytes(g, n);
  std::vector<uintptr_t> sectors;
  for (size_t k = 0; k < n; ++k)
    for (uintptr_t s = g[k].e->addr >> 5; s <= (g[k].e->addr + g[k].e->size - 1) >> 5; ++s)
      sectors.push_back(s);
  std::sort(sectors.begin(), sectors.end());
  const uint64_t touched = std::unique(sectors.begin(), sectors.end()) - sectors.begin();
  for (Traffic* t : {&tr, &b->sites[{g[0].site, flags}]}) {
    ++t->requests;
    t->lanes += n;
    t->bytes += bytes;
    t->sectors += touched;
    t->sectors_ideal += (bytes + 31) / 32;
  }
  LaunchCounts* l = b->launch;
  bool one_range = true;
  for (size_t k = 1; k < n; ++k) one_range &= g[k].e->range == g[0].e->range;
  const bool reads = !(flags & kWrite) || (flags & kAtomicRmw);
  const bool writes = (flags & kWrite) || (flags & kAtomicRmw);
  for (size_t k = 0; k < n; ++k) {
    const Entry& e = *g[k].e;
    const Range& r = l->ranges[e.range];
    const uint64_t part = one_range ? (k == 0 ? bytes : 0) : e.size;
    const uintptr_t from = e.addr - r.lo, to = std::min<uintptr_t>(from + e.size, r.hi - r.lo);
    if (reads) {
      __atomic_fetch_add(&l->range_read[e.range], part, __ATOMIC_RELAXED);
      set_bits(bitmap(l->read_bits.get(), r, e.range), from, to);
    }
    if (writes) {
      __atomic_fetch_add(&l->range_written[e.range], part, __ATOMIC_RELAXED);
      set_bits(bitmap(l->write_bits.get(), r, e.range), from, to);
    }
  }
}

// Banks: 32 of 4 bytes. A request's lanes are served in phases (all 32 lanes for
// accesses of up to 4 bytes, half-warps for 8, quarter-warps for 16 and more, as the
// hardware splits wide shared accesses); in a phase each bank serves one 4-byte word
// per pass, and lanes reading the same word share it (broadcast). Degree of a phase:
// the most distinct words of one bank; of the request: its worst phase.
void shared_request(BlockCounts* b, const Item* g, size_t n) {
  const uint8_t flags = g[0].e->flags;
  Traffic& tr = flags & kAtomicRmw ? b->shared_atomic : flags & kWrite ? b->shared_store : b->shared_load;
  unsigned size = 0;
  for (size_t k = 0; k < n; ++k) size = std::max<unsigned>(size, g[k].e->size);
  const unsigned per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
  unsigned worst = 0;
  Traffic one;
  for (unsigned phase = 0; phase < 32 / per_phase; ++phase) {
    std::vector<std::pair<unsigned, uintptr_t>> words;  // (bank, word)
    for (size_t k = 0; k < n; ++k) {
      if (g[k].lane / per_phase != phase) continue;
      for (uintptr_t w = g[k].e->addr >> 2; w <= (g[k].e->addr + g[k].e->size - 1) >> 2; ++w)
        words.emplace_back(static_cast<unsigned>(w & 31), w);
    }
    if (words.empty()) continue;
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    unsigned degree = 0, run = 0;
    for (size_t k = 0; k < words.size(); ++k) {
      run = k > 0 && words[k].first == words[k - 1].first ? run + 1 : 1;
      degree = std::max(degree, run);
    }
    one.wavefronts += degree;
    ++one.wavefronts_ideal;
    worst = std::max(worst, degree);
  }
  one.requests = 1;
  one.lanes = n;
  one.bytes = distinct_bytes(g, n);
  one.max_degree = worst;
  one.degrees[std::min(worst, 32u)] = 1;
  add(tr, one);
  add(b->sites[{g[0].site, flags}], one);
}

// The warp's logs since its last synchronisation point, grouped into requests: the
// k-th execution of an access site by each lane is one warp-wide instruction.
void flush_warp(BlockCounts* b, unsigned warp) {
  const unsigned first = 32 * warp, last = std::min<unsigned>(first + 32, b->threads.size());
  std::vector<Item> items;
  for (unsigned tid = first; tid < last; ++tid)
    for (const Entry& e : b->threads[tid].log) items.push_back({e.site, 0, tid - first, &e});
  if (items.empty()) return;
  // Occurrences: per (site, lane) in program order; a cp.async's global load and shared
  // store (one site) are numbered apart, so a lane whose load is not logged (a source
  // outside the device allocations) does not shift its stores against the other lanes'.
  auto async_part = [](const Item& x) {
    return x.e->flags & kAsync ? x.e->flags & (kAsync | kShared | kWrite) : 0;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Item& x, const Item& y) {
    if (x.site != y.site) return x.site < y.site;
    if (async_part(x) != async_part(y)) return async_part(x) < async_part(y);
    return x.lane < y.lane;
  });
  for (size_t k = 0; k < items.size(); ++k)
    items[k].occ = k > 0 && items[k].site == items[k - 1].site &&
                           async_part(items[k]) == async_part(items[k - 1]) &&
                           items[k].lane == items[k - 1].lane
                       ? items[k - 1].occ + 1
                       : 0;
  auto space = [](const Item& x) { return x.e->flags & (kShared | kWrite | kAtomicRmw); };
  std::sort(items.begin(), items.end(), [&](const Item& x, const Item& y) {
    if (x.site != y.site) return x.site < y.site;
    if (x.occ != y.occ) return x.occ < y.occ;
    if (space(x) != space(y)) return space(x) < space(y);
    return x.lane < y.lane;
  });
  for (size_t k = 0; k < items.size();) {
    size_t end = k + 1;
    while (end < items.size() && items[end].site == items[k].site && items[end].occ == items[k].occ &&
           space(items[end]) == space(items[k]))
      ++end;
    if (items[k].e->flags & kShared) {
      shared_request(b, &items[k], end - k);
      if (items[k].e->flags & kAsync) ++b->cp_async;  // one per warp-wide cp.async
    } else
      global_request(b, &items[k], end - k);
    k = end;
  }
  for (unsigned tid = first; tid < last; ++tid) b->threads[tid].log.clear();
}

// ---- the kernels' names and the sites' source lines, from the executable ---------------

std::string self_exe() {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  return len > 0 ? std::string(exe, len) : std::string();
}

// What to subtract from a code address to get the address the ELF file names
// (position-independent executables are loaded at a base).
uintptr_t load_base() {
  static const uintptr_t base = [] {
    unsigned char header[18] = {};
    if (FILE* f = std::fopen(self_exe().c_str(), "rb")) {
      if (std::fread(header, 1, sizeof header, f) != sizeof header) header[16] = 0;
      std::fclose(f);
    }
    const bool pie = header[16] == 3;  // e_type ET_DYN (little-endian)
    Dl_info info{};
    return pie && dladdr(reinterpret_cast<const void*>(&self_exe), &info)
               ? reinterpret_cast<uintptr_t>(info.dli_fbase)
               : uintptr_t{0};
  }();
  return base;
}

std::string shorten(std::string s) {
  for (size_t at; (at = s.find("(anonymous namespace)::")) != std::string::npos;)
    s.erase(at, 23);
  int depth = 0;
  for (size_t k = 0; k < s.size(); ++k) {  // drop the parameter list
    if (s[k] == '<') ++depth;
    if (s[k] == '>') --depth;
    if (s[k] == '(' && depth == 0) {
      s.resize(k);
      break;
    }
  }
  const size_t tmpl = s.find('<');
  const size_t scope = s.rfind("::", tmpl == std::string::npos ? s.size() : tmpl);
  return scope == std::string::npos ? s : s.substr(scope + 2);
}

std::string symbol_of(const void* fn) {
  static std::map<uintptr_t, std::string> symbols;
  static bool loaded = false;
  if (!loaded) {
    loaded = true;
    const std::string cmd = "nm -C --defined-only '" + self_exe() + "' 2>/dev/null";
    if (FILE* f = popen(cmd.c_str(), "r")) {
      char line[8192];
      while (std::fgets(line, sizeof line, f)) {
        char* end = nullptr;
        const unsigned long long addr = std::strtoull(line, &end, 16);
        if (end == line || std::strlen(end) < 4) continue;
        std::string name(end + 3);
        if (!name.empty() && name.back() == '\n') name.pop_back();
        if (std::strchr("tTwW", end[1])) symbols[addr] = name;
      }
      pclose(f);
    }
  }
  auto it = symbols.find(reinterpret_cast<uintptr_t>(fn) - load_base());
  return it == symbols.end() ? "" : shorten(it->second);
}

// Source lines of access sites (addr2line: each site's inlining chain, innermost
// first, the emulator's own frames left out).
void resolve_sites(std::vector<LaunchRecord>& launches) {
  std::map<uintptr_t, std::string> where;
  for (const LaunchRecord& r : launches)
    for (const Site& s : r.sites)
      if (s.where.empty()) where[s.pc] = "";
  if (where.empty()) return;
  std::vector<uintptr_t> pcs;
  for (auto& [pc, w] : where) pcs.push_back(pc);
  for (size_t from = 0; from < pcs.size(); from += 200) {
    std::string cmd = "addr2line -a -f -i -e '" + self_exe() + "'";
    char buf[32];
    for (size_t k = from; k < std::min(pcs.size(), from + 200); ++k) {
      std::snprintf(buf, sizeof buf, " 0x%lx", static_cast<unsigned long>(pcs[k] - load_base() - 1));
      cmd += buf;
    }
    FILE* f = popen((cmd + " 2>/dev/null").c_str(), "r");
    if (!f) return;
    char line[8192];
    size_t k = from - 1;
    std::string last_file, chain;
    bool function_line = true;
    auto finish = [&] {
      if (k >= from && k < pcs.size()) where[pcs[k]] = chain;
    };
    while (std::fgets(line, sizeof line, f)) {
      std::string l(line);
      if (!l.empty() && l.back() == '\n') l.pop_back();
      if (l.rfind("0x", 0) == 0) {
        finish();
        ++k;
        chain.clear();
        last_file.clear();
        function_line = true;
        continue;
      }
      if (function_line) {  // (the function's name, then its file:line)
        function_line = false;
        continue;
      }
      function_line = true;
      const size_t disc = l.find(" (discriminator");
      if (disc != std::string::npos) l.resize(disc);
      const size_t colon = l.rfind(':');
      if (colon == std::string::npos) continue;
      const std::string file = std::filesystem::path(l.substr(0, colon)).filename().string();
      if (file == "cuda_emu.h" || file == "count.h") continue;
      chain += chain.empty() ? file + ":" + l.substr(colon + 1)
                             : " <- " + (file == last_file ? l.substr(colon + 1) : file + ":" + l.substr(colon + 1));
      last_file = file;
    }
    finish();
    pclose(f);
  }
  for (LaunchRecord& r : launches)
    for (Site& s : r.sites)
      if (s.where.empty()) s.where = where[s.pc].empty() ? "?" : where[s.pc];
}

// ---- cases and their JSON ---------------------------------------------------------------

struct Cases {
  std::string op = "unknown", name, mark = "{}";
  std::vector<LaunchRecord> launches;
};
Cases& cases() {
  static Cases c;
  return c;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", ch);
      out += buf;
      continue;
    }
    out += ch;
  }
  return out + "\"";
}

std::string json_traffic(const Traffic& t, bool shared) {
  std::string s = "{\"requests\": " + std::to_string(t.requests) + ", \"lanes\": " + std::to_string(t.lanes) +
                  ", \"bytes\": " + std::to_string(t.bytes);
  if (shared) {
    s += ", \"wavefronts\": " + std::to_string(t.wavefronts) +
         ", \"wavefronts_ideal\": " + std::to_string(t.wavefronts_ideal) +
         ", \"max_conflict_degree\": " + std::to_string(t.max_degree) + ", \"requests_by_degree\": {";
    bool first = true;
    for (int k = 1; k <= 32; ++k)
      if (t.degrees[k]) {
        s += std::string(first ? "" : ", ") + "\"" + std::to_string(k) + "\": " + std::to_string(t.degrees[k]);
        first = false;
      }
    s += "}";
  } else {
    s += ", \"sectors\": " + std::to_string(t.sectors) + ", \"sectors_ideal\": " + std::to_string(t.sectors_ideal);
  }
  return s + "}";
}

std::string slug(const std::string& name) {
  std::string s;
  for (char ch : name) {
    const bool keep = std::isalnum(static_cast<unsigned char>(ch)) || ch == '=' || ch == '.';
    if (keep) s += ch;
    else if (!s.empty() && s.back() != '-') s += '-';
  }
  while (!s.empty() && s.back() == '-') s.pop_back();
  return s.empty() ? "case" : s;
}

void write_case() {
  const char* dir = std::getenv("LOMAR_EMU_COUNT_OUT");
  Cases& c = cases();
  if (!dir || !*dir) return;
  const std::filesystem::path folder = std::filesystem::path(dir) / c.op;
  std::filesystem::create_directories(folder);
  const std::filesystem::path path = folder / (slug(c.name) + ".json");
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "count: cannot write %s\n", path.c_str());
    return;
  }
  const char* arch = std::getenv("LOMAR_EMU_ARCH");
  const char* sms = std::getenv("LOMAR_EMU_SMS");
  std::fprintf(f,
               "{\"model\": \"emulation counts: a model of the kernels' memory traffic from the CPU "
               "emulation (csrc/tests/cuda_emulation, run.sh --count), not GPU measurements\",\n"
               " \"op\": %s, \"case\": %s, \"arch\": %s, \"sms\": %s,\n \"launches\": [",
               json_string(c.op).c_str(), json_string(c.name).c_str(), arch && *arch ? arch : "80",
               sms && *sms ? sms : "2");
  for (size_t i = 0; i < c.launches.size(); ++i) {
    const LaunchRecord& r = c.launches[i];
    std::fprintf(f,
                 "%s\n  {\"kernel\": %s, \"site\": %s, \"grid\": [%u, %u, %u], \"block\": [%u, %u, %u], "
                 "\"blocks\": %llu, \"dynamic_smem\": %llu, \"static_smem\": %llu,\n   \"mark\": %s,\n",
                 i ? "," : "", json_string(r.kernel).c_str(), json_string(r.site).c_str(), r.grid[0], r.grid[1],
                 r.grid[2], r.block[0], r.block[1], r.block[2], (unsigned long long)r.blocks,
                 (unsigned long long)r.dynamic_smem, (unsigned long long)r.static_smem, r.mark.c_str());
    std::fprintf(f, "   \"global_load\": %s,\n   \"global_store\": %s,\n   \"global_atomic\": %s,\n",
                 json_traffic(r.global_load, false).c_str(), json_traffic(r.global_store, false).c_str(),
                 json_traffic(r.global_atomic, false).c_str());
    std::fprintf(f,
                 "   \"global_unique\": {\"read_bytes\": %llu, \"written_bytes\": %llu, \"read_sectors\": %llu, "
                 "\"written_sectors\": %llu},\n",
                 (unsigned long long)r.unique_read_bytes, (unsigned long long)r.unique_written_bytes,
                 (unsigned long long)r.unique_read_sectors, (unsigned long long)r.unique_written_sectors);
    std::fprintf(f, "   \"shared_load\": %s,\n   \"shared_store\": %s,\n   \"shared_atomic\": %s,\n",
                 json_traffic(r.shared_load, true).c_str(), json_traffic(r.shared_store, true).c_str(),
                 json_traffic(r.shared_atomic, true).c_str());
    std::fprintf(f,
                 "   \"barriers\": %llu, \"barriers_max_per_block\": %llu, \"mma\": %llu, \"shfl\": %llu, "
                 "\"vote\": %llu, \"syncwarp\": %llu, \"cp_async\": %llu,\n   \"buffers\": [",
                 (unsigned long long)r.barriers, (unsigned long long)r.barriers_max_per_block,
                 (unsigned long long)r.mma, (unsigned long long)r.shfl, (unsigned long long)r.vote,
                 (unsigned long long)r.syncwarp, (unsigned long long)r.cp_async);
    for (size_t k = 0; k < r.buffers.size(); ++k) {
      const Buffer& b = r.buffers[k];
      std::fprintf(f,
                   "%s{\"id\": %llu, \"bytes\": %llu, \"read\": %llu, \"unique_read\": %llu, \"written\": %llu, "
                   "\"unique_written\": %llu}",
                   k ? ", " : "", (unsigned long long)b.id, (unsigned long long)b.size, (unsigned long long)b.read,
                   (unsigned long long)b.unique_read, (unsigned long long)b.written,
                   (unsigned long long)b.unique_written);
    }
    std::fprintf(f, "],\n   \"sites\": [");
    for (size_t k = 0; k < r.sites.size(); ++k) {
      const Site& s = r.sites[k];
      std::fprintf(f, "%s\n    {\"kind\": %s, \"where\": %s, \"counts\": %s}", k ? "," : "",
                   json_string(s.kind).c_str(), json_string(s.where).c_str(),
                   json_traffic(s.traffic, s.kind.rfind("shared", 0) == 0).c_str());
    }
    std::fprintf(f, "]}");
  }
  std::fprintf(f, "\n]}\n");
  std::fclose(f);
}

uint64_t popcount_range(const uint64_t* bits, size_t n) {
  uint64_t total = 0;
  for (size_t w = 0; w < (n + 63) / 64; ++w) total += __builtin_popcountll(bits[w]);
  return total;
}

// Distinct 32-byte sectors with a marked byte ([lo, hi): the range's addresses).
uint64_t sectors_marked(const uint64_t* bits, uintptr_t lo, uintptr_t hi) {
  uint64_t total = 0;
  for (uintptr_t s = lo >> 5; s <= (hi - 1) >> 5; ++s) {
    const uintptr_t from = std::max(lo, s << 5) - lo, to = std::min(hi, (s + 1) << 5) - lo;
    bool any = false;
    for (uintptr_t i = from; i < to && !any;) {
      if (i % 64 == 0 && to - i >= 64) {
        any = bits[i / 64] != 0;
        i += 64;
      } else {
        any = bits[i / 64] >> (i % 64) & 1;
        ++i;
      }
    }
    total += any;
  }
  return total;
}

}  // namespace

// ---- host side ---------------------------------------------------------------------------

void register_global(const void* p, size_t n) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.m);
  r.live[reinterpret_cast<uintptr_t>(p)] = {n, r.next_id++};
}

void unregister_global(const void* p) {
  Registry& r = registry();
  std::lock_guard<std::mutex> g(r.m);
  r.live.erase(reinterpret_cast<uintptr_t>(p));
}

void set_program(const char* argv0) {
  std::string name = std::filesystem::path(argv0).filename().string();
  if (name.rfind("check_", 0) == 0) name = name.substr(6);
  cases().op = name;
}

void begin_case(const std::string& name) {
  cases().name = name;
  cases().mark = "{}";
  cases().launches.clear();
}

void mark(const std::string& json_object) { cases().mark = json_object; }

void end_case() {
  case_launches();
  write_case();
}

const std::vector<LaunchRecord>& case_launches() {
  for (LaunchRecord& r : cases().launches)
    if (r.kernel.empty()) r.kernel = symbol_of(r.fn);
  resolve_sites(cases().launches);
  return cases().launches;
}

// ---- the emulator -------------------------------------------------------------------------

LaunchCounts* launch_begin(const void* fn, const char* name, const char* file, int line,
                           const unsigned grid[3], const unsigned block[3], size_t smem) {
  Quiet quiet;
  auto* l = new LaunchCounts;
  l->rec.fn = fn;
  l->rec.site = std::filesystem::path(file).filename().string() + ":" + std::to_string(line) + " (" + name + ")";
  std::copy(grid, grid + 3, l->rec.grid);
  std::copy(block, block + 3, l->rec.block);
  l->rec.dynamic_smem = smem;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.m);
    for (auto& [start, v] : r.live) l->ranges.push_back({start, start + v.first, v.second});
  }
  if (!l->ranges.empty()) {
    l->lo = l->ranges.front().lo;
    for (const Range& r : l->ranges) l->hi = std::max(l->hi, r.hi);
  }
  const size_t n = l->ranges.size();
  l->read_bits = std::make_unique<std::atomic<uint64_t*>[]>(n);
  l->write_bits = std::make_unique<std::atomic<uint64_t*>[]>(n);
  for (size_t k = 0; k < n; ++k) {
    l->read_bits[k].store(nullptr);
    l->write_bits[k].store(nullptr);
  }
  l->range_read = std::make_unique<uint64_t[]>(n);
  l->range_written = std::make_unique<uint64_t[]>(n);
  return l;
}

void launch_end(LaunchCounts* l) {
  Quiet quiet;
  LaunchRecord& rec = l->rec;
  for (size_t k = 0; k < l->ranges.size(); ++k) {
    const Range& r = l->ranges[k];
    const uint64_t* rb = l->read_bits[k].load();
    const uint64_t* wb = l->write_bits[k].load();
    if (!rb && !wb) continue;
    Buffer b{r.id, r.hi - r.lo, l->range_read[k], 0, l->range_written[k], 0};
    if (rb) {
      b.unique_read = popcount_range(rb, r.hi - r.lo);
      rec.unique_read_sectors += sectors_marked(rb, r.lo, r.hi);
    }
    if (wb) {
      b.unique_written = popcount_range(wb, r.hi - r.lo);
      rec.unique_written_sectors += sectors_marked(wb, r.lo, r.hi);
    }
    rec.unique_read_bytes += b.unique_read;
    rec.unique_written_bytes += b.unique_written;
    rec.buffers.push_back(b);
  }
  rec.mark = cases().mark;
  for (auto& [key, t] : l->sites) {
    Site s;
    s.pc = key.first;
    const uint8_t f = key.second;
    s.kind = std::string(f & kShared ? "shared " : "global ") + (f & kAtomicRmw ? "atomic" : f & kWrite ? "store" : "load") +
             (f & kAsync ? " (cp.async)" : "");
    s.traffic = t;
    rec.sites.push_back(std::move(s));
  }
  auto excess = [](const Site& s) {
    return s.traffic.sectors - s.traffic.sectors_ideal + s.traffic.wavefronts - s.traffic.wavefronts_ideal;
  };
  std::stable_sort(rec.sites.begin(), rec.sites.end(), [&](const Site& x, const Site& y) {
    return excess(x) != excess(y) ? excess(x) > excess(y) : x.traffic.requests > y.traffic.requests;
  });
  if (rec.sites.size() > kTopSites) rec.sites.resize(kTopSites);
  cases().launches.push_back(std::move(rec));
  delete l;
}

BlockCounts* block_begin(LaunchCounts* l, unsigned nthreads, const void* dynamic_smem, size_t dynamic_bytes) {
  Quiet quiet;
  auto* b = new BlockCounts;
  b->launch = l;
  b->threads.resize(nthreads);
  for (ThreadState& t : b->threads) t.block = b;
  if (dynamic_bytes) {
    b->shared_lo[0] = reinterpret_cast<uintptr_t>(dynamic_smem);
    b->shared_size[0] = dynamic_bytes;
    b->nshared.store(1, std::memory_order_release);
  }
  return b;
}

void add_shared(BlockCounts* b, const void* p, size_t n) {
  Quiet quiet;
  const int k = b->nshared.load(std::memory_order_relaxed);
  if (k == kMaxShared) {
    std::fprintf(stderr, "count: more than %d shared-memory variables in a block\n", kMaxShared);
    std::abort();
  }
  b->shared_lo[k] = reinterpret_cast<uintptr_t>(p);
  b->shared_size[k] = n;
  b->static_bytes += n;
  b->nshared.store(k + 1, std::memory_order_release);
}

void thread_begin(BlockCounts* b, unsigned tid) { current = &b->threads[tid]; }
void thread_end() { current = nullptr; }

void barrier(BlockCounts* b) {
  Quiet quiet;
  for (unsigned w = 0; w < (b->threads.size() + 31) / 32; ++w) flush_warp(b, w);
  ++b->barriers;
}

void collective(BlockCounts* b, unsigned warp, int kind, bool full) {
  Quiet quiet;
  switch (kind) {
    case kSyncwarp: ++b->syncwarp; break;
    case kShfl: ++b->shfl; break;
    case kVote: ++b->vote; break;
    case kMma: ++b->mma; break;
  }
  if (full) flush_warp(b, warp);
}

void block_end(BlockCounts* b) {
  Quiet quiet;
  for (unsigned w = 0; w < (b->threads.size() + 31) / 32; ++w) flush_warp(b, w);
  LaunchCounts* l = b->launch;
  {
    std::lock_guard<std::mutex> g(l->m);
    LaunchRecord& r = l->rec;
    add(r.global_load, b->global_load);
    add(r.global_store, b->global_store);
    add(r.global_atomic, b->global_atomic);
    add(r.shared_load, b->shared_load);
    add(r.shared_store, b->shared_store);
    add(r.shared_atomic, b->shared_atomic);
    ++r.blocks;
    r.static_smem = std::max(r.static_smem, b->static_bytes);
    r.barriers += b->barriers;
    r.barriers_max_per_block = std::max(r.barriers_max_per_block, b->barriers);
    r.mma += b->mma;
    r.shfl += b->shfl;
    r.vote += b->vote;
    r.syncwarp += b->syncwarp;
    r.cp_async += b->cp_async;
    for (auto& [key, t] : b->sites) add(l->sites[key], t);
  }
  delete b;
}

void atomic(const void* p, unsigned size, const void* site) { record(p, size, kAtomicRmw, site); }

void async_copy(const void* src, const void* dst, unsigned size, const void* site) {
  record(src, size, kAsync, site);
  record(dst, size, kWrite | kAsync, site);
}

}  // namespace emu::count

// ---- what -fsanitize=thread code calls ------------------------------------------------------
#define EMU_ACCESS(n)                                                                                  \
  extern "C" void __tsan_read##n(void* p) { emu::count::record(p, n, 0, __builtin_return_address(0)); } \
  extern "C" void __tsan_write##n(void* p) { emu::count::record(p, n, 1, __builtin_return_address(0)); } \
  extern "C" void __tsan_unaligned_read##n(void* p) { emu::count::record(p, n, 0, __builtin_return_address(0)); } \
  extern "C" void __tsan_unaligned_write##n(void* p) { emu::count::record(p, n, 1, __builtin_return_address(0)); } \
  extern "C" void __tsan_volatile_read##n(void* p) { emu::count::record(p, n, 0, __builtin_return_address(0)); } \
  extern "C" void __tsan_volatile_write##n(void* p) { emu::count::record(p, n, 1, __builtin_return_address(0)); }
EMU_ACCESS(1)
EMU_ACCESS(2)
EMU_ACCESS(4)
EMU_ACCESS(8)
EMU_ACCESS(16)
#undef EMU_ACCESS

extern "C" {
void __tsan_read_range(void* p, unsigned long n) { emu::count::record(p, n, 0, __builtin_return_address(0)); }
void __tsan_write_range(void* p, unsigned long n) { emu::count::record(p, n, 1, __builtin_return_address(0)); }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_ignore_thread_begin() {}
void __tsan_ignore_thread_end() {}
void __tsan_acquire(void*) {}
void __tsan_release(void*) {}
void __tsan_mutex_create(void*, unsigned) {}
void __tsan_mutex_destroy(void*, unsigned) {}
void __tsan_mutex_pre_lock(void*, unsigned) {}
void __tsan_mutex_post_lock(void*, unsigned, int) {}
int __tsan_mutex_pre_unlock(void*, unsigned) { return 0; }
void __tsan_mutex_post_unlock(void*, unsigned) {}
void __tsan_mutex_pre_signal(void*, unsigned) {}
void __tsan_mutex_post_signal(void*, unsigned) {}
void __tsan_mutex_pre_divert(void*, unsigned) {}
void __tsan_mutex_post_divert(void*, unsigned) {}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}

// Atomics of the instrumented code: performed, sequentially consistent, not counted.
#define EMU_ATOMICS(bits, T)                                                                          \
  extern "C" T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  extern "C" void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" T __tsan_atomic##bits##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST); } \
  extern "C" int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  } \
  extern "C" int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
  } \
  extern "C" T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) { \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    return c; \
  }
EMU_ATOMICS(8, char)
EMU_ATOMICS(16, short)
EMU_ATOMICS(32, int)
EMU_ATOMICS(64, long)
#undef EMU_ATOMICS
