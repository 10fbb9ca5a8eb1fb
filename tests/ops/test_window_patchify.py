"""window_patchify: every backend against the pure-PyTorch reference (run in fp64),
non-contiguous images, gradcheck, opcheck, torch.compile and argument errors."""

import pytest
import torch

import lomar_ops
from lomar_ops.reference import window_patchify_reference

from conftest import HAS_CUDA, devices_and_backends

# Tolerances per dtype against the fp64 reference on the same (rounded) inputs.
# The forward is a copy, exact in every dtype. The backward sums the gradients of
# the (up to n) overlapping windows of a pixel in fp32 (fp64 for double) and rounds
# once to the dtype, so its error is half an ulp of the dtype: the rtol is one ulp.
FORWARD_TOL = {dt: dict(atol=0.0, rtol=0.0) for dt in
               (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
BACKWARD_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1.2e-7 * 8),
    torch.float16: dict(atol=1e-3, rtol=2 ** -10),
    torch.bfloat16: dict(atol=1e-2, rtol=2 ** -7),
}
DTYPES = list(BACKWARD_TOL)

# (B, C, H, W, K, p, n): K from 1 to 14, n from 1 to 16, p in {8, 14, 16},
# non-square images and grids, C in {1, 3}, windows that fill the grid.
CASES = [
    (1, 1, 8, 8, 1, 8, 1),          # one patch, one window
    (2, 3, 112, 80, 5, 16, 3),      # non-square grid 7x5
    (1, 3, 56, 70, 4, 14, 16),      # p = 14, 16 windows on a 4x5 grid: heavy overlap
    (2, 1, 64, 48, 3, 8, 7),        # C = 1, p = 8
    (1, 3, 112, 112, 7, 16, 4),     # the LoMaR window on a 7x7 grid: all windows equal
    (1, 3, 224, 196, 14, 14, 2),    # K = 14
    (2, 3, 96, 160, 2, 16, 5),      # wide image
]
# Triton runs in the CPU interpreter here, which pays per program (one per patch):
# a representative subset (K = 1, p = 14 with overlap, C = 1, non-square).
TRITON_CASES = [CASES[0], CASES[2], CASES[3]]


def make_coords(B, grid_h, grid_w, n, K, device, dtype=torch.int64):
    g = torch.Generator().manual_seed(B * 1000 + grid_h * 100 + grid_w * 10 + n + K)
    coords = lomar_ops.sample_windows(B, grid_h, grid_w, n, K, generator=g)
    coords[0, 0] = torch.tensor([grid_h - K, grid_w - K])  # the last valid corner
    coords[-1, -1] = 0                                     # and the first
    return coords.to(dtype=dtype, device=device)


