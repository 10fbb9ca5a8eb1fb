"""Build of lomar_ops._C, the C++/CUDA extension of lomar.

    pip install --no-build-isolation -e .

Environment:
  LOMAR_CUDA=auto|0|1     CUDA kernels: auto (default) builds them when torch is a
                          CUDA build and nvcc is found; 0 never; 1 always (fails if
                          it cannot).
  TORCH_CUDA_ARCH_LIST    GPU architectures, default "8.0;9.0" (A100, H100).
  MAX_JOBS                parallel compile jobs (ninja).
  CUDA_HOME               CUDA toolkit root, found from nvcc when unset.
  LOMAR_DEBUG=1           -O0 -g builds.

The sources come from csrc/sources.txt, the list CMakeLists.txt reads too.
"""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def read_sources():
    """Sources by kind ("core", "cuda", "python", "test") from csrc/sources.txt."""
    kinds = {}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            kind, path = line.split()
            kinds.setdefault(kind, []).append(path)
    return kinds


def find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME, else where nvcc really lives.

    nvcc on PATH may be a wrapper script (as on our machines), so its location
    is asked from nvcc itself (--dryrun prints TOP=<root>/bin/..)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-c", "x.cu"], capture_output=True,
                                 text=True, timeout=30).stderr
            for line in dry.splitlines():
                if "TOP=" in line:
                    candidates.append(os.path.normpath(line.split("TOP=", 1)[1].strip()))
                    break
        except (OSError, subprocess.SubprocessError):
            pass
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for cand in candidates:
        if cand and os.path.exists(os.path.join(cand, "bin", "nvcc")) and \
                os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
            return cand
    return None


def wheel_cuda_includes(cuda_home):
    """Include dirs of the nvidia-* wheels for headers the toolkit lacks.

    torch's CUDA headers include cusparse.h and cublas_v2.h; a minimal toolkit
    may not ship them, the wheels that CUDA torch depends on do."""
    needed = [h for h in ("cusparse.h", "cublas_v2.h", "cusolverDn.h")
              if not os.path.exists(os.path.join(cuda_home, "include", h))]
    if not needed:
        return []
    try:
        import nvidia
    except ImportError:
        return []
    dirs = []
    for root in nvidia.__path__:
        for header in needed:
            for hit in glob.glob(os.path.join(root, "**", "include", header), recursive=True):
                d = os.path.dirname(hit)
                if d not in dirs:
                    dirs.append(d)
    return dirs


def cuda_wanted(torch):
    mode = os.environ.get("LOMAR_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        sys.exit(f"LOMAR_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, "LOMAR_CUDA=0"
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if find_cuda_home() is None:
        reasons.append("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    if reasons:
        if mode == "1":
            sys.exit("LOMAR_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return True, ""


def extensions():
    cuda_home = find_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # read when cpp_extension is imported
    # torch's default arch list includes archs that recent nvcc no longer knows.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda, why_not = cuda_wanted(torch)
    kinds = read_sources()
    sources = kinds["core"] + kinds["python"] + (kinds["cuda"] if with_cuda else [])
    debug = os.environ.get("LOMAR_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    torch_version = torch.__version__.split("+")[0]
    defines = [f'-DLOMAR_TORCH_VERSION="{torch_version}"']
    cxx = opt + ["-fopenmp"] + defines
    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        defines.append("-DLOMAR_WITH_CUDA")
        cxx.append("-DLOMAR_WITH_CUDA")
        include_dirs += wheel_cuda_includes(cuda_home)
        nvcc = opt + defines + ["--expt-relaxed-constexpr", "-lineinfo"]
        print(f"lomar_ops: building CPU and CUDA kernels (CUDA_HOME={cuda_home}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
        ext = CUDAExtension("lomar_ops._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                            extra_link_args=["-fopenmp"])
    else:
        print(f"lomar_ops: building CPU kernels only ({why_not})")
        ext = CppExtension("lomar_ops._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension
    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None
                                       or _has_ninja_module())


def _has_ninja_module():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


setup(
    packages=find_packages(include=["lomar_ops", "lomar_ops.*", "lomar", "lomar.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
)
