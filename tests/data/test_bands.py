"""The window pipeline on the files' own bands and bit depth (data.bands)."""

import numpy as np
import pytest
import tifffile
import torch

from lomar.data import (FullCrops, RegionSpec, TiledRegions, WindowCrops, WindowSpec, read_image,
                        regions)
from lomar.data.crop import render_windows, sample_crop, window_boxes
from lomar_ops import resize_regions
from tiled_files import write_pyramid

SPEC = WindowSpec(input_size=64, patch_size=8, window_size=3, num_windows=2)


@pytest.fixture
def scene(tmp_path):
    array = np.random.default_rng(0).integers(0, 65536, (90, 110, 6), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", array, photometric="minisblack", planarconfig="contig")
    return tmp_path / "s.tif"


def _draw(pipeline, path, seed=0):
    torch.manual_seed(seed)
    return pipeline(path)


def test_windows_keep_every_band_and_bit_and_bands_pick_in_order(scene):
    windows, coords = _draw(WindowCrops(SPEC, bands="all"), scene)
    assert windows.dtype == torch.uint16 and windows.shape == (2, 6, 24, 24)
    picked, same = _draw(WindowCrops(SPEC, bands=[5, 0]), scene)
    assert torch.equal(coords, same) and torch.equal(picked, windows[:, [5, 0]])
    # The same as rendering the decoded image with the same draws: nothing lost on the way.
    torch.manual_seed(0)
    crop = sample_crop((90, 110), SPEC.input_size, SPEC.scale, SPEC.ratio, SPEC.hflip)
    assert torch.equal(render_windows(read_image(scene), crop, coords, 3, 8), windows)


def test_each_band_is_resampled_on_its_own(scene):
    windows, _ = _draw(WindowCrops(SPEC, bands="all"), scene)
    for b in range(6):
        alone, _ = _draw(WindowCrops(SPEC, bands=[b]), scene)
        assert torch.equal(alone[:, 0], windows[:, b])


def test_refusals_name_the_file_and_the_value(scene, tmp_path):
    with pytest.raises(ValueError, match=r"s.tif: data.bands asks for band 6, the file has 6"):
        _draw(WindowCrops(SPEC, bands=[0, 6]), scene)
    with pytest.raises(ValueError, match=r"s.tif: 6 band\(s\) where the run takes 4 \(model_kwargs.in_chans\)"):
        _draw(WindowCrops(SPEC, bands="all", channels=4), scene)
    tifffile.imwrite(tmp_path / "f.tif", np.ones((40, 40), np.float64))
    with pytest.raises(ValueError, match=r"f.tif: samples of float64: read_image returns"):
        _draw(WindowCrops(SPEC, bands="all"), tmp_path / "f.tif")
    nodata = np.random.default_rng(0).normal(size=(40, 40, 3)).astype(np.float32)
    nodata[5, 7, 2] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", nodata, photometric="minisblack", planarconfig="contig")
    with pytest.raises(ValueError, match=r"n.tif: NaN or infinite values in band\(s\) \[2\]"):
        _draw(WindowCrops(SPEC, bands="all"), tmp_path / "n.tif")
    two = WindowCrops(SPEC, bands=[0, 1], mean=[0, 0], std=[1, 1])
    assert _draw(two, tmp_path / "n.tif")[0].isfinite().all()  # band 2 not read, not refused
    with pytest.raises(ValueError, match=r"2 band\(s\) need one mean and std per band"):
        _draw(WindowCrops(SPEC, bands=[0, 1]), tmp_path / "n.tif")
    for bad in ("bgr", [], [1, 1], [-1], [True], [0, "red"], ["red", "red"], [""]):
        with pytest.raises(ValueError, match="bands must be 'rgb', 'all' or a list"):
            WindowCrops(SPEC, bands=bad)


# ---- tiled, pyramidal files: the same bands and bits, read region by region ----------------

def _scene_pyramid(path, bands=6, planar=False, dtype=np.uint16, seed=0):
    """A tiled 2-level pyramid of smooth uint16 noise, (H, W, bands) per level."""
    g = np.random.default_rng(seed)
    coarse = torch.from_numpy(g.integers(0, 60000, (bands, 24, 20)).astype(np.float32))
    base = torch.nn.functional.interpolate(coarse[None], size=(384, 320), mode="bilinear")[0]
    base = (base + torch.from_numpy(g.normal(0, 300, base.shape).astype(np.float32)))
    levels = [base.clamp(0, np.iinfo(dtype).max).to(torch.int64).numpy().astype(dtype)]
    levels.append(levels[0].reshape(bands, 192, 2, 160, 2).mean((2, 4)).astype(dtype))
    levels = [a.transpose(1, 2, 0).copy() for a in levels]
    write_pyramid(path, levels, photometric="minisblack",
                  planarconfig="separate" if planar else "contig")
    return levels


@pytest.mark.parametrize("planar", [False, True])
def test_tiled_regions_keep_every_band_and_bit(tmp_path, monkeypatch, planar):
    levels = _scene_pyramid(tmp_path / "scene.tif", planar=planar)
    data = TiledRegions(tmp_path, SPEC, RegionSpec(128), samples_per_file=4, bands="all",
                        channels=6)
    calls, render = [], regions.render_tiled_windows

    def spy(image, level, box, crop, coords, K, p, bands=None):
        calls.append((level, box, crop))
        return render(image, level, box, crop, coords, K, p, bands)

    monkeypatch.setattr(regions, "render_tiled_windows", spy)
    picked = TiledRegions(tmp_path, SPEC, RegionSpec(128), samples_per_file=4, bands=[5, 0],
                          channels=2)
    for item in range(4):
        torch.manual_seed(item)
        windows, coords, _ = data[item]
        level, box, crop = calls[-1]
        corners = [(y0, x0, 24, 24) for y0, x0, _ in window_boxes(crop, coords, 3, 8)]
        want = resize_regions(torch.from_numpy(levels[level]), box, crop.size, corners)
        want = want.flip(-1) if crop.flip else want
        assert windows.dtype == torch.uint16 and windows.shape == (2, 6, 24, 24)
        assert torch.equal(windows, want)  # the whole decoded level's render, to the bit
        torch.manual_seed(item)
        assert torch.equal(picked[item][0], windows[:, [5, 0]])
    full = TiledRegions(tmp_path, SPEC, RegionSpec(128), samples_per_file=1, pipeline="full",
                        bands="all", channels=6, mean=[0.5] * 6, std=[0.2] * 6)
    torch.manual_seed(0)
    crop = full[0][0]
    assert crop.shape == (6, 64, 64) and crop.dtype == torch.float32


def test_tiled_regions_refuse_other_bands_and_types_before_training(tmp_path):
    _scene_pyramid(tmp_path / "a.tif")
    _scene_pyramid(tmp_path / "b.tif", bands=4)
    _scene_pyramid(tmp_path / "c.tif", dtype=np.uint8)
    with pytest.raises(ValueError, match=r"take 6 band\(s\) of uint16; 2 of the 3 files do not "
                                         r"give that: .*b.tif \(4 band\(s\)\), .*c.tif \(samples "
                                         r"of uint8\)"):
        TiledRegions(tmp_path, SPEC, RegionSpec(128), bands="all", channels=6)
    with pytest.raises(ValueError, match=r"b.tif \(data.bands asks for band 5, the file has 4 "):
        TiledRegions(tmp_path, SPEC, RegionSpec(128), bands=[5], channels=1)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_float_files_travel_normalised(tmp_path, dtype):
    """float32 files (and int16, read as float32: CT's Hounsfield units) keep their values;
    their windows and crops are normalised with data.mean/std in the file's own units
    in the data loader (the model normalises integer pixels, not floats)."""
    rng = np.random.default_rng(0)
    values = rng.normal(-300, 400, (70, 90, 2)).astype(dtype)
    tifffile.imwrite(tmp_path / "ct.tif", values, photometric="minisblack", planarconfig="contig")
    mean, std = [-300.0, -280.0], [400.0, 350.0]
    windows, coords = _draw(WindowCrops(SPEC, bands="all", mean=mean, std=std), tmp_path / "ct.tif")
    torch.manual_seed(0)
    crop = sample_crop((70, 90), SPEC.input_size, SPEC.scale, SPEC.ratio, SPEC.hflip)
    raw = render_windows(read_image(tmp_path / "ct.tif"), crop, coords, 3, 8)
    assert windows.dtype == torch.float32 and raw.dtype == torch.float32
    want = (raw - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    torch.testing.assert_close(windows, want, rtol=0, atol=0)
    full, _ = _draw(FullCrops(SPEC, mean=mean, std=std, bands="all"), tmp_path / "ct.tif")
    assert full.shape == (2, 64, 64) and abs(float(full.mean())) < 0.5


def _named(path, names, ome):
    """A 3-band uint16 file naming its bands: OME-TIFF channel names or GeoTIFF band
    descriptions (GDAL's metadata tag)."""
    pixels = np.random.default_rng(0).integers(0, 65536, (3, 80, 96), dtype=np.uint16)
    if ome:
        tifffile.imwrite(path, pixels, ome=True, tile=(32, 32),
                         metadata={"axes": "CYX", "Channel": {"Name": names}})
    else:
        items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>'
                        for i, n in enumerate(names))
        tifffile.imwrite(path, pixels.transpose(1, 2, 0), photometric="minisblack",
                         planarconfig="contig", tile=(32, 32),
                         extratags=[(42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)])
    return pixels


@pytest.mark.parametrize("ome", [True, False])
def test_bands_picked_by_the_names_the_files_give(tmp_path, ome):
    from lomar.data.read import band_names

    path = tmp_path / ("cells.ome.tif" if ome else "scene.tif")
    names = ["DAPI", "GFP", "Cy5"] if ome else ["Blue", "Green", "NIR"]
    _named(path, names, ome)
    assert band_names(path) == names
    by_name, coords = _draw(WindowCrops(SPEC, bands=[names[2], names[0]]), path)
    by_index, same = _draw(WindowCrops(SPEC, bands=[2, 0]), path)
    assert torch.equal(coords, same) and torch.equal(by_name, by_index)
    with pytest.raises(ValueError, match=rf"asks for band 'Red', the file's bands are \[.{names[0]}"):
        _draw(WindowCrops(SPEC, bands=["Red"]), path)
    data = TiledRegions(tmp_path, SPEC, RegionSpec(48), samples_per_file=1, bands=[names[1]],
                        channels=1)
    torch.manual_seed(0)
    assert data[0][0].shape == (2, 1, 24, 24)
    unnamed = tmp_path / "plain" / "p.tif"
    unnamed.parent.mkdir()
    tifffile.imwrite(unnamed, np.zeros((40, 40, 3), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    assert band_names(unnamed) is None
    with pytest.raises(ValueError, match=r"p.tif: data.bands picks bands by name .* does not name"):
        _draw(WindowCrops(SPEC, bands=["GFP"]), unnamed)


def test_demo_scenes_and_slices_hold_16_bit_data(tmp_path):
    """The offline non-RGB demo sets: 6 named uint16 bands in both layouts, and one-band
    16-bit PNGs, with values an 8-bit file cannot hold; the same bytes from the same
    seed; a complete set is reused."""
    from lomar.data import DEMO_BAND_NAMES, build_demo_bands, build_demo_grey16
    from lomar.data.read import band_names

    scenes = build_demo_bands(tmp_path / "a", num_images=3, size=64, seed=0)
    files = sorted(scenes.glob("scene_*.tif"))
    assert len(files) == 3
    with tifffile.TiffFile(files[0]) as tiled, tifffile.TiffFile(files[1]) as planar:
        assert tiled.pages[0].is_tiled and planar.pages[0].planarconfig == 2
    for path in files:
        pixels = read_image(path)
        assert pixels.shape == (6, 64, 64) and pixels.dtype == torch.uint16
        assert band_names(path) == list(DEMO_BAND_NAMES)
        assert int(pixels[3].int().max()) > 255 and (pixels[:3].int() % 257 != 0).any()
    again = build_demo_bands(tmp_path / "b", num_images=3, size=64, seed=0)
    assert all((again / f.name).read_bytes() == f.read_bytes() for f in files)
    files[0].unlink()
    (scenes / ".demo_bands").unlink()  # the stamp, written last, marks a finished build
    build_demo_bands(scenes, num_images=3, size=64, seed=0)  # an interrupted one is redone
    assert (again / files[0].name).read_bytes() == files[0].read_bytes()
    slices = build_demo_grey16(tmp_path / "g", num_images=2, size=64, seed=0)
    for path in sorted(slices.glob("slice_*.png")):
        pixels = read_image(path)
        assert pixels.shape == (1, 64, 64) and pixels.dtype == torch.uint16
        assert 255 < int(pixels.int().max()) < 4500  # 12-bit counts plus noise and offset