def make_inputs(case, dtype, device):
    B, C, H, W, K, p, n = case
    images = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype).to(device)
    return images, make_coords(B, H // p, W // p, n, K, device)


def _cases_for(device, backend):
    return TRITON_CASES if (device, backend) == ("cpu", "triton") else CASES


def _params(dtypes=DTYPES):
    return [pytest.param(device, backend, dtype, case, id=f"{device}-{backend}-{dtype}-{case}",
                         marks=p.marks)
            for p in devices_and_backends() for device, backend in [p.values]
            for dtype in dtypes for case in _cases_for(device, backend)]


def check_against_reference(images, coords, K, p, backend, dtype):
    images = images.detach().requires_grad_(True)
    out = lomar_ops.window_patchify(images, coords, K, p, backend=backend)
    B, C = images.shape[:2]
    assert out.dtype == dtype and out.is_contiguous()
    assert out.shape == (B, coords.shape[1], K * K, p * p * C)
    ref_images = images.detach().double().requires_grad_(True)
    ref = window_patchify_reference(ref_images, coords, K, p)
    torch.testing.assert_close(out.double(), ref, **FORWARD_TOL[dtype])

    grad = torch.randn(out.shape, dtype=torch.float64).to(dtype).to(out.device)
    (got,) = torch.autograd.grad(out, images, grad)
    (want,) = torch.autograd.grad(ref, ref_images, grad.double())
    assert got.dtype == dtype and got.shape == images.shape
    torch.testing.assert_close(got.double(), want, **BACKWARD_TOL[dtype])


@pytest.mark.parametrize("device,backend,dtype,case", _params())
def test_forward_and_backward_match_reference(device, backend, dtype, case):
    images, coords = make_inputs(case, dtype, device)
    check_against_reference(images, coords, case[4], case[5], backend, dtype)


def test_reference_matches_the_formula():
    # The layout, spelled out: patches in raster order within a window, pixels in
    # (row, column, channel) order within a patch.
    B, C, H, W, K, p, n = 2, 3, 48, 64, 2, 8, 3
    images = torch.randn(B, C, H, W)
    coords = make_coords(B, H // p, W // p, n, K, "cpu")
    out = window_patchify_reference(images, coords, K, p)
    for b in range(B):
        for w in range(n):
            row, col = coords[b, w].tolist()
            for r in range(K):
                for c in range(K):
                    y, x = (row + r) * p, (col + c) * p
                    patch = images[b, :, y:y + p, x:x + p].permute(1, 2, 0)  # (py, px, ch)
                    assert torch.equal(out[b, w, r * K + c], patch.reshape(-1))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_reshaped_output_is_the_patch_embedding_input(device, backend):
    # A stride-p convolution over a window crop = the linear map on the patchified window.
    B, C, H, W, K, p, n, D = 2, 3, 64, 48, 3, 8, 2, 5
    images = torch.randn(B, C, H, W, dtype=torch.float64, device=device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    weight = torch.randn(D, C, p, p, dtype=torch.float64, device=device)
    tokens = lomar_ops.window_patchify(images, coords, K, p, backend=backend) @ \
        weight.permute(0, 2, 3, 1).reshape(D, -1).T  # (B, n, K*K, D)
    for b in range(B):
        for w in range(n):
            row, col = coords[b, w].tolist()
            crop = images[b:b + 1, :, row * p:(row + K) * p, col * p:(col + K) * p]
            conv = torch.nn.functional.conv2d(crop, weight, stride=p)  # (1, D, K, K)
            torch.testing.assert_close(tokens[b, w], conv[0].flatten(1).T)


def _layouts(base_fn):
    """(name, images of shape (2, 3, 48, 64)) with various strides."""
    return {
        "channels_last": base_fn(2, 3, 48, 64).contiguous(memory_format=torch.channels_last),
        "row_slice": base_fn(2, 3, 96, 64)[:, :, ::2],              # stride 2 along H
        "column_slice": base_fn(2, 3, 48, 128)[..., 1::2],          # stride 2 along W, offset
        "crop": base_fn(2, 3, 80, 96)[:, :, 16:64, 8:72],           # storage offset
        "channel_slice": base_fn(2, 5, 48, 64)[:, 1:4],
        "hw_transposed": base_fn(2, 3, 64, 48).transpose(2, 3),
        "batch_expanded": base_fn(1, 3, 48, 64).expand(2, 3, 48, 64),
    }


LAYOUTS = list(_layouts(torch.randn))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_non_contiguous_images(device, backend, layout):
    images = _layouts(lambda *s: torch.randn(*s, device=device))[layout]
    assert not images.is_contiguous()
    K, p = 3, 16
    coords = make_coords(2, 3, 4, 3, K, device, dtype=torch.int32)
    check_against_reference(images, coords, K, p, backend, torch.float32)
    out = lomar_ops.window_patchify(images, coords, K, p, backend=backend)
    assert torch.equal(out, window_patchify_reference(images.contiguous(), coords, K, p))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_reads_only_the_windows(device, backend):
    # An image whose whole-image contiguous copy would need 2*3*2^24*64*4 B = 25 GiB:
    # only a kernel that reads through the strides (stride 0 along H here) runs.
    base = torch.randn(1, 3, 1, 64, device=device)
    images = base.expand(2, 3, 2 ** 24, 64)
    K, p = 2, 16
    coords = torch.tensor([[[2 ** 20 - K, 2], [5, 0]], [[0, 1], [2 ** 20 - K - 7, 2]]],
                          device=device)
    out = lomar_ops.window_patchify(images, coords, K, p, backend=backend)
    for b in range(2):
        for w in range(2):
            col = int(coords[b, w, 1])
            strip = base[0, :, 0, col * p:(col + K) * p]                      # (C, K*p)
            patch_row = strip.reshape(3, K, p).permute(1, 2, 0).reshape(K, 1, p * 3)
            want = patch_row.unsqueeze(0).expand(K, K, p, p * 3).reshape(K * K, -1)
            assert torch.equal(out[b, w], want)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64(device, backend):
    # Each gradcheck probe is a forward (two per image element): in the interpreter,
    # a tiny image and gradcheck's fast mode (random projections).
    interpreted = (device, backend) == ("cpu", "triton")
    case = (1, 2, 16, 16, 1, 8, 3) if interpreted else (2, 2, 16, 24, 2, 8, 3)
    images, coords = make_inputs(case, torch.float64, device)
    images.requires_grad_(True)
    K, p = case[4], case[5]
    assert torch.autograd.gradcheck(
        lambda x: lomar_ops.window_patchify(x, coords, K, p, backend=backend), (images,),
        fast_mode=interpreted)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64_channels_last(device, backend):
    case = (1, 3, 16, 16, 1, 8, 2)
    images, coords = make_inputs(case, torch.float64, device)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: lomar_ops.window_patchify(x, coords, 1, 8, backend=backend), (images,),
        fast_mode=True)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_backward_is_deterministic(device, backend):
    case = (2, 3, 64, 64, 3, 16, 8) if backend != "triton" else (1, 3, 32, 48, 2, 16, 6)
    images, coords = make_inputs(case, torch.float32, device)
    images.requires_grad_(True)
    out = lomar_ops.window_patchify(images, coords, case[4], case[5], backend=backend)
    grad = torch.randn_like(out)
    grads = [torch.autograd.grad(out, images, grad, retain_graph=True)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_backward_is_zero_outside_the_windows_and_sums_overlaps():
    images = torch.randn(1, 1, 32, 32, requires_grad=True)
    coords = torch.tensor([[[0, 0], [1, 1], [0, 0]]])  # window 0 twice, window 1 overlaps
    for backend in ("cpu", "torch"):
        out = lomar_ops.window_patchify(images, coords, 1, 16, backend=backend)
        (grad,) = torch.autograd.grad(out, images, torch.ones_like(out))
        want = torch.zeros(1, 1, 32, 32)
        want[..., :16, :16] = 2
        want[..., 16:, 16:] = 1
        assert torch.equal(grad, want)


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_empty_batch_and_no_windows(device, backend):
    for B, n in ((0, 3), (2, 0)):
        images = torch.randn(B, 3, 32, 48, device=device, requires_grad=True)
        coords = torch.zeros(B, n, 2, dtype=torch.int64, device=device)
        out = lomar_ops.window_patchify(images, coords, 2, 8, backend=backend)
        assert out.shape == (B, n, 4, 192)
        (grad,) = torch.autograd.grad(out.sum(), images)
        assert grad.shape == images.shape and not grad.any()


def test_int32_and_int64_coords_agree():
    images, coords = make_inputs(CASES[1], torch.float32, "cpu")
    for backend in ("cpu", "torch"):
        assert torch.equal(lomar_ops.window_patchify(images, coords, 5, 16, backend=backend),
                           lomar_ops.window_patchify(images, coords.int(), 5, 16, backend=backend))


def test_opcheck_cpu_op():
    images, coords = make_inputs((2, 3, 32, 48, 2, 8, 3), torch.float32, "cpu")
    coords = coords.int()
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify.default,
                          (images.requires_grad_(True), coords, 2, 8))
    cl = images.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify.default, (cl, coords, 2, 8))
    grad = torch.randn(2, 3, 4, 8 * 8 * 3)
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify_backward.default,
                          (grad, coords, 2, 8, 32, 48))


