"""resize_region (rectangles of a bicubic antialiased uint8 resize, the window
pipeline's resampler): every backend against the PyTorch reference on random inputs
(to the bit, fractional boxes included), both against torchvision's resize of the
whole crop (to the bit: torch's AVX2 uint8 path is Pillow's fixed-point algorithm,
which the op reproduces; one grey level allowed where torch has no AVX2 and resizes
in float), opcheck of the C++ op, and the argument and backend errors.

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


# ---- bad input ---------------------------------------------------------------

def test_rejects_bad_arguments():
    hwc = torch.zeros(20, 30, 3, dtype=torch.uint8)
    ok = dict(box=(0, 0, 10, 10), size=(8, 8), region=(0, 0, 8, 8))
    cases = [
        (dict(image=hwc.numpy()), TypeError, "resize_region: image must be a torch.Tensor"),
        (dict(image=hwc.float()), TypeError, r"image must have dtype in \(uint8\), got torch.float32"),
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
    cases = [(hwc.float(), [0, 0, 10, 10], [8, 8], [0, 0, 8, 8], r"image must be a uint8 \(H, W, C\)"),
             (hwc, [0, 0, 21, 10], [8, 8], [0, 0, 8, 8], "must lie inside the 20x30 image"),
             (hwc, [0, 0, 0, 10], [8, 8], [0, 0, 8, 8], "not be empty"),
             (hwc, [0, 0, 10, 10], [8, 8], [4, 0, 5, 8], r"region .* must lie inside the 8x8 output"),
             (hwc, [0, 0, 10, 10], [0, 8], [0, 0, 1, 1], "size must be positive"),
             (hwc, [0, 0, 10, 10], [8, 8], [0, 0, 4, 8, 0, 0, 4, 7],
              "every region must have the first one's size")]
    for image, box, size, regions, match in cases:
        with pytest.raises(RuntimeError, match=match):
            torch.ops.lomar_ops.resize_region(image, [float(v) for v in box], size, regions)
