"""masked_patch_loss: every backend against the pure-PyTorch reference (run in
fp64), gradcheck, opcheck, torch.compile, determinism and argument errors."""

import pytest
import torch

import lomar_ops
from lomar_ops.reference import masked_patch_loss_reference

from conftest import devices_and_backends, devices_backends_and_shapes

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Against the fp64 reference on the same (rounded) inputs. Every backend computes
# in fp32 (fp64 for double) whatever the input dtype, so the loss carries only
# fp32 rounding: per-row sums of P terms and a sum of up to a few thousand row
# losses (all positive), a relative error of a few 1e-6 at most: rtol 2e-5.
LOSS_TOL = {torch.float64: dict(atol=0.0, rtol=1e-12)}
LOSS_TOL.update({dt: dict(atol=0.0, rtol=2e-5)
                 for dt in (torch.float32, torch.float16, torch.bfloat16)})
# dpred elementwise: fp32 statistics (relative error ~1e-6), then one rounding to
# the dtype (half an ulp). Relative to the largest |dpred| (the values cancel
# where pred is close to the normalised target): (rtol, atol / max|dpred|).
DPRED_TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5),
             torch.float16: (2.0 ** -10, 2.0 ** -10), torch.bfloat16: (2.0 ** -7, 2.0 ** -7)}

# (S, L, P): L = K*K; odd P; the LoMaR window at ViT-B/16's P = 768 (16*16*3).
SHAPES = [(1, 1, 2), (3, 9, 17), (2, 49, 768), (5, 196, 3), (64, 4, 5)]
# The Triton interpreter runs every program in Python: fewer, smaller cases.
TRITON_CPU_SHAPES = [(1, 1, 2), (3, 9, 17), (2, 49, 768), (5, 196, 3)]


def make_inputs(shape, dtype, device, mask_ratio=0.7, target_offset=0.0, target_scale=1.0):
    S, L, P = shape
    pred = torch.randn(S, L, P, dtype=torch.float64).to(dtype).to(device)
    target = (target_offset + target_scale * torch.randn(S, L, P, dtype=torch.float64))
    target = target.to(dtype).to(device)
    mask = torch.rand(S, L) < mask_ratio
    mask[0, 0] = True  # at least one masked patch
    return pred, target, mask.to(device)


