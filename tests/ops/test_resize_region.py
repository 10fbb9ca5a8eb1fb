"""resize_region (rectangles of a bicubic antialiased resize, the window pipeline's
resampler): every backend against the PyTorch reference on random inputs (to the bit,
fractional boxes included, uint8, uint16 and float32, any channel count), uint8 against
torchvision's resize of the whole crop (to the bit: torch's AVX2 uint8 path is Pillow's
fixed-point algorithm, which the op reproduces; one grey level allowed where torch has
no AVX2 and resizes in float), uint16 within 1.25 units of the exact resize, float32
against torchvision's and Pillow's float resizes, opcheck of the C++ op, and the
argument and backend errors.

The op has two backends, "cpu" (the C++ kernel) and "torch" (the reference); it has
no CUDA or Triton kernel (it runs in the data loader's CPU workers)."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops
from lomar_ops.reference import resize_region_reference, resize_regions_reference

# torch resizes uint8 in fixed point (Pillow's algorithm) only with AVX2.
EXACT = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
TOL = 0 if EXACT else 1

# (device, backend): the C++ kernel on CPU tensors, the reference on both devices.
DEVICE_BACKENDS = [pytest.param("cpu", "cpu", id="cpu-cpu"),
                   pytest.param("cpu", "torch", id="cpu-torch"),
                   pytest.param("cuda", "torch", id="cuda-torch", marks=pytest.mark.gpu)]
BACKENDS = [pytest.param("cpu", id="cpu"), pytest.param("torch", id="torch")]


def _image(h, w, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth structure plus noise: both the filter's lobes and its rounding matter.
    base = torch.rand(c, h // 4 + 2, w // 4 + 2, generator=g) * 255
    smooth = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
    noisy = smooth + 40 * torch.randn(c, h, w, generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)  # (C, H, W)


def _hwc(chw):
    return chw.permute(1, 2, 0).contiguous()


def _torchvision(chw, box, size):
    top, left, height, width = box
    return v2.functional.resized_crop(chw, top, left, height, width, list(size),
                                      InterpolationMode.BICUBIC, antialias=True)


def _random_case(g):
    """A random image, box (fractional half the time), output size and region."""
    H, W = (int(torch.randint(1, 90, (), generator=g)) for _ in range(2))
    C = int(torch.randint(1, 5, (), generator=g))
    image = _hwc(_image(H, W, C, seed=int(torch.randint(0, 1 << 30, (), generator=g))))
    if torch.rand((), generator=g) < 0.5:
        height, width = (float(torch.randint(1, n + 1, (), generator=g)) for n in (H, W))
        top = float(torch.randint(0, H - int(height) + 1, (), generator=g))
        left = float(torch.randint(0, W - int(width) + 1, (), generator=g))
    else:  # a crop of an image decoded at reduced scale: fractional box
        height, width = (float(n * (0.05 + 0.95 * torch.rand((), generator=g))) for n in (H, W))
        top = float((H - height) * torch.rand((), generator=g))
        left = float((W - width) * torch.rand((), generator=g))
    size = tuple(int(torch.randint(1, 130, (), generator=g)) for _ in range(2))
    rows, cols = (int(torch.randint(1, n + 1, (), generator=g)) for n in size)
    y0 = int(torch.randint(0, size[0] - rows + 1, (), generator=g))
    x0 = int(torch.randint(0, size[1] - cols + 1, (), generator=g))
    return image, (top, left, height, width), size, (y0, x0, rows, cols)


@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_random_inputs_match_the_reference(device, backend):
    g = torch.Generator().manual_seed(1)
    for _ in range(25):
        image, box, size, region = _random_case(g)
        got = lomar_ops.resize_region(image.to(device), box, size, region, backend=backend)
        assert got.dtype == torch.uint8 and got.device.type == device
        assert got.shape == (image.shape[2], region[2], region[3])
        assert torch.equal(got.cpu(), resize_region_reference(image, box, size, region)), \
            (tuple(image.shape), box, size, region)


# (H, W, box, size): down- and upscaling, mixed axes, odd sizes, one-pixel boxes,
# boxes on the image border, a 1:1 axis, and a heavy (13x) downscale.
CASES = [
    ((120, 160), (10, 20, 100, 120), (64, 64)),
    ((120, 160), (0, 0, 120, 160), (224, 224)),
    ((97, 131), (3, 7, 90, 41), (112, 160)),
    ((64, 64), (31, 17, 1, 1), (16, 16)),
    ((64, 80), (0, 5, 64, 75), (64, 37)),
    ((50, 60), (49, 0, 1, 60), (8, 60)),
    ((300, 320), (12, 9, 287, 301), (22, 23)),
    ((33, 45), (0, 0, 33, 45), (33, 45)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,box,size", CASES)
def test_regions_equal_the_whole_resize(shape, box, size, backend):
    chw = _image(*shape)
    hwc = _hwc(chw)
    full = _torchvision(chw, box, size)
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(6):
        rows = int(torch.randint(1, size[0] + 1, (), generator=g))
        cols = int(torch.randint(1, size[1] + 1, (), generator=g))
        y0 = int(torch.randint(0, size[0] - rows + 1, (), generator=g))
        x0 = int(torch.randint(0, size[1] - cols + 1, (), generator=g))
        got = lomar_ops.resize_region(hwc, box, size, (y0, x0, rows, cols), backend=backend)
        assert got.shape == (3, rows, cols) and got.dtype == torch.uint8
        want = full[:, y0:y0 + rows, x0:x0 + cols]
        assert (got.int() - want.int()).abs().max() <= TOL
    whole = lomar_ops.resize_region(hwc, box, size, (0, 0, *size), backend=backend)
    assert (whole.int() - full.int()).abs().max() <= TOL


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_matches_the_reference_for_every_channel_count(channels):
    hwc = _hwc(_image(40, 52, channels, seed=channels))
    for box, size, region in [((2, 3, 30, 40), (64, 48), (5, 7, 30, 20)),
                              ((0, 0, 40, 52), (13, 17), (0, 0, 13, 17))]:
        assert torch.equal(lomar_ops.resize_region(hwc, box, size, region, backend="cpu"),
                           resize_region_reference(hwc, box, size, region))


def test_fractional_boxes_match_the_reference():
    # A crop of a JPEG decoded at reduced scale: the box is in the decoded pixels.
    hwc = _hwc(_image(60, 70))
    for box in [(2.5, 3.25, 40.75, 55.5), (0.125, 0.0, 59.875, 69.5), (10.5, 10.5, 3.5, 2.25)]:
        for size, region in [((32, 32), (4, 5, 20, 21)), ((96, 80), (50, 10, 40, 60))]:
            got = lomar_ops.resize_region(hwc, box, size, region, backend="cpu")
            assert torch.equal(got, resize_region_reference(hwc, box, size, region))


def test_non_contiguous_image():
    chw = _image(50, 70)
    hwc = chw.permute(1, 2, 0)  # the same pixels, (H, W, C) view of a (C, H, W) tensor
    for backend in ("cpu", "torch"):
        got = lomar_ops.resize_region(hwc, (5, 6, 40, 60), (30, 90), (3, 4, 20, 50),
                                      backend=backend)
        assert torch.equal(got, resize_region_reference(_hwc(chw), (5, 6, 40, 60), (30, 90),
                                                        (3, 4, 20, 50)))


def test_reference_equals_torchvision():
    chw = _image(50, 70)
    full = _torchvision(chw, (5, 6, 40, 60), (30, 90))
    ref = resize_region_reference(_hwc(chw), (5, 6, 40, 60), (30, 90), (0, 0, 30, 90))
    assert (ref.int() - full.int()).abs().max() <= TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_several_regions_at_once_equal_one_at_a_time(backend):
    hwc = _hwc(_image(90, 70))
    box, size = (3, 4, 80, 60), (256, 200)
    regions = [(0, 0, 40, 48), (216, 152, 40, 48), (100, 77, 40, 48)]
    many = lomar_ops.resize_regions(hwc, box, size, regions, backend=backend)
    assert many.shape == (3, 3, 40, 48)
    assert torch.equal(many, resize_regions_reference(hwc, box, size, regions))
    for got, region in zip(many, regions):
        assert torch.equal(got, lomar_ops.resize_region(hwc, box, size, region, backend=backend))


def test_default_backend_on_the_cpu_is_the_kernel():
    hwc = _hwc(_image(20, 30))
    assert lomar_ops.backends.default_backend(
        "resize_region", "cpu", implemented=lomar_ops.backends.implemented_backends(
            "resize_region"))[0] == "cpu"
    assert torch.equal(lomar_ops.resize_region(hwc, (0, 0, 20, 30), (8, 8), (0, 0, 8, 8)),
                       lomar_ops.resize_region(hwc, (0, 0, 20, 30), (8, 8), (0, 0, 8, 8),
                                               backend="cpu"))


def test_opcheck_cpu_op():
    hwc = _hwc(_image(20, 30))
    torch.library.opcheck(torch.ops.lomar_ops.resize_region.default,
                          (hwc, [1.5, 2.0, 15.0, 20.5], [12, 16], [0, 0, 6, 8, 6, 8, 6, 8]))


@pytest.mark.parametrize("backend", ["cpu", None])
def test_torch_compile_fullgraph(backend):
    # The C++ op traces (its fake rule gives the output's shape). The reference does
    # not: it builds its weight matrices in Python from the weights' values.
    torch._dynamo.reset()
    hwc = _hwc(_image(40, 50))
    regions = [(5, 7, 30, 20), (0, 0, 30, 20)]

    def step(image):
        return lomar_ops.resize_regions(image, (2.5, 3, 30, 40), (64, 48), regions,
                                        backend=backend).float().mean((1, 2, 3))

    compiled = torch.compile(step, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(hwc), step(hwc))


# ---- uint16 and float32 images -----------------------------------------------------

def _uint16(values):
    """int64/int32 values in 0..65535 -> uint16, through an int16 view (torch has few
    uint16 kernels, fewer in older releases)."""
    values = values.to(torch.int32)
    return torch.where(values > 32767, values - 65536, values).to(torch.int16).view(torch.uint16)


def _values(image):
    """A uint16 tensor's values as int64, exactly."""
    return image.view(torch.int16).to(torch.int64) & 0xFFFF


