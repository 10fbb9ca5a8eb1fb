"""lomar_ops.build_info(): what was compiled and what can run here."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import _extension
from .backends import available_backends, backend_report, triton_interpret


def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def build_info() -> dict:
    """What the extension was built with and which backends can run here.

    Keys: ``extension`` (path of lomar_ops._C or None), ``extension_error``,
    ``cpu_kernels``, ``cuda_kernels``, ``cuda_archs`` (e.g. ['sm_80', 'sm_90']),
    ``cuda_build_version``, ``compiler``, ``openmp``, ``built_against_torch``,
    ``torch``, ``torch_cuda``, ``triton``, ``triton_interpret``, ``python``,
    ``gpu`` (name or None), ``backends`` ({device type: available backends}).
    """
    info = _extension.INFO
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    devices = ["cpu"] + (["cuda"] if gpu else [])
    return {
        "extension": _extension.PATH,
        "extension_error": _extension.ERROR,
        "cpu_kernels": _extension.AVAILABLE,
        "cuda_kernels": _extension.HAS_CUDA_KERNELS,
        "cuda_archs": _extension.cuda_archs(),
        "cuda_build_version": info.get("cuda_version") or None,
        "compiler": info.get("compiler"),
        "openmp": info.get("openmp"),
        "built_against_torch": info.get("torch_version"),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "triton_interpret": triton_interpret(),
        "python": platform.python_version(),
        "gpu": gpu,
        "backends": {d: available_backends(d) for d in devices},
        "backend_report": {d: backend_report(d) for d in devices},
    }


def format_build_info(info: dict | None = None) -> str:
    """build_info() as aligned text lines, for logs and test headers."""
    info = build_info() if info is None else info
    lines = []
    for key, value in info.items():
        if key == "backend_report":
            for device, report in value.items():
                for backend, status in report.items():
                    lines.append(f"  {device:>4} {backend:<7} {status}")
            continue
        lines.append(f"{key:<20} {value}")
    return "\n".join(lines)
