"""lomar.data.read_image: the pixels a file holds, (bands, H, W) in its dtype, bit for bit;
refused, with the reason, where it would have to change them."""

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lomar.data import CorruptImageError, read_image


def _chw(array):
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


@pytest.fixture
def bands6():
    return np.random.default_rng(0).integers(0, 65536, (37, 53, 6), dtype=np.uint16)


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("tiled", [False, True])
def test_six_band_uint16_tiff_bit_for_bit(bands6, planar, tiled, tmp_path):
    path = tmp_path / "scene.tif"
    array = bands6.transpose(2, 0, 1) if planar else bands6
    tifffile.imwrite(path, array, photometric="minisblack", compression="zlib",
                     planarconfig="separate" if planar else "contig",
                     tile=(16, 16) if tiled else None)
    pixels = read_image(path)
    assert pixels.dtype == torch.uint16 and pixels.shape == (6, 37, 53)
    assert torch.equal(pixels, _chw(bands6))


def test_sixteen_bit_rgba_tiff_keeps_its_fourth_band_and_low_bytes(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=("unassalpha",))
    pixels = read_image(tmp_path / "rgba.tif")
    assert pixels.dtype == torch.uint16 and torch.equal(pixels, _chw(rgba))


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_png_bit_for_bit(channels, tmp_path):
    shape = (19, 23) if channels == 1 else (19, 23, 3)
    array = np.random.default_rng(2).integers(0, 65536, shape, dtype=np.uint16)
    (tmp_path / "x.png").write_bytes(imagecodecs.png_encode(array))
    pixels = read_image(tmp_path / "x.png")
    assert pixels.dtype == torch.uint16
    assert torch.equal(pixels, _chw(array.reshape(19, 23, channels)))


def test_float32_tiff_and_exact_promotions(tmp_path):
    f32 = np.random.default_rng(3).normal(size=(9, 11)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f32.tif", f32)
    assert torch.equal(read_image(tmp_path / "f32.tif")[0], torch.from_numpy(f32))
    i16 = np.random.default_rng(4).integers(-32768, 32768, (9, 11), dtype=np.int16)
    tifffile.imwrite(tmp_path / "i16.tif", i16)  # a CT slice in Hounsfield units
    pixels = read_image(tmp_path / "i16.tif")
    assert pixels.dtype == torch.float32
    assert torch.equal(pixels[0], torch.from_numpy(i16.astype(np.float32)))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint32])
def test_types_float32_would_round_are_refused(dtype, tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.ones((4, 4), dtype))
    with pytest.raises(ValueError, match=rf"x.tif: samples of {np.dtype(dtype).name}: "
                                         r"read_image returns uint8, uint16 or float32"):
        read_image(tmp_path / "x.tif")


def test_tiff_orientation_is_applied(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tifffile.imwrite(tmp_path / "o.tif", array, extratags=[(274, 3, 1, 6, True)])  # 90 cw
    assert torch.equal(read_image(tmp_path / "o.tif")[0],
                       torch.from_numpy(np.ascontiguousarray(array.T[:, ::-1])))


def test_photos(tmp_path):
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg")
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    Image.fromarray(np.dstack([rgb, grey])).save(tmp_path / "a.png")  # RGBA
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    assert read_image(tmp_path / "g.jpg").shape == (1, 30, 40)
    assert read_image(tmp_path / "c.jpg").shape == (3, 30, 40)
    assert torch.equal(read_image(tmp_path / "a.png"), _chw(rgb))  # alpha dropped
    assert torch.equal(read_image(tmp_path / "g.png")[0], torch.from_numpy(grey))
    assert torch.equal(read_image(tmp_path / "c.bmp"), _chw(rgb))


def test_bad_files_name_themselves(tmp_path):
    (tmp_path / "t.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "p.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    (tmp_path / "j.jpg").write_bytes(b"\xff\xd8\xffgarbage")
    for name in ("t.tif", "p.png", "j.jpg", "missing.tif"):
        with pytest.raises(CorruptImageError, match=name):
            read_image(tmp_path / name)