def _image_of(dtype, h, w, c, seed=0):
    """(H, W, C): uint8 as _image; uint16 over the whole 0..65535 range (smooth structure,
    noise, saturated pixels at both ends); float32 in about [-1, 2] with the same shape."""
    if dtype == torch.uint8:
        return _hwc(_image(h, w, c, seed))
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(c, h // 4 + 2, w // 4 + 2, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
    noisy = smooth + 0.15 * torch.randn(c, h, w, generator=g, dtype=torch.float64)
    if dtype == torch.float32:
        return _hwc((3 * noisy - 1).float())
    return _hwc(_uint16((noisy.clamp(0, 1) * 65535).round()))


def _random_typed_case(g, dtype):
    image, box, size, region = _random_case(g)
    H, W, _ = image.shape
    C = (1, 3, 6)[int(torch.randint(0, 3, (), generator=g))]
    return (_image_of(dtype, H, W, C, seed=int(torch.randint(0, 1 << 30, (), generator=g))),
            box, size, region)


TYPED = [torch.uint16, torch.float32]


@pytest.mark.parametrize("dtype", TYPED, ids=str)
@pytest.mark.parametrize("device,backend", DEVICE_BACKENDS)
def test_uint16_and_float32_match_the_reference(device, backend, dtype):
    # Random sizes (odd ones among them), boxes (fractional half the time), C in {1, 3, 6}.
    g = torch.Generator().manual_seed(16)
    for _ in range(12):
        image, box, size, region = _random_typed_case(g, dtype)
        got = lomar_ops.resize_region(image.to(device), box, size, region, backend=backend)
        assert got.dtype == dtype and got.device.type == device
        assert got.shape == (image.shape[2], region[2], region[3])
        want = resize_region_reference(image, box, size, region)
        assert torch.equal(got.cpu().view(torch.int16) if dtype == torch.uint16 else got.cpu(),
                           want.view(torch.int16) if dtype == torch.uint16 else want), \
            (tuple(image.shape), box, size, region)


@pytest.mark.parametrize("dtype", TYPED, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_uint16_and_float32_regions_equal_the_whole_resize(backend, dtype):
    image = _image_of(dtype, 61, 47, 6, seed=7)
    box, size = (3.5, 2.0, 55.25, 44.0), (37, 29)
    whole = lomar_ops.resize_region(image, box, size, (0, 0, *size), backend=backend)
    regions = [(0, 0, 11, 13), (26, 16, 11, 13), (9, 5, 11, 13)]
    many = lomar_ops.resize_regions(image, box, size, regions, backend=backend)
    if dtype == torch.uint16:
        whole, many = _values(whole), _values(many)
    for got, (y0, x0, rows, cols) in zip(many, regions):
        assert torch.equal(got, whole[:, y0:y0 + rows, x0:x0 + cols])


def _exact_resize(chw, box, size):
    """The resize in float64 with unquantised weights and no rounding or clamping
    between the passes: (C, out_h, out_w) float64."""
    from lomar_ops.reference.resize_region import _axis_taps
    top, left, height, width = box
    C, H, W = chw.shape

    def matrix(in_size, start, length, out_size):
        taps, _ = _axis_taps(in_size, start, length, out_size)
        m = torch.zeros(out_size, in_size, dtype=torch.float64)
        for i, (first, w) in enumerate(taps):
            m[i, first:first + len(w)] = w
        return m

    mx, my = matrix(W, left, width, size[1]), matrix(H, top, height, size[0])
    return my @ chw.double() @ mx.T


@pytest.mark.parametrize("channels", [1, 3, 6])
def test_uint16_within_a_unit_and_a_quarter_of_the_exact_resize(channels):
    # Values in 12000..53000 with smooth structure: no pass overshoots 0..65535, so the
    # only differences are the rounding of each pass and the 32-bit weights: half a unit
    # for the last, half a unit times the vertical weights' sum of magnitudes (under
    # 1.25 for this cubic) for the first, on average a third of a unit.
    g = torch.Generator().manual_seed(channels)
    chw = 12000 + (41000 * torch.nn.functional.interpolate(
        torch.rand(1, channels, 9, 11, generator=g, dtype=torch.float64), size=(45, 53),
        mode="bicubic", align_corners=True)[0].clamp(0, 1)).round()
    image = _uint16(chw.permute(1, 2, 0))
    for box, size in [((0, 0, 45, 53), (97, 71)), ((2.5, 3.25, 40.0, 47.5), (13, 11)),
                      ((1, 2, 43, 50), (45, 53))]:
        got = _values(lomar_ops.resize_region(image, box, size, (0, 0, *size), backend="cpu"))
        exact = _exact_resize(chw, box, size)
        error = (got.double() - exact).abs()
        assert error.max() <= 1.25 and error.mean() < 0.4, (box, size)


def test_uint16_clamps_float32_does_not():
    # A checkerboard of 0 and 65535 upscaled: bicubic overshoots both ends; uint16 output
    # is clamped to 0..65535 (both values reached), float32 keeps the overshoot.
    board = ((torch.arange(12)[:, None] + torch.arange(10)) % 2) * 65535
    image = _uint16(board[..., None])
    got = _values(lomar_ops.resize_region(image, (0, 0, 12, 10), (40, 33), (0, 0, 40, 33),
                                          backend="cpu"))
    assert got.min() == 0 and got.max() == 65535
    floats = lomar_ops.resize_region(board[..., None].float() / 65535, (0, 0, 12, 10),
                                     (40, 33), (0, 0, 40, 33), backend="cpu")
    assert floats.min() < -0.05 and floats.max() > 1.05
    # A constant image stays constant, its value exactly.
    flat = _uint16(torch.full((9, 7, 3), 65535))
    assert (_values(lomar_ops.resize_region(flat, (0.5, 0, 8, 7), (20, 3), (0, 0, 20, 3),
                                            backend="cpu")) == 65535).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_torchvision_and_pillow(backend):
    import numpy as np
    from PIL import Image

    image = _image_of(torch.float32, 50, 70, 3, seed=3)
    chw = image.permute(2, 0, 1)
    for box, size in [((5, 6, 40, 60), (30, 90)), ((0, 0, 50, 70), (17, 23)),
                      ((3, 1, 44, 61), (88, 122))]:
        got = lomar_ops.resize_region(image, box, size, (0, 0, *size), backend=backend)
        # torch resizes float32 in float32 (its own float32 weights and sums): values of
        # magnitude up to about 3, some 20 float32 ulps of them apart (4.5e-6 seen).
        torch.testing.assert_close(got, _torchvision(chw, box, size), atol=1e-5, rtol=0)
        # Pillow's "F" mode: float64 weights and sums, rounded to float32 after each
        # pass; ours rounds the weights to float32 (a relative 6e-8).
        top, left, height, width = box
        crop = Image.fromarray(np.ascontiguousarray(
            image[top:top + height, left:left + width, 0].numpy()))
        assert crop.mode == "F"
        pil = torch.from_numpy(np.asarray(crop.resize(size[::-1], Image.BICUBIC)).copy())
        torch.testing.assert_close(got[0], pil, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uint16_matches_pillow(backend):
    # Pillow resizes 16-bit greyscale ("I;16") in float64 with unquantised weights,
    # clamping each pass: the same result but for one unit in a few outputs. Values up
    # to 3/4 of the range (overshoots stay below 65535, where Pillow's clipping is off:
    # it clips the high byte alone), with zeros (clamped at 0 by both). Recent Pillow
    # runs first the pass that leaves fewer pixels between the two: these cases are
    # horizontal-first there too (ours always is, as torch's and Pillow's uint8 resize).
    import numpy as np
    from PIL import Image

    values = _values(_image_of(torch.uint16, 45, 53, 1, seed=2))[..., 0] * 3 // 4
    image = _uint16(values[..., None])
    for box, size in [((0, 0, 45, 53), (97, 71)), ((0, 0, 45, 53), (13, 11)),
                      ((1, 2, 40, 50), (45, 53)), ((5, 0, 33, 53), (66, 20))]:
        assert size[1] * box[2] <= box[3] * size[0]  # Pillow's horizontal pass first
        got = _values(lomar_ops.resize_region(image, box, size, (0, 0, *size),
                                              backend=backend))[0]
        top, left, height, width = box
        crop = Image.fromarray(values[top:top + height, left:left + width].numpy()
                               .astype(np.uint16))
        assert crop.mode == "I;16"
        pil = torch.from_numpy(np.asarray(crop.resize(size[::-1], Image.BICUBIC))
                               .astype(np.int64))
        diff = (got - pil).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.01, (box, size)


def test_opcheck_cpu_op_uint16_and_float32():
    for dtype in TYPED:
        image = _image_of(dtype, 20, 30, 6)
        torch.library.opcheck(torch.ops.lomar_ops.resize_region.default,
                              (image, [1.5, 2.0, 15.0, 20.5], [12, 16], [0, 0, 6, 8, 6, 8, 6, 8]))


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    hwc = torch.zeros(20, 30, 3, dtype=torch.uint8)
    ok = dict(box=(0, 0, 10, 10), size=(8, 8), region=(0, 0, 8, 8))
    cases = [
        (dict(image=hwc.numpy()), TypeError, "resize_region: image must be a torch.Tensor"),
        (dict(image=hwc.double()), TypeError,
         r"image must have dtype in \(uint8, uint16, float32\), got torch.float64"),
        (dict(image=hwc.to(torch.int16)), TypeError, r"image must have dtype in .* got torch.int16"),
        (dict(image=hwc[0]), ValueError, r"image must be 3-D \(H, W, C\), got shape \(30, 3\)"),
        (dict(image=hwc[:0]), ValueError, r"image must not be empty, got shape \(0, 30, 3\)"),
        (dict(box=(0, 0, 10)), TypeError,
         r"box must be 4 numbers \(top, left, height, width\), got \(0, 0, 10\)"),
        (dict(box=(0, 0, "a", 10)), TypeError, "box must be 4 numbers"),
        (dict(box=(0, 0, 21, 10)), ValueError,
         r"box \(top, left, height, width\) must lie inside the 20x30 image and not be "
         r"empty, got \(0.0, 0.0, 21.0, 10.0\)"),
        (dict(box=(-1, 0, 5, 5)), ValueError, "must lie inside the 20x30 image"),
        (dict(box=(0, 0, 0, 10)), ValueError, "not be empty"),
        (dict(box=(0, 0, float("nan"), 10)), ValueError, "must lie inside"),
        (dict(size=(8,)), TypeError, r"size must be 2 ints \(out_h, out_w\), got \(8,\)"),
        (dict(size=(8.0, 8)), TypeError, r"size must be 2 ints"),
        (dict(size=(0, 8)), ValueError, r"size \(out_h, out_w\) must be positive, got \(0, 8\)"),
        (dict(region=(4, 0, 5, 8)), ValueError,
         r"region 0 \(y0, x0, rows, cols\) = \(4, 0, 5, 8\) must lie inside the 8x8 output"),
        (dict(region=(0, 0, 0, 8)), ValueError, "must lie inside the 8x8 output and not be empty"),
        (dict(region=(0, 0, 8)), TypeError, r"region 0 must be 4 ints \(y0, x0, rows, cols\)"),
        (dict(region=(0, 0, True, 8)), TypeError, "region 0 must be 4 ints"),
    ]
    for change, exc, match in cases:
        args = dict(image=hwc, **ok) | change
        with pytest.raises(exc, match=match):
            lomar_ops.resize_region(**args)
    with pytest.raises(ValueError, match=r"every region must have the first one's size "
                                         r"\(rows, cols\) = \(4, 8\), region 1 has \(4, 7\)"):
        lomar_ops.resize_regions(hwc, (0, 0, 10, 10), (8, 8), [(0, 0, 4, 8), (4, 0, 4, 7)])
    with pytest.raises(ValueError, match="regions must be a non-empty sequence"):
        lomar_ops.resize_regions(hwc, (0, 0, 10, 10), (8, 8), [])


def test_rejects_unknown_and_unavailable_backends(monkeypatch):
    hwc = torch.zeros(20, 30, 3, dtype=torch.uint8)
    args = (hwc, (0, 0, 10, 10), (8, 8), (0, 0, 8, 8))
    with pytest.raises(ValueError, match=r"backend must be one of \('cuda', 'triton', 'cpu', 'torch'\)"):
        lomar_ops.resize_region(*args, backend="gpu")
    for backend in ("cuda", "triton"):
        with pytest.raises(lomar_ops.BackendUnavailableError,
                           match=rf"resize_region: backend='{backend}' is unavailable: "
                                 rf"resize_region has no {backend} kernel .*"
                                 r"Available for resize_region on cpu: \['cpu', 'torch'\]"):
            lomar_ops.resize_region(*args, backend=backend)
    with pytest.raises(lomar_ops.BackendUnavailableError, match="backend='flex' is unavailable"):
        lomar_ops.resize_region(*args, backend="flex")
    monkeypatch.setenv("LOMAR_OPS_BACKEND", "torch")
    assert torch.equal(lomar_ops.resize_region(*args), lomar_ops.resize_region(*args,
                                                                               backend="cpu"))


def test_cpp_op_checks_guard_direct_calls():
    hwc = torch.zeros(20, 30, 3, dtype=torch.uint8)
    cases = [(hwc.double(), [0, 0, 10, 10], [8, 8], [0, 0, 8, 8],
              r"image must be a uint8, uint16 or float32 \(H, W, C\) tensor, got Double"),
             (hwc, [0, 0, 21, 10], [8, 8], [0, 0, 8, 8], "must lie inside the 20x30 image"),
             (hwc, [0, 0, 0, 10], [8, 8], [0, 0, 8, 8], "not be empty"),
             (hwc, [0, 0, 10, 10], [8, 8], [4, 0, 5, 8], r"region .* must lie inside the 8x8 output"),
             (hwc, [0, 0, 10, 10], [0, 8], [0, 0, 1, 1], "size must be positive"),
             (hwc, [0, 0, 10, 10], [8, 8], [0, 0, 4, 8, 0, 0, 4, 7],
              "every region must have the first one's size")]
    for image, box, size, regions, match in cases:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.lomar_ops.resize_region(image, [float(v) for v in box], size, regions)
