"""Proof that the traffic counters (run.sh --count, count.h) see what they claim to:
each plant puts one inefficiency into a copy of a kernel file (a shared tile's padding
removed, a tile loaded twice, a tile load made transposed), runs the counting build on
it, and requires the figure it should move to move, against the same cases counted on
the unchanged file, while the figures it should not touch stay put and the planted
kernel still passes its checks (an inefficiency, not a fault). The counts are a model
made on the CPU, not GPU measurements. The sources in csrc/cuda/ are never touched.
    python csrc/tests/cuda_emulation/planted_test.py [--list] [--jobs N] [NAME-SUBSTRING ...]
(also: run.sh --planted)
"""
import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

BF16_CASE = "S=2 N=50 H=2 d=64 bias strided"  # bf16: 16-byte tile loads, tensor cores
FP32_CASE = "tails fp32: S=2 N=33 H=1 d=128 contextual strided"  # fp32: 4-byte tile loads
FWD_BF16 = "window_attention_fwd_kernel<c10::BFloat16, 64, 64>"
FWD_FP32 = "window_attention_fwd_kernel<float, 128, 32>"


def get(launch, path):
    value = launch
    for key in path.split("."):
        value = value[key]
    return value


def coalescing(launch):
    load = launch["global_load"]
    return load["sectors_ideal"] / load["sectors"]


def q_bytes(case):  # the q tensor of a check case, in bytes
    S, N, H, d = (int(re.search(rf"\b{k}=(\d+)", case).group(1)) for k in "SNHd")
    return S * N * H * d * (2 if case == BF16_CASE else 4)


class Expect:
    """On kernel's first launch in case: relation(planted figure, baseline figure)."""

    def __init__(self, case, kernel, figure, relation, describe):
        self.case, self.kernel, self.figure, self.relation, self.describe = (
            case, kernel, figure, relation, describe)

    def value(self, launch):
        return self.figure(launch) if callable(self.figure) else get(launch, self.figure)


def up(factor=1.0):
    return lambda new, old: new > old and new >= factor * old


def same(new, old):
    return new == old


def down(new, old):
    return new < old


class Plant:
    def __init__(self, name, file, edits, expects):
        self.name, self.file, self.edits, self.expects = name, file, edits, expects

    @property
    def op(self):
        return self.file[:-3]

    @property
    def cases(self):
        return sorted({e.case for e in self.expects})


E = Expect
PLANTS = [
    Plant("shared tiles unpadded (kPad = 0)", "window_attention.cu",
          [("template <typename T> constexpr int kPad = sizeof(T) == 2 ? 8 : 1;",
            "template <typename T> constexpr int kPad = 0;")],
          [E(BF16_CASE, FWD_BF16, "shared_load.max_conflict_degree", lambda n, o: n > o and n >= 8,
             "bf16 forward: worst shared-load bank conflict up to >= 8-way"),
           E(BF16_CASE, FWD_BF16, "shared_load.wavefronts", up(1.5), "bf16 forward: shared-load wavefronts x1.5 or more"),
           E(FP32_CASE, FWD_FP32, "shared_load.max_conflict_degree", lambda n, o: n > o and n >= 8,
             "fp32 forward: worst shared-load bank conflict up to >= 8-way"),
           E(BF16_CASE, FWD_BF16, "global_load.bytes", same, "bf16 forward: global bytes read unchanged")]),
    Plant("forward loads its Q tile twice", "window_attention.cu",
          [("  load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,\n"
            "                                    sm.qseq, sm.qpos, p.d);\n  __syncthreads();\n"
            "  if (p.mode == kContextual) contextual_table<scalar_t, DP, ROWS>(p, tc.h, sm.Qs, sm.Ks, sm.qR, ldr);\n\n"
            "  acc_t o[NTO][4];",
            "  load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,\n"
            "                                    sm.qseq, sm.qpos, p.d);\n"
            "  load_tile<scalar_t, DP, ROWS, LD>(sm.Qs, static_cast<const scalar_t*>(p.q), p.q_st, tc.h,\n"
            "                                    sm.qseq, sm.qpos, p.d);\n  __syncthreads();\n"
            "  if (p.mode == kContextual) contextual_table<scalar_t, DP, ROWS>(p, tc.h, sm.Qs, sm.Ks, sm.qR, ldr);\n\n"
            "  acc_t o[NTO][4];")],
          [E(BF16_CASE, FWD_BF16, "global_load.bytes", lambda n, o: n - o == q_bytes(BF16_CASE),
             f"bf16 forward: global bytes read up by exactly q's {q_bytes(BF16_CASE)}"),
           E(FP32_CASE, FWD_FP32, "global_load.bytes", lambda n, o: n - o == q_bytes(FP32_CASE),
             f"fp32 forward: global bytes read up by exactly q's {q_bytes(FP32_CASE)}"),
           E(BF16_CASE, FWD_BF16, "global_unique.read_bytes", same, "bf16 forward: distinct bytes read unchanged"),
           E(BF16_CASE, FWD_BF16, "global_load.sectors", up(), "bf16 forward: sectors up"),
           E(BF16_CASE, FWD_BF16, "shared_load.max_conflict_degree", same, "bf16 forward: bank conflicts unchanged")]),
    Plant("tile loads transposed (lanes walk rows)", "window_attention.cu",
          [("        const int r = e / CHUNKS, c = (e - r * CHUNKS) * V;",
            "        const int r = e % ROWS, c = e / ROWS * V;"),
           ("  for (int e = threadIdx.x; e < ROWS * DP; e += blockDim.x) {\n    const int r = e / DP, c = e - r * DP;\n"
            "    scalar_t val = to<scalar_t>(0.f);\n    if (seq[r] >= 0",
            "  for (int e = threadIdx.x; e < ROWS * DP; e += blockDim.x) {\n    const int r = e % ROWS, c = e / ROWS;\n"
            "    scalar_t val = to<scalar_t>(0.f);\n    if (seq[r] >= 0")],
          [E(BF16_CASE, FWD_BF16, "global_load.sectors", up(1.5), "bf16 forward: sectors read x1.5 or more"),
           E(BF16_CASE, FWD_BF16, coalescing, down, "bf16 forward: load coalescing down"),
           E(FP32_CASE, FWD_FP32, "global_load.sectors", up(2.0), "fp32 forward: sectors read x2 or more"),
           E(FP32_CASE, FWD_FP32, coalescing, down, "fp32 forward: load coalescing down"),
           E(BF16_CASE, FWD_BF16, "global_load.bytes", same, "bf16 forward: bytes read unchanged"),
           E(FP32_CASE, FWD_FP32, "global_unique.read_bytes", same, "fp32 forward: distinct bytes read unchanged")]),
]


