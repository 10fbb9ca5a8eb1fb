"""Proof that the emulation catches what GPU kernels get wrong: each mutation plants
one fault in a copy of a kernel file (a __syncthreads removed, a tile bound shifted
by one, a tail guard dropped, ...), runs the emulation on it with run.sh, and
requires the run to fail, by the detector named (a ThreadSanitizer race, an
AddressSanitizer/UBSan report, a mismatch with the CPU op, or the emulator's own
error). The sources in csrc/cuda/ are never touched.
    python csrc/tests/cuda_emulation/mutation_test.py [--list] [--jobs N] [NAME-SUBSTRING ...]
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

# What a failed run's output shows, per detector.
DETECTORS = {
    "race": r"WARNING: ThreadSanitizer: data race",
    "memory": r"ERROR: AddressSanitizer|runtime error:",
    "mismatch": r"^\s+.* FAIL$|FAIL: unexpected error",
    "emulation": r"^cuda emulation: ",
}


class Mutation:
    """detector: the one that must report the fault, or a tuple of those that may
    (a fault that shows one way or the other depending on the threads' timing)."""

    def __init__(self, name, file, find, replace, mode, detector, cases=()):
        self.name, self.file, self.find, self.replace = name, file, find, replace
        self.mode, self.cases = mode, list(cases)
        self.detectors = (detector,) if isinstance(detector, str) else tuple(detector)

    @property
    def detector(self):
        return "|".join(self.detectors)

    @property
    def op(self):
        return self.file[:-3]


M = Mutation
MUTATIONS = [
    # rpe_gather.cu: grid-stride loops over elements and rows, a warp per row.
    M("rpe_gather: forward loop guard one past the end", "rpe_gather.cu",
      "threadIdx.x; idx < total;\n       idx += (int64_t)gridDim.x * blockDim.x) {\n    const int64_t row = idx / N;",
      "threadIdx.x; idx <= total;\n       idx += (int64_t)gridDim.x * blockDim.x) {\n    const int64_t row = idx / N;",
      "address", "memory"),
    M("rpe_gather: backward bucket loop one past NB", "rpe_gather.cu",
      "for (int64_t b = lane; b < NB; b += kWarp)", "for (int64_t b = lane; b <= NB; b += kWarp)",
      "address", "memory"),
    M("rpe_gather: backward segment bound shifted by one", "rpe_gather.cu",
      "k < off[b + 1]; ++k)", "k < off[b + 1] - 1; ++k)", "none", "mismatch"),

    # window_patchify.cu: a tile staged in shared memory, reused item after item.
    M("window_patchify: __syncthreads between staging and copying out removed", "window_patchify.cu",
      "      __syncthreads();\n      for (int32_t k = threadIdx.x;", "      for (int32_t k = threadIdx.x;",
      "thread", "race", ["strided"]),  # C > 1: a thread copies out what others staged
    M("window_patchify: __syncthreads before the tile's reuse removed", "window_patchify.cu",
      "      __syncthreads();  // the tile is reused by the next item\n", "",
      "thread", "race", ["strided"]),
    M("window_patchify: staging loop one past the tile (shared memory overrun)", "window_patchify.cu",
      "    if (STAGED) {\n      for (int32_t j = threadIdx.x; j < len;",
      "    if (STAGED) {\n      for (int32_t j = threadIdx.x; j <= len;",
      "address", "memory"),
    M("window_patchify: backward window column bound shifted by one", "window_patchify.cu",
      "if (c < 0 || c >= K) continue;", "if (c < 0 || c > K) continue;", "none", "mismatch"),
    M("window_patchify: staged copy-out normalises with the next channel's mean/std",
      "window_patchify.cu", "tf(tile[k], k % C32)", "tf(tile[k], (k + 1) % C32)", "none",
      "mismatch", ["uint8 2x3"]),
    # Only a uint16 case can catch this one: uint8 and float images never take the line.
    M("window_patchify: uint16 samples read as their low byte", "window_patchify.cu",
      "if constexpr (std::is_same_v<in_t, uint16_t>) x = x / acc_t(65535);",
      "if constexpr (std::is_same_v<in_t, uint16_t>) x = static_cast<acc_t>(static_cast<uint8_t>(v)) / acc_t(65535);",
      "none", "mismatch", ["uint16"]),

    # mask_substitute.cu: 16-byte word copies, column tiles with a tail, chunk sums.
    M("mask_substitute: forward row copy one past D", "mask_substitute.cu",
      "d < D; d += blockDim.x) dst[d] = src[d];", "d <= D; d += blockDim.x) dst[d] = src[d];",
      "address", "memory"),
    M("mask_substitute: backward column tail guard off by one", "mask_substitute.cu",
      "  if (d >= D) return;  // no block-wide synchronisation below",
      "  if (d > D) return;  // no block-wide synchronisation below", "address", "memory"),
    M("mask_substitute: 16-byte words without the alignment check", "mask_substitute.cu",
      "row_bytes % 16 == 0 && aligned16(tokens.data_ptr()) &&", "row_bytes % 16 == 0 &&",
      "address", "memory", ["misaligned"]),
    M("mask_substitute: last chunk left out of the sum", "mask_substitute.cu",
      "for (int64_t c = 0; c < num_chunks; ++c) {", "for (int64_t c = 0; c + 1 < num_chunks; ++c) {",
      "none", "mismatch"),

    # masked_patch_loss.cu: warp sums per row, a shared-memory tree in one block.
    M("masked_patch_loss: __syncthreads inside the tree removed", "masked_patch_loss.cu",
      "      s_count[threadIdx.x] += s_count[threadIdx.x + stride];\n    }\n    __syncthreads();",
      "      s_count[threadIdx.x] += s_count[threadIdx.x + stride];\n    }",
      "thread", "race", ["S=3 L=4 P=17"]),
    # A block of 512 threads: more than the 255 ThreadSanitizer tracks at a time, so
    # it reports this race in some runs only; in the others the tree read a partner's
    # slot before it was written, and the NaN fill shows it as a mismatch.
    M("masked_patch_loss: __syncthreads before the tree removed", "masked_patch_loss.cu",
      "  s_count[threadIdx.x] = count;\n  __syncthreads();", "  s_count[threadIdx.x] = count;",
      "thread", ("race", "mismatch"), ["S=3 L=4 P=17"]),
    M("masked_patch_loss: tree starts one level too wide (shared memory overrun)",
      "masked_patch_loss.cu", "for (int stride = kSumThreads / 2;", "for (int stride = kSumThreads;",
      "address", "memory", ["S=3 L=4 P=17"]),
    M("masked_patch_loss: warp sum skips the first butterfly stage", "masked_patch_loss.cu",
      "for (int offset = kWarp / 2; offset > 0;", "for (int offset = kWarp / 4; offset > 0;",
      "none", "mismatch"),
    M("masked_patch_loss: squared-error loop one past the row", "masked_patch_loss.cu",
      "    for (int64_t i = lane; i < P; i += kWarp) {\n      const acc_t diff",
      "    for (int64_t i = lane; i <= P; i += kWarp) {\n      const acc_t diff",
      "address", "memory"),

    # window_attention.cu: flash attention on tiles in shared memory, mma fragments.
    # (Not the forward's last __syncthreads of the key loop: the one at the loop's top
    # already keeps the next K, V from overwriting tiles still in use.)
    M("window_attention: __syncthreads between loading K/V and using them removed",
      "window_attention.cu",
      "  cp_async_wait<1>();  // K has landed (one group, V's, may be pending)\n  __syncthreads();\n}",
      "  cp_async_wait<1>();  // K has landed (one group, V's, may be pending)\n}",
      # Many tiles: ThreadSanitizer keeps a few accesses per word, and with P in
      # registers one element left it too few racing pairs to report every time.
      "thread", "race", ["S=2 N=50 H=2 d=64 bias strided"]),
    # (The FMA path's: on the tensor cores P and dS^T stay in registers; "one element"
    # runs every dtype, fp32 and fp64 among them.)
    M("window_attention: __syncwarp between staging A's fragments and the FMA GEMM removed",
      "window_attention.cu",
      "    __syncwarp();\n    warp_gemm<scalar_t, false, NT>(acc, rows_of(rows, ld), bt, 8 * KT);",
      "    warp_gemm<scalar_t, false, NT>(acc, rows_of(rows, ld), bt, 8 * KT);",
      "thread", "race", ["one element"]),
    M("window_attention: dk/dv __syncwarp before dS^T replaces P^T removed", "window_attention.cu",
      "    if constexpr (!kTC) __syncwarp();  // every lane is done reading P^T before dS^T replaces it\n", "",
      "thread", "race", ["tails fp32: S=2 N=33"]),
    # The tensor cores' register operands: P (and dS^T) packed in the accumulator's
    # layout and fed as A fragments; a wrong fragment index or a swapped pair of staged
    # bucket ids is wrong data, not a race.
    M("window_attention: register A fragment with its row halves swapped (a1 <-> a2)",
      "window_attention.cu",
      "a[2 * kk][0], a[2 * kk][1], a[2 * kk + 1][0], a[2 * kk + 1][1],",
      "a[2 * kk][0], a[2 * kk + 1][0], a[2 * kk][1], a[2 * kk + 1][1],",
      "none", "mismatch", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: staged bucket pair read in the wrong order", "window_attention.cu",
      "return x ? static_cast<int>(two >> 16) : static_cast<int>(two & 0xFFFFu);",
      "return x ? static_cast<int>(two & 0xFFFFu) : static_cast<int>(two >> 16);",
      "none", "mismatch", ["S=2 N=7 H=3 d=8 contextual per-head"]),
    # qR and dT rows end at their bucket count (rounded to a bank-friendly stride), not
    # at the next chunk of ROWS: the chunk's padding columns must not be stored or read.
    M("window_attention: qR pair stores past NB (guard dropped)", "window_attention.cu",
      "{r_lo < p.qr_rows ? p.NB : b0, r_lo + 8 < p.qr_rows ? p.NB : b0}",
      "{r_lo < p.qr_rows ? b0 + ROWS : b0, r_lo + 8 < p.qr_rows ? b0 + ROWS : b0}",
      "address", "memory", ["S=2 N=7 H=3 d=8 contextual per-head"]),
    M("window_attention: qR pair stores past the rows the tile's sequences fill", "window_attention.cu",
      "{r_lo < p.qr_rows ? p.NB : b0, r_lo + 8 < p.qr_rows ? p.NB : b0}", "{p.NB, p.NB}",
      "address", "memory", ["S=2 N=7 H=3 d=8 contextual per-head"]),
    # The head's table resident for a run (forward) or a block (backward), and the 8-bit
    # staged bucket ids whose all-ones byte is the mask.
    M("window_attention: forward stages head 0's table for every run", "window_attention.cu",
      "stage_table<scalar_t, DP, ROWS, LD>(p, run_head, sm.Rs);\n",
      "stage_table<scalar_t, DP, ROWS, LD>(p, 0, sm.Rs);\n",
      "none", "mismatch", ["runs: S=19"]),
    M("window_attention: 8-bit bucket ids' mask read as bucket 255", "window_attention.cu",
      "(lo == kNoBucket8 ? kNoBucket : lo)", "lo",
      "none", "mismatch", ["tails fp16/bf16: S=1 N=65"]),
    M("window_attention: dT R product over the whole chunk (reads past dT's rows)",
      "window_attention.cu", "p.NB - b0 < ROWS ? p.NB - b0 : ROWS);", "ROWS);",
      "address", "memory", ["tails fp32: S=2 N=33"]),
    M("window_attention: dq's quad lanes add their dT columns without taking turns",
      "window_attention.cu",
      "          __syncwarp();\n        }\n      }\n      if (p.fused_backward) {",
      "        }\n      }\n      if (p.fused_backward) {",
      "thread", "race", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: one bucket tile staged without a barrier before the tiles' rows",
      "window_attention.cu", "  __syncthreads();  // the tiles' rows replace the scratch rows next\n", "",
      "thread", "race", ["S=40 N=17 H=2 d=32 bias"]),
    # Asynchronous copies (cp.async): a tile read before its group is waited for is
    # the emulator's NaN fill (a mismatch), or, when no later wait covers it, copies
    # still pending when the thread exits (the emulator's error); a wait without the
    # barrier after it shows one thread's copies to no other (a race).
    M("window_attention: K not waited for before S (cp.async wait_group 2)",
      "window_attention.cu",
      "  cp_async_wait<1>();  // K has landed (one group, V's, may be pending)",
      "  cp_async_wait<2>();  // K has landed (one group, V's, may be pending)",
      "none", "mismatch", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: forward V not waited for before P V (missing wait_group)",
      "window_attention.cu",
      "      tiles_landed();  // V\n      warp_gemm_a_frags", "      __syncthreads();\n      warp_gemm_a_frags",
      "none", ("mismatch", "emulation"), ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: dk/dv dO not waited for (missing wait_group)", "window_attention.cu",
      "      tiles_landed();  // dO\n", "      __syncthreads();\n",
      "none", ("mismatch", "emulation"), ["tails fp16/bf16: S=1 N=65"]),
    M("window_attention: cp.async wait without the barrier after it", "window_attention.cu",
      "  cp_async_wait<0>();\n  __syncthreads();\n}", "  cp_async_wait<0>();\n}",
      "thread", "race", ["S=2 N=50 H=2 d=64 bias strided"]),
    # The fused backward (N <= ROWS: the dq kernel computes D, dQ, dK, dV and d(rpe)):
    # D is a row's sum over its quad; P and dS reach the other warps through shared
    # memory (V's and K's buffers, each taken after a barrier); each warp zeroes its
    # own rows of dT, which share qR's memory, once its lanes have read them; the
    # block's d(rpe) partial is summed in shared memory from zero.
    M("window_attention: fused D summed over a lane's columns only (no quad sum)",
      "window_attention.cu", "row_d[hh] = quad_sum(part[hh]);",
      "row_d[hh] = part[hh];", "none", "mismatch", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: fused backward stages P in V's buffer without a barrier",
      "window_attention.cu",
      "      if (p.fused_backward) __syncthreads();  // every warp is done with V: its buffer takes P\n",
      "", "thread", "race", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: fused backward stages dV's rows over P without a barrier",
      "window_attention.cu",
      "        // Every warp is done with P (V's buffer stages the rows out next) and has staged dS.\n"
      "        __syncthreads();\n", "", "thread", "race", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: fused backward stages fragments with rows g and g + 8 swapped",
      "window_attention.cu", "      scalar_t* at = dst + (row0 + frag_row(e)) * ld + frag_col(n, e);",
      "      scalar_t* at = dst + (row0 + frag_row(e ^ 2)) * ld + frag_col(n, e);",
      "none", "mismatch", ["S=2 N=50 H=2 d=64 bias strided"]),
    M("window_attention: dq kernel's dT rows not zeroed", "window_attention.cu",
      "for (int e = lane; e < 16 * p.dt_ld; e += 32) mine[e] = acc_t(0);",
      "for (int e = lane; e < 0; e += 32) mine[e] = acc_t(0);",
      "none", "mismatch", ["S=2 N=7 H=3 d=8 contextual per-head"]),
    M("window_attention: the block's d(rpe) partial not zeroed first", "window_attention.cu",
      "    if (p.fused_backward)\n"
      "      for (int64_t e = threadIdx.x; e < p.group_width; e += blockDim.x) part[e] = acc_t(0);\n",
      "", "none", "mismatch", ["S=2 N=7 H=3 d=8 contextual per-head"]),
    # Tile runs (forward, dk/dv): a run's last tile dropped leaves its rows of out,
    # dk, dv unwritten (the emulator's NaN fill); a run that reaches into the next
    # one's tiles writes them twice, from two blocks (a race, same values); and the
    # barrier that ends a tile lets the next one replace what others still read.
    M("window_attention: tile run one short", "window_attention.cu",
      "  const int64_t u1 = u0 + p.run_tiles < p.tiles_per_head ? u0 + p.run_tiles : p.tiles_per_head;",
      "  const int64_t u1 = u0 + p.run_tiles - 1 < p.tiles_per_head ? u0 + p.run_tiles - 1 : p.tiles_per_head;",
      "none", "mismatch", ["runs: S=19"]),
    M("window_attention: tile run overlapping the next run", "window_attention.cu",
      "  const int64_t u1 = u0 + p.run_tiles < p.tiles_per_head ? u0 + p.run_tiles : p.tiles_per_head;",
      "  const int64_t u1 = u0 + p.run_tiles + 1 < p.tiles_per_head ? u0 + p.run_tiles + 1 : p.tiles_per_head;",
      "thread", "race", ["runs: S=19"]),
    M("window_attention: forward __syncthreads at the end of a run's tile removed", "window_attention.cu",
      "    __syncthreads();  // the next tile replaces Q (O's staging) and the query rows\n", "",
      "thread", "race", ["runs: S=19"]),
    M("window_attention: dk/dv __syncthreads at the end of a run's tile removed", "window_attention.cu",
      "    __syncthreads();  // the next tile replaces K, V, Q, dO and the key rows\n", "",
      "thread", "race", ["runs: S=13"]),
    M("window_attention: dq __syncthreads before the next tile removed", "window_attention.cu",
      "    __syncthreads();  // Q, dO, dT and the query rows are replaced next\n", "",
      "thread", "race", ["runs: S=19"]),
    M("window_attention: tile rows bound shifted by one", "window_attention.cu",
      "valid = i < p.N;", "valid = i <= p.N;", "address", "memory", ["tails fp32"]),
    M("window_attention: head-dim tail guard dropped", "window_attention.cu",
      "    if (seq[r] >= 0 && c < d) val = src[", "    if (seq[r] >= 0) val = src[",
      "none", "mismatch", ["S=2 N=7 H=3 d=8"]),
    M("window_attention: no opt-in beyond 48 KB of shared memory", "window_attention.cu",
      "  if (smem > 48 * 1024)\n", "  if (smem > 1024 * 1024)\n", "none", "mismatch", ["opt-in"]),
    M("window_attention: __launch_bounds__ below the launch's threads", "window_attention.cu",
      "__launch_bounds__(2 * ROWS, kFwdMinBlocks<DP>) window_attention_fwd_kernel",
      "__launch_bounds__(ROWS, kFwdMinBlocks<DP>) window_attention_fwd_kernel",
      "none", "emulation", ["one element"]),
]


def run_one(m, work, env):
    path = os.path.join(ROOT, "csrc", "cuda", m.file)
    source = open(path).read()
    if source.count(m.find) != 1:
        return m, "INVALID", f"the text to mutate occurs {source.count(m.find)} times in {m.file}", 0
    cuda_dir = os.path.join(work, re.sub(r"\W+", "_", m.name))
    os.makedirs(cuda_dir, exist_ok=True)
    with open(os.path.join(cuda_dir, m.file), "w") as f:
        f.write(source.replace(m.find, m.replace))
    cmd = [os.path.join(HERE, "run.sh"), "--sanitize", m.mode, m.op]
    for c in m.cases:
        cmd += ["--case", c]
    if not m.cases:
        cmd.append("--quick")
    start = time.time()
    proc = subprocess.run(cmd, env={**env, "LOMAR_EMU_CUDA_DIR": cuda_dir,
                                    "LOMAR_EMU_OUT": os.path.join(cuda_dir, "build")},
                          capture_output=True, text=True, timeout=1800)
    seconds = time.time() - start
    output = proc.stdout + proc.stderr
    ran = re.findall(r"kernel source: (\S+)", output)
    if proc.returncode != 3 and ran != [os.path.join(cuda_dir, m.file)]:
        return m, "INVALID", f"the checks ran {ran}, not the mutant", seconds
    if proc.returncode == 0:
        return m, "NOT CAUGHT", "the emulation passed", seconds
    if proc.returncode != 1:
        return m, "INVALID", f"run.sh exit {proc.returncode} (3: the mutant did not build)\n" + output[-2000:], seconds
    found = [d for d, pattern in DETECTORS.items() if re.search(pattern, output, re.M)]
    hit = [d for d in m.detectors if d in found]
    if not hit:
        return m, "WRONG DETECTOR", f"expected {m.detector}, got {found or 'nothing recognised'}\n" + output[-2000:], seconds
    first = next(line for line in output.splitlines() if re.search(DETECTORS[hit[0]], line))
    return m, "caught", first.strip()[:110], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only mutations whose name holds one of these")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--jobs", type=int, default=2, help="mutants built and run at once")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or any(n in m.name for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  [{m.mode}, {m.detector}]")
        return 0
    if not chosen:
        sys.exit("mutation_test.py: no mutation matches")
    work = tempfile.mkdtemp(prefix="lomar_mutants_")
    env = dict(os.environ, MAX_JOBS="1")
    # What every mutant shares (the CPU ops' objects, each mode's precompiled headers):
    # built once, before mutants run in parallel.
    for mode in sorted({m.mode for m in chosen}):
        subprocess.run([os.path.join(HERE, "run.sh"), "--sanitize", mode, "--list", "emulator"],
                       env=dict(os.environ), check=True, capture_output=True)
    failed = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for m, verdict, detail, seconds in pool.map(lambda m: run_one(m, work, env), chosen):
                ok = verdict == "caught"
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {m.name} [{m.mode}] {seconds:.0f}s\n       {verdict}: {detail}",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(chosen) - failed} of {len(chosen)} planted faults caught")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