@pytest.mark.gpu
def test_opcheck_cuda_and_triton_ops():
    images, coords = make_inputs((2, 3, 32, 48, 2, 8, 3), torch.float32, "cuda")
    coords = coords.int()
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify.default,
                          (images.requires_grad_(True), coords, 2, 8))
    grad = torch.randn(2, 3, 4, 8 * 8 * 3, device="cuda")
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify_backward.default,
                          (grad, coords, 2, 8, 32, 48))
    from lomar_ops.triton_kernels.window_patchify import window_patchify_triton
    torch.library.opcheck(window_patchify_triton, (images, coords, 2, 8))


def _compile_devices_and_backends():
    # Triton's CPU interpreter cannot run under torch.compile: on CPU only the C++
    # and torch backends compile; on a GPU all three do.
    params = [p for p in devices_and_backends() if p.values != ("cpu", "triton")]
    return params + [pytest.param("cpu", None, id="cpu-default")]


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph(device, backend):
    # The front of a LoMaR step: patchify -> patch-embedding linear map -> a loss;
    # images carry a gradient too, so that the backward op is traced as well.
    torch._dynamo.reset()
    B, C, H, W, K, p, n, D = 2, 3, 64, 80, 3, 16, 4, 8
    images, coords = make_inputs((B, C, H, W, K, p, n), torch.float32, device)
    images = images.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    weight = torch.randn(D, p * p * C, device=device, requires_grad=True)

    def step(x, xy, w):
        tokens = lomar_ops.window_patchify(x, xy, K, p, backend=backend) @ w.T
        return tokens.tanh().square().mean()

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    eager_loss = step(images, coords, weight)
    eager_grads = torch.autograd.grad(eager_loss, (images, weight))
    loss = compiled(images, coords, weight)
    grads = torch.autograd.grad(loss, (images, weight))
    torch.testing.assert_close(loss, eager_loss)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)


