"""lomar.data.open_tiled: every layout and codec it reads, built here with tifffile
(1000 x 1300 images, 256-pixel tiles, 4 levels), read back bit for bit against the
arrays written (lossless codecs) or tifffile's own full decode (JPEG: the same
decoder); only the touched tiles decoded; the cache bound; pickling and file
handles; the physical pixel size rules; every bad file refused with its name."""

import gc
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import tifffile
import torch

from lomar.data import TiledImage, TiledImageError, open_tiled
from lomar.data import tiled as tiled_module
from lomar.data.tiled import TileCache

H, W, T = 1000, 1300, 256


def make_image(dtype=np.uint8, bands=3, seed=0, h=H, w=W):
    """Smooth gradients plus noise (codecs compress it, yet every value matters)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (k + 1) + y * (bands - k)) % 251 for k in range(bands)], axis=2)
    if np.dtype(dtype).kind == "f":
        return (base / 251 + rng.random((h, w, bands)) * 1e-3).astype(dtype)
    scale = 257 if np.dtype(dtype).itemsize == 2 else 1
    noise = rng.integers(0, 4 * scale, (h, w, bands))
    return (base * scale + noise).clip(0, np.iinfo(dtype).max).astype(dtype)


def pyramid(image):
    levels = [image]
    while max(levels[-1].shape[:2]) > T:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    return levels


def stored(a, planar):
    """The array as tifffile takes it: (H, W) for one band, (S, H, W) if planar."""
    if a.shape[2] == 1:
        return a[:, :, 0]
    return np.ascontiguousarray(np.moveaxis(a, 2, 0)) if planar else a


def photometric(bands):
    return "rgb" if bands == 3 else "minisblack"


def write_pages(path, levels, reduced=True, planar=False, **kw):
    """Levels as successive pages (libvips, bfconvert, lomar convert, COG)."""
    with tifffile.TiffWriter(path) as tif:
        for k, a in enumerate(levels):
            tif.write(stored(a, planar), tile=(T, T), photometric=photometric(a.shape[2]),
                      planarconfig="separate" if planar else "contig", metadata=None,
                      subfiletype=1 if k and reduced else 0, **kw)
    return path


def write_subifds(path, levels, **kw):
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(T, T), subifds=len(levels) - 1, metadata=None,
                  photometric=photometric(levels[0].shape[2]), **kw)
        for a in levels[1:]:
            tif.write(a, tile=(T, T), subfiletype=1, metadata=None,
                      photometric=photometric(a.shape[2]), **kw)
    return path


def write_ome_subifds(path, levels, **kw):
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(levels[0], tile=(T, T), subifds=len(levels) - 1, photometric="rgb",
                  metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **kw)
        for a in levels[1:]:
            tif.write(a, tile=(T, T), subfiletype=1, photometric="rgb", **kw)
    return path


def write_ome_series(path, levels, **kw):
    """One OME image per resolution (Bio-Formats' flattened resolutions)."""
    with tifffile.TiffWriter(path, ome=True) as tif:
        for a in levels:
            tif.write(a, tile=(T, T), photometric="rgb", metadata={"axes": "YXS"}, **kw)
    return path


SVS_DESCRIPTION = ("Aperio Image Library v12.0.15 \r\n1300x1000 [0,0 1300x1000] (256x256) "
                   "JPEG/RGB Q=70|AppMag = 40|MPP = 0.2502|ScanScope ID = SS1234")


def write_svs(path, levels, **kw):
    """Aperio's layout: level 0, a stripped thumbnail, the other levels, then the
    label (reduced, stripped) and the macro (NewSubfileType 9)."""
    thumb = np.ascontiguousarray(levels[0][::8, ::8])
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(T, T), photometric="rgb", description=SVS_DESCRIPTION,
                  metadata=None, **kw)
        tif.write(thumb, photometric="rgb", description="Aperio thumbnail", metadata=None)
        for a in levels[1:]:
            tif.write(a, tile=(T, T), photometric="rgb", description="Aperio level",
                      metadata=None, **kw)
        tif.write(thumb[:60, :80], photometric="rgb", subfiletype=1, description="label",
                  metadata=None)
        tif.write(thumb[:50, :90], photometric="rgb", subfiletype=9, description="macro",
                  metadata=None)
    return path


