"""Samples from tiled, pyramidal files (lomar.data.regions): the windows equal, bit for
bit, the windows of the same crop rendered from the whole decoded level; only the tiles
under the windows are decoded; the level follows the crop's reduction; regions land on
the foreground, whose mask is cached; bad files are skipped and named, files the
pipelines cannot take are refused before training; draws are functions of the item."""

import pickle
import warnings

import numpy as np
import pytest
import tifffile
import torch

from lomar.data import RegionSpec, TiledRegions, WindowSpec, open_tiled, regions
from lomar.engine.seeding import SeededItems, seed_all
from lomar_ops import resize_regions
from tiled_files import pyramid, write_pyramid

SPEC = WindowSpec(input_size=64, patch_size=8, window_size=3, num_windows=2)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    arrays = pyramid()
    write_pyramid(folder / "a.tif", arrays, mpp=0.5)
    return folder, arrays


def seeded(fn, seed=0):
    seed_all(seed, devices=False)
    return fn()


def test_windows_equal_the_whole_level_render_bit_for_bit(slide, monkeypatch):
    folder, arrays = slide
    data = TiledRegions(folder, SPEC, RegionSpec(512), samples_per_file=8)
    calls = []
    render = regions.render_tiled_windows

    def spy(image, level, box, crop, coords, K, p, bands=None):
        calls.append((level, box, crop, coords))
        return render(image, level, box, crop, coords, K, p, bands)

    monkeypatch.setattr(regions, "render_tiled_windows", spy)
    levels_seen = set()
    for item in range(8):
        windows, coords, label = seeded(lambda: data[item], seed=item)
        level, box, crop, _ = calls[-1]
        levels_seen.add(level)
        full = torch.from_numpy(arrays[level])  # (H, W, 3) the whole decoded level
        side = SPEC.window_size * SPEC.patch_size
        corners = [(y0, x0, side, side) for y0, x0, _ in
                   regions.window_boxes(crop, coords, SPEC.window_size, SPEC.patch_size)]
        want = resize_regions(full, box, crop.size, corners)
        want = want.flip(-1) if crop.flip else want
        assert windows.dtype == torch.uint8 and label == -1
        assert torch.equal(windows, want), (item, level, box)
    assert len(levels_seen) > 1  # crops of different reductions read different levels


def test_the_canvas_outside_the_windows_is_never_read(slide, monkeypatch):
    folder, _ = slide
    data = TiledRegions(folder, SPEC, RegionSpec(512), samples_per_file=4)
    outs = []
    for fill in (0, 255):
        monkeypatch.setattr(regions, "_new_canvas",
                            lambda shape, dtype, v=fill: torch.full(shape, v, dtype=dtype))
        outs.append([seeded(lambda i=i: data[i][0], seed=i) for i in range(4)])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_only_the_windows_tiles_are_decoded_at_the_crops_level(tmp_path):
    arrays = pyramid(levels=5, size=(2048, 2048))
    write_pyramid(tmp_path / "big.tif", arrays)
    image = open_tiled(tmp_path / "big.tif")
    # A crop of 1024 level-0 pixels to 64: shrink 16, the level of downsample 16.
    assert regions._level_for(image, 16.0) == 4 and regions._level_for(image, 15.9) == 3
    assert regions._level_for(image, 0.5) == 0
    data = TiledRegions(tmp_path, WindowSpec(256, 16, 2, 1), RegionSpec(2048),
                        samples_per_file=20)
    tiles = []
    for i in range(20):
        image, _ = data._source(0)
        image.reset_stats()
        seeded(lambda i=i: data.sample(0), seed=i)
        tiles.append(image.stats["tiles_decoded"] + image.stats["cache_hits"])
    # One 32 x 32 window of a 256 crop (crops of 0.2 to 1 of 2048): a few tiles of a level,
    # never the level (level 0 alone has 1024 tiles of 64).
    assert max(tiles) <= 16, tiles


def test_regions_fall_on_the_foreground_and_the_mask_is_cached(tmp_path, monkeypatch):
    arrays = pyramid(size=(2048, 2048), background=True)
    write_pyramid(tmp_path / "s.tif", arrays)
    masks = tmp_path / "masks"
    spec = RegionSpec(256, min_foreground=0.6)
    data = TiledRegions(tmp_path, SPEC, spec, samples_per_file=30, mask_dir=masks)
    assert len(list(masks.glob("*.pt"))) == 1
    image, positions = data._source(0)
    tissue = torch.from_numpy(arrays[0]).float().mean(-1) < 200
    for i in range(30):
        top, left = seeded(positions.draw, seed=i)
        t, l = int(top), int(left)
        share = float(tissue[t:t + 256, l:l + 256].float().mean())
        assert share >= 0.45, (i, top, left, share)  # the mask's cells are 2048/1024 wide
    computed = []
    original = regions.foreground_mask
    monkeypatch.setattr(regions, "foreground_mask",
                        lambda img: computed.append(1) or original(img))
    TiledRegions(tmp_path, SPEC, spec, samples_per_file=2, mask_dir=masks)
    assert computed == []  # read from the cache, not computed again


