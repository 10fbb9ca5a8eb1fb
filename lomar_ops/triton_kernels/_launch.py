"""Launching Triton kernels from a torch.library.triton_op.

``wrap_triton`` makes a launch traceable by torch.compile; it only accepts
compiled kernels, so under TRITON_INTERPRET=1 (CPU tests) kernels launch
directly, which eager mode does anyway."""

from __future__ import annotations

from torch.library import wrap_triton
from triton.runtime.jit import JITFunction


def launch(kernel, grid):
    """``kernel[grid]`` made traceable when the kernel is compiled, not interpreted."""
    if isinstance(kernel, JITFunction):
        return wrap_triton(kernel)[grid]
    return kernel[grid]