def geokeys(model=1, crs=32633, linear=None):
    keys = [(1024, model), (1025, 1)]
    if model == 1:
        keys.append((3072, crs))
    else:
        keys.append((2048, 4326))
    if linear is not None:
        keys.append((3076, linear))
    values = [1, 1, 0, len(keys)]
    for key, value in keys:
        values += [key, 0, 1, value]
    return values


def write_cog(path, levels, scale=0.5, keys=None, **kw):
    """Cloud-optimised GeoTIFF: overviews as reduced pages, each followed by its
    1-bit mask (NewSubfileType 4 and 5), GeoTIFF tags on level 0."""
    keys = geokeys() if keys is None else keys
    geo = [(33550, "d", 3, (scale, scale, 0.0), True),
           (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4649776.0, 0.0), True),
           (34735, "H", len(keys), keys, True)]
    with tifffile.TiffWriter(path) as tif:
        for k, a in enumerate(levels):
            tif.write(a, tile=(T, T), photometric="rgb", subfiletype=1 if k else 0,
                      metadata=None, extratags=geo if k == 0 else None, **kw)
            tif.write(np.ones(a.shape[:2], bool), tile=(T, T), subfiletype=5 if k else 4,
                      metadata=None, compression="zlib")
    return path


def check(img, levels, boxes=12, seed=0):
    """Every level read whole, and random boxes of it (crossing tiles, at the edges),
    equal to the expected arrays (H, W, B), bit for bit."""
    assert img.levels == [a.shape[:2] for a in levels]
    assert img.bands == levels[0].shape[2]
    assert img.downsamples[0] == 1.0
    rng = np.random.default_rng(seed)
    for k, ref in enumerate(levels):
        full = img.read_level(k)
        assert full.dtype == img.dtype and full.shape == (ref.shape[2],) + ref.shape[:2]
        np.testing.assert_array_equal(full.permute(1, 2, 0).numpy(), ref, err_msg=f"level {k}")
        h, w = ref.shape[:2]
        corners = [(0, 0, 1, 1), (h - 1, w - 1, 1, 1), (h - 7, w - 300 if w > 300 else 0, 7,
                                                         min(300, w))]
        for _ in range(boxes):
            top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
            corners.append((top, left, int(rng.integers(1, h - top + 1)),
                            int(rng.integers(1, w - left + 1))))
        for top, left, bh, bw in corners:
            box = img.read(k, top, left, bh, bw).permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(box, ref[top:top + bh, left:left + bw],
                                          err_msg=f"level {k} box {(top, left, bh, bw)}")


@pytest.fixture(scope="module")
def rgb():
    return pyramid(make_image())


# -- layouts ---------------------------------------------------------------------------

