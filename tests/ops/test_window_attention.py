"""window_attention: every implemented backend against the pure-PyTorch reference
run in float64, in all three modes and both table layouts, forward and the four
gradients; gradcheck, opcheck, torch.compile, determinism, argument errors."""

import importlib
from pathlib import Path

import pytest
import torch
from conftest import devices_backends_and_shapes

import lomar_ops
from lomar_ops.comparisons import COMPARISONS
from lomar_ops.reference import window_attention_reference

_IMPLEMENTED = importlib.import_module("lomar_ops.ops.window_attention")._IMPLEMENTED

# fp32 and below: the error against the fp64 reference may be at most FACTOR times
# the error of the torch reference computed in the same dtype (FlashAttention's
# rule), plus a floor for values that happen to be exact in the torch reference.
# fp64: absolute (both compute in fp64).
FACTOR = 3.0
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
ABS_TOL = {torch.float64: 1e-10}
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

# (S, N, H, d): the LoMaR window (N = 50 = 1 + 7*7), odd and tile-edge lengths, a
# fine-tuning length; every head count and head size of the issue appears.
SHAPES = [(3, 2, 1, 32), (2, 17, 3, 64), (2, 49, 12, 32), (4, 50, 12, 64), (1, 64, 3, 80),
          (1, 65, 1, 128), (1, 100, 3, 64), (1, 197, 12, 64), (1, 257, 1, 80)]
# Triton's CPU interpreter is slow: N = 2, 17, 65 (one and two key blocks), d = 32
# and 80 (no padding; padded to 128), H = 1 and 3.
TRITON_CPU_SHAPES = [(3, 2, 1, 32), (2, 17, 3, 80), (1, 65, 1, 32)]
CASES = [("contextual", "shared"), ("contextual", "per_head"), ("bias", None), (None, None)]


# PyTorch's attention as backends of the op: SDPA everywhere; FlexAttention on CUDA
# (on the CPU it has no backward: forward only, test_flex_forward_on_the_cpu).
COMPOSITE = [pytest.param("cpu", "sdpa", shape, id=f"cpu-sdpa-{shape}") for shape in SHAPES] + [
    pytest.param("cuda", backend, shape, id=f"cuda-{backend}-{shape}", marks=pytest.mark.gpu)
    for backend in ("sdpa", "flex") for shape in SHAPES]


def _backend_params():
    """(device, backend, dtype, shape) for every backend this build implements; the
    Triton kernel runs fp16/bf16/fp32 (float64 is refused: test_triton_refuses_float64),
    so does FlexAttention on CUDA."""
    params = []
    for p in devices_backends_and_shapes(SHAPES, TRITON_CPU_SHAPES) + COMPOSITE:
        device, backend, shape = p.values
        if backend not in _IMPLEMENTED:
            continue  # see test_implemented_backends_follow_the_build
        for dtype in DTYPES:
            if backend in ("triton", "flex") and dtype == torch.float64:
                continue
            params.append(pytest.param(device, backend, dtype, shape, marks=p.marks,
                                       id=f"{p.id.rsplit('-', 1)[0]}-{dtype}-{shape}"))
    return params


def grid_side(n):
    side = int(round((n - 1) ** 0.5))
    return side if side * side == n - 1 else None


