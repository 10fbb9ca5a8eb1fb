"""rpe_gather: every backend against the pure-PyTorch reference (run in fp64),
gradcheck, opcheck, torch.compile and argument errors."""

import pytest
import torch

import lomar_ops
from lomar_ops.reference import rpe_gather_reference

from conftest import HAS_CUDA, devices_and_backends

# Tolerances per dtype against the fp64 reference on the same (rounded) inputs.
# The forward is a copy, exact in every dtype. The backward sums up to N values
# per bucket in fp32 (fp64 for double) and rounds once to the dtype, so its error
# is half an ulp of the dtype: the rtol below is one ulp.
FORWARD_TOL = {dt: dict(atol=0.0, rtol=0.0) for dt in
               (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
BACKWARD_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1.2e-7 * 8),
    torch.float16: dict(atol=1e-3, rtol=2 ** -10),
    torch.bfloat16: dict(atol=1e-2, rtol=2 ** -7),
}
DTYPES = list(BACKWARD_TOL)
# (S, H, N, NB): odd lengths, the LoMaR window (N = 50 with cls), a longer sequence.
SHAPES = [(1, 1, 1, 1), (2, 3, 7, 50), (1, 2, 17, 9), (2, 1, 50, 50), (1, 1, 65, 50)]


def make_inputs(shape, dtype, device):
    S, H, N, NB = shape
    table = torch.randn(S, H, N, NB, dtype=torch.float64).to(dtype).to(device)
    ids = torch.randint(0, NB, (N, N), dtype=torch.int32, device=device)
    return table, ids


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_forward_and_backward_match_reference(device, backend, dtype, shape):
    table, ids = make_inputs(shape, dtype, device)
    table.requires_grad_(True)
    out = lomar_ops.rpe_gather(table, ids, backend=backend)
    assert out.dtype == dtype and out.shape == shape[:3] + (shape[2],)
    ref_table = table.detach().double().requires_grad_(True)
    ref = rpe_gather_reference(ref_table, ids)
    torch.testing.assert_close(out.double(), ref, **FORWARD_TOL[dtype])

    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(device)
    (got,) = torch.autograd.grad(out, table, grad)
    (want,) = torch.autograd.grad(ref, ref_table, grad.double())
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, **BACKWARD_TOL[dtype])


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64(device, backend):
    # Each gradcheck probe is a kernel launch: keep the interpreter's share small.
    shape = (1, 2, 5, 6) if (device, backend) == ("cpu", "triton") else (2, 2, 9, 11)
    table, ids = make_inputs(shape, torch.float64, device)
    table.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: lomar_ops.rpe_gather(t, ids, backend=backend), (table,))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_backward_is_deterministic(device, backend):
    table, ids = make_inputs((3, 2, 50, 50), torch.float32, device)
    table.requires_grad_(True)
    grad = torch.randn(3, 2, 50, 50, device=device)
    grads = [torch.autograd.grad(lomar_ops.rpe_gather(table, ids, backend=backend), table, grad)[0]
             for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_non_contiguous_table_and_int64_ids(device, backend):
    base = torch.randn(3, 2, 17, 9, device=device)
    table = base.transpose(0, 1)  # (2, 3, 17, 9), not contiguous
    ids = torch.randint(0, 9, (17, 17), device=device)  # int64
    out = lomar_ops.rpe_gather(table, ids, backend=backend)
    assert torch.equal(out, rpe_gather_reference(table, ids))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_irpe_window_map(device, backend):
    ids = lomar_ops.irpe_bucket_ids(7, 7, device=device)
    table, _ = make_inputs((2, 3, 50, lomar_ops.irpe_num_buckets()), torch.float32, device)
    out = lomar_ops.rpe_gather(table, ids, backend=backend)
    # The cls row reads the cls bucket everywhere; patch rows read their own bucket.
    assert torch.equal(out[:, :, 0, :], table[:, :, 0, 49:50].expand(2, 3, 50))
    assert torch.equal(out[:, :, 1, 1], table[:, :, 1, 24])  # (0,0)->(0,0): bucket 24


def test_opcheck_cpu_op():
    table, ids = make_inputs((2, 3, 7, 11), torch.float32, "cpu")
    torch.library.opcheck(torch.ops.lomar_ops.rpe_gather.default,
                          (table.requires_grad_(True), ids))
    grad = torch.randn(2, 3, 7, 7)
    torch.library.opcheck(torch.ops.lomar_ops.rpe_gather_backward.default, (grad, ids, 11))


@pytest.mark.gpu
def test_opcheck_cuda_and_triton_ops():
    table, ids = make_inputs((2, 3, 7, 11), torch.float32, "cuda")
    torch.library.opcheck(torch.ops.lomar_ops.rpe_gather.default,
                          (table.requires_grad_(True), ids))
    from lomar_ops.triton_kernels.rpe_gather import rpe_gather_triton
    torch.library.opcheck(rpe_gather_triton, (table, ids))


def _compile_devices_and_backends():
    # Triton's CPU interpreter cannot run under torch.compile: on CPU only the C++
    # and torch backends compile; on a GPU all three do.
    params = [p for p in devices_and_backends() if p.values != ("cpu", "triton")]
    return params + [pytest.param("cpu", None, id="cpu-default")]


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    table, ids = make_inputs((2, 3, 17, 50), torch.float32, device)
    table.requires_grad_(True)
    grad = torch.randn(2, 3, 17, 17, device=device)

    def step(t, i):
        return (lomar_ops.rpe_gather(t, i, backend=backend).sin() * grad).sum()

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager_loss = step(table, ids)
    (eager_grad,) = torch.autograd.grad(eager_loss, table)
    loss = compiled(table, ids)
    (grad_table,) = torch.autograd.grad(loss, table)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grad_table, eager_grad)


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    table, ids = make_inputs((1, 2, 5, 7), torch.float32, "cpu")
    cases = [
        ((table.numpy(), ids), TypeError, "table must be a torch.Tensor"),
        ((table.to(torch.int32), ids), TypeError, "table must have dtype"),
        ((table[0], ids), ValueError, r"table must be 4-D \(S, H, N, NB\), got shape \(2, 5, 7\)"),
        ((table, ids.float()), TypeError, "bucket_ids must have dtype in \\(int32, int64\\)"),
        ((table, ids[:4, :4]), ValueError, r"bucket_ids must be \(N, N\) = \(5, 5\)"),
        ((table, ids.flatten()), ValueError, "bucket_ids must be 2-D"),
        ((table, ids + 7), ValueError, r"bucket_ids must lie in \[0, 7\).*got values in \[7, 13\]"),
        ((table, ids - 7), ValueError, r"bucket_ids must lie in \[0, 7\)"),
        ((table, ids.to("meta")), ValueError, "all tensors must be on one device"),
        ((table[..., :0], ids[:5, :5] * 0), ValueError, "at least one bucket"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            lomar_ops.rpe_gather(*args)


def test_rejects_unknown_and_unavailable_backends(monkeypatch):
    table, ids = make_inputs((1, 1, 3, 4), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"backend must be one of \('cuda', 'triton', 'cpu', 'torch'\)"):
        lomar_ops.rpe_gather(table, ids, backend="gpu")
    with pytest.raises(lomar_ops.BackendUnavailableError,
                       match=r"backend='cuda' is unavailable: (the tensors are on cpu|the extension was built without CUDA kernels).*Available for rpe_gather on cpu"):
        lomar_ops.rpe_gather(table, ids, backend="cuda")
    monkeypatch.setenv("LOMAR_OPS_BACKEND", "cuda")
    with pytest.raises(lomar_ops.BackendUnavailableError, match=r"\$LOMAR_OPS_BACKEND='cuda'"):
        lomar_ops.rpe_gather(table, ids)


def test_cpp_op_checks_guard_direct_calls():
    table, ids = make_inputs((1, 1, 4, 5), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"bucket_ids must lie in \[0, 5\)"):
        torch.ops.lomar_ops.rpe_gather(table, ids + 5)
    with pytest.raises(RuntimeError, match="bucket_ids must be int32"):
        torch.ops.lomar_ops.rpe_gather(table, ids.long())


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only failure mode")
def test_cuda_backend_explains_missing_gpu():
    reason = lomar_ops.backends.unavailable_reason("cuda", "cuda")
    assert reason in ("no CUDA device is available",) or "built without CUDA" in reason
