"""Argument checks for the public ops. Each error names the op, the argument,
what it got and what is allowed, and is raised before any work is done."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)
# Integer pixels (decoded images as files hold them) and the value that maps each
# dtype's range onto [0, 1] (torchvision's ToDtype(scale=True)): the ops that take
# images divide by it before any normalisation.
INT_PIXEL_DTYPES = (torch.uint8, torch.uint16)
PIXEL_SCALE = {torch.uint8: 255, torch.uint16: 65535}


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(op: str, name: str, x, *, ndim: int | None = None,
                 dtypes: Iterable[torch.dtype] | None = None, shape_doc: str = "") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in tuple(dtypes):
        raise TypeError(f"{op}: {name} must have dtype in ({_names(dtypes)}), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D{' ' + shape_doc if shape_doc else ''}, "
                         f"got shape {tuple(x.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def check_index_range(op: str, name: str, ids: torch.Tensor, upper: int, upper_doc: str) -> None:
    """Values of ``ids`` in [0, upper). Eagerly: a ValueError naming the values found.
    Under torch.compile the values are not known while tracing, so the check goes
    into the graph as an asynchronous assert (a RuntimeError on the CPU, a device-side
    assert on a GPU), which no kernel's out-of-range read can skip."""
    if ids.numel() == 0:
        return
    if torch.compiler.is_compiling():
        torch._assert_async(((ids >= 0) & (ids < upper)).all(),
                            f"{op}: {name} must lie in [0, {upper}) ({upper_doc})")
        return
    # Reading the values back syncs a GPU, so a map that passed is not read again
    # until it changes: bucket maps are constant buffers, checked on every layer's call.
    # The version counter moves with any in-place write (to it or a view of it).
    passed = (ids._version, upper)
    if getattr(ids, "_lomar_range_checked", None) == passed:
        return
    lo, hi = torch.aminmax(ids)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= upper:
        raise ValueError(f"{op}: {name} must lie in [0, {upper}) ({upper_doc}), "
                         f"got values in [{lo}, {hi}]")
    ids._lomar_range_checked = passed


def check_positive_int(op: str, name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    return value


def check_same_dtype(op: str, name: str, x: torch.Tensor, like_name: str,
                     like: torch.Tensor) -> None:
    if x.dtype != like.dtype:
        raise TypeError(f"{op}: {name} must have the dtype of {like_name} ({like.dtype}), "
                        f"got {x.dtype}")


def check_shape(op: str, name: str, x: torch.Tensor, shape: tuple, shape_doc: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must be {shape_doc} = {tuple(shape)}, "
                         f"got {tuple(x.shape)}")


def check_any_true(op: str, name: str, mask: torch.Tensor, why: str) -> None:
    """At least one True in ``mask``. Data-dependent, so checked in eager mode only."""
    if torch.compiler.is_compiling():
        return
    if mask.numel() == 0 or not bool(mask.any()):
        raise ValueError(f"{op}: {name} has no True entry ({why})")


def check_non_negative_float(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{op}: {name} must be a finite float >= 0, got {value}")
    return value


def check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return value
