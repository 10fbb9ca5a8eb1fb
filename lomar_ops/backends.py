"""The backend chooser: which implementation of an op runs, and why not another.

Every public op takes ``backend=None | "cuda" | "triton" | "cpu" | "torch"``:

* ``"cuda"``   the CUDA kernels of the C++ extension (CUDA tensors);
* ``"triton"`` the Triton kernels (CUDA tensors, or CPU tensors under
               ``TRITON_INTERPRET=1``, which is slow but exact: for tests);
* ``"cpu"``    the CPU kernels of the C++ extension (CPU tensors);
* ``"torch"``  the pure-PyTorch reference (any device; the ground truth).

``window_attention`` also takes two compositions of PyTorch's own attention:
``"sdpa"`` (scaled_dot_product_attention with the relative term materialised) and
``"flex"`` (FlexAttention with the iRPE term gathered in its score_mod).

``backend=None`` takes ``$LOMAR_OPS_BACKEND`` when it is set (a composition applies to
the ops that have it; the others take their default), else the default for the
tensors' device. On CUDA the default is what a committed GPU record measured fastest
for the op and its shape class (:mod:`lomar_ops.defaults`, written from the record by
bench/choose_defaults.py), passing over a backend that cannot run the call; then
"cuda", "triton", "torch". On the CPU: "cpu", else "torch" (the CPU records show the
C++ kernels ahead of the reference). :func:`default_backend` says what the default
is and why; asking for a backend that cannot run raises
:class:`BackendUnavailableError`, saying why and what is available.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from . import _extension, defaults

BACKENDS = ("cuda", "triton", "cpu", "torch")
# Backends made of PyTorch's own ops; only the ops that list them in their
# ``implemented`` set have them (window_attention).
COMPOSITE_BACKENDS = ("sdpa", "flex")
ENV_VAR = "LOMAR_OPS_BACKEND"

_log = logging.getLogger(__name__)

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_FLEX_INSTALLED = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run these tensors here."""


def triton_interpret() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(backend: str, device: torch.device | str) -> str | None:
    """Why ``backend`` cannot run tensors on ``device``, or None when it can."""
    device = torch.device(device)
    if backend in ("torch", "sdpa"):
        return None
    if backend == "flex":
        if not _FLEX_INSTALLED:
            return f"this torch ({torch.__version__}) has no FlexAttention (torch >= 2.5 has)"
        if device.type not in ("cuda", "cpu"):
            return f"FlexAttention does not run tensors on {device}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is available"
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
        if not TRITON_INSTALLED:
            return "Triton is not installed (pip install triton)"
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device.type == "cpu":
            if triton_interpret():
                return None
            return ("the tensors are on cpu; Triton runs CUDA tensors, or CPU tensors only "
                    "under TRITON_INTERPRET=1 (its slow, exact interpreter)")
        return f"Triton does not run tensors on {device}"
    raise ValueError(f"backend must be one of {BACKENDS + COMPOSITE_BACKENDS} or None, "
                     f"got {backend!r}")


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run tensors on ``device`` (in BACKENDS order)."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def backend_report(device: torch.device | str) -> dict[str, str]:
    """``{backend: "available" or the reason it is not}`` for ``device``."""
    return {b: unavailable_reason(b, device) or "available" for b in BACKENDS}


