"""The backend chooser and build_info()."""

import os

import pytest
import torch

import lomar_ops
from lomar_ops.backends import ENV_VAR, resolve_backend, unavailable_reason

CPU = torch.device("cpu")


def test_default_for_cpu_tensors_is_the_cpu_extension():
    assert resolve_backend("op", CPU) == "cpu"


def test_env_var_overrides_default(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend("op", CPU) == "torch"
    monkeypatch.setenv(ENV_VAR, "auto")
    assert resolve_backend("op", CPU) == "cpu"
    monkeypatch.setenv(ENV_VAR, "TORCH")
    assert resolve_backend("op", CPU) == "torch"


def test_explicit_backend_beats_env_var(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "cuda")
    assert resolve_backend("op", CPU, "torch") == "torch"


def test_bad_env_var_is_named(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"op: \$LOMAR_OPS_BACKEND must be one of .* got 'fast'"):
        resolve_backend("op", CPU)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(lomar_ops.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_backend("rpe_gather", CPU, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("rpe_gather", CPU, "triton") == "triton"


def test_cpu_backend_refuses_other_devices():
    assert "the cpu backend runs CPU tensors" in unavailable_reason("cpu", "cuda")
    assert unavailable_reason("torch", "cuda") is None


def test_report_lists_every_backend():
    report = lomar_ops.backend_report("cpu")
    assert list(report) == list(lomar_ops.BACKENDS)
    assert report["cpu"] == report["torch"] == "available"
    assert report["cuda"] != "available"
    assert lomar_ops.available_backends("cpu") == [b for b, s in report.items() if s == "available"]


def test_build_info_reports_the_build():
    info = lomar_ops.build_info()
    assert info["cpu_kernels"], info["extension_error"]
    assert info["extension_error"] is None
    assert info["built_against_torch"] == torch.__version__.split("+")[0]
    assert info["openmp"] is True
    assert "cpu" in info["backends"]["cpu"]
    if info["cuda_kernels"]:
        assert info["cuda_archs"], "CUDA kernels compiled but no arch reported"
        assert info["cuda_build_version"]


@pytest.mark.skipif("LOMAR_EXPECT_CUDA_ARCHS" not in os.environ,
                    reason="set LOMAR_EXPECT_CUDA_ARCHS (e.g. sm_80,sm_90) to check a CUDA build")
def test_cuda_build_has_expected_archs():
    info = lomar_ops.build_info()
    assert info["cuda_kernels"], "expected a build with CUDA kernels"
    assert info["cuda_archs"] == os.environ["LOMAR_EXPECT_CUDA_ARCHS"].split(",")


def test_import_without_torch_first():
    # _C links against libtorch: the package must load torch before it.
    import subprocess
    import sys
    code = "import lomar_ops; assert lomar_ops.build_info()['cpu_kernels']; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]
