"""mask_substitute: masked rows of each window sequence replaced by the learned
mask token, the cls token prepended (docs/method.md#the-pretraining-step, step 3).

Implementations: csrc/cpu/mask_substitute.cpp, csrc/cuda/mask_substitute.cu,
lomar_ops/triton_kernels/mask_substitute.py, lomar_ops/reference/mask_substitute.py.
This file holds the op's autograd rule (for the C++ and the Triton op), the C++ op's
fake-tensor rules and the public function."""

from __future__ import annotations

import torch

from .. import _extension
from .._autograd import register_autograd
from .._validation import (FLOAT_DTYPES, check_same_device, check_same_dtype, check_shape,
                           check_tensor)
from ..backends import TRITON_INSTALLED, resolve_backend
from ..reference.mask_substitute import mask_substitute_reference

_OP = "mask_substitute"


def _save(ctx, inputs, output):
    _, mask, _, cls_token = inputs
    ctx.save_for_backward(mask)
    ctx.has_cls = cls_token is not None


def _grads(backward, ctx, grad_out):
    (mask,) = ctx.saved_tensors
    grad_tokens, grad_mask_token, grad_cls_token = backward(grad_out.contiguous(), mask,
                                                            ctx.has_cls)
    return grad_tokens, None, grad_mask_token, grad_cls_token if ctx.has_cls else None


if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::mask_substitute")
    def _mask_substitute_fake(tokens, mask, mask_token, cls_token):
        S, L, D = tokens.shape
        return tokens.new_empty((S, L + (1 if cls_token is not None else 0), D))

    @torch.library.register_fake("lomar_ops::mask_substitute_backward")
    def _mask_substitute_backward_fake(grad_out, mask, has_cls):
        S, T, D = grad_out.shape
        L = T - (1 if has_cls else 0)
        return (grad_out.new_empty((S, L, D)), grad_out.new_empty((D,)),
                grad_out.new_empty((D if has_cls else 0,)))


def mask_substitute(tokens: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor,
                    cls_token: torch.Tensor | None = None,
                    backend: str | None = None) -> torch.Tensor:
    """Replace masked tokens by ``mask_token`` and prepend ``cls_token``.

    Args:
        tokens: (S, L, D) float16/bfloat16/float32/float64, the embedded patches of
            S window sequences (L = K*K). Any strides (copied to contiguous first:
            the output is a fresh contiguous tensor anyway, and the usual input,
            a linear map's output, already is).
        mask: (S, L) bool, True where a patch is masked.
        mask_token: (D,), the dtype and device of tokens.
        cls_token: (D,) like mask_token, or None for no cls row.
        backend: None, "cuda", "triton", "cpu" or "torch" (see lomar_ops.backends).

    Returns:
        (S, 1 + L, D) with cls_token (else (S, L, D)), dtype of tokens: row 0 is
        cls_token, row 1 + l is mask_token where mask[s, l] else tokens[s, l].
        Backward: to tokens (zero at masked rows), to mask_token (sum over the
        masked rows), to cls_token (sum over the sequences); the sums accumulate
        in fp32 (fp64 for float64) in a fixed order, so they are deterministic.
        mask gets no gradient.
    """
    check_tensor(_OP, "tokens", tokens, ndim=3, dtypes=FLOAT_DTYPES, shape_doc="(S, L, D)")
    check_tensor(_OP, "mask", mask, ndim=2, dtypes=(torch.bool,), shape_doc="(S, L)")
    check_tensor(_OP, "mask_token", mask_token, ndim=1, dtypes=FLOAT_DTYPES, shape_doc="(D,)")
    S, L, D = tokens.shape
    check_shape(_OP, "mask", mask, (S, L), "(S, L) of tokens")
    check_shape(_OP, "mask_token", mask_token, (D,), "(D,) of tokens")
    check_same_dtype(_OP, "mask_token", mask_token, "tokens", tokens)
    vectors = dict(mask_token=mask_token)
    if cls_token is not None:
        check_tensor(_OP, "cls_token", cls_token, ndim=1, dtypes=FLOAT_DTYPES, shape_doc="(D,)")
        check_shape(_OP, "cls_token", cls_token, (D,), "(D,) of tokens")
        check_same_dtype(_OP, "cls_token", cls_token, "tokens", tokens)
        vectors["cls_token"] = cls_token
    check_same_device(_OP, tokens=tokens, mask=mask, **vectors)
    chosen = resolve_backend(_OP, tokens.device, backend, size=tokens.shape[1])
    if chosen == "torch":
        return mask_substitute_reference(tokens, mask, mask_token, cls_token)
    if chosen == "triton":
        return _triton.mask_substitute_triton(
            tokens.contiguous(), mask.contiguous(), mask_token.contiguous(),
            None if cls_token is None else cls_token.contiguous())
    return torch.ops.lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token)


# The autograd rule on every compiled forward op: the C++ op's, the Triton op's.
_FORWARDS = {}
if _extension.AVAILABLE:
    _FORWARDS["lomar_ops::mask_substitute"] = torch.ops.lomar_ops.mask_substitute_backward
if TRITON_INSTALLED:
    from ..triton_kernels import mask_substitute as _triton
    _FORWARDS[_triton.mask_substitute_triton] = _triton.mask_substitute_backward_triton
register_autograd(_FORWARDS, _save, _grads)
