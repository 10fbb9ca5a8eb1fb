"""Launching Triton kernels from a torch.library.triton_op.

``wrap_triton`` makes a launch traceable by torch.compile; it only accepts
compiled kernels, so under TRITON_INTERPRET=1 (CPU tests) kernels launch
directly, which eager mode does anyway. With fake tensors (shape propagation,
torch.library.opcheck) an interpreted launch is skipped: the outputs' shapes
come from the Python around it, as wrap_triton's fake rule does on a GPU.

Within :func:`intercepted` a launch calls a hook instead: the compile sweep
(tests/triton_compile_sweep.py) records what the wrappers would launch
from CPU tensors, a test retypes the arguments."""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from triton.runtime.jit import JITFunction

_hook = None  # callable(kernel, grid, args, kwargs) within intercepted()


@contextlib.contextmanager
def intercepted(hook):
    """Within the block every launch calls ``hook(kernel, grid, args, kwargs)`` instead
    of launching (it may launch itself; if not, outputs stay as allocated)."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield hook
    finally:
        _hook = previous


def launch(kernel, grid):
    """``kernel[grid]`` made traceable when the kernel is compiled, not interpreted."""
    if _hook is not None:
        hook = _hook
        return lambda *args, **kwargs: hook(kernel, grid, args, kwargs)
    if isinstance(kernel, JITFunction):
        return wrap_triton(kernel)[grid]

    def interpreted(*args, **kwargs):
        if any(isinstance(a, torch.Tensor) and (a.is_meta or is_fake(a)) for a in args):
            return None
        return kernel[grid](*args, **kwargs)

    return interpreted
