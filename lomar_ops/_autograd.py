"""Each op's autograd written once, for every backend with a compiled forward op.

An op's file (lomar_ops/ops/<op>.py) writes its rule as two functions,
``save(ctx, inputs, output)`` (what the backward needs) and
``grads(backward, ctx, *grad_outputs)`` (the inputs' gradients through ``backward``,
the backward op of the same backend), and registers it with :func:`register_autograd`
on the C++ op (by name) and on the Triton op (a ``triton_op``): the two backends
differ only in the backward op they call."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch


def register_autograd(forwards: Mapping, save: Callable, grads: Callable) -> None:
    """``forwards``: {forward op: its backward op}, a forward op being the name of a C++
    op ("lomar_ops::X") or a ``torch.library.triton_op``."""
    for forward, backward in forwards.items():
        rule = functools.partial(grads, backward)
        if isinstance(forward, str):
            torch.library.register_autograd(forward, rule, setup_context=save)
        else:
            forward.register_autograd(rule, setup_context=save)