def implemented_backends(op: str, cpp_op: str | None = None,
                         composite: tuple[str, ...] = ()) -> frozenset[str]:
    """The backends that implement ``op`` in this installation: "torch" always; "cpu"
    and "cuda" when the extension registered a kernel for ``lomar_ops::<cpp_op>`` at that
    dispatch key; "triton" when lomar_ops/triton_kernels/<op>.py exists; ``composite``
    (of COMPOSITE_BACKENDS) as given. Ops call this once, at import, so that the choice
    costs nothing (and traces) at call time."""
    found = {"torch", *composite}
    name = f"lomar_ops::{cpp_op or op}"
    if _extension.AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"):
        found.add("cpu")
    if (_extension.HAS_CUDA_KERNELS
            and torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")):
        found.add("cuda")
    if TRITON_INSTALLED and importlib.util.find_spec(f"lomar_ops.triton_kernels.{op}"):
        found.add("triton")
    return frozenset(found)


def _op_reason(op: str, backend: str, device: torch.device,
               implemented: frozenset[str] | None,
               unsupported: dict[str, str] | None = None) -> str | None:
    if backend in COMPOSITE_BACKENDS and (implemented is None or backend not in implemented):
        return f"{op} has no {backend} implementation ({'/'.join(COMPOSITE_BACKENDS)} are " \
               f"compositions of PyTorch's attention, for window_attention)"
    reason = unavailable_reason(backend, device)
    if reason is None and implemented is not None and backend not in implemented:
        reason = f"{op} has no {backend} implementation in this version of lomar_ops"
    if reason is None and unsupported:
        reason = unsupported.get(backend)
    return reason


def record_class(op: str, size: int | None) -> dict | None:
    """The shape class of the GPU record (lomar_ops.defaults) that ``size`` falls in."""
    for entry in defaults.CUDA.get(op, ()):
        if entry["up_to"] is None or size is None or size <= entry["up_to"]:
            return entry
    return None


def default_backend(op: str, device: torch.device | str, size: int | None = None,
                    implemented: frozenset[str] | None = None,
                    unsupported: dict[str, str] | None = None) -> tuple[str, str]:
    """(backend, why): what ``backend=None`` runs for ``op`` on ``device`` (``size``: the
    op's class dimension, e.g. window_attention's N), and the reason in words."""
    return _pick(op, torch.device(device), size, implemented, unsupported, explain=True)


def _pick(op, device, size, implemented, unsupported, explain: bool) -> tuple[str, str]:
    # Called on every op call without a backend: the words are built only when asked.
    skipped = []
    if device.type == "cuda":
        entry = record_class(op, size)
        if entry is not None:
            pick = entry["backend"]
            reason = _op_reason(op, pick, device, implemented, unsupported)
            if reason is None and not explain:
                return pick, ""
            if explain:
                figures = ", ".join(f"{b} {ms:.3g}" for b, ms in entry["ms"].items())
                measured = (f"record {defaults.RECORD['record']} ({defaults.RECORD['device']}): "
                            f"{entry['mode']} {entry['dtype']} {entry['shape']}: {figures} ms")
                if reason is None:
                    return pick, f"fastest in the {measured}"
                skipped.append(f"{pick} (fastest in the {measured}) cannot run this call: "
                               f"{reason}")
        order = ("cuda", "triton", "torch")
    else:
        order = ("cpu", "torch")
    for candidate in order:
        reason = _op_reason(op, candidate, device, implemented, unsupported)
        if reason is None:
            if not explain:
                return candidate, ""
            return candidate, "; ".join(skipped + [f"the first of {order} that runs here"])
        if explain:
            skipped.append(f"{candidate}: {reason}")
    return "torch", "; ".join(skipped + ["the reference runs anywhere"])


def resolve_backend(op: str, device: torch.device, backend: str | None = None,
                    implemented: frozenset[str] | None = None,
                    unsupported: dict[str, str] | None = None, size: int | None = None) -> str:
    """The backend that runs ``op`` on ``device``: ``backend``, else $LOMAR_OPS_BACKEND,
    else the device default (:func:`default_backend`). ``implemented`` (from
    :func:`implemented_backends`) restricts the choice to the backends the op has;
    ``unsupported`` maps backends that cannot run this particular call (e.g. its dtype)
    to the reason; ``size`` picks the record's shape class. Raises when an explicit
    choice cannot run."""
    source = "backend"
    if backend is None:
        env = os.environ.get(ENV_VAR, "").strip().lower()
        composite_elsewhere = env in COMPOSITE_BACKENDS and (implemented is None
                                                             or env not in implemented)
        if env in ("", "auto") or composite_elsewhere:
            if not torch.compiler.is_compiling() and _log.isEnabledFor(logging.DEBUG):
                chosen, why = default_backend(op, device, size, implemented, unsupported)
                _log.debug("%s on %s (size %s): %s, %s", op, device, size, chosen, why)
                return chosen
            return _pick(op, device, size, implemented, unsupported, explain=False)[0]
        backend, source = env, f"${ENV_VAR}"
    if backend not in BACKENDS + COMPOSITE_BACKENDS:
        allowed = BACKENDS + tuple(b for b in COMPOSITE_BACKENDS
                                   if implemented is not None and b in implemented)
        raise ValueError(f"{op}: {source} must be one of {allowed} or None, got {backend!r}")
    reason = _op_reason(op, backend, device, implemented, unsupported)
    if reason is not None:
        usable = [b for b in BACKENDS + COMPOSITE_BACKENDS
                  if _op_reason(op, b, device, implemented, unsupported) is None]
        raise BackendUnavailableError(
            f"{op}: {source}={backend!r} is unavailable: {reason}. "
            f"Available for {op} on {device}: {usable}")
    return backend


def defaults_report() -> list[str]:
    """The CUDA defaults, one line per op and shape class, with the record they follow
    and the figures behind each choice (``python -m lomar_ops info`` prints them)."""
    r = defaults.RECORD
    lines = [f"defaults on CUDA follow the GPU record {r['record']} ({r['device']}, "
             f"torch {r['torch']}, Triton {r['triton']}, {r['date']}): per op and shape "
             f"class the fastest measured backend in the mode training runs the op in"]
    for op, entries in defaults.CUDA.items():
        lower = 1
        for entry in entries:
            key = entry["size_key"]
            if key is None or (lower == 1 and entry["up_to"] is None):
                span = "every shape"
            elif entry["up_to"] is None:
                span = f"{key} >= {lower}"
            else:
                span = f"{key} {lower}-{entry['up_to']}"
            figures = ", ".join(f"{b} {ms:.3g}" for b, ms in entry["ms"].items())
            shape = entry["shape"]
            if entry["case"].startswith("bench_"):  # a model-level figure
                shape = f"{entry['case']}, {shape.split(',')[0]}, every op on one backend"
            lines.append(f"  {op:<18} {span:<12} {entry['backend']:<7} {entry['mode']} "
                         f"{shape}: {figures} ms")
            for backend, why in entry["left_out"].items():
                lines.append(f"  {'':<31} (not {backend}: {why})")
            lower = (entry["up_to"] or 0) + 1
    lines.append("  on the CPU: cpu, else torch; LOMAR_OPS_BACKEND or backend= overrides")
    return lines