# ---- the input pipeline's pixel transform: uint8 in, normalised patches out ----

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# One rounding to the output dtype of the same float32 (float64) formula: the C++ and
# torch backends agree to the bit; Triton may round that last step differently (its
# CPU interpreter truncates float32 -> bfloat16; GPUs may divide to within 2 ulp), so
# the tolerance is one ulp of the output dtype (two of float32).
TRANSFORM_TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-6, rtol=2.4e-7),
    torch.float16: dict(atol=1e-3, rtol=2 ** -10),
    torch.bfloat16: dict(atol=2 ** -7, rtol=2 ** -7),
}


def _transform_params():
    return [pytest.param(device, backend, out_dtype, case, id=f"{device}-{backend}-{out_dtype}-{case}",
                         marks=p.marks)
            for p in devices_and_backends() for device, backend in [p.values]
            for out_dtype in TRANSFORM_TOL for case in _cases_for(device, backend)]


@pytest.mark.parametrize("device,backend,out_dtype,case", _transform_params())
def test_uint8_images_normalised_in_the_gather(device, backend, out_dtype, case):
    B, C, H, W, K, p, n = case
    g = torch.Generator().manual_seed(sum(case))
    images = torch.randint(0, 256, (B, C, H, W), generator=g, dtype=torch.uint8).to(device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    mean = torch.rand(C, generator=g, dtype=torch.float64)
    std = 0.1 + torch.rand(C, generator=g, dtype=torch.float64)
    out = lomar_ops.window_patchify(images, coords, K, p, mean=mean, std=std, out_dtype=out_dtype,
                                    backend=backend)
    assert out.dtype == out_dtype and out.shape == (B, n, K * K, p * p * C)
    want = window_patchify_reference(images.cpu(), coords.cpu(), K, p, mean, std, out_dtype)
    torch.testing.assert_close(out.cpu(), want, **TRANSFORM_TOL[out_dtype])
    # The reference is the formula: (v / 255 - mean) / std of the copied pixels.
    pixels = window_patchify_reference(images.cpu().double(), coords.cpu(), K, p)
    formula = (pixels.view(B, n, K * K, p * p, C) / 255 - mean) / std
    torch.testing.assert_close(want.double(), formula.view_as(pixels),
                               **TRANSFORM_TOL[out_dtype])


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_uint8_defaults_and_imagenet_values(device, backend):
    case = CASES[1] if backend != "triton" else CASES[0]
    B, C, H, W, K, p, n = case
    images = torch.randint(0, 256, (B, C, H, W), dtype=torch.uint8, device=device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    plain = lomar_ops.window_patchify(images, coords, K, p, backend=backend)  # v / 255, float32
    copy = window_patchify_reference(images, coords, K, p, out_dtype=torch.float64)
    assert plain.dtype == torch.float32
    torch.testing.assert_close(plain.double(), copy, **TRANSFORM_TOL[torch.float32])
    if C == 3:
        out = lomar_ops.window_patchify(images, coords, K, p, backend=backend, **IMAGENET)
        lists = lomar_ops.window_patchify(images, coords, K, p, backend=backend,
                                          mean=torch.tensor(IMAGENET["mean"], device=device),
                                          std=torch.tensor(IMAGENET["std"], device=device))
        assert torch.equal(out, lists)  # float32 tensors and Python floats: one meaning


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_float_images_with_mean_std_and_out_dtype(device, backend):
    case = CASES[3] if backend != "triton" else CASES[0]
    B, C, H, W, K, p, n = case
    images, coords = make_inputs(case, torch.float32, device)
    mean, std = torch.randn(C, dtype=torch.float64), 0.5 + torch.rand(C, dtype=torch.float64)
    images.requires_grad_(True)
    out = lomar_ops.window_patchify(images, coords, K, p, mean=mean, std=std,
                                    out_dtype=torch.bfloat16, backend=backend)
    ref_images = images.detach().double().requires_grad_(True)
    ref = window_patchify_reference(ref_images, coords, K, p, mean, std)
    torch.testing.assert_close(out.double(), ref, **TRANSFORM_TOL[torch.bfloat16])
    grad = torch.randn(out.shape, dtype=torch.float64).to(torch.bfloat16).to(device)
    (got,) = torch.autograd.grad(out, images, grad)
    (want,) = torch.autograd.grad(ref, ref_images, grad.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-6)  # fp32 sums, / std
    # out_dtype only: a rounding of the copy.
    half = lomar_ops.window_patchify(images.detach(), coords, K, p, out_dtype=torch.float16,
                                     backend=backend)
    assert torch.equal(half, window_patchify_reference(images.detach(), coords, K, p)
                       .to(torch.float16))


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_gradcheck_float64_normalised(device, backend):
    interpreted = (device, backend) == ("cpu", "triton")
    case = (1, 2, 16, 16, 1, 8, 3) if interpreted else (2, 2, 16, 24, 2, 8, 3)
    images, coords = make_inputs(case, torch.float64, device)
    mean, std = torch.randn(2, dtype=torch.float64), 0.5 + torch.rand(2, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: lomar_ops.window_patchify(x, coords, case[4], case[5], mean=mean, std=std,
                                            backend=backend),
        (images.requires_grad_(True),), fast_mode=interpreted)


def test_opcheck_cpu_op_with_the_transform():
    images = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    coords = make_coords(2, 4, 6, 3, 2, "cpu").int()
    mean = torch.tensor(IMAGENET["mean"], dtype=torch.float64)
    std = torch.tensor(IMAGENET["std"], dtype=torch.float64)
    op = torch.ops.lomar_ops.window_patchify.default
    torch.library.opcheck(op, (images, coords, 2, 8, mean, std, torch.bfloat16))
    torch.library.opcheck(op, (images, coords, 2, 8, None, None, None))
    floats = torch.randn(2, 3, 32, 48, requires_grad=True)
    torch.library.opcheck(op, (floats, coords, 2, 8, mean, std, torch.float64))


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph_uint8(device, backend):
    torch._dynamo.reset()
    B, C, H, W, K, p, n = 2, 3, 64, 80, 3, 16, 4
    images = torch.randint(0, 256, (B, C, H, W), dtype=torch.uint8, device=device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    mean = torch.tensor(IMAGENET["mean"], dtype=torch.float64, device=device)
    std = torch.tensor(IMAGENET["std"], dtype=torch.float64, device=device)

    def step(x, xy):
        return lomar_ops.window_patchify(x, xy, K, p, mean=mean, std=std,
                                         out_dtype=torch.bfloat16, backend=backend)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(images, coords), step(images, coords))


# ---- 16-bit images: uint16 in, value / 65535, normalised -------------------------

def random_uint16(shape, generator, device="cpu"):
    """Random uint16 over the whole 0..65535 range. Made through an int16 view (torch has
    few uint16 kernels, fewer in older releases), with 0, 65535 and the int16 sign
    boundary 32767/32768 (where a signed read goes wrong) among the values."""
    values = torch.randint(0, 65536, shape, generator=generator, dtype=torch.int32)
    flat = values.view(-1)
    flat[:4] = torch.tensor([0, 65535, 32767, 32768])[:flat.numel()]
    bits = torch.where(values > 32767, values - 65536, values).to(torch.int16)
    return bits.to(device).view(torch.uint16)


def uint16_values(images):
    """The values of a uint16 tensor as int32 (exactly), on the CPU."""
    return images.cpu().view(torch.int16).to(torch.int32) & 0xFFFF


# (B, C, H, W, K, p, n): C in {1, 3, 6}, odd patch sizes and image sides, overlaps.
UINT16_CASES = [
    (2, 1, 40, 56, 3, 8, 5),
    (1, 3, 70, 42, 2, 14, 4),
    (2, 6, 45, 35, 3, 5, 3),
]
UINT16_TRITON_CASES = [UINT16_CASES[0], UINT16_CASES[2]]


def _uint16_params():
    params = []
    for p in devices_and_backends():
        device, backend = p.values
        chosen = UINT16_TRITON_CASES if (device, backend) == ("cpu", "triton") else UINT16_CASES
        params += [pytest.param(device, backend, out_dtype, case, marks=p.marks,
                                id=f"{device}-{backend}-{out_dtype}-{case}")
                   for out_dtype in (torch.float32, torch.bfloat16, torch.float64)
                   for case in chosen]
    return params


@pytest.mark.parametrize("device,backend,out_dtype,case", _uint16_params())
def test_uint16_images_normalised_in_the_gather(device, backend, out_dtype, case):
    B, C, H, W, K, p, n = case
    g = torch.Generator().manual_seed(sum(case) + 16)
    images = random_uint16((B, C, H, W), g, device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    mean = torch.rand(C, generator=g, dtype=torch.float64)
    std = 0.05 + torch.rand(C, generator=g, dtype=torch.float64)
    out = lomar_ops.window_patchify(images, coords, K, p, mean=mean, std=std,
                                    out_dtype=out_dtype, backend=backend)
    assert out.dtype == out_dtype and out.shape == (B, n, K * K, p * p * C)
    assert not out.requires_grad
    want = window_patchify_reference(images.cpu(), coords.cpu(), K, p, mean, std, out_dtype)
    if device == "cpu" and backend in ("cpu", "torch"):  # the same float32 (float64) operations
        assert torch.equal(out, want)
    else:
        torch.testing.assert_close(out.cpu(), want, **TRANSFORM_TOL[out_dtype])
    # The reference is the formula: (v / 65535 - mean) / std of the copied values.
    values = uint16_values(images).double()
    pixels = window_patchify_reference(values, coords.cpu(), K, p)
    formula = (pixels.view(B, n, K * K, p * p, C) / 65535 - mean) / std
    torch.testing.assert_close(want.double(), formula.view_as(pixels), **TRANSFORM_TOL[out_dtype])
    # Without mean/std: the default output is float32 value / 65535, 0 and 65535 at the
    # ends of [0, 1] exactly.
    plain = lomar_ops.window_patchify(images, coords, K, p, backend=backend)
    assert plain.dtype == torch.float32
    scaled = window_patchify_reference(values.float(), coords.cpu(), K, p) / 65535
    torch.testing.assert_close(plain.cpu(), scaled, **TRANSFORM_TOL[torch.float32])


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_uint16_extremes_and_sign_boundary(device, backend):
    # 0, 32767, 32768, 65535 in every channel of a one-patch image: a kernel that reads
    # the samples as int16, or as bytes, gives other values.
    values = torch.tensor([0, 32767, 32768, 65535, 1, 65534, 255, 256], dtype=torch.int32)
    pattern = values.repeat(8)[:64].view(8, 8)
    ints = torch.stack([pattern, pattern.flip(1), pattern.T])[None]   # (1, 3, 8, 8)
    images = torch.where(ints > 32767, ints - 65536, ints).to(torch.int16).to(device)         .view(torch.uint16)
    coords = torch.zeros(1, 1, 2, dtype=torch.int64, device=device)
    out = lomar_ops.window_patchify(images, coords, 1, 8, out_dtype=torch.float64,
                                    backend=backend)
    want = (ints[0].permute(1, 2, 0).reshape(-1).double() / 65535).view(1, 1, 1, -1)
    torch.testing.assert_close(out.cpu(), want, **TRANSFORM_TOL[torch.float64])
    assert out.min() == 0 and out.max() == 1


@pytest.mark.parametrize("device,backend", devices_and_backends())
def test_uint16_non_contiguous_images(device, backend):
    g = torch.Generator().manual_seed(3)
    K, p = 2, 8
    base = random_uint16((2, 6, 64, 80), g, device)
    layouts = {
        "channels_last": random_uint16((2, 3, 32, 48), g).contiguous(
            memory_format=torch.channels_last).to(device),
        "channel_and_column_slice": base[:, 1:4, :32, 1::2][..., :32],
        "crop": base[:, :, 16:48, 8:56],
    }
    for name, images in layouts.items():
        assert not images.is_contiguous(), name
        B, C, H, W = images.shape
        coords = make_coords(B, H // p, W // p, 3, K, device)
        mean = tuple(0.1 * (c + 1) for c in range(C))
        std = tuple(0.2 + 0.05 * c for c in range(C))
        out = lomar_ops.window_patchify(images, coords, K, p, mean=mean, std=std,
                                        backend=backend)
        dense = torch.where(uint16_values(images) > 32767, uint16_values(images) - 65536,
                            uint16_values(images)).to(torch.int16).view(torch.uint16)
        want = window_patchify_reference(dense, coords.cpu(), K, p, torch.tensor(mean),
                                         torch.tensor(std))
        torch.testing.assert_close(out.cpu(), want, **TRANSFORM_TOL[torch.float32], msg=name)


def test_opcheck_cpu_op_uint16():
    g = torch.Generator().manual_seed(5)
    images = random_uint16((2, 6, 24, 40), g)
    coords = make_coords(2, 3, 5, 3, 2, "cpu").int()
    mean = torch.rand(6, generator=g, dtype=torch.float64)
    std = 0.1 + torch.rand(6, generator=g, dtype=torch.float64)
    op = torch.ops.lomar_ops.window_patchify.default
    torch.library.opcheck(op, (images, coords, 2, 8, mean, std, torch.bfloat16))
    torch.library.opcheck(op, (images, coords, 2, 8, None, None, None))


@pytest.mark.gpu
def test_opcheck_cuda_and_triton_ops_uint16():
    g = torch.Generator().manual_seed(5)
    images = random_uint16((2, 3, 24, 40), g, "cuda")
    coords = make_coords(2, 3, 5, 3, 2, "cuda").int()
    mean = torch.rand(3, generator=g, dtype=torch.float64).cuda()
    std = (0.1 + torch.rand(3, generator=g, dtype=torch.float64)).cuda()
    torch.library.opcheck(torch.ops.lomar_ops.window_patchify.default,
                          (images, coords, 2, 8, mean, std, torch.bfloat16))
    from lomar_ops.triton_kernels.window_patchify import window_patchify_triton
    torch.library.opcheck(window_patchify_triton, (images, coords, 2, 8, mean, std, None))


@pytest.mark.parametrize("device,backend", _compile_devices_and_backends())
def test_torch_compile_fullgraph_uint16(device, backend):
    torch._dynamo.reset()
    B, C, H, W, K, p, n = 2, 6, 48, 40, 2, 8, 3
    images = random_uint16((B, C, H, W), torch.Generator().manual_seed(6), device)
    coords = make_coords(B, H // p, W // p, n, K, device)
    mean = torch.linspace(0.1, 0.6, C, dtype=torch.float64, device=device)
    std = torch.linspace(0.2, 0.3, C, dtype=torch.float64, device=device)

    def step(x, xy):
        return lomar_ops.window_patchify(x, xy, K, p, mean=mean, std=std,
                                         out_dtype=torch.bfloat16, backend=backend)

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(images, coords), step(images, coords))


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    images = torch.randn(2, 3, 32, 48)
    coords = torch.zeros(2, 3, 2, dtype=torch.int64)
    call = lomar_ops.window_patchify
    cases = [
        ((images.numpy(), coords, 2, 8), TypeError, "images must be a torch.Tensor"),
        ((images.int(), coords, 2, 8), TypeError,
         r"images must have dtype in \(float16, bfloat16, float32, float64, uint8, uint16\)"),
        ((images[0], coords, 2, 8), ValueError, r"images must be 4-D \(B, C, H, W\)"),
        ((images, coords.float(), 2, 8), TypeError, r"coords must have dtype in \(int32, int64\)"),
        ((images, coords[0], 2, 8), ValueError, r"coords must be 3-D \(B, n, 2\)"),
        ((images, coords[:1], 2, 8), ValueError, r"coords must be \(B, n, 2\) = \(2, n, 2\)"),
        ((images, torch.zeros(2, 3, 3, dtype=torch.int64), 2, 8), ValueError,
         r"coords must be \(B, n, 2\)"),
        ((images, coords.to("meta"), 2, 8), ValueError, "all tensors must be on one device"),
        ((images, coords, 2.0, 8), TypeError, "window_size must be an int"),
        ((images, coords, 0, 8), ValueError, "window_size must be >= 1, got 0"),
        ((images, coords, 2, True), TypeError, "patch_size must be an int"),
        ((images, coords, 2, 0), ValueError, "patch_size must be >= 1, got 0"),
        ((images, coords, 2, 10), ValueError,
         r"images height and width \(H, W\) = \(32, 48\) must be multiples of patch_size 10"),
        ((images, coords, 5, 8), ValueError,
         r"window_size 5 does not fit the patch grid \(H/p, W/p\) = \(4, 6\)"),
        ((images, coords + torch.tensor([3, 0]), 2, 8), ValueError,
         r"coords rows \(top row of each window\) must lie in \[0, 2\] .*got 3"),
        ((images, coords - torch.tensor([1, 0]), 2, 8), ValueError,
         r"coords rows .* must lie in \[0, 2\] .*got -1"),
        ((images, coords + torch.tensor([0, 5]), 2, 8), ValueError,
         r"coords columns \(left column of each window\) must lie in \[0, 4\] .*got 5"),
        ((images, coords - torch.tensor([0, 2]), 2, 8), ValueError,
         r"coords columns .* must lie in \[0, 4\] .*got -2"),
    ]
    for args, exc, match in cases:
        for backend in ("cpu", "torch"):
            with pytest.raises(exc, match=match):
                call(*args, backend=backend)
    transform_cases = [
        (dict(mean=(0.5, 0.5, 0.5)), ValueError, "mean and std go together"),
        (dict(std=(0.5, 0.5, 0.5)), ValueError, "mean and std go together"),
        (dict(mean=(0.5, 0.5), std=(1, 1, 1)), ValueError,
         r"mean must have one value per channel, shape \(3,\), got shape \(2,\)"),
        (dict(mean=(0, 0, 0), std=(1, 0, 1)), ValueError, r"std must be > 0 in every channel"),
        (dict(mean=torch.zeros(3, dtype=torch.int64), std=(1, 1, 1)), TypeError,
         "mean must be a float tensor or a sequence of floats"),
        (dict(mean="abc", std=(1, 1, 1)), TypeError, "mean must be a float tensor"),
        (dict(out_dtype=torch.int32), TypeError, "out_dtype must be None or one of"),
    ]
    for kwargs, exc, match in transform_cases:
        for backend in ("cpu", "torch"):
            with pytest.raises(exc, match=match):
                call(images.to(torch.uint8), coords, 2, 8, backend=backend, **kwargs)


def test_rejects_unknown_and_unavailable_backends(monkeypatch):
    images = torch.randn(1, 3, 16, 16)
    coords = torch.zeros(1, 1, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        lomar_ops.window_patchify(images, coords, 1, 8, backend="gpu")
    with pytest.raises(lomar_ops.BackendUnavailableError,
                       match=r"window_patchify: backend='cuda' is unavailable"):
        lomar_ops.window_patchify(images, coords, 1, 8, backend="cuda")


def test_cpp_op_checks_guard_direct_calls():
    images = torch.randn(1, 3, 32, 32)
    coords = torch.zeros(1, 2, 2, dtype=torch.int32)
    op = torch.ops.lomar_ops.window_patchify
    with pytest.raises(RuntimeError, match=r"coords rows .* must lie in \[0, 2\]"):
        op(images, coords + 3, 2, 8)
    with pytest.raises(RuntimeError, match=r"coords columns .* must lie in \[0, 2\]"):
        op(images, coords - torch.tensor([0, 1], dtype=torch.int32), 2, 8)
    with pytest.raises(RuntimeError, match="coords must be int32"):
        op(images, coords.long(), 2, 8)
    with pytest.raises(RuntimeError, match="must be a multiple of patch_size 5"):
        op(images, coords, 2, 5)
    with pytest.raises(RuntimeError, match="window_size 5 does not fit the patch grid"):
        op(images, coords, 5, 8)
    with pytest.raises(RuntimeError, match=r"grad_out must be \(B, n, K\*K, p\*p\*C\)"):
        torch.ops.lomar_ops.window_patchify_backward(torch.randn(1, 2, 3, 192), coords, 2, 8,
                                                     32, 32)


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only failure mode")
def test_cuda_backend_explains_missing_gpu():
    reason = lomar_ops.backends.unavailable_reason("cuda", "cuda")
    assert reason in ("no CUDA device is available",) or "built without CUDA" in reason
