"""The prepared GPU run (docs/gpu.md): every check that needs a GPU, in stages that
each have their own time limit, within one command of under 10 minutes.

    make gpu-check                       # on the GPU machine, in a checkout
    GPU_CHECK_DRY=1 make gpu-check       # the same code paths on a CPU, tiny sizes (CI)

Stages, in order (the default limit in seconds, set by $GPU_CHECK_<STAGE>_S):

  versions  20   nvidia-smi, python, torch, Triton, nvcc, the commit
  build    180   pip install -e . with every core for the card's own arch, CUDA
                 required (dry run: no build; the built extension must import)
  smoke     60   python -m lomar_ops info, python -m lomar_ops smoke
  tests    150   pytest -m gpu (pytest-xdist with cores-2 workers when installed),
                 JUnit XML (dry run: the GPU tests collected, all skipped; then a
                 small CPU subset run)
  ceilings  30   bench/ceilings.py: copy GB/s, bf16 matmul TFLOP/s (dry: tiny, CPU)
  bench    150   the op benchmarks, pytest bench, LOMAR_BENCH_DEVICE=cuda (dry:
                 cpu with LOMAR_BENCH_TINY=1)
  e2e      120   lomar bench: LoMaR vs MAE vs BEiT at 224/448/1024, ViT-B/16,
                 within --budget-s (dry: size tiny at 224 on the CPU)
  summary   30   bench/summarize.py, the tarball, the final table

A stage that fails or runs out of time is recorded and the next one runs.
$GPU_CHECK_TOTAL_S (default 570) caps the whole run: a stage gets at most what is
left of it, less the summary's limit, so the summary and the tarball always
happen. $GPU_CHECK_STAGES (e.g. "tests,bench") runs only those stages (the
summary always runs).

Output: everything is written under $OUT/gpu-check/ (OUT defaults to
bench/results/latest, bench/results/dry-latest for the dry run), packed at the end
into $OUT/gpu_check.tar.gz; then $OUT keeps only that tarball and four small
files (gpu_check.log, summary.txt, gpu_tests.xml, stages.json) unless
GPU_CHECK_KEEP_TREE=1, so that a loan that brings back few files brings back
everything. The last thing printed is a short table: each stage's status and
seconds, then the headline figures. Exit status 0 when every stage passed."""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
DRY = os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
CORES = os.cpu_count() or 1

# name: default limit in seconds (the same for the dry run)
LIMITS = {"versions": 20, "build": 180, "smoke": 60, "tests": 150, "ceilings": 30,
          "bench": 150, "e2e": 120, "summary": 30}
TOTAL_S = float(os.environ.get("GPU_CHECK_TOTAL_S", 570))
KEY_FILES = ("gpu_check.log", "summary.txt", "gpu_tests.xml", "stages.json")
# The op benchmarks in this order: the headline first, the slowest last, so that a
# run cut short by its limit keeps the most telling figures (records are written
# after every case).
BENCH_FIRST, BENCH_LAST = ("bench_window_attention.py",), ("bench_vitdet.py",)

T0 = time.monotonic()


class Run:
    """The output folders, the log and the stages' records."""

    def __init__(self, out: Path):
        self.out = out
        self.tree = out / "gpu-check"
        if self.tree.exists():
            shutil.rmtree(self.tree)
        for name in KEY_FILES + ("gpu_check.tar.gz",):
            (out / name).unlink(missing_ok=True)
        (self.tree / "logs").mkdir(parents=True)
        self.log = open(self.tree / "gpu_check.log", "a", buffering=1)
        self.stages: list[dict] = []
        self.headline: list[str] = []
        self.timed_out = False  # set by run_cmd when a command meets its deadline

    def say(self, text: str = "", echo: bool = True) -> None:
        if echo:
            print(text, flush=True)
        self.log.write(text + "\n")

    def timeline(self, text: str) -> None:
        self.say(f"[t+{time.monotonic() - T0:5.0f}s] {text}")


def limit_of(stage: str) -> float:
    return float(os.environ.get(f"GPU_CHECK_{stage.upper()}_S", LIMITS[stage]))


def run_cmd(run: Run, cmd: list[str], log_name: str, deadline: float, env: dict | None = None,
            stdout_file: Path | None = None) -> int | str:
    """Run cmd (its output to logs/<log_name>.log, or to stdout_file) until deadline
    (monotonic); its whole process group is ended at the deadline. The exit code, or
    'timeout'."""
    log_path = stdout_file or run.tree / "logs" / f"{log_name}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    run.say(f"  $ {shlex.join(cmd)}   > {log_path.relative_to(run.tree)}")
    with open(log_path, "a") as f:
        try:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            f.write(f"could not start: {exc}\n")
            return 127
        try:
            return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except KeyboardInterrupt:  # its own session: Ctrl-C does not reach it
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            f.write("\n[gpu-check] ended at the stage's time limit\n")
            run.timed_out = True
            return "timeout"


