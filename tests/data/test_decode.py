"""Files as the pipelines meet them: every kind is decoded correctly or refused by the
``on_corrupt`` rule with its path, through both pretraining pipelines, never silently
wrong: truncated and corrupt JPEGs, not-an-image, CMYK, greyscale, palette (with
transparency), alpha, 16-bit PNGs, EXIF rotations, images smaller than a window, and
decompression bombs (Pillow's limit)."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from lomar.data.crop import render_crop
from lomar.data import FullCrops, ImageFiles, WindowCrops, WindowSpec
from lomar.data.decode import CorruptImageError, decode_rgb, open_image, read_rgb

SPEC = WindowSpec(input_size=64, patch_size=16, window_size=2, num_windows=3)


def rgb_array(h=48, w=64, seed=0):
    g = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(ramp + g.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def save(image, fmt="PNG", **kw):
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_bytes(h=48, w=64, **kw):
    return save(Image.fromarray(rgb_array(h, w)), "JPEG", quality=95, **kw)


def through_pipelines(data):
    """Both pipelines on one file with the same draw: windows equal the full crop's."""
    torch.manual_seed(0)
    windows, coords = WindowCrops(SPEC, reduced_decode=False)(data)
    torch.manual_seed(0)
    full, coords_full = FullCrops(SPEC)(data)
    assert torch.equal(coords, coords_full)
    assert windows.shape == (3, 3, 32, 32) and windows.dtype == torch.uint8
    assert full.shape == (3, 64, 64) and full.dtype == torch.float32
    torch.manual_seed(0)
    with open_image(data) as opened:
        crop, _ = SPEC.draw(opened.size)
    pixels = render_crop(read_rgb(data), crop)
    for w, (r, c) in zip(windows, coords.tolist()):
        assert (w.int() - pixels[:, r * 16:(r + 2) * 16, c * 16:(c + 2) * 16].int()).abs().max() <= 1
    return windows


def test_truncated_and_corrupt_files_raise_with_the_name(tmp_path):
    data = jpeg_bytes(200, 300)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG" * 10)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    for path in (cut, junk, text):
        with pytest.raises(CorruptImageError, match=path.name):
            read_rgb(path)
        with pytest.raises(CorruptImageError, match=path.name):
            WindowCrops(SPEC)(path)