def check_against_reference(device, backend, dtype, shape, norm_pix):
    pred, target, mask = make_inputs(shape, dtype, device)
    pred.requires_grad_(True)
    loss = lomar_ops.masked_patch_loss(pred, target, mask, norm_pix, backend=backend)
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == want_dtype and loss.shape == ()
    ref_pred = pred.detach().double().requires_grad_(True)
    ref = masked_patch_loss_reference(ref_pred, target.double(), mask, norm_pix)
    torch.testing.assert_close(loss.double(), ref, **LOSS_TOL[dtype])

    (got,) = torch.autograd.grad(loss * 3.0, pred)
    (want,) = torch.autograd.grad(ref * 3.0, ref_pred)
    assert got.dtype == dtype and got.shape == shape
    assert torch.all(got[~mask] == 0)
    rtol, atol = DPRED_TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=rtol,
                               atol=atol * want.abs().max().item())


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend,shape", devices_backends_and_shapes(SHAPES, TRITON_CPU_SHAPES))
def test_forward_and_backward_match_reference(device, backend, shape, dtype, norm_pix):
    check_against_reference(device, backend, dtype, shape, norm_pix)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_every_window_size(device, backend):
    # K = 1..14 (L = K*K), S from 1 to 64, odd P.
    for K in range(1, 15):
        S = 1 + (K * 37) % 64 if backend != "triton" or device == "cuda" else 1 + K % 3
        check_against_reference(device, backend, torch.float32, (S, K * K, 3 + 2 * K), True)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_one_value_per_patch_without_norm_pix(device, backend):
    check_against_reference(device, backend, torch.float32, (4, 9, 1), False)


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64(device, backend, norm_pix):
    shape = (2, 4, 3) if (device, backend) == ("cpu", "triton") else (3, 9, 7)
    pred, target, mask = make_inputs(shape, torch.float64, device)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: lomar_ops.masked_patch_loss(p, target, mask, norm_pix, backend=backend), (pred,))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_target_gets_no_gradient(device, backend):
    pred, target, mask = make_inputs((2, 9, 6), torch.float32, device)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    loss = lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
    grad_pred, grad_target = torch.autograd.grad(loss, [pred, target], allow_unused=True)
    assert grad_target is None and grad_pred is not None


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_forward_and_backward_are_deterministic(device, backend):
    shape = (4, 49, 96) if (device, backend) == ("cpu", "triton") else (64, 49, 192)
    pred, target, mask = make_inputs(shape, torch.float32, device)
    pred.requires_grad_(True)
    runs = []
    for _ in range(2):
        loss = lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
        runs.append((loss, torch.autograd.grad(loss, pred)[0]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("device,backend", [p for p in devices_and_backends()
                                            if p.values[1] != "torch"])
def test_no_worse_than_torch_in_low_precision(device, backend, dtype):
    # Pixel-like targets, far from zero mean (the hard case for the variance).
    # The framework's own error: the torch reference run on the low-precision
    # inputs; a backend may sum in another order, not be much worse.
    shape = (4, 49, 96) if backend == "triton" and device == "cpu" else (64, 49, 192)
    pred, target, mask = make_inputs(shape, dtype, device, target_offset=3.0, target_scale=0.2)
    pred.requires_grad_(True)
    loss = lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
    (got,) = torch.autograd.grad(loss, pred)
    low = masked_patch_loss_reference(pred, target, mask)
    (low_grad,) = torch.autograd.grad(low, pred)
    exact_pred = pred.detach().double().requires_grad_(True)
    exact = masked_patch_loss_reference(exact_pred, target.double(), mask)
    (exact_grad,) = torch.autograd.grad(exact, exact_pred)
    # Floors: a few fp32 ulps for the fp32 loss; one ulp of the dtype for dpred,
    # whose last rounding may go the other way when the fp32 values differ.
    err, torch_err = (loss.double() - exact).abs().item(), (low.double() - exact).abs().item()
    assert err <= 2 * torch_err + 4 * torch.finfo(torch.float32).eps * exact.abs().item(), \
        (err, torch_err)
    err = (got.double() - exact_grad).abs().max().item()
    torch_err = (low_grad.double() - exact_grad).abs().max().item()
    assert err <= 2 * torch_err + torch.finfo(dtype).eps * exact_grad.abs().max().item(), \
        (err, torch_err)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_non_contiguous_inputs(device, backend):
    # pred as a LoMaR head output sliced past its cls row (read in place through its
    # strides), and transposed; target with a strided last dim (copied first).
    head_out = torch.randn(3, 10, 17, device=device, requires_grad=True)
    transposed = torch.randn(9, 3, 17, device=device, requires_grad=True)
    target = torch.randn(3, 9, 34, device=device)[..., ::2]
    mask = torch.rand(9, 3, device=device).t() < 0.6
    mask[0, 0] = True
    for leaf, pred in ((head_out, head_out[:, 1:]), (transposed, transposed.transpose(0, 1))):
        loss = lomar_ops.masked_patch_loss(pred, target, mask, backend=backend)
        want = masked_patch_loss_reference(pred, target, mask)
        torch.testing.assert_close(loss, want, rtol=2e-5, atol=0)
        (got,) = torch.autograd.grad(loss, leaf)
        (want_grad,) = torch.autograd.grad(want, leaf)
        torch.testing.assert_close(got, want_grad, rtol=1e-5, atol=1e-5 * want_grad.abs().max())


def test_opcheck_cpu_ops():
    pred, target, mask = make_inputs((3, 9, 7), torch.float32, "cpu")
    for norm_pix in (True, False):
        torch.library.opcheck(torch.ops.lomar_ops.masked_patch_loss.default,
                              (pred.requires_grad_(True), target, mask, norm_pix, 1e-6))
        grad = torch.tensor(0.7)
        torch.library.opcheck(torch.ops.lomar_ops.masked_patch_loss_backward.default,
                              (grad, pred.detach(), target, mask, norm_pix, 1e-6))


@pytest.mark.gpu
def test_opcheck_cuda_and_triton_ops():
    from lomar_ops.triton_kernels.masked_patch_loss import (masked_patch_loss_backward_triton,
                                                            masked_patch_loss_triton)
    pred, target, mask = make_inputs((3, 9, 7), torch.float32, "cuda")
    grad = torch.tensor(0.7, device="cuda")
    for norm_pix in (True, False):
        args = (pred.requires_grad_(True), target, mask, norm_pix, 1e-6)
        torch.library.opcheck(torch.ops.lomar_ops.masked_patch_loss.default, args)
        torch.library.opcheck(masked_patch_loss_triton, args)
        bargs = (grad, pred.detach(), target, mask, norm_pix, 1e-6)
        torch.library.opcheck(torch.ops.lomar_ops.masked_patch_loss_backward.default, bargs)
        torch.library.opcheck(masked_patch_loss_backward_triton, bargs)


def _compile_devices_and_backends():
    # Triton's CPU interpreter cannot run under torch.compile: on CPU only the C++
    # and torch backends compile; on a GPU all three do.
    params = [p for p in devices_and_backends() if p.values != ("cpu", "triton")]
    return params + [pytest.param("cpu", None, id="cpu-default")]


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph_pipeline(device, backend):
    # A LoMaR step's data path: patch pixels -> embedding -> mask_substitute ->
    # (encoder stand-in) -> head on the window tokens -> masked_patch_loss.
    torch._dynamo.reset()
    S, L, P, D = 4, 49, 48, 32
    pixels = torch.randn(S, L, P, device=device)
    embed = torch.nn.Linear(P, D).to(device)
    head = torch.nn.Linear(D, P).to(device)
    mask = (torch.rand(S, L) < 0.8).to(device)
    mask_token = torch.randn(D, device=device, requires_grad=True)
    cls_token = torch.randn(D, device=device, requires_grad=True)

    def step(x):
        tokens = lomar_ops.mask_substitute(embed(x), mask, mask_token, cls_token, backend=backend)
        pred = head(tokens.tanh())[:, 1:]
        return lomar_ops.masked_patch_loss(pred, x, mask, backend=backend)

    params = [embed.weight, head.weight, mask_token, cls_token]
    eager_loss = step(pixels)
    eager = torch.autograd.grad(eager_loss, params)
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    loss = compiled(pixels)
    got = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e)


def test_reference_matches_the_mae_formula():
    # The reference itself against the authors' formula, written out differently.
    pred, target, mask = make_inputs((3, 9, 12), torch.float64, "cpu")
    mean = target.mean(-1, keepdim=True)
    var = ((target - mean) ** 2).sum(-1, keepdim=True) / 11
    t = (target - mean) / torch.sqrt(var + 1e-6)
    want = ((pred - t) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(masked_patch_loss_reference(pred, target, mask), want)
    want_raw = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(masked_patch_loss_reference(pred, target, mask, False), want_raw)


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    pred, target, mask = make_inputs((2, 4, 5), torch.float32, "cpu")
    none_masked = torch.zeros_like(mask)
    cases = [
        ((pred.numpy(), target, mask), {}, TypeError, "pred must be a torch.Tensor"),
        ((pred.int(), target, mask), {}, TypeError, "pred must have dtype"),
        ((pred[0], target, mask), {}, ValueError, r"pred must be 3-D \(S, L, P\)"),
        ((pred, target[..., :4], mask), {}, ValueError,
         r"target must be \(S, L, P\) of pred = \(2, 4, 5\), got \(2, 4, 4\)"),
        ((pred, target.double(), mask), {}, TypeError,
         r"target must have the dtype of pred \(torch.float32\), got torch.float64"),
        ((pred, target, mask.float()), {}, TypeError, r"mask must have dtype in \(bool\)"),
        ((pred, target, mask[:1]), {}, ValueError, r"mask must be \(S, L\) of pred = \(2, 4\)"),
        ((pred, target, mask.to("meta")), {}, ValueError, "all tensors must be on one device"),
        ((pred, target, none_masked), {}, ValueError, "masked_patch_loss: mask has no True entry"),
        ((pred, target, mask), dict(eps=-1e-6), ValueError, "eps must be a finite float >= 0"),
        ((pred, target, mask), dict(eps=float("nan")), ValueError, "eps must be"),
        ((pred, target, mask), dict(eps="small"), TypeError, "eps must be a float"),
        ((pred, target, mask), dict(norm_pix=1), TypeError, "norm_pix must be a bool"),
        ((pred[..., :1], target[..., :1], mask), {}, ValueError,
         r"norm_pix needs P >= 2 values per patch .* got P = 1"),
        ((pred[..., :0], target[..., :0], mask), dict(norm_pix=False), ValueError,
         "at least one value, got P = 0"),
    ]
    for args, kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            lomar_ops.masked_patch_loss(*args, **kwargs)


def test_rejects_unknown_and_unavailable_backends():
    pred, target, mask = make_inputs((1, 4, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        lomar_ops.masked_patch_loss(pred, target, mask, backend="gpu")
    # either reason, as the extension was built with or without CUDA kernels
    with pytest.raises(lomar_ops.BackendUnavailableError, match=r"(the tensors are on cpu|the extension was built without CUDA kernels)"):
        lomar_ops.masked_patch_loss(pred, target, mask, backend="cuda")


def test_cpp_op_checks_guard_direct_calls():
    pred, target, mask = make_inputs((2, 4, 5), torch.float32, "cpu")
    op = torch.ops.lomar_ops.masked_patch_loss
    with pytest.raises(RuntimeError, match="masked_patch_loss: mask has no True entry"):
        op(pred, target, torch.zeros_like(mask), True, 1e-6)
    with pytest.raises(RuntimeError, match="norm_pix needs P >= 2"):
        op(pred[..., :1], target[..., :1], mask, True, 1e-6)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        op(pred, target, mask, True, -1.0)
    with pytest.raises(RuntimeError, match="target must have the dtype of pred"):
        op(pred, target.double(), mask, True, 1e-6)
    with pytest.raises(RuntimeError, match="masked_patch_loss_backward: grad must hold one value"):
        torch.ops.lomar_ops.masked_patch_loss_backward(torch.ones(2), pred, target, mask,
                                                       True, 1e-6)