LAYOUTS = {
    "pages-reduced": (write_pages, dict(reduced=True)),
    "pages-plain": (write_pages, dict(reduced=False)),
    "subifds": (write_subifds, {}),
    "ome-subifds": (write_ome_subifds, {}),
    "ome-series": (write_ome_series, {}),
    "svs": (write_svs, {}),
    "cog": (write_cog, {}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_read_bit_for_bit(layout, rgb, tmp_path):
    write, kw = LAYOUTS[layout]
    path = write(tmp_path / f"{layout}.tif", rgb, compression="zlib", **kw)
    img = open_tiled(path)
    assert img.backend == "tifffile" and img.tile_size == (T, T) and img.dtype == torch.uint8
    assert img.format == {"ome-subifds": "ome-tiff", "ome-series": "ome-tiff", "svs": "svs",
                          "cog": "geotiff"}.get(layout, "tiff")
    check(img, rgb)
    assert img.downsamples == [W / a.shape[1] for a in rgb]


def test_svs_ignores_thumbnail_label_macro_and_reads_its_mpp(rgb, tmp_path):
    img = open_tiled(write_svs(tmp_path / "slide.svs", rgb, compression="jpeg"))
    assert img.levels == [a.shape[:2] for a in rgb]
    assert img.mpp == pytest.approx(0.2502)
    for k in range(len(rgb)):  # JPEG: against tifffile's own decode of the level
        ref = tifffile.imread(tmp_path / "slide.svs", series=0, level=k)
        np.testing.assert_array_equal(img.read_level(k).permute(1, 2, 0).numpy(), ref)


CODECS = {
    "none": dict(compression=None),
    "lzw": dict(compression="lzw", predictor=True),
    "deflate": dict(compression="zlib"),
    "zstd": dict(compression="zstd", predictor=True),
    "packbits": dict(compression="packbits"),
    "webp-lossless": dict(compression="webp", compressionargs={"lossless": True}),
    "jpeg2000-lossless": dict(compression="jpeg2000", compressionargs={"reversible": True}),
}


@pytest.mark.parametrize("codec", CODECS)
def test_lossless_codecs_bit_for_bit(codec, rgb, tmp_path):
    img = open_tiled(write_pages(tmp_path / f"{codec}.tif", rgb, **CODECS[codec]))
    check(img, rgb, boxes=4)


@pytest.mark.parametrize("quality", [90, 40])
def test_jpeg_tiles_equal_tifffile_decode(quality, rgb, tmp_path):
    path = write_pages(tmp_path / "jpeg.tif", rgb, compression="jpeg",
                       compressionargs={"level": quality})
    expected = [tifffile.imread(path, level=k) for k in range(len(rgb))]
    check(open_tiled(path), expected, boxes=6)


@pytest.mark.parametrize("dtype,bands,planar,codec", [
    (np.uint16, 1, False, "zstd"),
    (np.uint16, 4, True, "deflate"),
    (np.uint16, 3, False, "lzw"),
    (np.float32, 2, False, "deflate"),
    (np.float32, 5, True, "zstd"),
    (np.uint8, 7, False, "zstd"),
    (np.uint8, 3, True, "none"),
    (np.int16, 1, False, "none"),
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_dtypes_bands_chunky_and_planar(dtype, bands, planar, codec, tmp_path):
    levels = pyramid(make_image(dtype, bands))
    img = open_tiled(write_pages(tmp_path / "x.tif", levels, planar=planar, **CODECS[codec]))
    assert img.dtype == {np.uint16: torch.uint16, np.float32: torch.float32,
                         np.uint8: torch.uint8, np.int16: torch.int16}[dtype]
    assert img.numpy_dtype == np.dtype(dtype)
    check(img, levels, boxes=4)


def test_small_untiled_file_is_read_by_strips(tmp_path):
    a = make_image(np.uint16, 3, h=300, w=200)
    path = tmp_path / "strips.tif"
    tifffile.imwrite(path, a, rowsperstrip=64, compression="lzw", photometric="rgb")
    img = open_tiled(path, tile_cache_mb=0)
    assert img.levels == [(300, 200)] and img.tile_size == (64, 200)
    check(img, [a])
    img.reset_stats()
    img.read(0, 70, 10, 60, 5)  # rows 70..129: strips 1 and 2
    assert img.stats["tiles_decoded"] == 2


def test_channels_as_pages_become_bands(tmp_path):
    """OME-TIFF with one page per channel (axes CYX): the channels are the bands."""
    a = make_image(np.uint16, 3)
    path = tmp_path / "channels.ome.tif"
    tifffile.imwrite(path, np.moveaxis(a, 2, 0), tile=(T, T), ome=True, metadata={"axes": "CYX"},
                     photometric="minisblack", compression="zlib")
    img = open_tiled(path)
    assert img.bands == 3
    check(img, [a], boxes=4)


# -- only the touched tiles, the cache ----------------------------------------------------

def test_only_the_touched_tiles_are_read_and_decoded(rgb, tmp_path, monkeypatch):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    with tifffile.TiffFile(path) as tf:
        offsets = tf.pages[0].dataoffsets
        counts = tf.pages[0].databytecounts
    reads = []
    real = tiled_module._read_at
    monkeypatch.setattr(tiled_module, "_read_at",
                        lambda fd, offset, count: reads.append((offset, count)) or
                        real(fd, offset, count))
    img = open_tiled(path, tile_cache_mb=0)
    img.read(0, 250, 500, 10, 20)  # rows 250..259 x cols 500..519: tiles (0,1) (0,2) (1,1) (1,2)
    cols = -(-W // T)
    touched = [r * cols + c for r in (0, 1) for c in (1, 2)]
    assert sorted(reads) == sorted((offsets[i], counts[i]) for i in touched)
    assert img.stats == dict(tiles_decoded=4, cache_hits=0,
                             bytes_read=sum(counts[i] for i in touched))
    reads.clear()
    img.read(0, 0, 0, 1, 1)
    assert reads == [(offsets[0], counts[0])]


def test_cache_hits_and_reset(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    img = open_tiled(path, tile_cache_mb=16)
    img.cache.clear()
    img.read(1, 0, 0, 300, 300)  # 2 x 2 tiles of level 1
    assert img.stats["tiles_decoded"] == 4 and img.stats["cache_hits"] == 0
    img.read(1, 10, 10, 300, 300)
    assert img.stats["tiles_decoded"] == 4 and img.stats["cache_hits"] == 4
    other = open_tiled(path, tile_cache_mb=16)  # same size: the same process-wide cache
    other.read(1, 0, 0, 5, 5)
    assert other.stats == dict(tiles_decoded=0, cache_hits=1, bytes_read=0)
    img.reset_stats()
    assert img.stats == dict(tiles_decoded=0, cache_hits=0, bytes_read=0)


def test_cache_never_exceeds_its_bound(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    img = open_tiled(path, tile_cache_mb=0.5)  # 524288 bytes: two 256 x 256 x 3 tiles
    cache = img.cache
    assert cache.capacity == 2**19
    cache.clear()
    rng = np.random.default_rng(1)
    for _ in range(40):
        top, left = int(rng.integers(0, H - 100)), int(rng.integers(0, W - 100))
        box = img.read(0, top, left, 100, 100)
        assert cache.nbytes <= cache.capacity
        np.testing.assert_array_equal(box.permute(1, 2, 0).numpy(),
                                      rgb[0][top:top + 100, left:left + 100])
    assert 0 < len(cache) <= 2


def test_tile_cache_is_lru_in_bytes():
    cache = TileCache(100)
    for i in range(5):
        cache.put(i, f"v{i}", 30)
        assert cache.nbytes <= 100
    assert [k for k in range(5) if cache.get(k) is not None] == [2, 3, 4]
    cache.get(2)  # now the most recent
    cache.put(5, "v5", 30)
    assert cache.get(3) is None and cache.get(2) == "v2"
    cache.put("big", "x", 101)  # larger than the cache: not kept
    assert cache.get("big") is None and cache.nbytes <= 100


# -- pickling, workers, file handles ------------------------------------------------------

def fds():
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")


@needs_proc
def test_pickles_without_its_file_and_reopens_lazily(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    img = open_tiled(path)
    img.read(0, 0, 0, 10, 10)
    data = pickle.dumps(img)
    before = fds()
    copy = pickle.loads(data)
    assert fds() == before  # nothing opened until the first read
    assert copy.levels == img.levels and copy.stats["tiles_decoded"] == 0
    np.testing.assert_array_equal(copy.read(2, 5, 6, 100, 200).numpy(),
                                  img.read(2, 5, 6, 100, 200).numpy())
    assert fds() == before + 1
    copy.close()
    assert fds() == before


@needs_proc
def test_no_file_handle_leaks(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    gc.collect()
    before = fds()
    img = open_tiled(path, tile_cache_mb=0)
    for i in range(200):
        img.read(i % 4, i % 100, i % 90, 20, 30)
    img.close()
    for _ in range(30):
        with open_tiled(path) as other:
            other.read(0, 0, 0, 5, 5)
        lost = pickle.loads(pickle.dumps(open_tiled(path)))  # dropped without close()
        lost.read(1, 0, 0, 5, 5)
        del lost
    gc.collect()
    assert fds() == before


def test_a_changed_file_is_refused_after_unpickling(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb, compression="zlib")
    data = pickle.dumps(open_tiled(path))
    with open(path, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(TiledImageError, match="changed since it was opened"):
        pickle.loads(data).read(0, 0, 0, 1, 1)


class Windows(torch.utils.data.Dataset):
    def __init__(self, image):
        self.image = image

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.image.read(1, 20 * i, 30 * i, 64, 64)


@pytest.mark.skipif(sys.platform != "linux", reason="fork-based workers")
def test_dataloader_workers_read_the_same_pixels(rgb, tmp_path):
    img = open_tiled(write_pages(tmp_path / "p.tif", rgb, compression="zlib"))
    loader = torch.utils.data.DataLoader(Windows(img), batch_size=4, num_workers=2,
                                         multiprocessing_context="fork")
    got = torch.cat(list(loader))
    expected = torch.stack([Windows(img)[i] for i in range(8)])
    assert torch.equal(got, expected)


# -- boxes, thumbnails, levels ------------------------------------------------------------

def test_box_outside_the_level_is_a_value_error(rgb, tmp_path):
    img = open_tiled(write_pages(tmp_path / "p.tif", rgb, compression="zlib"))
    with pytest.raises(ValueError, match=r"box \(top=490, left=0, height=20, width=5\) is not "
                                         r"inside level 1, 500 x 650"):
        img.read(1, 490, 0, 20, 5)
    for box in [(0, -1, 1, 1), (0, 0, 0, 5), (0, 640, 1, 11)]:
        with pytest.raises(ValueError, match="not inside level 1"):
            img.read(1, *box)
    with pytest.raises(ValueError, match="no level 4"):
        img.read(4, 0, 0, 1, 1)
    with pytest.raises(TypeError, match="top must be an integer"):
        img.read(0, 1.5, 0, 1, 1)


def test_thumbnail_and_level_choice(rgb, tmp_path):
    img = open_tiled(write_pages(tmp_path / "p.tif", rgb, compression="zlib"))
    thumb = img.thumbnail(200)
    assert thumb.shape == (3, 154, 200) and thumb.dtype == torch.uint8
    img.reset_stats()
    img.thumbnail(163)  # the coarsest level, 125 x 163, as it is
    assert img.stats["tiles_decoded"] == 1
    assert torch.equal(img.thumbnail(163), img.read_level(3))
    assert img.level_for_downsample(1.0) == 0
    assert img.level_for_downsample(3.9) == 1
    assert img.level_for_downsample(100) == 3
    with pytest.raises(ValueError, match="more than max_pixels"):
        img.read_level(0, max_pixels=1000)


def test_thumbnail_keeps_16_bit(tmp_path):
    levels = pyramid(make_image(np.uint16, 1))
    img = open_tiled(write_pages(tmp_path / "p.tif", levels, compression="zstd"))
    thumb = img.thumbnail(100)
    assert thumb.dtype == torch.uint16 and thumb.shape == (1, 77, 100)
    assert int(thumb.to(torch.int32).max()) > 255


# -- physical pixel size ------------------------------------------------------------------

def small(tmp_path, name, **kw):
    path = tmp_path / name
    tifffile.imwrite(path, make_image(h=64, w=64), tile=(32, 32), photometric="rgb", **kw)
    return path


@pytest.mark.parametrize("resolution,unit,mpp", [
    ((40000, 40000), "CENTIMETER", 0.25),        # microscopy, pixels per cm
    ((101600, 101600), "INCH", 0.25),            # 0.25 um in pixels per inch
    ((1000, 1000), "INCH", 25.4),                # a 1000-dpi scan
    ((72, 72), "INCH", None),                    # the photo default
    ((300, 300), "INCH", None),                  # another photo default
    ((10, 10), "CENTIMETER", None),              # libvips' default (1 px/mm)
    ((40000, 20000), "CENTIMETER", None),        # pixels that are not square
    ((40000, 40000), "NONE", None),              # no unit
])
def test_mpp_from_tiff_resolution(resolution, unit, mpp, tmp_path):
    path = small(tmp_path, "r.tif", resolution=resolution, resolutionunit=unit, metadata=None)
    assert open_tiled(path).mpp == (pytest.approx(mpp) if mpp else None)


@pytest.mark.parametrize("size,unit,mpp", [(0.25, "µm", 0.25), (250, "nm", 0.25),
                                           (0.001, "mm", 1.0), (2, None, 2.0)])
def test_mpp_from_ome(size, unit, mpp, tmp_path):
    meta = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit:
        meta |= {"PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit}
    path = small(tmp_path, "o.ome.tif", ome=True, metadata=meta)
    assert open_tiled(path).mpp == pytest.approx(mpp)


@pytest.mark.parametrize("keys,mpp", [
    (geokeys(model=1, crs=32633), 0.5e6),                   # WGS 84 / UTM 33N: metres
    (geokeys(model=1, crs=2263, linear=9001), 0.5e6),       # explicit metre
    (geokeys(model=1, crs=2263), None),                     # a projection in US feet
    (geokeys(model=2), None),                               # geographic: degrees
])
def test_mpp_from_geotiff(keys, mpp, rgb, tmp_path):
    img = open_tiled(write_cog(tmp_path / "g.tif", rgb[2:], keys=keys, compression="zlib",
                               resolution=(40000, 40000), resolutionunit="CENTIMETER"))
    assert img.format == "geotiff"
    assert img.mpp == (pytest.approx(mpp) if mpp else None)  # never the TIFF resolution


def test_no_mpp_when_the_file_has_none(tmp_path):
    assert open_tiled(small(tmp_path, "n.tif", metadata=None)).mpp is None


# -- bad files ----------------------------------------------------------------------------

def patch_tag(path, code, values: dict, page=0):
    """Overwrites entries of a tag's value array in the file."""
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages[page].tags[code]
        fmt = tf.byteorder + {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
        where = tag.valueoffset
    with open(path, "r+b") as f:
        for i, value in values.items():
            f.seek(where + i * struct.calcsize(fmt))
            f.write(struct.pack(fmt, value))


@pytest.fixture
def single(tmp_path):
    """One level, 4 x 6 tiles of deflate, and its tile offsets and byte counts."""
    a = make_image()
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, a, tile=(T, T), compression="zlib", photometric="rgb", metadata=None)
    with tifffile.TiffFile(path) as tf:
        return path, a, list(tf.pages[0].dataoffsets), list(tf.pages[0].databytecounts)


def test_tile_past_the_end_of_the_file(single):
    path, _, _, counts = single
    patch_tag(path, 324, {7: os.path.getsize(path) - 10})  # TileOffsets
    with pytest.raises(TiledImageError, match=rf"{path}: level 0 tile \(row 1, col 1\) at offset "
                                              rf"\d+, {counts[7]} bytes, goes past the end"):
        open_tiled(path)


def test_file_truncated_after_it_was_opened(single):
    path, _, offsets, counts = single
    img = open_tiled(path, tile_cache_mb=0)
    last = max(range(len(offsets)), key=lambda i: offsets[i])
    os.truncate(path, offsets[last] + counts[last] // 2)
    row, col = divmod(last, 6)
    with pytest.raises(TiledImageError, match=rf"{path}: level 0 tile \(row {row}, col {col}\)"
                                              rf".*truncated"):
        img.read(0, row * T, col * T, 1, 1)


def test_tile_with_a_wrong_offset(single):
    path, a, offsets, _ = single
    patch_tag(path, 324, {2: offsets[2] + 17})
    img = open_tiled(path)
    np.testing.assert_array_equal(img.read(0, 0, 0, 10, 10).permute(1, 2, 0).numpy(),
                                  a[:10, :10])  # the other tiles are fine
    with pytest.raises(TiledImageError, match=rf"{path}: level 0 tile \(row 0, col 2\) at "
                                              rf"offset {offsets[2] + 17}.*cannot be decoded "
                                              rf"as ADOBE_DEFLATE"):
        img.read(0, 0, 2 * T, 1, 1)


def test_tile_with_a_wrong_byte_count(single):
    path, _, _, counts = single
    patch_tag(path, 325, {3: counts[3] // 3})  # TileByteCounts
    with pytest.raises(TiledImageError, match=r"tile \(row 0, col 3\).*cannot be decoded"):
        open_tiled(path).read(0, 0, 3 * T, 1, 1)


def test_uncompressed_tile_too_short(tmp_path):
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, make_image(), tile=(T, T), photometric="rgb", metadata=None)
    with tifffile.TiffFile(path) as tf:
        count = tf.pages[0].databytecounts[1]
    patch_tag(path, 325, {1: count - 100})
    with pytest.raises(TiledImageError, match=r"tile \(row 0, col 1\)"):
        open_tiled(path).read(0, 0, T, 1, 1)


def test_sparse_tiles_are_an_error_unless_filled(single):
    path, a, _, _ = single
    patch_tag(path, 324, {8: 0})
    patch_tag(path, 325, {8: 0})
    with pytest.raises(TiledImageError, match=rf"{path}: level 0 tile \(row 1, col 2\) is missing "
                                              rf"\(offset 0, 0 bytes; 1 missing in the level\): "
                                              rf"a sparse file"):
        open_tiled(path)
    img = open_tiled(path, missing_tiles="fill")
    got = img.read_level(0).permute(1, 2, 0).numpy()
    assert (got[T:2 * T, 2 * T:3 * T] == 0).all()
    expected = a.copy()
    expected[T:2 * T, 2 * T:3 * T] = 0
    np.testing.assert_array_equal(got, expected)


def test_unknown_codec_names_it_and_imagecodecs(single):
    path = single[0]
    with tifffile.TiffFile(path) as tf:
        where = tf.pages[0].tags[259].valueoffset  # Compression
    with open(path, "r+b") as f:
        f.seek(where)
        f.write(struct.pack("<H", 50099))
    with pytest.raises(TiledImageError, match=rf"{path}: level 0 is compressed with unknown "
                                              rf"\(TIFF compression 50099\).*imagecodecs"):
        open_tiled(path)


def test_codec_missing_from_this_installation(rgb, tmp_path, monkeypatch):
    path = write_pages(tmp_path / "z.tif", rgb, compression="zstd")
    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", {1: lambda x: x})  # no codecs at all
    with pytest.raises(TiledImageError, match=r"compressed with ZSTD \(TIFF compression 50000\), "
                                              r"which cannot be decoded here.*pip install "
                                              r"imagecodecs"):
        open_tiled(path)


def test_huge_untiled_file_is_refused_with_the_convert_command(tmp_path):
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, np.zeros((8192, 8193), np.uint8), rowsperstrip=8192,
                     compression="zlib")
    with pytest.raises(TiledImageError, match=r"level 0 is not tiled \(8192 x 8193 pixels in "
                                              r"strips of 8192 rows\).*lomar convert SRC DST"):
        open_tiled(path)
    small_limit = tmp_path / "s.tif"
    tifffile.imwrite(small_limit, make_image(h=100, w=100), photometric="rgb")
    with pytest.raises(TiledImageError, match="max_untiled_pixels"):
        open_tiled(small_limit, max_untiled_pixels=5000)
    assert open_tiled(small_limit).levels == [(100, 100)]


def test_stacks_are_refused(tmp_path):
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint8), tile=(32, 32), ome=True,
                     metadata={"axes": "ZYX"})
    with pytest.raises(TiledImageError, match="not stacks"):
        open_tiled(path)


def test_not_a_tiled_image(tmp_path):
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.fromarray(make_image(h=20, w=20)).save(png)
    with pytest.raises(TiledImageError, match=r"photo.png: not a tiled image.*lomar convert"):
        open_tiled(png)
    with pytest.raises(FileNotFoundError):
        open_tiled(tmp_path / "nothing.tif")
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(TiledImageError, match="garbage.tif: not a readable TIFF file"):
        open_tiled(garbage)


def test_missing_openslide_names_the_extra(rgb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide fails
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_text("[GENERAL]\n")
    with pytest.raises(ImportError, match=r"slide.mrxs: a MRXS slide is read through OpenSlide, "
                                          r"which is not installed: pip install 'lomar\[slides\]'"):
        open_tiled(mrxs)
    scn = tmp_path / "slide.scn"  # a TIFF that tifffile takes for Leica SCN: OpenSlide's
    tifffile.imwrite(scn, make_image(h=64, w=64), tile=(32, 32), photometric="rgb",
                     description='<?xml version="1.0"?><scn xmlns="http://www.leica-'
                                 'microsystems.com/scn/2010/10/01"></scn>', metadata=None)
    with pytest.raises(ImportError, match=r"a SCN slide is read through OpenSlide.*"
                                          r"lomar\[slides\]"):
        open_tiled(scn)
    with pytest.raises(ImportError, match=r"lomar\[slides\]"):
        open_tiled(write_pages(tmp_path / "p.tif", rgb), backend="openslide")


def test_bad_arguments(rgb, tmp_path):
    path = write_pages(tmp_path / "p.tif", rgb)
    with pytest.raises(ValueError, match="backend must be"):
        open_tiled(path, backend="pillow")
    with pytest.raises(ValueError, match="missing_tiles must be"):
        open_tiled(path, missing_tiles="zero")
    with pytest.raises(ValueError, match="tile_cache_mb must be >= 0"):
        open_tiled(path, tile_cache_mb=-1)
    assert isinstance(open_tiled(path), TiledImage)
    assert "levels=[(1000, 1300)" in repr(open_tiled(path))


# -- OpenSlide ----------------------------------------------------------------------------

try:
    import openslide
except ImportError:
    openslide = None
needs_openslide = pytest.mark.skipif(openslide is None,
                                     reason="needs OpenSlide: pip install 'lomar[slides]'")


@needs_openslide
def test_openslide_and_tifffile_agree_on_a_generic_tiled_tiff(tmp_path):
    """A JPEG pyramid in reduced pages (the layout lomar convert writes; its own output
    is compared in test_convert.py), odd sizes so that the downsamples are not powers
    of two: both backends, every level, the same bits."""
    levels = [make_image(h=1501, w=2500)]
    while max(levels[-1].shape[:2]) > T:
        levels.append(np.ascontiguousarray(levels[-1][::2, ::2]))
    path = write_pages(tmp_path / "odd.tif", levels, compression="jpeg")
    a, b = open_tiled(path), open_tiled(path, backend="openslide")
    assert b.backend == "openslide" and b.format == "generic-tiff"
    assert a.levels == b.levels and a.bands == b.bands == 3 and b.dtype == torch.uint8
    # tifffile's downsample is width over width; OpenSlide averages both axes' ratios
    assert b.downsamples == pytest.approx(a.downsamples, rel=0.01)
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(a.levels):
        assert torch.equal(a.read_level(k), b.read_level(k)), f"level {k}"
        for _ in range(3):
            top, left = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
            box = (k, top, left, int(rng.integers(1, h - top)), int(rng.integers(1, w - left)))
            assert torch.equal(a.read(*box), b.read(*box)), box
    copy = pickle.loads(pickle.dumps(b))
    assert torch.equal(copy.read(1, 3, 4, 50, 60), b.read(1, 3, 4, 50, 60))


@needs_openslide
def test_openslide_transparent_pixels_become_the_background():
    from PIL import Image

    class FakeSlide:
        def read_region(self, location, level, size):
            rgba = np.zeros((size[1], size[0], 4), np.uint8)
            rgba[:, :2] = (10, 20, 30, 255)  # opaque; the rest transparent
            return Image.fromarray(rgba, "RGBA")

    backend = object.__new__(tiled_module._SlideBackend)
    backend.name, backend.slide, backend.background = "fake", FakeSlide(), "#f0e0d0"
    backend.meta = dict(levels=[(4, 4)], tile_sizes=[(4, 4)], downsamples=[1.0])
    (tile,), _ = backend.tile(0, 0, 0)
    assert tile.shape == (4, 4, 3)
    assert (tile[:, :2] == (10, 20, 30)).all() and (tile[:, 2:] == (0xF0, 0xE0, 0xD0)).all()