def test_otsu_splits_two_modes():
    values = torch.cat([torch.full((100,), 0.2), torch.full((300,), 0.9)])
    assert 0.2 < regions.otsu_threshold(values) < 0.9
    image = torch.full((3, 8, 8), 250, dtype=torch.uint8)
    assert not regions.foreground_mask(image).any()  # uniform: nothing
    image[:, :4] = 30  # the top half dark
    mask = regions.foreground_mask(image)
    assert mask[:4].all() and not mask[4:].any()


def test_empty_foreground_is_skipped_and_named(tmp_path):
    white = [np.full((512, 512, 3), 250, np.uint8)]
    write_pyramid(tmp_path / "blank.tif", white)
    write_pyramid(tmp_path / "tissue.tif", pyramid(levels=2, size=(512, 512), background=True))
    spec = RegionSpec(128, min_foreground=0.5)
    with pytest.warns(UserWarning, match=r"skipping .*blank.tif: .*no region of 128 pixels"):
        data = TiledRegions(tmp_path, SPEC, spec, samples_per_file=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(4):  # blank.tif's items are served by tissue.tif
            assert seeded(lambda i=i: data[i], seed=i)[0].shape == (2, 3, 24, 24)
    only_blank = tmp_path / "blank_only"
    only_blank.mkdir()
    write_pyramid(only_blank / "blank.tif", white)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="can be sampled"):
        TiledRegions(only_blank, SPEC, spec)  # before any training, not at the first item


def test_files_the_pipelines_cannot_take_are_refused_before_training(tmp_path):
    grey16 = np.random.default_rng(0).integers(0, 65535, (256, 256), dtype=np.uint16)
    with tifffile.TiffWriter(tmp_path / "g16.tif") as tif:
        tif.write(grey16, tile=(64, 64), compression="zlib")
    with pytest.raises(ValueError, match=r"take 3-band uint8 \(RGB\) images with data.bands=rgb; "
                                         r"1 of the 1 files do not give that: .*g16.tif \(1 "
                                         r"band\(s\) of uint16\)"):
        TiledRegions(tmp_path, SPEC, RegionSpec(128))


def test_every_files_header_is_checked_before_training(tmp_path):
    """A good first file does not hide a later one the pipelines cannot take, nor one
    that cannot be opened: the first stops the run before training, the second is
    skipped and named there (once: the workers' copies skip it without a word)."""
    write_pyramid(tmp_path / "a.tif", pyramid(levels=2, size=(512, 512)))
    (tmp_path / "b.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.warns(UserWarning, match=r"skipping .*b.tif"):
        data = TiledRegions(tmp_path, SPEC, RegionSpec(128), samples_per_file=1)
    copy = pickle.loads(pickle.dumps(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert seeded(lambda: copy[1])[0].shape == (2, 3, 24, 24)  # b's item, served by a
    rgba = np.random.default_rng(1).integers(0, 255, (256, 256, 4), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "c.tif") as tif:
        tif.write(rgba, tile=(64, 64), photometric="rgb", extrasamples=("unassalpha",))
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"c.tif \(4 band"):
        TiledRegions(tmp_path, SPEC, RegionSpec(128))


def test_mpp_needs_the_files_pixel_size(slide, tmp_path):
    folder, arrays = slide
    data = TiledRegions(folder, SPEC, RegionSpec(256, mpp=1.0), samples_per_file=1)
    image, positions = data._source(0)
    assert image.mpp == pytest.approx(0.5) and positions.extent == pytest.approx(512)
    write_pyramid(tmp_path / "nompp.tif", arrays[:2])
    with pytest.warns(UserWarning, match=r"nompp.tif: data.mpp = 1.0 needs the file's pixel "
                                         r"size"), pytest.raises(ValueError, match="can be sampled"):
        TiledRegions(tmp_path, SPEC, RegionSpec(256, mpp=1.0))


def test_items_are_functions_of_epoch_and_index_and_survive_pickling(slide):
    folder, _ = slide
    data = SeededItems(TiledRegions(folder, SPEC, RegionSpec(512), samples_per_file=6), seed=3)
    first = [data[(1, i)][0] for i in range(6)]
    copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker gets
    assert all(torch.equal(a, copy[(1, i)][0]) for i, a in enumerate(first))
    assert not torch.equal(data[(2, 0)][0], first[0])  # another epoch, other draws


def test_full_pipeline_gives_the_normalised_crop(slide, monkeypatch):
    folder, arrays = slide
    data = TiledRegions(folder, SPEC, RegionSpec(512), samples_per_file=2, pipeline="full")
    crop, coords, _ = seeded(lambda: data[0])
    assert crop.shape == (3, 64, 64) and crop.dtype == torch.float32 and coords.shape == (2, 2)
    assert crop.min() < -1 and crop.max() > 1  # normalised


def test_list_file_and_missing_entries(slide, tmp_path):
    folder, _ = slide
    listing = tmp_path / "slides.txt"
    listing.write_text(f"# one per line\n{folder / 'a.tif'}\n")
    assert regions.find_tiled_files(listing) == [folder / "a.tif"]
    listing.write_text("missing.svs\n")
    with pytest.raises(FileNotFoundError, match="lists files that do not exist: .*missing.svs"):
        regions.find_tiled_files(listing)
    with pytest.raises(ValueError, match="no tiled image files"):
        regions.find_tiled_files(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None
                                 else None)
