"""Loads the compiled extension lomar_ops._C and remembers why when it cannot.

Importing _C runs its static TORCH_LIBRARY registrations: the C++ ops then live
in torch.ops.lomar_ops.* with CPU (and, when compiled, CUDA) kernels."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # type: ignore[attr-defined]

    ERROR: str | None = None
    INFO: dict = dict(_C.build_info())
    PATH: str | None = _C.__file__
except ImportError as exc:  # not built, or built against another torch
    _C = None
    ERROR = (f"the C++ extension lomar_ops._C could not be imported ({exc}); build it with "
             "`pip install --no-build-isolation -e .`")
    INFO = {}
    PATH = None

AVAILABLE: bool = _C is not None
HAS_CUDA_KERNELS: bool = bool(INFO.get("cuda", False))


def cuda_archs() -> list[str]:
    """The SM architectures the CUDA kernels were compiled for, e.g. ['sm_80', 'sm_90']."""
    archs = INFO.get("cuda_archs", "")
    return [f"sm_{int(a) // 10}" for a in archs.split(",") if a.strip().isdigit()]
