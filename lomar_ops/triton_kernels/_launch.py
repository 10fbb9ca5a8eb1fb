"""Launching Triton kernels from a torch.library.triton_op.

``wrap_triton`` makes a launch traceable by torch.compile; it only accepts
compiled kernels, so under TRITON_INTERPRET=1 (CPU tests) kernels launch
directly, which eager mode does anyway. With fake tensors (shape propagation,
torch.library.opcheck) an interpreted launch is skipped: the outputs' shapes
come from the Python around it, as wrap_triton's fake rule does on a GPU."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.library import wrap_triton
from triton.runtime.jit import JITFunction


def launch(kernel, grid):
    """``kernel[grid]`` made traceable when the kernel is compiled, not interpreted."""
    if isinstance(kernel, JITFunction):
        return wrap_triton(kernel)[grid]

    def interpreted(*args, **kwargs):
        if any(isinstance(a, torch.Tensor) and (a.is_meta or is_fake(a)) for a in args):
            return None
        return kernel[grid](*args, **kwargs)

    return interpreted
