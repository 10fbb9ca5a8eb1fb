"""The backend chooser: which implementation of an op runs, and why not another.

Every public op takes ``backend=None | "cuda" | "triton" | "cpu" | "torch"``:

* ``"cuda"``   the CUDA kernels of the C++ extension (CUDA tensors);
* ``"triton"`` the Triton kernels (CUDA tensors, or CPU tensors under
               ``TRITON_INTERPRET=1``, which is slow but exact: for tests);
* ``"cpu"``    the CPU kernels of the C++ extension (CPU tensors);
* ``"torch"``  the pure-PyTorch reference (any device; the ground truth).

``backend=None`` takes ``$LOMAR_OPS_BACKEND`` when it is set, else the default for
the tensors' device: CUDA tensors run "cuda", else "triton", else "torch"; CPU
tensors run "cpu", else "torch". Asking for a backend that cannot run raises
:class:`BackendUnavailableError`, saying why and what is available.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import _extension

BACKENDS = ("cuda", "triton", "cpu", "torch")
ENV_VAR = "LOMAR_OPS_BACKEND"

_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run these tensors here."""


def triton_interpret() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot run tensors on ``device``, or None when it can."""
    device = torch.device(device)
    if backend == "torch":
        return None
    if backend in ("cpu", "cuda") and not _extension.AVAILABLE:
        return _extension.ERROR
    if backend == "cpu":
        if device.type != "cpu":
            return f"the tensors are on {device}; the cpu backend runs CPU tensors"
        return None
    if backend == "cuda":
        if not _extension.HAS_CUDA_KERNELS:
            return ("the extension was built without CUDA kernels (rebuild with nvcc on PATH "
                    "and a CUDA build of torch; LOMAR_CUDA=1 makes the build fail instead)")
        if device.type != "cuda":
            return f"the tensors are on {device}; the cuda backend runs CUDA tensors"
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if backend == "triton":
        if not _TRITON_INSTALLED:
            return "Triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device.type == "cpu":
            if triton_interpret():
                return None
            return ("the tensors are on cpu; Triton runs CUDA tensors, or CPU tensors only "
                    "under TRITON_INTERPRET=1 (its slow, exact interpreter)")
        return f"Triton does not run tensors on {device}"
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run tensors on ``device`` (in BACKENDS order)."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def backend_report(device: torch.device | str) -> dict[str, str]:
    """``{backend: "available" or the reason it is not}`` for ``device``."""
    return {b: unavailable_reason(b, device) or "available" for b in BACKENDS}


def implemented_backends(op: str, cpp_op: str | None = None) -> frozenset[str]:
    """The backends that implement ``op`` in this installation: "torch" always; "cpu"
    and "cuda" when the extension registered a kernel for ``lomar_ops::<cpp_op>`` at that
    dispatch key; "triton" when lomar_ops/triton_kernels/<op>.py exists. Ops call this
    once, at import, so that the choice costs nothing (and traces) at call time."""
    found = {"torch"}
    name = f"lomar_ops::{cpp_op or op}"
    if _extension.AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"):
        found.add("cpu")
    if (_extension.HAS_CUDA_KERNELS
            and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")):
        found.add("cuda")
    if _TRITON_INSTALLED and importlib.util.find_spec(f"lomar_ops.triton_kernels.{op}"):
        found.add("triton")
    return frozenset(found)


def _op_reason(op: str, backend: str, device: torch.device,
               implemented: frozenset[str] | None,
               unsupported: dict[str, str] | None = None) -> str | None:
    reason = unavailable_reason(backend, device)
    if reason is None and implemented is not None and backend not in implemented:
        reason = f"{op} has no {backend} implementation in this version of lomar_ops"
    if reason is None and unsupported:
        reason = unsupported.get(backend)
    return reason


def _default(op: str, device: torch.device, implemented: frozenset[str] | None,
             unsupported: dict[str, str] | None) -> str:
    order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    for candidate in order:
        if _op_reason(op, candidate, device, implemented, unsupported) is None:
            return candidate
    return "torch"


def resolve_backend(op: str, device: torch.device, backend: str | None = None,
                    implemented: frozenset[str] | None = None,
                    unsupported: dict[str, str] | None = None) -> str:
    """The backend that runs ``op`` on ``device``: ``backend``, else $LOMAR_OPS_BACKEND,
    else the device default. ``implemented`` (from :func:`implemented_backends`)
    restricts the choice to the backends the op has; ``unsupported`` maps backends
    that cannot run this particular call (e.g. its dtype) to the reason. Raises when
    an explicit choice cannot run."""
    source = "backend"
    if backend is None:
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env in ("", "auto"):
            return _default(op, device, implemented, unsupported)
        backend, source = env, f"${ENV_VAR}"
    if backend not in BACKENDS:
        raise ValueError(f"{op}: {source} must be one of {BACKENDS} or None, got {backend!r}")
    reason = _op_reason(op, backend, device, implemented, unsupported)
    if reason is not None:
        usable = [b for b in BACKENDS
                  if _op_reason(op, b, device, implemented, unsupported) is None]
        raise BackendUnavailableError(
            f"{op}: {source}={backend!r} is unavailable: {reason}. "
            f"Available for {op} on {device}: {usable}")
    return backend