def test_on_corrupt_rule_applies_to_the_window_pipeline(tmp_path):
    (tmp_path / "a_good.png").write_bytes(save(Image.fromarray(rgb_array())))
    data = jpeg_bytes(200, 300)
    (tmp_path / "b_cut.jpg").write_bytes(data[: len(data) // 3])
    skip = ImageFiles(tmp_path, WindowCrops(SPEC), on_corrupt="skip")
    with pytest.warns(UserWarning, match=r"skipping corrupt image file .*b_cut\.jpg"):
        windows, coords, label = skip[1]  # served by the next readable file
    assert windows.shape == (3, 3, 32, 32) and coords.shape == (3, 2) and label == -1
    strict = ImageFiles(tmp_path, FullCrops(SPEC), on_corrupt="error")
    with pytest.raises(RuntimeError, match=r"corrupt image file .*b_cut\.jpg"):
        strict[1]


def test_colour_modes_become_rgb():
    rgb = rgb_array()
    grey = Image.fromarray(rgb[..., 0])
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    rgba = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA")
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cases = {
        "grey PNG": (save(grey), np.repeat(rgb[..., :1], 3, axis=2)),
        "grey JPEG": (save(grey, "JPEG", quality=100), None),
        "palette": (save(palette), np.asarray(palette.convert("RGB"))),
        "palette+transparency": (save(transparent, transparency=0),
                                 np.asarray(palette.convert("RGB"))),
        "RGBA (alpha dropped)": (save(rgba), rgb),
        "CMYK JPEG": (save(cmyk, "JPEG", quality=100), None),
    }
    for name, (data, want) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
            got = read_rgb(data)
        assert got.shape == (3, 48, 64), name
        if want is None:  # lossy: close to the source
            ref = rgb if "CMYK" in name else np.repeat(rgb[..., :1], 3, axis=2)
            err = np.abs(got.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).mean()
            assert err < 4, (name, err)
        else:
            assert np.array_equal(got.permute(1, 2, 0).numpy(), want), name
        through_pipelines(data)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    data = save(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    got = read_rgb(data)
    want = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(got[0].numpy(), want) and torch.equal(got[0], got[2])
    assert int(got.max()) == 255 and int(got.min()) == 0
    through_pipelines(data)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    raw = Image.fromarray(rgb_array(40, 70, seed=orientation))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(raw, "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    with open_image(data) as opened:
        assert opened.size == upright.shape[:2]  # (H, W) as displayed
        assert np.array_equal(decode_rgb(opened).numpy(), upright)
    through_pipelines(data)


def test_an_image_smaller_than_a_window():
    data = save(Image.fromarray(rgb_array(5, 7)))
    windows = through_pipelines(data)  # the 5x7 crop is upscaled to 64x64: still windows
    assert windows.float().std() > 0


def test_decompression_bombs_are_refused(monkeypatch, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(save(Image.fromarray(rgb_array(100, 100))))  # 10,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)          # > 2x the limit: refused
    with pytest.raises(CorruptImageError, match=r"bomb\.png: refused as a decompression bomb"):
        read_rgb(path)
    files = ImageFiles(tmp_path, WindowCrops(SPEC), on_corrupt="error")
    with pytest.raises(RuntimeError, match="decompression bomb"):
        files[0]


def test_reduced_decoding_sizes():
    data = jpeg_bytes(300, 500)
    with open_image(data) as opened:
        assert opened.reduction_for(0.3) == 1  # upscaled
        assert opened.reduction_for(1.9) == 1 and opened.reduction_for(2) == 2
        assert opened.reduction_for(5.5) == 4 and opened.reduction_for(100) == 8
        assert tuple(decode_rgb(opened, reduce=8).shape) == (38, 63, 3)  # ceil(300/8), ceil(500/8)
    with open_image(save(Image.fromarray(rgb_array()))) as opened:
        assert opened.reduction_for(8) == 1  # PNG: no DCT scaling
        with pytest.raises(ValueError, match="reduced-scale decoding is for JPEG files"):
            decode_rgb(opened, reduce=2)


def _jpeg_kinds():
    """JPEGs as cameras and datasets write them: chroma subsampling 4:4:4, 4:2:2 and
    4:2:0, progressive, greyscale, odd sizes, and every EXIF orientation."""
    base = Image.fromarray(rgb_array(75, 101, seed=3))
    kinds = {f"subsampling {s}": save(base, "JPEG", quality=90, subsampling=s) for s in (0, 1, 2)}
    kinds["progressive"] = save(base, "JPEG", quality=80, progressive=True)
    kinds["greyscale"] = save(base.convert("L"), "JPEG", quality=90)
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        kinds[f"orientation {orientation}"] = save(base, "JPEG", quality=90, exif=exif.tobytes())
    return kinds


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_simplejpeg_decodes_the_same_pixels_as_pillow(reduce):
    """The two JPEG decoders are interchangeable: the same pixels to the bit at every
    scale, orientation applied the same way (Pillow's exif_transpose)."""
    pytest.importorskip("simplejpeg")
    for name, data in _jpeg_kinds().items():
        with open_image(data) as opened:
            fast = decode_rgb(opened, reduce=reduce, decoder="simplejpeg")
            slow = decode_rgb(opened, reduce=reduce, decoder="pillow")
            assert fast.shape == slow.shape, name
            assert torch.equal(fast, slow), name
            assert torch.equal(decode_rgb(opened, reduce=reduce), fast), name  # auto


def test_jpegs_simplejpeg_refuses_go_to_pillow(monkeypatch):
    """A JPEG simplejpeg refuses (strict mode: here a truncated scan) is Pillow's to
    decode or refuse, so both paths accept the same files; CMYK JPEGs are Pillow's
    from the start (it converts them to RGB; simplejpeg would not)."""
    pytest.importorskip("simplejpeg")
    import lomar.data.decode

    calls = []
    real = lomar.data.decode.simplejpeg.decode_jpeg

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lomar.data.decode.simplejpeg, "decode_jpeg", counting)
    data = jpeg_bytes(200, 300)
    with pytest.raises(CorruptImageError, match="cannot be decoded"):
        read_rgb(data[: len(data) // 2])
    assert calls  # tried, refused, then Pillow reported it
    calls.clear()
    cmyk = save(Image.fromarray(rgb_array()).convert("CMYK"), "JPEG", quality=95)
    got = read_rgb(cmyk)
    assert not calls
    with open_image(cmyk) as opened:
        assert torch.equal(got.permute(1, 2, 0), decode_rgb(opened, decoder="pillow"))
        with pytest.raises(CorruptImageError, match="simplejpeg cannot decode this file"):
            decode_rgb(opened, decoder="simplejpeg")
        with pytest.raises(ValueError, match="decoder must be 'auto', 'pillow' or 'simplejpeg'"):
            decode_rgb(opened, decoder="turbo")
