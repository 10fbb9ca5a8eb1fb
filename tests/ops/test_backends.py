"""The backend chooser and build_info()."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

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


# ---- defaults on CUDA from the committed GPU record ------------------------------

RECORD = Path(__file__).resolve().parents[2] / "bench" / "results" / \
    lomar_ops.defaults.RECORD["record"]


def test_defaults_table_follows_its_committed_record():
    """lomar_ops/defaults.py is what bench/choose_defaults.py gives from the record: the
    defaults cannot drift from the figures they cite."""
    done = subprocess.run([sys.executable, str(RECORD.parents[2] / "bench" / "choose_defaults.py"),
                           str(RECORD), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def pretend_gpu(monkeypatch):
    """Every backend runs, as on a GPU machine with a full build (only the choice is
    checked: nothing is launched)."""
    monkeypatch.setattr(lomar_ops.backends, "unavailable_reason", lambda backend, device: None)
    return torch.device("cuda")


ALL = frozenset(lomar_ops.BACKENDS + lomar_ops.backends.COMPOSITE_BACKENDS)


def test_cuda_defaults_are_the_records_fastest(pretend_gpu):
    pick = lambda op, size=None, implemented=ALL, unsupported=None: resolve_backend(  # noqa: E731
        op, pretend_gpu, None, implemented, unsupported, size=size)
    assert pick("window_attention", 50) == "sdpa"        # 1.99 ms against cuda's 6.00
    assert pick("window_attention", 577) == "sdpa"
    assert pick("window_attention", 4096) == "triton"    # the all-global ViTDet at 1024
    assert pick("rpe_gather", 197) == "cuda"
    assert pick("mask_substitute", 49) == pick("masked_patch_loss") == "cuda"
    assert pick("window_patchify") == "triton"           # forward: the images are data
    # A pick that cannot run this call gives way to the usual order, and says why.
    assert pick("window_attention", 50, unsupported={"sdpa": "not here"}) == "cuda"
    chosen, why = lomar_ops.backends.default_backend("window_attention", pretend_gpu, 50, ALL,
                                                     {"sdpa": "not here"})
    assert chosen == "cuda" and "sdpa (fastest in the record gpu-2026-12-04-h200" in why
    assert "cannot run this call: not here" in why


def test_every_record_pick_is_a_backend_its_op_has():
    for op, entries in lomar_ops.defaults.CUDA.items():
        module = importlib.import_module(f"lomar_ops.ops.{op}")
        implemented = getattr(module, "_IMPLEMENTED", None)
        for entry in entries:
            assert entry["backend"] in (implemented or lomar_ops.BACKENDS), (op, entry["backend"])
            assert entry["backend"] == min(entry["ms"], key=entry["ms"].get)


def test_composite_backends_belong_to_window_attention(monkeypatch):
    with pytest.raises(lomar_ops.BackendUnavailableError, match="rpe_gather has no sdpa"):
        resolve_backend("rpe_gather", CPU, "sdpa", frozenset({"cpu", "torch"}))
    monkeypatch.setenv(ENV_VAR, "sdpa")  # applies to the ops that have it
    assert resolve_backend("rpe_gather", CPU, None, frozenset({"cpu", "torch"})) == "cpu"
    assert resolve_backend("window_attention", CPU, None, ALL) == "sdpa"


def test_info_says_which_record_the_defaults_follow():
    done = subprocess.run([sys.executable, "-m", "lomar_ops", "info"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "defaults on CUDA follow the GPU record gpu-2026-12-04-h200" in done.stdout
    assert "window_attention   N 1-1537     sdpa" in done.stdout
