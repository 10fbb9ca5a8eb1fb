"""The package as a user installs it: ``pip wheel --no-build-isolation --no-deps .``
builds a wheel with the extension, and that wheel works in a fresh virtual
environment that has no source tree on its path.

The wheel is built CPU-only (LOMAR_CUDA=0) from a copy of the sources: the CUDA
build is the editable install's (CI requires it with LOMAR_CUDA=1 and checks its
archs), and compiling it twice would double CI's longest step. This one build also
serves as the test of a CPU-only build (a machine without nvcc).

The fresh environment: ``venv`` without site packages, the wheel installed into it
by pip, then a .pth file that appends this test environment's site-packages (for
torch and the other dependencies, which are not downloaded). Lines of a .pth file
are appended to sys.path without their own .pth files being run, so the editable
install of this repository stays invisible; the commands run from a scratch folder
with PYTHONPATH unset, and the test asserts where every module came from."""

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What a wheel build needs is the package sources, csrc/, the build files and the README.
SKIP = shutil.ignore_patterns(".*", "build", "build-*", "output", "bench", "docs", "tests",
                              "*.so", "*.egg-info", "__pycache__", "dist")

CPU_ONLY_CHECK = textwrap.dedent("""
    import importlib.metadata, json, sys, torch, lomar, lomar_ops
    info = lomar_ops.build_info()
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
    print(json.dumps({"lomar": lomar.__file__, "lomar_ops": lomar_ops.__file__,
                      "extension": info["extension"], "version": lomar.__version__,
                      "ops_version": lomar_ops.__version__,
                      "dist_version": importlib.metadata.version("lomar"),
                      "path": sys.path}))
""")


def run(cmd, cwd, env, timeout=900, stderr_too=False):
    """stdout of a command that must succeed (with stderr after it when asked)."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr if stderr_too else done.stdout


@pytest.mark.slow
def test_wheel_works_outside_the_source_tree(tmp_path):
    src, dist, env_dir, work = (tmp_path / d for d in ("src", "dist", "env", "work"))
    shutil.copytree(ROOT, src, ignore=SKIP)
    work.mkdir()
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PYTHONPATH", "TRITON_INTERPRET", "LOMAR_OPS_BACKEND")}

    build_env = dict(clean, LOMAR_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    log = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
               "-w", str(dist), str(src)], cwd=work, env=build_env, timeout=1800, stderr_too=True)
    wheels = list(dist.glob("lomar-*.whl"))
    assert len(wheels) == 1, log[-3000:]
    assert "lomar_ops: building CPU kernels only (LOMAR_CUDA=0)" in log
    # The license is an SPDX expression (no setuptools deprecation warning), its text shipped.
    warning = log.find("SetuptoolsDeprecationWarning")
    assert warning < 0, log[max(0, warning - 500):warning + 1000]
    with zipfile.ZipFile(wheels[0]) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in wheel.read(metadata).decode()
        assert any(n.endswith("licenses/LICENSE") for n in wheel.namelist())

    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", str(wheels[0])], cwd=work, env=clean)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  cwd=work, env=clean).strip()
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    report = json.loads(run([str(python), "-c", CPU_ONLY_CHECK], cwd=work, env=clean)
                        .splitlines()[-1])
    for module in ("lomar", "lomar_ops", "extension"):
        assert report[module].startswith(purelib), (module, report[module])
    assert not any(p and Path(p).resolve() == ROOT for p in report["path"])
    assert report["version"] == report["ops_version"] == report["dist_version"]

    smoke = run([str(python), "-m", "lomar_ops", "smoke"], cwd=work, env=clean)
    assert "smoke run passed" in smoke
    lomar = str(env_dir / "bin" / "lomar")
    listed = run([lomar, "configs"], cwd=work, env=clean)
    assert "pretrain_vit_base_448" in listed and "demo_pretrain" in listed
    summary = run([lomar, "pretrain", "--config", "demo_pretrain", "max_steps=2",
                   "data.demo_images=16", "data.num_workers=0", "batch_size=4", "progress=false",
                   "model_kwargs={depth: 2, embed_dim: 64, num_heads: 2}",
                   "eval.knn_max_images=64",  # the demo's kNN monitor, on a few digits
                   f"output_dir={work / 'run'}"], cwd=work, env=clean)
    result = json.loads(summary[summary.index("{"):])
    assert result["steps"] == 2 and (work / "run" / "checkpoint-last.pt").is_file()
    assert (work / "run" / "model.safetensors").is_file()
