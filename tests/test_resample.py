"""resize_region (the C++ CPU op of the window pipeline) against torchvision's uint8
bicubic antialiased resize of the whole crop (to the bit: torch's AVX2 uint8 path is
Pillow's fixed-point algorithm, which the op reproduces; one grey level allowed where
torch has no AVX2 and resizes in float) and against its PyTorch reference (to the bit,
fractional boxes included)."""

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from lomar.resample import resize_region, resize_region_reference, resize_regions

# torch resizes uint8 in fixed point (Pillow's algorithm) only with AVX2.
EXACT = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
TOL = 0 if EXACT else 1


def _image(h, w, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Smooth structure plus noise: both the filter's lobes and its rounding matter.
    base = torch.rand(c, h // 4 + 2, w // 4 + 2, generator=g) * 255
    smooth = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0]
    noisy = smooth + 40 * torch.randn(c, h, w, generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)  # (C, H, W)


def _torchvision(chw, box, size):
    top, left, height, width = box
    return v2.functional.resized_crop(chw, top, left, height, width, list(size),
                                      InterpolationMode.BICUBIC, antialias=True)


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


@pytest.mark.parametrize("shape,box,size", CASES)
def test_regions_equal_the_whole_resize(shape, box, size):
    chw = _image(*shape)
    hwc = chw.permute(1, 2, 0).contiguous()
    full = _torchvision(chw, box, size)
    g = torch.Generator().manual_seed(sum(shape))
    for _ in range(6):
        rows = int(torch.randint(1, size[0] + 1, (), generator=g))
        cols = int(torch.randint(1, size[1] + 1, (), generator=g))
        y0 = int(torch.randint(0, size[0] - rows + 1, (), generator=g))
        x0 = int(torch.randint(0, size[1] - cols + 1, (), generator=g))
        got = resize_region(hwc, box, size, (y0, x0, rows, cols))
        assert got.shape == (3, rows, cols) and got.dtype == torch.uint8
        want = full[:, y0:y0 + rows, x0:x0 + cols]
        assert (got.int() - want.int()).abs().max() <= TOL
    whole = resize_region(hwc, box, size, (0, 0, *size))
    assert (whole.int() - full.int()).abs().max() <= TOL


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_matches_the_reference_for_every_channel_count(channels):
    chw = _image(40, 52, channels, seed=channels)
    hwc = chw.permute(1, 2, 0).contiguous()
    for box, size, region in [((2, 3, 30, 40), (64, 48), (5, 7, 30, 20)),
                              ((0, 0, 40, 52), (13, 17), (0, 0, 13, 17))]:
        assert torch.equal(resize_region(hwc, box, size, region),
                           resize_region_reference(hwc, box, size, region))


def test_fractional_boxes_match_the_reference():
    # A crop of a JPEG decoded at reduced scale: the box is in the decoded pixels.
    hwc = _image(60, 70).permute(1, 2, 0).contiguous()
    for box in [(2.5, 3.25, 40.75, 55.5), (0.125, 0.0, 59.875, 69.5), (10.5, 10.5, 3.5, 2.25)]:
        for size, region in [((32, 32), (4, 5, 20, 21)), ((96, 80), (50, 10, 40, 60))]:
            got = resize_region(hwc, box, size, region)
            assert torch.equal(got, resize_region_reference(hwc, box, size, region))


def test_reference_equals_torchvision():
    chw = _image(50, 70)
    full = _torchvision(chw, (5, 6, 40, 60), (30, 90))
    ref = resize_region_reference(chw.permute(1, 2, 0).contiguous(), (5, 6, 40, 60), (30, 90),
                                  (0, 0, 30, 90))
    assert (ref.int() - full.int()).abs().max() <= TOL


def test_several_regions_at_once_equal_one_at_a_time():
    hwc = _image(90, 70).permute(1, 2, 0).contiguous()
    box, size = (3, 4, 80, 60), (256, 200)
    regions = [(0, 0, 40, 48), (216, 152, 40, 48), (100, 77, 40, 48)]
    many = resize_regions(hwc, box, size, regions)
    assert many.shape == (3, 3, 40, 48)
    for got, region in zip(many, regions):
        assert torch.equal(got, resize_region(hwc, box, size, region))
    with pytest.raises(RuntimeError, match=r"every region must have the first one's size"):
        resize_regions(hwc, box, size, [(0, 0, 40, 48), (0, 0, 40, 47)])


def test_rejects_bad_arguments():
    hwc = torch.zeros(20, 30, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"image must be a uint8 \(H, W, C\) tensor"):
        resize_region(hwc.float(), (0, 0, 10, 10), (8, 8), (0, 0, 8, 8))
    with pytest.raises(ValueError, match="box must be"):
        resize_region(hwc, (0, 0, 10), (8, 8), (0, 0, 8, 8))
    cases = [((0, 0, 21, 10), (8, 8), (0, 0, 8, 8), "must lie inside the 20x30 image"),
             ((0, 0, 0, 10), (8, 8), (0, 0, 8, 8), "not be empty"),
             ((0, 0, 10, 10), (8, 8), (4, 0, 5, 8), r"region .* must lie inside the 8x8 output"),
             ((0, 0, 10, 10), (0, 8), (0, 0, 1, 1), "size must be positive")]
    for box, size, region, match in cases:
        with pytest.raises(RuntimeError, match=match):
            resize_region(hwc, box, size, region)