def tail(path: Path, lines: int = 6) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(errors="replace").rstrip().splitlines()
    return [f"    | {line[:160]}" for line in text[-lines:]]


def junit_counts(path: Path) -> str:
    """'977 passed, 24 failed, ...' from a JUnit XML file, or ''."""
    if not path.exists():
        return ""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return "unreadable junit xml"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors",
                                                            "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    parts = [f"{passed} passed", f"{n['failures']} failed"]
    if n["errors"]:
        parts.append(f"{n['errors']} errors")
    if n["skipped"]:
        parts.append(f"{n['skipped']} skipped")
    return ", ".join(parts)


# ---------------------------------------------------------------------------- stages
# Each returns (ok, detail) and runs its commands until `deadline`.

def stage_versions(run: Run, deadline: float):
    path = run.tree / "versions.txt"
    with open(path, "w") as f:
        f.write(f"gpu-check {'DRY RUN (CPU, tiny sizes)' if DRY else ''} "
                f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}\n"
                f"host cores {CORES}, python {sys.executable}\n")
    ok = True
    smi = shutil.which("nvidia-smi")
    if smi:
        run_cmd(run, [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                      "--format=csv,noheader"], "versions", deadline, stdout_file=path)
    else:
        with open(path, "a") as f:
            f.write("nvidia-smi: not found\n")
        ok = DRY  # a GPU machine without nvidia-smi is worth a look
        if not ok:
            run.say("    | nvidia-smi: not found")
    rc = run_cmd(run, [PY, "-c", "import sys, torch, triton; print('python', sys.version.split()[0],"
                       " 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', "
                       "triton.__version__, 'gpu', torch.cuda.get_device_name() if "
                       "torch.cuda.is_available() else None)"], "versions", deadline,
                 stdout_file=path)
    ok = ok and rc == 0
    nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
                                    / "bin" / "nvcc")
    if Path(nvcc).exists():
        run_cmd(run, [str(nvcc), "--version"], "versions", deadline, stdout_file=path)
    else:
        with open(path, "a") as f:
            f.write("nvcc: not found\n")
    commit = os.environ.get("LOMAR_COMMIT") or _git(["rev-parse", "--short", "HEAD"])
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    with open(path, "a") as f:
        f.write(f"commit {commit or 'unknown (no git repository here: set LOMAR_COMMIT)'}"
                f"{' with local changes' if dirty else ''}\n")
    for line in path.read_text().splitlines():
        run.say(f"    | {line}")
    return ok, "" if ok else "nvidia-smi not found, or torch/triton do not import"


