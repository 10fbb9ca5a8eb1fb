"""masked_patch_loss: the normalised-pixel reconstruction loss of MAE and LoMaR,
averaged over masked patches only (docs/method.md#the-pretraining-step, step 6).

Implementations: csrc/cpu/masked_patch_loss.cpp, csrc/cuda/masked_patch_loss.cu,
lomar_ops/triton_kernels/masked_patch_loss.py, lomar_ops/reference/masked_patch_loss.py.
This file holds the op's autograd rule (for the C++ and the Triton op), the C++ op's
fake-tensor rules and the public function."""

from __future__ import annotations

import torch

from .. import _extension
from .._autograd import register_autograd
from .._validation import (FLOAT_DTYPES, check_any_true, check_bool, check_non_negative_float,
                           check_same_device, check_same_dtype, check_shape, check_tensor)
from ..backends import TRITON_INSTALLED, resolve_backend
from ..reference.masked_patch_loss import masked_patch_loss_reference

_OP = "masked_patch_loss"


def _save(ctx, inputs, output):
    pred, target, mask, norm_pix, eps = inputs
    ctx.save_for_backward(pred, target, mask)
    ctx.norm_pix, ctx.eps = norm_pix, eps


def _grads(backward, ctx, grad):
    pred, target, mask = ctx.saved_tensors
    grad_pred = backward(grad, pred, target, mask, ctx.norm_pix, ctx.eps)
    return grad_pred, None, None, None, None  # the target is data: no gradient


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss is computed and returned in float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


if _extension.AVAILABLE:

    @torch.library.register_fake("lomar_ops::masked_patch_loss")
    def _masked_patch_loss_fake(pred, target, mask, norm_pix, eps):
        return pred.new_empty((), dtype=loss_dtype(pred.dtype))

    @torch.library.register_fake("lomar_ops::masked_patch_loss_backward")
    def _masked_patch_loss_backward_fake(grad, pred, target, mask, norm_pix, eps):
        return pred.new_empty(pred.shape)


def autocast_inputs(pred: torch.Tensor, target: torch.Tensor):
    """Under autocast a model's head gives a float16/bfloat16 ``pred`` while its target
    (pixels) stays float32. A loss runs in float32 under autocast (as ``mse_loss``
    does), so there both are promoted to the wider dtype; elsewhere they are returned
    as they are, and differing dtypes are an error."""
    if pred.dtype != target.dtype and torch.is_autocast_enabled(pred.device.type):
        wide = torch.promote_types(pred.dtype, target.dtype)
        return pred.to(wide), target.to(wide)
    return pred, target


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = True, eps: float = 1e-6,
                      backend: str | None = None) -> torch.Tensor:
    """Mean squared error of the predicted patches, over masked patches only.

    Args:
        pred: (S, L, P) float16/bfloat16/float32/float64, the predicted patches.
            Any strides; read in place when each patch (the last dim) is
            contiguous, e.g. ``head(x)[:, 1:]``, else copied first.
        target: (S, L, P), pred's dtype and device: the pixels of each patch
            (e.g. from :func:`lomar_ops.window_patchify`). It is data: it gets no
            gradient, whatever its requires_grad (every backend alike). Under
            autocast (on pred's device) it may differ from pred's dtype: both are
            then promoted to the wider one, e.g. a bfloat16 pred and a float32
            target give the float32 loss (as autocast runs ``mse_loss``).
        mask: (S, L) bool, True where a patch was masked; at least one True.
        norm_pix: normalise each target patch by its own mean and unbiased
            variance, ``(t - mean) / sqrt(var + eps)``; needs P >= 2.
        eps: >= 0, added to the variance.
        backend: None, "cuda", "triton", "cpu" or "torch" (see lomar_ops.backends).

    Returns:
        0-dim float32 tensor (float64 for float64 inputs), computed in that
        precision: the per-patch mean over P of the squared error, averaged over
        the masked patches, summed in a fixed order (deterministic). The backward
        recomputes each patch's mean and variance rather than storing the
        normalised target. A mask with no True entry raises ValueError in eager
        mode; under torch.compile that check is skipped (it depends on the data)
        and the result is NaN, except on the cpu backend, which raises.
    """
    check_tensor(_OP, "pred", pred, ndim=3, dtypes=FLOAT_DTYPES, shape_doc="(S, L, P)")
    check_tensor(_OP, "target", target, ndim=3, dtypes=FLOAT_DTYPES, shape_doc="(S, L, P)")
    check_tensor(_OP, "mask", mask, ndim=2, dtypes=(torch.bool,), shape_doc="(S, L)")
    S, L, P = pred.shape
    check_shape(_OP, "target", target, (S, L, P), "(S, L, P) of pred")
    pred, target = autocast_inputs(pred, target)
    check_same_dtype(_OP, "target", target, "pred", pred)
    check_shape(_OP, "mask", mask, (S, L), "(S, L) of pred")
    check_same_device(_OP, pred=pred, target=target, mask=mask)
    norm_pix = check_bool(_OP, "norm_pix", norm_pix)
    eps = check_non_negative_float(_OP, "eps", eps)
    if P < 1:
        raise ValueError(f"{_OP}: patches must have at least one value, got P = {P}")
    if norm_pix and P < 2:
        raise ValueError(f"{_OP}: norm_pix needs P >= 2 values per patch (the unbiased "
                         f"variance divides by P - 1), got P = {P}")
    check_any_true(_OP, "mask", mask, "the loss is a mean over the masked patches")
    chosen = resolve_backend(_OP, pred.device, backend)
    if chosen == "torch":
        return masked_patch_loss_reference(pred, target, mask, norm_pix, eps)
    target = target.detach()
    if chosen == "triton":
        return _triton.masked_patch_loss_triton(pred, target, mask.contiguous(), norm_pix, eps)
    return torch.ops.lomar_ops.masked_patch_loss(pred, target, mask, norm_pix, eps)


# The autograd rule on every compiled forward op: the C++ op's, the Triton op's.
_FORWARDS = {}
if _extension.AVAILABLE:
    _FORWARDS["lomar_ops::masked_patch_loss"] = torch.ops.lomar_ops.masked_patch_loss_backward
if TRITON_INSTALLED:
    from ..triton_kernels import masked_patch_loss as _triton
    _FORWARDS[_triton.masked_patch_loss_triton] = _triton.masked_patch_loss_backward_triton
register_autograd(_FORWARDS, _save, _grads)
