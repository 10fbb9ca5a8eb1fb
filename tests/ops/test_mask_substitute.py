"""mask_substitute: every backend against the pure-PyTorch reference (run in
fp64), gradcheck, opcheck, torch.compile, determinism and argument errors."""

import pytest
import torch

import lomar_ops
from lomar_ops.reference import mask_substitute_reference

from conftest import devices_and_backends, devices_backends_and_shapes

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# The forward and grad_tokens are copies (or zeros): exact in every dtype.
# grad_mask_token and grad_cls_token sum n rows: in fp32 (fp64 for double), then
# one rounding to the dtype. Summing n terms of size ~1 in fp32 errs by about n
# half-ulps of a unit-size sum (u = 2^-24; 2^-53 in fp64), hence atol = 4 * n * u;
# the final rounding costs half an ulp of the dtype, hence rtol = its eps.
# A missing or doubled row (an error of ~1) is far outside these.
ACC_UNIT = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24,
            torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -24}


def reduction_tol(dtype, n_terms):
    return dict(atol=4 * max(n_terms, 1) * ACC_UNIT[dtype], rtol=torch.finfo(dtype).eps)


# (S, L, D): L = K*K; odd D; the LoMaR window (49) and the largest window (196).
SHAPES = [(1, 1, 3), (3, 9, 17), (2, 49, 768), (5, 196, 17), (64, 16, 5)]
# The Triton interpreter runs every program in Python: fewer, smaller cases.
TRITON_CPU_SHAPES = [(1, 1, 3), (3, 9, 17), (2, 49, 768), (5, 196, 17)]


def make_inputs(shape, dtype, device, with_cls=True, mask_ratio=0.7):
    S, L, D = shape
    tokens = torch.randn(S, L, D, dtype=torch.float64).to(dtype).to(device)
    mask = (torch.rand(S, L) < mask_ratio).to(device)
    mask_token = torch.randn(D, dtype=torch.float64).to(dtype).to(device)
    cls_token = torch.randn(D, dtype=torch.float64).to(dtype).to(device) if with_cls else None
    return tokens, mask, mask_token, cls_token


def check_against_reference(device, backend, dtype, shape, with_cls):
    tokens, mask, mask_token, cls_token = make_inputs(shape, dtype, device, with_cls)
    params = [t.requires_grad_(True) for t in (tokens, mask_token, cls_token) if t is not None]
    out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
    S, L, D = shape
    assert out.dtype == dtype and out.shape == (S, L + int(with_cls), D)
    ref_params = [p.detach().double().requires_grad_(True) for p in params]
    ref = mask_substitute_reference(ref_params[0], mask, ref_params[1],
                                    ref_params[2] if with_cls else None)
    assert torch.equal(out.double(), ref)  # a copy: exact

    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(device)
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(ref, ref_params, grad.double())
    assert all(g.dtype == dtype for g in got)
    assert torch.equal(got[0].double(), want[0])  # grad_tokens: a copy or zero
    n_masked = int(mask.sum())
    torch.testing.assert_close(got[1].double(), want[1], **reduction_tol(dtype, n_masked))
    if with_cls:
        torch.testing.assert_close(got[2].double(), want[2], **reduction_tol(dtype, S))