def _git(args: list[str]) -> str:
    """git output in this checkout, '' if it is not the top of a git repository (a copy
    without .git inside another repository must not report the outer one's commit)."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if not top or Path(top).resolve() != ROOT:
            return ""
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def stage_build(run: Run, deadline: float):
    if DRY:
        # CI runs the dry run after make test: the extension is built; not rebuilt here.
        rc = run_cmd(run, [PY, "-c", "import sys, lomar_ops._extension as e; "
                           "print('extension', e.PATH, 'error', e.ERROR); "
                           "sys.exit(0 if e.AVAILABLE else 1)"], "build", deadline)
        return rc == 0, "dry run: not rebuilt; the extension imports" if rc == 0 else \
            "dry run: the extension does not import (build it first: make test)"
    probe = subprocess.run([PY, "-c", "import torch; p = torch.cuda.get_device_capability(); "
                            "print(f'{p[0]}.{p[1]}')"], capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.strip():
        run.say(f"    | no CUDA device visible to torch: {probe.stderr.strip()[-300:]}")
        return False, "no CUDA device: not built"
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST") or probe.stdout.strip()
    env = {"LOMAR_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch,
           "MAX_JOBS": os.environ.get("MAX_JOBS", str(CORES))}
    rc = run_cmd(run, [PY, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e",
                       "."], "build", deadline, env=env)
    return rc == 0, f"arch {arch}, {env['MAX_JOBS']} jobs" + ("" if rc == 0 else f" (exit {rc})")


def stage_smoke(run: Run, deadline: float):
    rc_info = run_cmd(run, [PY, "-m", "lomar_ops", "info"], "smoke", deadline,
                      stdout_file=run.tree / "info.txt")
    rc_smoke = run_cmd(run, [PY, "-m", "lomar_ops", "smoke"], "smoke", deadline,
                       stdout_file=run.tree / "smoke.txt")
    for line in tail(run.tree / "smoke.txt", 2):
        run.say(line)
    ok = rc_info == 0 and rc_smoke == 0
    return ok, "" if ok else f"info exit {rc_info}, smoke exit {rc_smoke}"


def stage_tests(run: Run, deadline: float):
    xml = run.tree / "gpu_tests.xml"
    cmd = [PY, "-m", "pytest", "tests", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rfE",
           "--tb=short", f"--junitxml={xml}"]
    workers = max(1, CORES - 2)
    if importlib.util.find_spec("xdist") is not None and workers > 1:
        cmd += ["-n", str(workers)]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "120"]  # one hung kernel must not take the whole stage
    rc = run_cmd(run, cmd, "tests", deadline)
    for line in tail(run.tree / "logs" / "tests.log", 4):
        run.say(line)
    counts = junit_counts(xml)
    if DRY:
        # On a CPU every GPU test skips: that checks the collection. Then a small CPU
        # subset really runs, through the same options.
        sub_xml = run.tree / "cpu_subset_tests.xml"
        sub_rc = run_cmd(run, [PY, "-m", "pytest", "tests/ops/test_mask_substitute.py",
                               "tests/ops/test_rpe_gather.py", "-m", "not gpu and not slow", "-k",
                               "cpu-cpu", "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short",
                               f"--junitxml={sub_xml}"], "tests", deadline)
        for line in tail(run.tree / "logs" / "tests.log", 1):
            run.say(line)
        ok = rc in (0, 5) and sub_rc == 0  # 5: nothing ran (all GPU tests skipped)
        return ok, f"gpu-marked: {counts}; CPU subset: {junit_counts(sub_xml)}"
    return rc == 0, counts or (f"exit {rc}" if rc != "timeout" else "no junit xml")


def stage_ceilings(run: Run, deadline: float):
    cmd = [PY, "bench/ceilings.py", "--out", str(run.tree)]
    if DRY:
        cmd += ["--device", "cpu", "--tiny"]
    rc = run_cmd(run, cmd, "ceilings", deadline)
    for line in tail(run.tree / "logs" / "ceilings.log", 1):
        run.say(line)
    return rc == 0, ""


def bench_files() -> list[str]:
    names = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))
    first = [n for n in BENCH_FIRST if n in names]
    last = [n for n in BENCH_LAST if n in names]
    middle = [n for n in names if n not in first and n not in last]
    return [f"bench/{n}" for n in first + middle + last]


def stage_bench(run: Run, deadline: float):
    env = {"LOMAR_BENCH_DEVICE": "cpu" if DRY else "cuda", "LOMAR_BENCH_OUT": str(run.tree)}
    if DRY:
        env["LOMAR_BENCH_TINY"] = "1"
    rc = run_cmd(run, [PY, "-m", "pytest", *bench_files(), "-q", "-p", "no:cacheprovider",
                       "-o", "python_files=bench_*.py",
                       f"--benchmark-json={run.tree / 'pytest_benchmark.json'}"],
                 "bench", deadline, env=env)
    rows = 0
    for path in run.tree.glob("bench_*.json"):
        try:
            rows += len(json.loads(path.read_text()))
        except ValueError:
            pass
    last = tail(run.tree / "logs" / "bench.log", 1)
    for line in last:
        run.say(line)
    return rc == 0, f"{rows} records" + (f"; {last[0].strip(' |')}" if last else "")


def stage_e2e(run: Run, deadline: float):
    limit = deadline - time.monotonic()
    budget = max(5, int(limit - 30))  # the case running when the budget ends must finish
    out = run.tree / "throughput"
    if DRY:
        cmd = [PY, "-m", "lomar", "bench", "--device", "cpu", "--size", "tiny", "--resolutions",
               "224", "--batch", "2", "--warmup", "0", "--iters", "1", "--phase-iters", "1",
               "--data-workers", "1"]
    else:
        resolutions = os.environ.get("GPU_CHECK_E2E_RESOLUTIONS", "224 448 1024").split()
        cmd = [PY, "-m", "lomar", "bench", "--device", "cuda", "--resolutions", *resolutions,
               "--max-batch", "128", "--warmup", "2", "--iters", "5", "--phase-iters", "1",
               "--data-workers", str(max(1, CORES - 4))]
    cmd += ["--budget-s", str(budget), "--out", str(out)]
    if (run.tree / "ceilings.json").exists():
        cmd += ["--ceilings", str(run.tree / "ceilings.json")]
    rc = run_cmd(run, cmd, "e2e", deadline)
    done = skipped = 0
    if (out / "results.json").exists():
        cases = json.loads((out / "results.json").read_text()).get("cases", [])
        done = sum(c.get("status") == "ok" for c in cases)
        skipped = len(cases) - done
    for line in tail(run.tree / "logs" / "e2e.log", 3):
        run.say(line)
    return rc == 0, f"{done} cases measured, {skipped} not (budget {budget} s)"


def stage_summary(run: Run, deadline: float):
    rc = run_cmd(run, [PY, "bench/summarize.py", str(run.tree)], "summary", deadline,
                 stdout_file=run.tree / "summary.txt")
    head = run.tree / "logs" / "headline.txt"
    rc2 = run_cmd(run, [PY, "bench/summarize.py", str(run.tree), "--headline"], "summary",
                  deadline, stdout_file=head)
    run.headline = head.read_text().splitlines() if head.exists() else []
    suspect = [line for line in run.headline if line.startswith("rows above")]
    return rc == 0 and rc2 == 0, suspect[0] if suspect else ""


STAGES = [("versions", stage_versions), ("build", stage_build), ("smoke", stage_smoke),
          ("tests", stage_tests), ("ceilings", stage_ceilings), ("bench", stage_bench),
          ("e2e", stage_e2e), ("summary", stage_summary)]


def run_stage(run: Run, name: str, fn, wanted: set[str] | None) -> None:
    limit = limit_of(name)
    reserve = 0.0 if name == "summary" else limit_of("summary")
    left = TOTAL_S - (time.monotonic() - T0) - reserve
    allowed = min(limit, left)
    record = {"stage": name, "limit_s": limit}
    if wanted is not None and name not in wanted and name != "summary":
        record.update(status="not run", seconds=0, detail="not in GPU_CHECK_STAGES")
    elif allowed < min(5.0, limit):
        record.update(status="SKIPPED", seconds=0,
                      detail=f"no time left of GPU_CHECK_TOTAL_S={TOTAL_S:g}")
        run.timeline(f"{name}: skipped, no time left")
    else:
        run.timeline(f"{name}: start (limit {allowed:.0f} s)")
        start = time.monotonic()
        deadline = start + allowed
        run.timed_out = False
        try:
            ok, detail = fn(run, deadline)
        except Exception as exc:  # the next stages still run
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - start
        status = "ok" if ok else ("TIMEOUT" if run.timed_out else "FAILED")
        if not ok and not detail:  # the last line of its log says most
            last = tail(run.tree / "logs" / f"{name}.log", 1)
            detail = last[0].strip(" |") if last else ""
        record.update(status=status, seconds=round(seconds, 1), detail=detail)
        run.timeline(f"{name}: {status} in {seconds:.0f} s" + (f" ({detail})" if detail else ""))
    run.stages.append(record)


def final_table(run: Run) -> list[str]:
    lines = [f"{'stage':<10}{'status':<9}{'s':>6}  detail"]
    for r in run.stages:
        lines.append(f"{r['stage']:<10}{r['status']:<9}{r['seconds']:>6.0f}  {r['detail']}"[:150])
    lines.append(f"{'total':<10}{'':<9}{time.monotonic() - T0:>6.0f}")
    lines += [""] + run.headline
    return lines


def main() -> int:
    out = Path(os.environ.get("OUT") or ("bench/results/dry-latest" if DRY
                                         else "bench/results/latest"))
    if not out.is_absolute():
        out = ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out)
    wanted = os.environ.get("GPU_CHECK_STAGES")
    wanted = {s.strip() for s in wanted.split(",") if s.strip()} if wanted else None
    run.say(f"== lomar gpu-check{' (DRY RUN: CPU, tiny sizes)' if DRY else ''}: "
            f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
            f"{CORES} cores, python {PY}, OUT={out}, total limit {TOTAL_S:g} s")
    for name, fn in STAGES:
        run_stage(run, name, fn, wanted)
    table = final_table(run)
    (run.tree / "stages.json").write_text(json.dumps(
        {"dry": DRY, "total_s": round(time.monotonic() - T0, 1), "stages": run.stages}, indent=1))
    run.say("\n".join(["", "== result"] + table), echo=False)
    run.log.close()
    tarball = out / "gpu_check.tar.gz"
    try:
        with tarfile.open(tarball, "w:gz") as tar:
            # Not the JPEGs lomar bench --data-workers makes offline: they are remade.
            tar.add(run.tree, arcname="gpu-check",
                    filter=lambda info: None if "/throughput/sources" in info.name else info)
        packed = f"{tarball} ({tarball.stat().st_size / 2**20:.1f} MiB, everything)"
    except OSError as exc:
        packed = f"NOT PACKED ({exc}): the files stay in {run.tree}"
    for name in KEY_FILES:
        if (run.tree / name).exists():
            shutil.copy2(run.tree / name, out / name)
    if not packed.startswith("NOT") and os.environ.get("GPU_CHECK_KEEP_TREE", "") in ("", "0"):
        shutil.rmtree(run.tree)
    print(f"\n== results in {out}: {packed}, and "
          f"{', '.join(n for n in KEY_FILES if (out / n).exists())}")
    print("\n".join(table), flush=True)
    return 0 if all(r["status"] in ("ok", "not run") for r in run.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
