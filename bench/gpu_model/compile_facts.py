"""ptxas's resource report for each csrc/cuda/*.cu file and architecture, compiled
with the flags of the shipped build, cached under build/gpu_model/.

The flags are not written down here a second time: setup.py's own extension is
built in a subprocess (LOMAR_CUDA=1, setuptools.setup replaced by a recorder), which
gives its include dirs and nvcc arguments; then what torch's BuildExtension adds to
every .cu file on Linux (torch.utils.cpp_extension: COMMON_NVCC_FLAGS, -fPIC,
TORCH_API_INCLUDE_EXTENSION_H, TORCH_EXTENSION_NAME, the -gencode of the arch and
its -std). Each file is compiled with -cubin (device code only): ptxas runs with
the same options as in the shipped -c build and reports the same figures, in half
the time (checked on window_attention.cu, nvcc 13.0: the two reports are identical
but for ptxas's compile times)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ARCHS = ("sm_80", "sm_90")

_CAPTURE_SETUP = r"""
import json, os, runpy, sys
import setuptools
os.environ["LOMAR_CUDA"] = "1"
captured = {}
setuptools.setup = lambda **kwargs: captured.update(kwargs)
os.chdir(sys.argv[1])
sys.argv = ["setup.py"]
runpy.run_path("setup.py", run_name="__main__")
(ext,) = captured["ext_modules"]
print("GPU_MODEL_SETUP " + json.dumps({
    "name": ext.name, "include_dirs": ext.include_dirs, "sources": ext.sources,
    "nvcc": ext.extra_compile_args["nvcc"], "define_macros": ext.define_macros,
    "cuda_home": os.environ.get("CUDA_HOME")}))
"""


@dataclass
class BuildFlags:
    """The nvcc command line of the shipped build, less source, output and arch."""
    nvcc: str
    include_dirs: list
    flags: list            # everything else but -gencode
    cuda_sources: list     # csrc/cuda/*.cu, as setup.py lists them

    def command(self, source: Path, arch: str, out: Path) -> list[str]:
        number = arch.removeprefix("sm_")
        return ([self.nvcc] + [f"-I{d}" for d in self.include_dirs] +
                ["-cubin", str(source), "-o", str(out)] + self.flags +
                [f"-gencode=arch=compute_{number},code={arch}", "--resource-usage"])


def shipped_build_flags(root: Path, python: str = sys.executable) -> BuildFlags:
    """setup.py's CUDA extension (include dirs, nvcc args) plus torch's own flags."""
    proc = subprocess.run([python, "-c", _CAPTURE_SETUP, str(root)], capture_output=True,
                          text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("GPU_MODEL_SETUP ")),
                None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError("could not read setup.py's CUDA extension with LOMAR_CUDA=1 "
                           f"(python={python!r}, exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    ext = json.loads(line.split(" ", 1)[1])
    from torch.utils import cpp_extension  # the flags torch adds (imported only here)
    torch_flags = (list(cpp_extension.COMMON_NVCC_FLAGS) + ["--compiler-options", "-fPIC"] +
                   list(ext["nvcc"]) + ["-DTORCH_API_INCLUDE_EXTENSION_H",
                                        f"-DTORCH_EXTENSION_NAME={ext['name'].split('.')[-1]}",
                                        f"-std=c++{torch_cxx_standard(cpp_extension)}"])
    macros = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in ext["define_macros"]]
    nvcc = find_nvcc(ext["cuda_home"])
    sources = [s for s in ext["sources"] if s.endswith(".cu")]
    return BuildFlags(nvcc, list(ext["include_dirs"]), macros + torch_flags, sources)


def torch_cxx_standard(cpp_extension) -> str:
    """The -std=c++NN that BuildExtension appends when none is given (17 in older
    torch, 20 in newer): read from its source, 17 when the pattern is not found."""
    try:
        found = re.findall(r"'c\+\+(\d\d)'", inspect.getsource(cpp_extension.BuildExtension))
    except (OSError, TypeError):
        found = []
    return max(found, default="17")


def find_nvcc(cuda_home: str | None) -> str:
    candidates = [os.path.join(cuda_home, "bin", "nvcc")] if cuda_home else []
    candidates.append(shutil.which("nvcc") or "")
    for cand in candidates:
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError("nvcc not found (CUDA_HOME from setup.py: "
                            f"{cuda_home!r}); put nvcc on PATH or set CUDA_HOME")


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\S+), (V\S+)", out)
    return f"{m[1]} ({m[2]})" if m else out.strip().splitlines()[-1]


_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def project_headers(source: Path, root: Path) -> list[Path]:
    """The project's headers ``source`` includes with "...", recursively (found beside
    the including file or under csrc/, as nvcc's -I csrc finds them)."""
    seen, todo = [], [source]
    while todo:
        text = todo.pop().read_text(errors="replace")
        for name in _QUOTED_INCLUDE.findall(text):
            for base in (source.parent, root / "csrc"):
                path = (base / name).resolve()
                if path.is_file():
                    if path not in seen:
                        seen.append(path)
                        todo.append(path)
                    break
    return sorted(seen)


def _cache_key(root: Path, flags: BuildFlags, source: Path, arch: str, version: str) -> str:
    """What the report depends on: the command, the source, the project headers it
    includes and the compiler. (torch's headers are covered by its version in the
    flags.)"""
    h = hashlib.sha256()
    h.update(json.dumps([flags.command(source, arch, Path("out")), version]).encode())
    h.update(source.read_bytes())
    for header in project_headers(source, root):
        h.update(str(header).encode() + header.read_bytes())
    return h.hexdigest()[:16]


def compile_reports(root: Path, flags: BuildFlags, archs=ARCHS, sources=None, jobs=None,
                    cache: Path | None = None, log=print) -> dict:
    """{(source, arch): report text}: cached reports reused, the others compiled in
    parallel (``jobs`` nvcc processes, default the cores)."""
    cache = cache or root / "build" / "gpu_model"
    cache.mkdir(parents=True, exist_ok=True)
    version = nvcc_version(flags.nvcc)
    todo, reports = [], {}
    for rel in sources or flags.cuda_sources:
        source = root / rel
        for arch in archs:
            key = _cache_key(root, flags, source, arch, version)
            path = cache / f"{source.stem}.{arch}.{key}.txt"
            if path.exists():
                reports[(rel, arch)] = path.read_text()
            else:
                todo.append((rel, source, arch, path))

    def run(item):
        rel, source, arch, path = item
        cubin = path.with_suffix(".cubin")
        cmd = flags.command(source, arch, cubin)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed on {rel} for {arch} (exit {proc.returncode}):\n"
                               f"{' '.join(cmd)}\n{proc.stderr[-4000:]}")
        text = proc.stdout + proc.stderr
        path.write_text(text)
        return rel, arch, text

    if todo:
        log(f"gpu-model: compiling {len(todo)} file/arch pairs with {flags.nvcc} "
            f"(cached in {cache})")
        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            for rel, arch, text in pool.map(run, todo):
                reports[(rel, arch)] = text
    return reports