def count(cuda_dir, build, out, op, cases, env):
    """Runs the counting build of op on cuda_dir's kernel file: (status, output, launches by case)."""
    cmd = [os.path.join(HERE, "run.sh"), "--count", "--count-out", out, op]
    for c in cases:
        cmd += ["--case", c]
    extra = {"LOMAR_EMU_CUDA_DIR": cuda_dir, "LOMAR_EMU_OUT": build} if build else {}
    proc = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True, timeout=1800)
    launches = {}
    for path in glob.glob(os.path.join(out, op, "*.json")):
        with open(path) as f:
            data = json.load(f)
        launches[data["case"]] = data["launches"]
    return proc.returncode, proc.stdout + proc.stderr, launches


def first(launches, case, kernel):
    for launch in launches.get(case, []):
        if launch["kernel"] == kernel:
            return launch
    return None


def run_plant(plant, work, env, baseline):
    path = os.path.join(ROOT, "csrc", "cuda", plant.file)
    source = open(path).read()
    for find, replace in plant.edits:
        if source.count(find) != 1:
            return plant, "INVALID", [f"the text to plant occurs {source.count(find)} times in {plant.file}: {find[:60]!r}"], 0
        source = source.replace(find, replace)
    folder = os.path.join(work, re.sub(r"\W+", "_", plant.name))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, plant.file), "w") as f:
        f.write(source)
    start = time.time()
    status, output, launches = count(folder, os.path.join(folder, "build"), os.path.join(folder, "counts"),
                                     plant.op, plant.cases, env)
    seconds = time.time() - start
    ran = re.findall(r"kernel source: (\S+)", output)
    if ran != [os.path.join(folder, plant.file)]:
        return plant, "INVALID", [f"the checks ran {ran}, not the planted file\n" + output[-2000:]], seconds
    if status != 0:
        return plant, "INVALID", ["the planted kernel failed its checks (a fault, not an inefficiency)\n" +
                                  output[-2000:]], seconds
    lines, ok = [], True
    for e in plant.expects:
        new, old = first(launches, e.case, e.kernel), first(baseline, e.case, e.kernel)
        if new is None or old is None:
            ok = False
            lines.append(f"no launch of {e.kernel} in '{e.case}'")
            continue
        n, o = e.value(new), e.value(old)
        good = e.relation(n, o)
        ok &= good
        fmt = (lambda v: f"{v:.2f}") if isinstance(n, float) else str
        lines.append(f"{'moved' if good else 'WRONG'}: {e.describe}: {fmt(o)} -> {fmt(n)}")
    return plant, "moved" if ok else "NOT MOVED", lines, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only plants whose name holds one of these")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--jobs", type=int, default=2, help="planted files built and run at once")
    args = parser.parse_args()
    chosen = [p for p in PLANTS if not args.names or any(n in p.name for n in args.names)]
    if args.list:
        for p in chosen:
            print(p.name)
            for e in p.expects:
                print(f"    {e.describe}")
        return 0
    if not chosen:
        sys.exit("planted_test.py: no plant matches")
    print("(traffic counters: emulation counts, a model made on the CPU, not GPU measurements)", flush=True)
    work = tempfile.mkdtemp(prefix="lomar_planted_")
    env = dict(os.environ, MAX_JOBS="1")
    failed = 0
    try:
        # The baseline: the unchanged files, counted by the shared counting build (which
        # also makes the precompiled headers the planted builds use).
        ops_cases = {}
        for p in chosen:
            ops_cases.setdefault(p.op, set()).update(p.cases)
        baseline = {}
        for op, cases in ops_cases.items():
            status, output, launches = count(os.path.join(ROOT, "csrc", "cuda"), None,
                                             os.path.join(work, "baseline"), op, sorted(cases), dict(os.environ))
            if status != 0:
                print(output[-3000:])
                sys.exit(f"planted_test.py: the unchanged {op} failed its counting run")
            baseline.update(launches)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for p, verdict, lines, seconds in pool.map(lambda p: run_plant(p, work, env, baseline), chosen):
                ok = verdict == "moved"
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {p.name} {seconds:.0f}s: {verdict}", flush=True)
                for line in lines:
                    print(f"       {line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(chosen) - failed} of {len(chosen)} planted inefficiencies moved the counters as they should")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
