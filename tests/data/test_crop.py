"""The crop API of the window pipeline: sample_crop draws what torchvision's
RandomResizedCrop + RandomHorizontalFlip draw, render_crop makes what they make, and
render_windows makes exactly the windows of it (from a tensor, a PNG, a JPEG at full
scale), or close to them from a JPEG decoded at reduced scale (PSNR bound)."""

import io
import math

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops
from lomar.data.crop import Crop, render_crop, render_windows, sample_crop
from lomar.data.decode import open_image, read_rgb

EXACT = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def photo(h, w, seed=0):
    """A photo-like uint8 (3, H, W) image: smooth shapes plus fine texture."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, h // 16 + 2, w // 16 + 2, generator=g) * 255
    smooth = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bicubic")[0]
    return (smooth + 12 * torch.randn(3, h, w, generator=g)).clamp(0, 255).round().to(torch.uint8)


def encode(chw, fmt="JPEG", **kw):
    buf = io.BytesIO()
    Image.fromarray(chw.permute(1, 2, 0).numpy()).save(buf, fmt, **kw)
    return buf.getvalue()


def windows_of(full, coords, K, p):
    return torch.stack([full[:, r * p:(r + K) * p, c * p:(c + K) * p] for r, c in coords.tolist()])


def assert_equal_or_one_level(got, want):
    diff = (got.int() - want.int()).abs().max()
    assert diff == 0 if EXACT else diff <= 1


@pytest.mark.parametrize("image_size,input_size", [((300, 400), 224), ((512, 512), 448),
                                                    ((60, 900), 64), ((900, 40), (96, 64))])
def test_sample_crop_draws_what_torchvision_draws(image_size, input_size):
    image = photo(*image_size)
    size = [input_size] * 2 if isinstance(input_size, int) else list(input_size)
    tv = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0),
                                          interpolation=InterpolationMode.BICUBIC,
                                          antialias=True), v2.RandomHorizontalFlip()])
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        want = tv(image)
        torch.manual_seed(seed)
        crop = sample_crop(image_size, input_size)
        flips.add(crop.flip)
        assert crop.size == tuple(size) and crop.image_size == image_size
        assert torch.equal(render_crop(image, crop), want)
    assert flips == {True, False}


def test_sample_crop_with_a_generator_is_reproducible_and_leaves_the_global_one():
    state = torch.get_rng_state()
    a = sample_crop((480, 640), 224, generator=torch.Generator().manual_seed(3))
    b = sample_crop((480, 640), 224, generator=torch.Generator().manual_seed(3))
    assert a == b and torch.equal(state, torch.get_rng_state())
    assert 0.2 * 480 * 640 * 0.9 <= a.height * a.width <= 480 * 640
    assert 0 <= a.top <= 480 - a.height and 0 <= a.left <= 640 - a.width


def test_fallback_is_the_central_crop_of_the_closest_aspect():
    crop = sample_crop((10, 1000), 32, scale=(0.99, 1.0), generator=torch.Generator())
    assert (crop.top, crop.height) == (0, 10) and crop.width == round(10 * 4 / 3)
    assert crop.left == (1000 - crop.width) // 2


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("K,p,n,size", [(7, 16, 4, 224), (3, 16, 6, 224), (5, 8, 3, 96),
                                        (2, 14, 2, 112)])
def test_windows_are_the_crop_at_the_windows(flip, K, p, n, size):
    image = photo(333, 250, seed=K)
    g = torch.Generator().manual_seed(n)
    for _ in range(3):
        crop = sample_crop((333, 250), size, generator=g)
        crop = Crop(crop.top, crop.left, crop.height, crop.width, flip, crop.size,
                    crop.image_size)
        coords = lomar_ops.sample_windows(1, size // p, size // p, n, K, generator=g)[0]
        full = render_crop(image, crop)
        got = render_windows(image, crop, coords, K, p)
        assert got.shape == (n, 3, K * p, K * p) and got.dtype == torch.uint8
        assert_equal_or_one_level(got, windows_of(full, coords, K, p))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_files_at_full_scale_give_the_same_windows(tmp_path, fmt):
    image = photo(600, 800, seed=1)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
    decoded = read_rgb(path)  # the pixels the full pipeline resizes
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        crop = sample_crop((600, 800), 224, generator=g)
        coords = lomar_ops.sample_windows(1, 14, 14, 4, 7, generator=g)[0]
        want = windows_of(render_crop(decoded, crop), coords, 7, 16)
        for source in (path, path.read_bytes(), str(path)):
            got = render_windows(source, crop, coords, 7, 16, reduced_decode=False)
            assert_equal_or_one_level(got, want)


def psnr(a, b):
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def test_reduced_scale_decoding_is_close_to_the_full_scale_windows():
    image = photo(1536, 2048, seed=2)
    data = encode(image, "JPEG", quality=90)
    decoded = read_rgb(data)
    g = torch.Generator().manual_seed(11)
    used = set()
    for _ in range(6):
        crop = sample_crop((1536, 2048), 224, generator=g)
        coords = lomar_ops.sample_windows(1, 14, 14, 4, 7, generator=g)[0]
        with open_image(data) as opened:
            used.add(opened.reduction_for(crop.reduction))
        fast = render_windows(data, crop, coords, 7, 16)
        exact = windows_of(render_crop(decoded, crop), coords, 7, 16)
        assert psnr(fast, exact) > 30  # dB; measured figures: lomar bench-data
    assert used & {2, 4, 8}  # the crops shrank the photo: reduced decoding was used


def test_render_windows_errors():
    image = photo(100, 120)
    crop = sample_crop((100, 120), 64, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"window \(3, 0\) of 2x2 patches of 16 pixels does "
                                         r"not fit the 64x64 crop"):
        render_windows(image, crop, torch.tensor([[3, 0]]), 2, 16)
    with pytest.raises(ValueError, match=r"coords must be \(n, 2\)"):
        render_windows(image, crop, torch.tensor([1, 0]), 2, 16)
    with pytest.raises(ValueError, match=r"image is \(100, 100\) but the crop was drawn for"):
        render_windows(photo(100, 100), crop, torch.tensor([[0, 0]]), 2, 16)
    with pytest.raises(TypeError, match="source must be"):
        render_windows(123, crop, torch.tensor([[0, 0]]), 2, 16)
    with pytest.raises(ValueError, match="input_size must be a positive int"):
        sample_crop((100, 120), 0)
    with pytest.raises(ValueError, match="scale must satisfy"):
        sample_crop((100, 120), 64, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="hflip must be a probability"):
        sample_crop((100, 120), 64, hflip=2)
