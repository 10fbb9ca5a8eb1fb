"""Shared test set-up.

Without a GPU, Triton kernels run in Triton's CPU interpreter: TRITON_INTERPRET
must be set before triton.jit sees the kernels, so it is set here, first."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import lomar_ops  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none is visible)")


def pytest_report_header(config):
    return ["lomar_ops.build_info():", lomar_ops.format_build_info()]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (none is visible)"))


# Every backend that must work on each device. Not filtered by what is available:
# a backend that failed to build must fail its tests, not vanish from them.
DEVICE_BACKENDS = {"cpu": ("cpu", "triton", "torch"), "cuda": ("cuda", "triton", "torch")}


def _marks(device, backend):
    if device == "cuda":
        return [pytest.mark.gpu]
    if backend == "triton" and HAS_CUDA:
        # The interpreter is chosen when triton.jit first sees a kernel, so on a GPU
        # machine Triton is compiled, and tested on CUDA tensors instead.
        return [pytest.mark.skip(reason="Triton runs compiled on this GPU machine; "
                                        "its CUDA-tensor tests cover it")]
    return []


def devices_and_backends(devices=("cpu", "cuda")):
    """(device, backend) pytest params; the CUDA ones are marked gpu."""
    return [pytest.param(device, backend, id=f"{device}-{backend}", marks=_marks(device, backend))
            for device in devices for backend in DEVICE_BACKENDS[device]]


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    # Tests choose backends explicitly; a user's override must not leak in.
    monkeypatch.delenv(lomar_ops.backends.ENV_VAR, raising=False)
    torch.manual_seed(0)


def devices_backends_and_shapes(shapes, triton_cpu_shapes):
    """(device, backend, shape) params: every shape, except that Triton's CPU
    interpreter (slow) runs only ``triton_cpu_shapes``."""
    params = []
    for p in devices_and_backends():
        chosen = triton_cpu_shapes if p.values == ("cpu", "triton") else shapes
        params += [pytest.param(*p.values, shape, id=f"{p.id}-{shape}", marks=p.marks)
                   for shape in chosen]
    return params