@pytest.mark.parametrize("with_cls", [True, False], ids=["cls", "nocls"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend,shape", devices_backends_and_shapes(SHAPES, TRITON_CPU_SHAPES))
def test_forward_and_backward_match_reference(device, backend, shape, dtype, with_cls):
    check_against_reference(device, backend, dtype, shape, with_cls)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_every_window_size(device, backend):
    # K = 1..14 (L = K*K), S from 1 to 64, odd D; one dtype, with a cls token.
    for K in range(1, 15):
        S = 1 + (K * 37) % 64 if backend != "triton" or device == "cuda" else 1 + K % 3
        check_against_reference(device, backend, torch.float32, (S, K * K, 3 + 2 * K), True)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_all_and_no_rows_masked(device, backend):
    tokens, _, mask_token, cls_token = make_inputs((3, 9, 5), torch.float32, device)
    for mask in (torch.ones(3, 9, dtype=torch.bool), torch.zeros(3, 9, dtype=torch.bool)):
        mask = mask.to(device)
        out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
        assert torch.equal(out, mask_substitute_reference(tokens, mask, mask_token, cls_token))


@pytest.mark.parametrize("with_cls", [True, False], ids=["cls", "nocls"])
@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64(device, backend, with_cls):
    # Each gradcheck probe is a kernel launch: keep the interpreter's share small.
    shape = (2, 4, 3) if (device, backend) == ("cpu", "triton") else (3, 9, 5)
    tokens, mask, mask_token, cls_token = make_inputs(shape, torch.float64, device, with_cls)
    inputs = tuple(t.requires_grad_(True) for t in (tokens, mask_token, cls_token) if t is not None)

    def fn(tok, mt, *cls):
        return lomar_ops.mask_substitute(tok, mask, mt, cls[0] if cls else None, backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_backward_is_deterministic(device, backend):
    shape = (8, 49, 64) if (device, backend) == ("cpu", "triton") else (64, 49, 96)
    tokens, mask, mask_token, cls_token = make_inputs(shape, torch.float32, device)
    params = [t.requires_grad_(True) for t in (tokens, mask_token, cls_token)]
    grad = torch.randn(shape[0], shape[1] + 1, shape[2], device=device)
    runs = [torch.autograd.grad(
        lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend),
        params, grad) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("device,backend", [p for p in devices_and_backends()
                                            if p.values[1] != "torch"])
def test_sums_no_worse_than_torch_in_low_precision(device, backend, dtype):
    # The framework's own error: the torch reference run in `dtype` (its sums are
    # fp32 too). A backend may differ in summation order, not be much worse.
    shape = (4, 49, 17) if backend == "triton" and device == "cpu" else (64, 49, 33)
    tokens, mask, mask_token, cls_token = make_inputs(shape, dtype, device)
    params = [t.requires_grad_(True) for t in (tokens, mask_token, cls_token)]
    grad = torch.randn(shape[0], shape[1] + 1, shape[2], dtype=torch.float64).to(dtype).to(device)
    got = torch.autograd.grad(lomar_ops.mask_substitute(*params[:1], mask, *params[1:],
                                                        backend=backend), params, grad)
    low = torch.autograd.grad(mask_substitute_reference(params[0], mask, *params[1:]), params, grad)
    exact_params = [p.detach().double().requires_grad_(True) for p in params]
    exact = torch.autograd.grad(mask_substitute_reference(exact_params[0], mask, *exact_params[1:]),
                                exact_params, grad.double())
    ulp = torch.finfo(dtype).eps
    for i in (1, 2):
        err = (got[i].double() - exact[i]).abs().max().item()
        torch_err = (low[i].double() - exact[i]).abs().max().item()
        assert err <= 2 * torch_err + ulp * exact[i].abs().max().item(), (i, err, torch_err)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_non_contiguous_tokens(device, backend):
    base = torch.randn(9, 5, 17, device=device)
    tokens = base.transpose(0, 1)  # (5, 9, 17), not contiguous
    mask = (torch.rand(5, 9) < 0.5).to(device)
    mask_token = torch.randn(34, device=device)[::2]  # strided (17,)
    cls_token = torch.randn(17, device=device)
    out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
    assert torch.equal(out, mask_substitute_reference(tokens, mask, mask_token, cls_token))


def test_backward_op_returns_empty_cls_grad_without_cls():
    grad = torch.randn(2, 9, 5)
    mask = torch.rand(2, 9) < 0.5
    gt, gm, gc = torch.ops.lomar_ops.mask_substitute_backward(grad, mask, False)
    assert gt.shape == (2, 9, 5) and gm.shape == (5,) and gc.shape == (0,)
    torch.testing.assert_close(gm, grad[mask].sum(0))
    gt, gm, gc = torch.ops.lomar_ops.mask_substitute_backward(grad, mask[:, 1:], True)
    assert gt.shape == (2, 8, 5) and torch.equal(gc, grad[:, 0].sum(0))


def test_opcheck_cpu_ops():
    for with_cls in (True, False):
        tokens, mask, mask_token, cls_token = make_inputs((3, 9, 7), torch.float32, "cpu", with_cls)
        args = [tokens.requires_grad_(True), mask, mask_token.requires_grad_(True),
                cls_token.requires_grad_(True) if with_cls else None]
        torch.library.opcheck(torch.ops.lomar_ops.mask_substitute.default, tuple(args))
        grad = torch.randn(3, 9 + int(with_cls), 7)
        torch.library.opcheck(torch.ops.lomar_ops.mask_substitute_backward.default,
                              (grad, mask, with_cls))


@pytest.mark.gpu
def test_opcheck_cuda_and_triton_ops():
    from lomar_ops.triton_kernels.mask_substitute import (mask_substitute_backward_triton,
                                                          mask_substitute_triton)
    for with_cls in (True, False):
        tokens, mask, mask_token, cls_token = make_inputs((3, 9, 7), torch.float32, "cuda",
                                                          with_cls)
        args = (tokens.requires_grad_(True), mask, mask_token.requires_grad_(True),
                cls_token.requires_grad_(True) if with_cls else None)
        torch.library.opcheck(torch.ops.lomar_ops.mask_substitute.default, args)
        torch.library.opcheck(mask_substitute_triton, args)
        grad = torch.randn(3, 9 + int(with_cls), 7, device="cuda")
        torch.library.opcheck(torch.ops.lomar_ops.mask_substitute_backward.default,
                              (grad, mask, with_cls))
        torch.library.opcheck(mask_substitute_backward_triton, (grad, mask, with_cls))


def _compile_devices_and_backends():
    # Triton's CPU interpreter cannot run under torch.compile: on CPU only the C++
    # and torch backends compile; on a GPU all three do.
    params = [p for p in devices_and_backends() if p.values != ("cpu", "triton")]
    return params + [pytest.param("cpu", None, id="cpu-default")]


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph(device, backend):
    # The pipeline of a LoMaR step: patch pixels -> linear embedding -> mask_substitute.
    torch._dynamo.reset()
    torch.manual_seed(0)
    S, L, P, D = 4, 49, 48, 32
    pixels = torch.randn(S, L, P, device=device)
    embed = torch.nn.Linear(P, D).to(device)
    mask = (torch.rand(S, L) < 0.8).to(device)
    mask_token = torch.randn(D, device=device, requires_grad=True)
    cls_token = torch.randn(D, device=device, requires_grad=True)
    weight = torch.randn(S, L + 1, D, device=device)

    def step(x):
        tokens = embed(x)
        out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token, backend=backend)
        return (out.tanh() * weight).sum()

    params = [embed.weight, mask_token, cls_token]
    eager = torch.autograd.grad(step(pixels), params)
    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    got = torch.autograd.grad(compiled(pixels), params)
    # The op's own gradients (mask and cls tokens: sums of gradient rows) to fp32's
    # default tolerance. The embedding's weight gradient is a (D x S*L) @ (S*L x P)
    # product that Inductor's CPU GEMM may block differently from eager's: it is held
    # to 1e-4 of its largest element (usually 1e-7 apart; a CI run once saw 2.6e-5:
    # 5.5e-4 on a largest element of about 21). A wrong token gradient from the op
    # would be off by whole rows, far outside either bound.
    torch.testing.assert_close(got[0], eager[0], rtol=1e-4,
                               atol=1e-4 * float(eager[0].abs().max()))
    for g, e in zip(got[1:], eager[1:]):
        torch.testing.assert_close(g, e)


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    tokens, mask, mask_token, cls_token = make_inputs((2, 4, 5), torch.float32, "cpu")
    cases = [
        ((tokens.numpy(), mask, mask_token), TypeError, "tokens must be a torch.Tensor"),
        ((tokens.to(torch.int32), mask, mask_token), TypeError, "tokens must have dtype"),
        ((tokens[0], mask, mask_token), ValueError, r"tokens must be 3-D \(S, L, D\)"),
        ((tokens, mask.int(), mask_token), TypeError, r"mask must have dtype in \(bool\)"),
        ((tokens, mask[:, :3], mask_token), ValueError, r"mask must be \(S, L\) of tokens = \(2, 4\)"),
        ((tokens, mask[0], mask_token), ValueError, "mask must be 2-D"),
        ((tokens, mask, mask_token[:4]), ValueError, r"mask_token must be \(D,\) of tokens = \(5,\)"),
        ((tokens, mask, mask_token[None]), ValueError, "mask_token must be 1-D"),
        ((tokens, mask, mask_token.double()), TypeError,
         r"mask_token must have the dtype of tokens \(torch.float32\), got torch.float64"),
        ((tokens, mask, mask_token, cls_token.half()), TypeError, "cls_token must have the dtype"),
        ((tokens, mask, mask_token, cls_token[:2]), ValueError, r"cls_token must be \(D,\)"),
        ((tokens, mask, mask_token, "cls"), TypeError, "cls_token must be a torch.Tensor"),
        ((tokens, mask.to("meta"), mask_token), ValueError, "all tensors must be on one device"),
        ((tokens, mask, mask_token, cls_token.to("meta")), ValueError, "cls_token on meta"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            lomar_ops.mask_substitute(*args)


def test_rejects_unknown_and_unavailable_backends():
    tokens, mask, mask_token, _ = make_inputs((1, 4, 3), torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        lomar_ops.mask_substitute(tokens, mask, mask_token, backend="gpu")
    # either reason, as the extension was built with or without CUDA kernels
    with pytest.raises(lomar_ops.BackendUnavailableError, match=r"(the tensors are on cpu|the extension was built without CUDA kernels)"):
        lomar_ops.mask_substitute(tokens, mask, mask_token, backend="cuda")


def test_cpp_op_checks_guard_direct_calls():
    tokens, mask, mask_token, cls_token = make_inputs((2, 4, 5), torch.float32, "cpu")
    op = torch.ops.lomar_ops.mask_substitute
    with pytest.raises(RuntimeError, match="mask_substitute: mask must be bool"):
        op(tokens, mask.int(), mask_token, cls_token)
    with pytest.raises(RuntimeError, match=r"mask_substitute: cls_token must be \(D,\) = \(5,\)"):
        op(tokens, mask, mask_token, cls_token[:3])
    with pytest.raises(RuntimeError, match="mask_token must have the dtype of tokens"):
        op(tokens, mask, mask_token.double(), None)
    with pytest.raises(RuntimeError, match=r"mask_substitute_backward: mask must be \(S, L\)"):
        torch.ops.lomar_ops.mask_substitute_backward(torch.randn(2, 5, 5), mask, False)

