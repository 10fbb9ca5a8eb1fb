"""The CPU-only build (LOMAR_CUDA=0) of the extension, built from scratch into a
temporary folder and exercised in a separate process."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import torch, lomar_ops
    info = lomar_ops.build_info()
    assert info["extension"].startswith(%r), info["extension"]
    assert info["cpu_kernels"] and not info["cuda_kernels"] and info["cuda_archs"] == [], info
    table = torch.randn(2, 3, 50, 50, dtype=torch.float64, requires_grad=True)
    ids = lomar_ops.irpe_bucket_ids(7, 7)
    out = lomar_ops.rpe_gather(table, ids)
    assert torch.equal(out, lomar_ops.rpe_gather(table, ids, backend="torch"))
    assert torch.autograd.gradcheck(lambda t: lomar_ops.rpe_gather(t, ids, backend="cpu"), (table,))
    try:
        lomar_ops.rpe_gather(table.cuda() if torch.cuda.is_available() else table, ids, backend="cuda")
    except lomar_ops.BackendUnavailableError as e:
        assert "built without CUDA kernels" in str(e) or "CUDA tensors" in str(e), e
    else:
        raise AssertionError("the cuda backend ran in a CPU-only build")
    print("CPU-only build OK:", info["extension"])
""")


@pytest.mark.slow
def test_cpu_only_build(tmp_path):
    lib, temp = tmp_path / "lib", tmp_path / "temp"
    env = dict(os.environ, LOMAR_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib),
         "--build-temp", str(temp)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "building CPU kernels only (LOMAR_CUDA=0)" in build.stdout + build.stderr
    # The package's Python files beside the freshly built _C, nothing else.
    shutil.copytree(ROOT / "lomar_ops", lib / "lomar_ops", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    run = subprocess.run([sys.executable, "-c", CHECK % str(lib)], cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=str(lib)), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "CPU-only build OK" in run.stdout
