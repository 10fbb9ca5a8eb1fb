"""lomar convert: photos, untiled TIFFs and tiled files to tiled pyramidal TIFFs that
open_tiled and OpenSlide read; lossless bit for bit (dtype and bands kept), JPEG by
default; streaming (level 0 read by bands, memory bounded); resumable (a killed
run's leftovers, completed outputs skipped, foreign files refused); the CLI; the
offline demo slide."""

import os
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from lomar.cli import main
from lomar.data import build_demo_slide, open_tiled, read_rgb
from lomar.data import convert as convert_module
from lomar.data.convert import convert_image, convert_images, halve, level_sizes, plan_outputs

try:
    import openslide
except ImportError:
    openslide = None
needs_openslide = pytest.mark.skipif(openslide is None,
                                     reason="needs OpenSlide: pip install 'lomar[slides]'")


def noise_image(h, w, bands=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random((h, w, bands), dtype=dtype)
    return rng.integers(0, np.iinfo(dtype).max, (h, w, bands), dtype=dtype, endpoint=True)


def smooth_image(h, w, seed=0):
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    rgb = np.stack([128 + 100 * np.sin(x / 37 + k) * np.cos(y / 53 - k) for k in range(3)], 2)
    return (rgb + rng.normal(0, 2, rgb.shape)).clip(0, 255).astype(np.uint8)


def pyramid_of(level0):
    levels = [level0]
    while max(levels[-1].shape[:2]) > 256:
        levels.append(halve(levels[-1]))
    return levels


def read_all(path):
    img = open_tiled(path)
    return img, [img.read_level(k).permute(1, 2, 0).numpy() for k in range(len(img.levels))]


def test_level_sizes_and_halving():
    assert level_sizes(1000, 1300, 256) == [(1000, 1300), (500, 650), (250, 325), (125, 163)]
    assert level_sizes(256, 100, 256) == [(256, 100)]
    a = np.array([[1, 2, 3], [3, 4, 5]], np.uint8)[:, :, None]
    assert halve(a)[:, :, 0].tolist() == [[3, 4]]  # (1+2+3+4+2)//4, (3+3+5+5+2)//4
    f = np.array([[0.5, 1.0], [1.5, 2.0]], np.float32)[:, :, None]
    assert halve(f)[0, 0, 0] == np.float32(1.25)
    big = np.full((2, 2, 1), 65535, np.uint16)
    assert halve(big)[0, 0, 0] == 65535  # no overflow


def test_lossless_png_round_trip_bit_for_bit(tmp_path):
    src = tmp_path / "photo.png"
    a = noise_image(1000, 1300)
    Image.fromarray(a).save(src)
    out = tmp_path / "out"
    result = convert_images([src], out, lossless=True, progress=False)
    assert result == {"converted": [out / "photo.tif"], "skipped": [], "failed": []}
    img, levels = read_all(out / "photo.tif")
    assert img.levels == [(1000, 1300), (500, 650), (250, 325), (125, 163)]
    assert img.tile_size == (256, 256) and img.dtype == torch.uint8
    for got, expected in zip(levels, pyramid_of(a), strict=True):
        np.testing.assert_array_equal(got, expected)
    with tifffile.TiffFile(out / "photo.tif") as tf:
        assert [int(p.compression) for p in tf.pages] == [50000] * 4  # zstd
        assert [int(p.subfiletype) for p in tf.pages] == [0, 1, 1, 1]
        assert tf.pages[0].description.startswith("lomar convert: source=photo.png")
    assert os.listdir(out) == ["photo.tif"]  # nothing left over


@pytest.mark.parametrize("dtype,bands", [(np.uint16, 1), (np.uint16, 3), (np.float32, 5),
                                         (np.uint8, 4)])
def test_lossless_keeps_dtype_and_bands(dtype, bands, tmp_path):
    """An untiled (strip) TIFF source: read strip by strip, written bit for bit."""
    a = noise_image(700, 600, bands, dtype)
    src = tmp_path / "strips.tif"
    tifffile.imwrite(src, a[:, :, 0] if bands == 1 else a, rowsperstrip=50,
                     photometric="rgb" if bands in (3, 4) else "minisblack",
                     planarconfig="contig" if bands > 1 else None)
    out = tmp_path / "strips-tiled.tif"
    assert convert_image(src, out, lossless=True) == "converted"
    img, levels = read_all(out)
    assert img.numpy_dtype == np.dtype(dtype) and img.bands == bands
    for got, expected in zip(levels, pyramid_of(a), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_jpeg_by_default_and_refused_where_it_would_change_data(tmp_path):
    a = smooth_image(900, 1100)
    Image.fromarray(a).save(tmp_path / "rgb.png")
    out = tmp_path / "out"
    convert_images([tmp_path / "rgb.png"], out, quality=90, progress=False)
    _, levels = read_all(out / "rgb.tif")
    with tifffile.TiffFile(out / "rgb.tif") as tf:
        assert int(tf.pages[0].compression) == 7
    mse = np.mean((levels[0].astype(float) - a) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35  # PSNR
    tifffile.imwrite(tmp_path / "deep.tif", noise_image(50, 60, 1, np.uint16)[:, :, 0])
    result = convert_images([tmp_path / "deep.tif"], out, progress=False)
    assert "JPEG holds 8-bit greyscale or RGB; convert it with --lossless" in result["failed"][0][1]
    assert not (out / "deep.tif").exists()


def test_exif_orientation_applied_like_the_decoder(tmp_path):
    src = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise to display
    Image.fromarray(smooth_image(120, 200)).save(src, quality=95, exif=exif)
    out = tmp_path / "turned.tif"
    convert_image(src, out, lossless=True)
    img = open_tiled(out)
    assert img.levels[0] == (200, 120)
    assert torch.equal(img.read_level(0), read_rgb(src))


def test_tiled_source_is_streamed(tmp_path, monkeypatch):
    """A tiled source is read by bands of tile rows; the levels below wait in scratch
    files (here above 1 MiB), so the traced memory depends on the width (a band, the
    source's tiles it touches), not on the height: here under a quarter of the image."""
    a = noise_image(6144, 2048)  # 36 MiB of pixels
    src = tmp_path / "tiled.tif"
    tifffile.imwrite(src, a, tile=(256, 256), photometric="rgb", compression="zstd")
    monkeypatch.setattr(convert_module, "_IN_MEMORY_BYTES", 2**20)
    monkeypatch.setattr(convert_module, "_ENCODE_BUFFER", 2**20)
    rows = []
    real = convert_module._TiledSource.read_rows
    monkeypatch.setattr(convert_module._TiledSource, "read_rows",
                        lambda self, top, n: rows.append(n) or real(self, top, n))
    tracemalloc.start()
    try:
        convert_image(src, tmp_path / "out.tif", lossless=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == [256] * 24
    assert peak < a.nbytes / 4, f"peak {peak / 2**20:.1f} MiB"
    _, levels = read_all(tmp_path / "out.tif")
    for got, expected in zip(levels, pyramid_of(a), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert sorted(os.listdir(tmp_path)) == ["out.tif", "tiled.tif"]  # scratch files gone


def test_outputs_planned_from_files_and_folders(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ["in/a.png", "in/sub/b.jpg", "in/c.ome.tif", "in/.hidden.png", "in/notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    pairs = plan_outputs([tmp_path / "in"], tmp_path / "out")
    assert [(s.relative_to(tmp_path).as_posix(), o.relative_to(tmp_path).as_posix())
            for s, o in pairs] == [("in/a.png", "out/a.tif"), ("in/c.ome.tif", "out/c.tif"),
                                   ("in/sub/b.jpg", "out/sub/b.tif")]
    assert plan_outputs([tmp_path / "in/a.png"], tmp_path / "x.tiff") == \
        [(tmp_path / "in/a.png", tmp_path / "x.tiff")]
    (tmp_path / "in/a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="would both be converted to"):
        plan_outputs([tmp_path / "in/a.png", tmp_path / "in/a.jpg"], tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        plan_outputs([tmp_path / "nope.png"], tmp_path / "out")


def test_resumes_after_a_kill(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    images = {name: noise_image(300, 400, seed=i) for i, name in enumerate("abc")}
    for name, a in images.items():
        Image.fromarray(a).save(src / f"{name}.png")
    out = tmp_path / "out"
    # The run is killed while writing b: a converted, b half-written, c not started.
    real = convert_module.write_pyramid

    def killed_at_b(path, source, **kw):
        if path.name == ".b.tif.tmp":
            path.write_bytes(b"II*\x00 half a file")
            raise KeyboardInterrupt
        return real(path, source, **kw)

    monkeypatch.setattr(convert_module, "write_pyramid", killed_at_b)
    with pytest.raises(KeyboardInterrupt):
        convert_images([src], out, lossless=True, progress=False)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["a.tif"]  # never a half file under a final name
    # A SIGKILL leaves the temporary file (and scratch levels) behind:
    (out / ".b.tif.tmp").write_bytes(b"II*\x00 half a file")
    (out / "..b.tif.tmp.level1.tmp").write_bytes(b"scratch")
    mtime = (out / "a.tif").stat().st_mtime_ns
    result = convert_images([src], out, lossless=True, progress=False)
    assert result == {"converted": [out / "b.tif", out / "c.tif"], "skipped": [out / "a.tif"],
                      "failed": []}
    assert (out / "a.tif").stat().st_mtime_ns == mtime
    assert sorted(os.listdir(out)) == ["a.tif", "b.tif", "c.tif"]
    for name, a in images.items():
        np.testing.assert_array_equal(read_all(out / f"{name}.tif")[1][0], a)
    # Other parameters, or a file this command did not write: refused, left as it is.
    result = convert_images([src / "a.png"], out, quality=80, progress=False)
    assert "exists and is not this conversion" in result["failed"][0][1]
    (out / "d.tif").write_bytes(b"mine")
    Image.fromarray(images["a"]).save(src / "d.png")
    result = convert_images([src / "d.png"], out, lossless=True, progress=False)
    assert "exists and is not this conversion" in result["failed"][0][1]
    assert (out / "d.tif").read_bytes() == b"mine"


def test_cli(tmp_path, capsys):
    Image.fromarray(noise_image(100, 150)).save(tmp_path / "a.png")
    assert main(["convert", str(tmp_path / "a.png"), str(tmp_path / "out"), "--lossless",
                 "--tile", "64"]) == 0
    assert "1 converted, 0 already done, 0 failed" in capsys.readouterr().out
    img = open_tiled(tmp_path / "out" / "a.tif")
    assert img.tile_size == (64, 64) and img.levels == [(100, 150), (50, 75), (25, 38)]
    assert main(["convert", str(tmp_path / "a.png"), str(tmp_path / "out"), "--lossless",
                 "--tile", "64"]) == 0
    assert "0 converted, 1 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", "a.png", "out", "--lossless", "--quality", "80"])
    assert main(["convert", str(tmp_path / "a.png"), str(tmp_path / "o2"), "--tile", "100"]) == 2
    assert "multiple of 16" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_jobs(tmp_path):
    for i in range(3):
        Image.fromarray(noise_image(200, 300, seed=i)).save(tmp_path / f"{i}.png")
    result = convert_images([tmp_path / f"{i}.png" for i in range(3)], tmp_path / "out",
                            lossless=True, jobs=2, progress=False)
    assert sorted(result["converted"]) == [tmp_path / "out" / f"{i}.tif" for i in range(3)]


@needs_openslide
def test_openslide_and_open_tiled_agree_on_the_output(tmp_path):
    """OpenSlide reads the output as a generic tiled TIFF, every level; its pixels
    (opaque: alpha 255 everywhere) equal open_tiled's bit for bit, also at the
    levels whose downsample is not a power of two (odd sizes)."""
    Image.fromarray(smooth_image(1501, 2500)).save(tmp_path / "p.png")
    convert_images([tmp_path / "p.png"], tmp_path, progress=False)
    out = str(tmp_path / "p.tif")
    slide = openslide.OpenSlide(out)
    assert slide.detect_format(out) == "generic-tiff"
    img = open_tiled(out)
    assert [(h, w) for w, h in slide.level_dimensions] == img.levels
    region = np.asarray(slide.read_region((300, 200), 0, (500, 400)))
    assert (region[:, :, 3] == 255).all()
    box = img.read(0, 200, 300, 400, 500).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(region[:, :, :3], box)
    through = open_tiled(out, backend="openslide")
    for k in range(len(img.levels)):
        assert torch.equal(through.read_level(k), img.read_level(k)), f"level {k}"
        h, w = img.levels[k]
        assert torch.equal(through.read(k, h // 3, w // 5, h // 2, w // 2),
                           img.read(k, h // 3, w // 5, h // 2, w // 2))


def test_demo_slide(tmp_path):
    path = build_demo_slide(tmp_path / "slide.tif", 4096, cell=512)
    img = open_tiled(path)
    assert img.levels == [(4096 >> k, 4096 >> k) for k in range(5)]
    assert img.mpp == pytest.approx(0.5) and img.dtype == torch.uint8 and img.bands == 3
    with tifffile.TiffFile(path) as tf:
        assert int(tf.pages[0].compression) == 7
    thumb = img.thumbnail(256).float()
    background = ((thumb - torch.tensor([238.0, 236, 240])[:, None, None]).abs() < 12).all(0)
    assert 0.2 < background.float().mean() < 0.9  # background and tissue, for masks to find
    mtime = path.stat().st_mtime_ns
    assert build_demo_slide(tmp_path / "slide.tif", 4096, cell=512) == path  # reused
    assert path.stat().st_mtime_ns == mtime
    one, two = (build_demo_slide(tmp_path / f"{i}.tif", 1024, cell=256) for i in range(2))
    assert one.read_bytes() == two.read_bytes()  # seeded


def test_demo_slide_16_bit_multiband(tmp_path):
    path = build_demo_slide(tmp_path / "deep.tif", 1024, cell=256, dtype="uint16", bands=5)
    img = open_tiled(path)
    assert img.dtype == torch.uint16 and img.bands == 5 and img.levels[0] == (1024, 1024)
    with tifffile.TiffFile(path) as tf:
        assert int(tf.pages[0].compression) == 50000