def make_inputs(shape, mode, layout, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    S, N, H, d = shape
    q, k, v = (torch.randn(S, N, H, d, generator=g, dtype=torch.float64) for _ in range(3))
    side = grid_side(N)
    if side:  # a real iRPE map: 1 cls + side x side patches
        ids = lomar_ops.irpe_bucket_ids(side, side)
    else:     # any (N, N) map is allowed: BEiT's index, or here a random one
        ids = torch.randint(0, 50, (N, N), generator=g, dtype=torch.int32)
    nb = 50
    rpe = None
    if mode == "contextual":
        shape_r = (nb, d) if layout == "shared" else (H, nb, d)
        rpe = 0.5 * torch.randn(*shape_r, generator=g, dtype=torch.float64)
    elif mode == "bias":
        rpe = torch.randn(H, nb, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype).to(device)
    return cast(q), cast(k), cast(v), cast(rpe), (ids.to(device) if mode else None)


def run(fn, q, k, v, rpe, mode, ids, grad):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    rpe_leaf = rpe.detach().requires_grad_(True) if rpe is not None else None
    out = fn(*leaves, rpe=rpe_leaf, rpe_mode=mode, bucket_ids=ids)
    grads = torch.autograd.grad(out, leaves + ([rpe_leaf] if rpe_leaf is not None else []), grad)
    return [out] + list(grads)


def reference(q, k, v, rpe=None, rpe_mode=None, bucket_ids=None):
    return window_attention_reference(q, k, v, rpe, rpe_mode if rpe is not None else None,
                                      bucket_ids)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("device,backend,dtype,shape", _backend_params())
def test_matches_reference(device, backend, dtype, shape, case):
    mode, layout = case
    q, k, v, rpe, ids = make_inputs(shape, mode, layout, dtype, device)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64).to(dtype).to(device)
    fn = lambda *a, **kw: lomar_ops.window_attention(*a, **kw, backend=backend)
    got = run(fn, q, k, v, rpe, mode, ids, grad)
    up = lambda t: None if t is None else t.double()
    want = run(reference, up(q), up(k), up(v), up(rpe), mode, ids, up(grad))
    names = ["out", "dq", "dk", "dv", "drpe"]
    if dtype in ABS_TOL:
        for name, a, b in zip(names, got, want):
            assert a.dtype == dtype
            torch.testing.assert_close(a.double(), b, atol=ABS_TOL[dtype], rtol=ABS_TOL[dtype],
                                       msg=lambda m: f"{name}: {m}")
        return
    lowp = run(reference, q, k, v, rpe, mode, ids, grad)
    for name, a, b, c in zip(names, got, want, lowp):
        assert a.dtype == dtype
        err = (a.double() - b).abs().max().item()
        base = (c.double() - b).abs().max().item()
        assert err <= FACTOR * base + FLOOR[dtype], (
            f"{name}: error {err:.3g} vs the torch reference's own {dtype} error {base:.3g}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("backend", ["cpu", "torch", "sdpa"])
def test_gradcheck_float64(backend, case):
    mode, layout = case
    q, k, v, rpe, ids = make_inputs((2, 5, 2, 4), mode, layout, torch.float64, "cpu")
    if ids is not None:
        ids = ids[:5, :5] % 50
    inputs = [t.requires_grad_(True) for t in (q, k, v)] + (
        [rpe.requires_grad_(True)] if rpe is not None else [])

    def fn(q, k, v, rpe=None):
        return lomar_ops.window_attention(q, k, v, rpe=rpe, rpe_mode=mode, bucket_ids=ids,
                                          backend=backend)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("mode", ["contextual", "bias"])
def test_table_gradient_is_bitwise_repeatable(mode):
    q, k, v, rpe, ids = make_inputs((40, 50, 3, 32), mode, "shared", torch.float32, "cpu")
    grad = torch.randn(40, 50, 3, 32)
    first = run(lambda *a, **kw: lomar_ops.window_attention(*a, **kw, backend="cpu"),
                q, k, v, rpe, mode, ids, grad)
    second = run(lambda *a, **kw: lomar_ops.window_attention(*a, **kw, backend="cpu"),
                 q, k, v, rpe, mode, ids, grad)
    # Run to run with the same thread count (what determinism promises). Across thread
    # counts the contextual table gradient may differ in the last bits: its per-group
    # GEMMs are BLAS calls, and BLAS picks other kernels inside and outside a parallel
    # region.
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("mode", ["contextual", "bias"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_triton_table_gradient_is_bitwise_repeatable(device, mode):
    # Several sequences, so d(rpe) sums several per-program partials.
    shape = (5, 17, 2, 32) if device == "cpu" else (300, 50, 12, 64)
    q, k, v, rpe, ids = make_inputs(shape, mode, "shared", torch.float32, device)
    grad = torch.randn(shape, device=device)
    fn = lambda *a, **kw: lomar_ops.window_attention(*a, **kw, backend="triton")
    first, second = (run(fn, q, k, v, rpe, mode, ids, grad) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("device,backend", [
    pytest.param("cpu", "cpu", id="cpu-cpu"), pytest.param("cpu", "torch", id="cpu-torch"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.gpu)])
def test_qkvpacked_reads_views(device, backend):
    shape = (2, 17, 3, 32) if backend == "triton" and device == "cpu" else (2, 50, 3, 32)
    q, k, v, rpe, ids = make_inputs(shape, "contextual", "shared", torch.float32, device)
    qkv = torch.stack([q, k, v], dim=2)  # (S, N, 3, H, d): q, k, v are strided views
    out = lomar_ops.window_attention_qkvpacked(qkv, rpe=rpe, bucket_ids=ids, backend=backend)
    torch.testing.assert_close(out, reference(q, k, v, rpe, "contextual", ids))


def test_default_is_plain_attention_with_default_scale():
    q, k, v, _, _ = make_inputs((2, 9, 2, 16), None, None, torch.float32, "cpu")
    out = lomar_ops.window_attention(q, k, v)
    want = torch.softmax(torch.einsum("snhd,smhd->shnm", q, k) / 4.0, -1)
    torch.testing.assert_close(out, torch.einsum("shnm,smhd->snhd", want, v))
    torch.testing.assert_close(lomar_ops.window_attention(q, k, v, scale=0.5),
                               reference(q * 2, k, v))


@pytest.mark.parametrize("name", list(COMPARISONS))
@pytest.mark.parametrize("mode", ["contextual", "bias", None])
def test_comparison_formulations_agree(name, mode):
    q, k, v, rpe, ids = make_inputs((2, 50, 3, 32), mode, "shared", torch.float32, "cpu")
    grad = torch.randn(2, 50, 3, 32)
    got = run(COMPARISONS[name], q, k, v, rpe, mode, ids, grad)
    want = run(reference, q, k, v, rpe, mode, ids, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_flex_forward_on_the_cpu(dtype, case):
    # FlexAttention runs uncompiled on the CPU, forward only: the score_mod's gather of
    # the iRPE term from q @ R^T is checked here; its gradients on a GPU (gpu tests).
    mode, layout = case
    shape = (3, 50, 3, 16)
    q, k, v, rpe, ids = make_inputs(shape, mode, layout, dtype, "cpu")
    got = lomar_ops.window_attention(q, k, v, rpe=rpe, rpe_mode=mode, bucket_ids=ids,
                                     backend="flex")
    up = lambda t: None if t is None else t.double()
    want = reference(up(q), up(k), up(v), up(rpe), mode, ids)
    own = reference(q, k, v, rpe, mode, ids).double()
    err, base = (float((t.double() - want).abs().max()) for t in (got, own))
    assert got.dtype == dtype and err <= FACTOR * base + FLOOR.get(dtype, 1e-12)


def test_flex_on_the_cpu_refuses_gradients_and_says_why():
    q, k, v, rpe, ids = make_inputs((1, 5, 1, 8), "contextual", "shared", torch.float32, "cpu")
    with pytest.raises(lomar_ops.BackendUnavailableError,
                       match="FlexAttention has no backward on the CPU"):
        lomar_ops.window_attention(q.requires_grad_(True), k, v, rpe=rpe, bucket_ids=ids,
                                   backend="flex")
    with torch.no_grad():  # no gradient wanted: runs
        lomar_ops.window_attention(q, k, v, rpe=rpe, bucket_ids=ids, backend="flex")


def test_opcheck_cpu_op():
    q, k, v, rpe, ids = make_inputs((2, 10, 2, 8), "contextual", "per_head", torch.float32, "cpu")
    args = [t.requires_grad_(True) for t in (q, k, v, rpe)]
    torch.library.opcheck(torch.ops.lomar_ops.window_attention_fwd.default,
                          (*args[:3], args[3], ids.int(), "contextual", 0.3))
    q, k, v, rpe, ids = make_inputs((2, 10, 2, 8), "bias", None, torch.float32, "cpu")
    torch.library.opcheck(torch.ops.lomar_ops.window_attention_fwd.default,
                          (q.requires_grad_(True), k, v, rpe.requires_grad_(True), ids.int(),
                           "bias", 0.3))


def test_opcheck_triton_ops():
    # Under the interpreter a traced graph cannot run kernels (they are launched
    # directly, not through wrap_triton), so compile-tracing checks run on a GPU only.
    from lomar_ops.triton_kernels.window_attention import (window_attention_bwd_triton,
                                                           window_attention_fwd_triton)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    utils = (None if device == "cuda"
             else ("test_schema", "test_autograd_registration", "test_faketensor"))
    for mode, layout in CASES:
        q, k, v, rpe, ids = make_inputs((2, 10, 2, 16), mode, layout, torch.float32, device)
        ids = None if ids is None else ids.int()
        name = mode or "none"
        leaves = [t.requires_grad_(True) for t in (q, k, v)]
        rpe = None if rpe is None else rpe.requires_grad_(True)
        kwargs = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(window_attention_fwd_triton, (*leaves, rpe, ids, name, 0.3),
                              **kwargs)
        _, lse = window_attention_fwd_triton(q, k, v, rpe, ids, name, 0.3)
        torch.library.opcheck(window_attention_bwd_triton,
                              (torch.randn_like(q), q.detach(), k.detach(), v.detach(), lse,
                               None if rpe is None else rpe.detach(), ids, name, 0.3), **kwargs)


def test_bucket_ids_are_checked_again_against_a_smaller_table_or_after_a_write():
    # A map that passed is not re-read (that would sync a GPU on every call) unless
    # the table is different or the map has been written to.
    q, k, v, rpe, ids = make_inputs((2, 50, 2, 16), "contextual", "shared", torch.float32, "cpu")
    call = lambda table: lomar_ops.window_attention(q, k, v, rpe=table, bucket_ids=ids,
                                                    backend="torch")
    call(rpe)
    assert int(ids.max()) >= 40
    with pytest.raises(ValueError, match=r"bucket_ids must lie in \[0, 40\).*got values in"):
        call(rpe[:40])
    call(rpe)
    ids[3, 7] = rpe.shape[0]
    with pytest.raises(ValueError, match=r"bucket_ids must lie in \[0, 50\).*got values in"):
        call(rpe)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_compiled_call_checks_bucket_ids(backend):
    # Eagerly the ids are checked before any work; under torch.compile their values
    # are unknown while tracing, so the check is an assert inside the graph. (On a
    # GPU it is a device-side assert, which would end the test session's CUDA
    # context: CPU only.)
    torch._dynamo.reset()
    q, k, v, rpe, ids = make_inputs((2, 50, 2, 16), "contextual", "shared", torch.float32, "cpu")
    compiled = torch.compile(lambda q, ids: lomar_ops.window_attention(
        q, k, v, rpe=rpe, bucket_ids=ids, backend=backend), fullgraph=True, dynamic=False)
    compiled(q, ids)
    bad = ids.clone()
    bad[3, 7] = rpe.shape[0]
    with pytest.raises(RuntimeError, match=r"bucket_ids must lie in \[0, 50\)"):
        compiled(q, bad)


@pytest.mark.parametrize("device,backend", [
    pytest.param("cpu", "cpu", id="cpu-cpu"), pytest.param("cpu", "torch", id="cpu-torch"),
    pytest.param("cpu", "sdpa", id="cpu-sdpa")] + [
    pytest.param("cuda", b, id=f"cuda-{b}", marks=pytest.mark.gpu)
    for b in ("cuda", "triton", "sdpa", "flex")])
def test_torch_compile_fullgraph(device, backend):
    # Triton's CPU interpreter cannot run under torch.compile: cuda-triton only.
    torch._dynamo.reset()
    q, k, v, rpe, ids = make_inputs((4, 50, 3, 32), "contextual", "shared", torch.float32, device)
    params = [t.requires_grad_(True) for t in (q, k, v, rpe)]

    def step(q, k, v, rpe):
        out = lomar_ops.window_attention(q, k, v, rpe=rpe, bucket_ids=ids, backend=backend)
        return out.square().mean()

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager = torch.autograd.grad(step(*params), params)
    got = torch.autograd.grad(compiled(*params), params)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def _builds_cuda_window_attention() -> bool:
    # csrc/sources.txt is the one source list the build reads.
    sources = (Path(__file__).resolve().parents[2] / "csrc" / "sources.txt").read_text().split()
    return lomar_ops._extension.HAS_CUDA_KERNELS and "csrc/cuda/window_attention.cu" in sources


def test_implemented_backends_follow_the_build():
    expected = {"cpu", "torch", "triton", "sdpa", "flex"} | (
        {"cuda"} if _builds_cuda_window_attention() else set())
    assert _IMPLEMENTED == expected
    assert lomar_ops.backends.resolve_backend(
        "window_attention", torch.device("cpu"), None, _IMPLEMENTED) == "cpu"


def test_triton_refuses_float64_and_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v, _, _ = make_inputs((1, 4, 1, 8), None, None, torch.float64, "cpu")
    with pytest.raises(lomar_ops.BackendUnavailableError,
                       match=r"backend='triton' is unavailable: the Triton kernel runs float16, "
                             r"bfloat16 and float32, not float64.*Available for window_attention "
                             r"on cpu: \['cpu', 'torch', 'sdpa', 'flex'\]"):
        lomar_ops.window_attention(q, k, v, backend="triton")
    # On CUDA tensors, where Triton is a default, the chooser passes over it for float64
    # (a GPU is pretended here; test_float64_on_cuda_runs_without_triton runs one).
    monkeypatch.setattr(lomar_ops.backends, "unavailable_reason", lambda backend, device: None)
    op = importlib.import_module("lomar_ops.ops.window_attention")
    cuda, implemented = torch.device("cuda"), frozenset({"triton", "torch"})
    resolve = lomar_ops.backends.resolve_backend
    assert resolve("window_attention", cuda, None, implemented) == "triton"
    assert resolve("window_attention", cuda, None, implemented,
                   op._unsupported_here(q, k, v, None, None)) == "torch"


def test_triton_refuses_wide_contextual_tables():
    q, k, v, _, _ = make_inputs((1, 4, 1, 8), None, None, torch.float32, "cpu")
    table = torch.zeros(200, 8)
    ids = torch.full((4, 4), 199, dtype=torch.int32)
    with pytest.raises(lomar_ops.BackendUnavailableError,
                       match="contextual tables of at most 128 buckets, got NB = 200"):
        lomar_ops.window_attention(q, k, v, rpe=table, bucket_ids=ids, backend="triton")


@pytest.mark.gpu
def test_float64_on_cuda_runs_without_triton():
    q, k, v, rpe, ids = make_inputs((2, 17, 2, 16), "contextual", "shared", torch.float64, "cuda")
    out = lomar_ops.window_attention(q, k, v, rpe=rpe, bucket_ids=ids)
    torch.testing.assert_close(out, reference(q, k, v, rpe, "contextual", ids))


# ---- bad input ------------------------------------------------------------------

def _bad_cases():
    q, k, v, rpe, ids = make_inputs((2, 5, 2, 4), "contextual", "shared", torch.float32, "cpu")
    return [
        (dict(q=q, k=k[:, :4], v=v), ValueError, r"k must have q's shape \(2, 5, 2, 4\)"),
        (dict(q=q, k=k.double(), v=v), TypeError, "k must have q's dtype"),
        (dict(q=q[0], k=k[0], v=v[0]), ValueError, r"q must be 4-D \(S, N, H, d\)"),
        (dict(q=q, k=k, v=v, rpe=rpe, bucket_ids=ids[:4, :4]), ValueError,
         r"bucket_ids must be \(N, N\) = \(5, 5\)"),
        (dict(q=q, k=k, v=v, rpe=rpe, bucket_ids=ids + 50), ValueError,
         r"bucket_ids must lie in \[0, 50\)"),
        (dict(q=q, k=k, v=v, rpe=rpe[:, :3]), ValueError, r"contextual rpe must be \(NB, d\)"),
        (dict(q=q, k=k, v=v, rpe=rpe), ValueError, "needs bucket_ids"),
        (dict(q=q, k=k, v=v, bucket_ids=ids), ValueError, "bucket_ids given without rpe"),
        (dict(q=q, k=k, v=v, rpe=rpe, rpe_mode="alibi", bucket_ids=ids), ValueError,
         "rpe_mode must be one of"),
        (dict(q=q, k=k, v=v, rpe=rpe, rpe_mode="bias", bucket_ids=ids), ValueError,
         r"bias rpe must be \(H, NB\) = \(2, NB\)"),
        (dict(q=q, k=k, v=v, rpe=rpe.double(), bucket_ids=ids), TypeError, "rpe must have q's dtype"),
        (dict(q=q, k=k, v=v, rpe=rpe, rpe_mode=None, bucket_ids=ids), ValueError,
         "rpe given with rpe_mode=None"),
        (dict(q=q, k=k, v=v, scale=float("nan")), ValueError, "scale must be a finite number"),
        (dict(q=q, k=k, v=v.to("meta")), ValueError, "v must be on q's device"),
    ]


@pytest.mark.parametrize("kwargs,exc,match", _bad_cases())
def test_rejects_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lomar_ops.window_attention(**kwargs)


# ---- autocast -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["contextual", "bias"])
def test_cpu_kernel_under_autocast_equals_it_outside(mode):
    # Inside autocast the kernel's own fp32 GEMMs must not be recast to bf16: the op
    # runs in its inputs' dtype (bf16 here, as a bf16 linear layer would give it).
    q, k, v, rpe, ids = make_inputs((3, 17, 2, 16), mode, "shared", torch.bfloat16, "cpu")
    q, k, v, rpe = (t.requires_grad_() for t in (q, k, v, rpe))
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    results = []
    for autocast in (False, True):
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = lomar_ops.window_attention(q, k, v, rpe=rpe, rpe_mode=mode, bucket_ids=ids,
                                             backend="cpu")
            results.append((out, *torch.autograd.grad(out, (q, k, v, rpe), grad)))
    for a, b in zip(*results):
        assert a.dtype == b.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, rtol=0, atol=0)
