"""Gigapixel images read window by window: only the tiles a box touches are read
and decoded, at the pyramid level asked for.

:func:`open_tiled` opens a file and returns a :class:`TiledImage`:

- tiled TIFF and BigTIFF, read by tifffile (tile offsets and byte counts from the
  file's directories) with imagecodecs' codecs (JPEG, JPEG 2000, LZW, deflate,
  zstd, WebP, none, ...): generic tiled TIFF, pyramids stored as SubIFDs, as
  successive pages of decreasing size (libvips, bfconvert, ``lomar convert``),
  OME-TIFF (SubIFD levels, or one OME image per resolution), Aperio SVS (the
  levels of its first series; the Thumbnail, Label and Macro images are not
  levels), cloud-optimised GeoTIFF (overviews); chunky or planar samples, any
  number of bands, integer or floating-point samples;
- the other slide formats (MIRAX, Hamamatsu NDPI and VMS/VMU, Leica SCN, Ventana
  BIF, Philips TIFF, ...) through OpenSlide, an optional dependency
  (``pip install 'lomar[slides]'``). OpenSlide gives RGB uint8: its RGBA output
  (not premultiplied, as openslide-python returns it) is composited onto the
  slide's background colour (the ``openslide.background-color`` property, white
  when the slide has none), as openslide-python's own ``get_thumbnail`` does, so
  pixels OpenSlide marks transparent (outside the scanned area) are background.

Reading is exact: a tile is the codec's output, unconverted (the file's dtype and
bands); a file that cannot be read as it says raises :class:`TiledImageError`
naming the file and, for a tile, its level, row, column, offset and byte count.
The rules (docs/tiled-images.md):

- missing (sparse) tiles, offset or byte count 0, are an error by default
  (``missing_tiles="fill"`` reads them as the file's fill value, as tifffile does);
- a tile whose bytes go past the end of the file, or that does not decode to its
  tile's shape, is an error;
- a codec this installation cannot decode is an error at open naming the codec
  and imagecodecs, the package that adds the TIFF codecs;
- a level that is not tiled (strips) or whose single tile is larger than
  ``max_untiled_pixels`` (default 8192 x 8192) is refused at open, with the command
  that makes it tiled (``lomar convert SRC DST``); smaller untiled images are read
  whole (their strips are the tiles).

Decoded tiles go to an LRU cache bounded in bytes, one per process and per size
(readers opened with the same ``tile_cache_mb`` share it). A reader pickles without
its open file: a DataLoader worker (or a forked process) reopens the file at its
first read, and refuses it if the file changed since it was opened.
``stats`` counts the tiles decoded, the cache hits and the bytes read from the
file."""

from __future__ import annotations

import math
import operator
import os
import re
import struct
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .decode import CorruptImageError

__all__ = ["DEFAULT_TILE_CACHE_MB", "MAX_UNTILED_PIXELS", "TileCache", "TiledImage",
           "TiledImageError", "open_tiled", "tile_cache"]

DEFAULT_TILE_CACHE_MB = 256
MAX_UNTILED_PIXELS = 8192 * 8192
SLIDES_INSTALL = "pip install 'lomar[slides]'"
_CONVERT_HINT = "make it tiled with 'lomar convert SRC DST' (tiled pyramidal TIFF)"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Slide formats that are not TIFF files: always OpenSlide.
_OPENSLIDE_EXTENSIONS = (".mrxs", ".vms", ".vmu")
# TIFF-based vendor formats tifffile parses but that are not plain tiled pyramids
# (NDPI: JPEG strips with restart markers; SCN: several images in one frame;
# Philips: sparse tiles by design; BIF: overlapping tiles): OpenSlide reads them.
_OPENSLIDE_TIFF_KINDS = ("ndpi", "scn", "philips", "bif")

_TORCH_DTYPES = {
    np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8,
    np.dtype(np.uint16): torch.uint16, np.dtype(np.int16): torch.int16,
    np.dtype(np.uint32): torch.uint32, np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64, np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
}


class TiledImageError(CorruptImageError):
    """A file that cannot be read tile by tile as it says: corrupt, truncated or
    sparse, a codec this installation lacks, a layout the reader does not take, or
    an untiled image too large to decode whole. The message names the file."""


# --------------------------------------------------------------------------------------
# The tile cache


class TileCache:
    """An LRU cache of decoded tiles bounded in bytes: after every insertion its
    ``nbytes`` (the sum of the arrays' ``nbytes``) is at most ``capacity``; an item
    larger than the capacity is not kept. Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.nbytes = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            self._items[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.capacity:
                _, (_, n) = self._items.popitem(last=False)
                self.nbytes -= n

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"TileCache({len(self)} tiles, {self.nbytes} of {self.capacity} bytes)"


_CACHES: dict[int, TileCache] = {}
_CACHES_LOCK = threading.Lock()
_OPEN_LOCK = threading.Lock()  # readers (re)opening their file in this process


def tile_cache(mb: float = DEFAULT_TILE_CACHE_MB) -> TileCache:
    """This process's tile cache of ``mb`` MiB (the one every reader opened with
    ``tile_cache_mb=mb`` uses)."""
    capacity = int(mb * 2**20)
    with _CACHES_LOCK:
        cache = _CACHES.get(capacity)
        if cache is None:
            cache = _CACHES[capacity] = TileCache(capacity)
        return cache


def _after_fork_in_child() -> None:
    # A forked process starts with empty caches of its own (a lock held by another
    # thread at the fork would never be released in the child).
    global _CACHES_LOCK, _OPEN_LOCK
    _CACHES.clear()
    _CACHES_LOCK = threading.Lock()
    _OPEN_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------------------
# Physical pixel size

_LENGTH_UM = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "μm": 1.0,
              "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6, "in": 25400.0, "ft": 304800.0}
# A TIFF resolution is taken as physical only below this size of pixel: software
# writes 72, 96, 150, 300 or 350 pixels per inch (352.8 down to 72.6 um) into photos
# by default; microscopes write well under 50 um (over 508 pixels per inch).
_RESOLUTION_MAX_UM = 50.0
_GEO_METRE = 9001


def _square(x: float | None, y: float | None) -> float | None:
    """One size for square pixels (x and y within 1 %); None for others."""
    if x is None or not math.isfinite(x) or x <= 0:
        return None
    if y is not None and (not math.isfinite(y) or abs(x - y) > 0.01 * x):
        return None
    return float(x)


def _mpp_ome(xml: str | None) -> float | None:
    if not xml:
        return None
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None

    def size(axis):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = _LENGTH_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        try:
            return None if value is None or unit is None else float(value) * unit
        except ValueError:
            return None

    return _square(size("X"), size("Y"))


def _mpp_svs(description: str | None) -> float | None:
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    try:
        return _square(float(m.group(1)), None) if m else None
    except ValueError:
        return None


def _geo_keys(page) -> dict[int, int] | None:
    tag = page.tags.get(34735)  # GeoKeyDirectoryTag
    if tag is None:
        return None
    v = list(tag.value)
    keys = {}
    for i in range(4, 4 + 4 * v[3], 4):
        if i + 3 < len(v) and v[i + 1] == 0:  # a SHORT value held in the directory
            keys[v[i]] = v[i + 3]
    return keys


def _mpp_geotiff(page, keys: dict[int, int]) -> float | None:
    """Ground pixel size in micrometres where the CRS unit is known to be the metre:
    an explicit ProjLinearUnitsGeoKey = 9001, or a WGS 84 / UTM zone (EPSG 326xx,
    327xx); None otherwise (degrees, feet, an unknown projection, a rotated grid)."""
    scale = page.tags.get(33550)  # ModelPixelScaleTag
    if scale is None or keys.get(1024) != 1:  # GTModelTypeGeoKey: 1 = projected
        return None
    crs = keys.get(3072)  # ProjectedCSTypeGeoKey
    metres = keys.get(3076) == _GEO_METRE or (
        crs is not None and (32601 <= crs <= 32660 or 32701 <= crs <= 32760))
    if not metres:
        return None
    sx, sy = scale.value[0], scale.value[1]
    return _square(sx * 1e6, sy * 1e6)


def _mpp_resolution(page) -> float | None:
    unit = int(page.resolutionunit)
    per = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)  # inch, cm, mm, um
    try:
        xres, yres = page.resolution
    except (TypeError, ValueError):
        return None
    if per is None or not xres or not yres:
        return None
    mpp = _square(per / xres, per / yres)
    return mpp if mpp is not None and mpp < _RESOLUTION_MAX_UM else None


# --------------------------------------------------------------------------------------
# tifffile backend


def _read_at(fd: int, offset: int, count: int) -> bytes:
    """``count`` bytes at ``offset`` (fewer at the end of the file), without moving
    a shared file position: safe in threads and in forked processes."""
    chunks = []
    while count > 0:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, count, offset)
        else:  # pragma: no cover (Windows)
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, count)
        if not chunk:
            break
        chunks.append(chunk)
        offset, count = offset + len(chunk), count - len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Plane:
    """The segments of one page that hold ``bands`` consecutive bands: tile (r, c)
    is segment ``base + r * cols + c``."""

    def __init__(self, decode, offsets, counts, base, bands, jpegtables, fill):
        self.decode, self.offsets, self.counts = decode, offsets, counts
        self.base, self.bands, self.jpegtables, self.fill = base, bands, jpegtables, fill


class _Level:
    def __init__(self, height, width, tile_h, tile_w, tiled, planes, codec):
        self.height, self.width, self.tile_h, self.tile_w = height, width, tile_h, tile_w
        self.tiled, self.planes, self.codec = tiled, planes, codec
        self.rows, self.cols = math.ceil(height / tile_h), math.ceil(width / tile_w)


def _codec_name(code: int) -> str:
    import tifffile

    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return "unknown"


def _series_levels(tf, name: str) -> list:
    """The level series of the image: series 0's levels, or, when it has one level,
    the series that follow it and are consistent downsamples of it (same dtype and
    bands, the same factor on both axes within rounding): one OME image per
    resolution, or pages of decreasing size not marked reduced."""
    series = tf.series
    if not series:
        raise TiledImageError(f"{name}: not a readable TIFF file (no image in it)")
    levels = list(series[0].levels)
    if len(levels) > 1 or series[0].kind in ("svs",):
        return levels
    first = levels[0]
    h0, w0 = _yx(first)
    for s in series[1:]:
        if len(s.levels) != 1 or s.dtype != first.dtype or _bands_of(s) != _bands_of(first):
            break
        h, w = _yx(s)
        ph, pw = _yx(levels[-1])
        if not (h < ph and w < pw) or abs((h0 / h) - (w0 / w)) > 0.02 * (w0 / w):
            break
        levels.append(s)
    return levels


def _axes_sizes(s) -> dict:
    return dict(zip(s.axes, s.shape))


def _yx(s) -> tuple[int, int]:
    sizes = _axes_sizes(s)
    return sizes["Y"], sizes["X"]


def _bands_of(s) -> int:
    sizes = _axes_sizes(s)
    return sizes.get("S", 1) * sizes.get("C", 1)


def _parse_tiff(path: Path, name: str, max_untiled_pixels, missing_tiles: str):
    """(metadata dict, [_Level]) of a TIFF file tifffile can read tile by tile, or
    ("openslide", kind) when it is a vendor format OpenSlide reads."""
    import tifffile

    try:
        tf = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError, struct.error) as exc:
        raise TiledImageError(f"{name}: not a readable TIFF file ({exc})") from exc
    with tf:
        for kind in _OPENSLIDE_TIFF_KINDS:
            if getattr(tf, "is_" + kind, False):
                return "openslide", kind
        try:
            series_levels = _series_levels(tf, name)
        except tifffile.TiffFileError as exc:
            raise TiledImageError(f"{name}: not a readable TIFF file ({exc})") from exc
        levels = [_parse_level(i, s, name, max_untiled_pixels) for i, s in enumerate(series_levels)]
        size = path.stat().st_size
        for i, level in enumerate(levels):
            _check_segments(name, i, level, size, missing_tiles)
        page0 = series_levels[0].keyframe
        keys = _geo_keys(page0)
        if tf.is_ome:
            fmt, mpp = "ome-tiff", _mpp_ome(tf.ome_metadata)
        elif getattr(tf, "is_svs", False):
            fmt, mpp = "svs", _mpp_svs(page0.description)
        elif keys is not None:
            fmt, mpp = "geotiff", _mpp_geotiff(page0, keys)
        else:
            fmt, mpp = "tiff", _mpp_resolution(page0)
        dtype = np.dtype(series_levels[0].dtype)
    bands = sum(p.bands for p in levels[0].planes)
    for i, level in enumerate(levels[1:], 1):
        if sum(p.bands for p in level.planes) != bands:
            raise TiledImageError(f"{name}: level {i} has "
                                  f"{sum(p.bands for p in level.planes)} bands, level 0 {bands}")
    w0 = levels[0].width
    meta = dict(backend="tifffile", format=fmt, levels=[(lv.height, lv.width) for lv in levels],
                downsamples=[w0 / lv.width for lv in levels],
                tile_size=(levels[0].tile_h, levels[0].tile_w), mpp=mpp, bands=bands,
                np_dtype=dtype, tile_sizes=[(lv.tile_h, lv.tile_w) for lv in levels],
                codecs=[lv.codec for lv in levels])
    return meta, levels


def _parse_level(index: int, series, name: str, max_untiled_pixels) -> _Level:
    sizes = _axes_sizes(series)
    other = {a: n for a, n in sizes.items() if a not in "YXS" and n != 1}
    if set(other) - {"C"}:
        raise TiledImageError(
            f"{name}: level {index} has axes {series.axes} of shape {series.shape}: "
            f"open_tiled reads 2-D images (height, width, bands), not stacks")
    pages = list(series.pages)
    if any(p is None for p in pages):
        raise TiledImageError(f"{name}: level {index} has missing pages")
    height, width = sizes["Y"], sizes["X"]
    planes, codec, tile = [], None, None
    for frame in pages:
        page = frame.keyframe  # the page's tags (a TiffFrame has only its offsets)
        if page.imagedepth > 1:
            raise TiledImageError(f"{name}: level {index} is volumetric "
                                  f"(depth {page.imagedepth})")
        if (page.imagelength, page.imagewidth) != (height, width):
            raise TiledImageError(f"{name}: level {index}: pages of different sizes")
        dtype = page.dtype
        if dtype is None or np.dtype(dtype) not in _TORCH_DTYPES:
            raise TiledImageError(
                f"{name}: level {index}: samples of {page.bitspersample} bits, format "
                f"{int(page.sampleformat)} ({dtype}) are not read (uint8, int8, uint16, "
                f"int16, uint32, int32, float16, float32, float64 are)")
        if page.is_tiled:
            seg = (page.tilelength, page.tilewidth)
        else:
            seg = (min(page.rowsperstrip or height, height), width)
        if tile is not None and seg != tile:
            raise TiledImageError(f"{name}: level {index}: pages with different tiles")
        tile = seg
        too_big = (height * width if not page.is_tiled else seg[0] * seg[1])
        if max_untiled_pixels is not None and too_big > max_untiled_pixels:
            what = (f"not tiled ({height} x {width} pixels in strips of {seg[0]} rows)"
                    if not page.is_tiled else
                    f"in tiles of {seg[0]} x {seg[1]} pixels")
            raise TiledImageError(
                f"{name}: level {index} is {what}, more than the {max_untiled_pixels} pixels "
                f"read whole (max_untiled_pixels): {_CONVERT_HINT}")
        code = int(page.compression)
        codec = f"{_codec_name(code)} ({code})"
        decode = page.decode
        if getattr(decode, "__name__", "").startswith("decode_raise"):
            try:
                decode(None, 0)
                why = "refused"
            except Exception as exc:  # tifffile's reason
                why = str(exc)
            _raise_codec(name, index, code, why)
        spp = page.samplesperpixel
        rows, cols = math.ceil(height / seg[0]), math.ceil(width / seg[1])
        ntiles = rows * cols
        offsets = np.asarray(frame.dataoffsets, dtype=np.int64)
        counts = np.asarray(frame.databytecounts, dtype=np.int64)
        nplanes = spp if page.planarconfig == 2 else 1
        if len(offsets) != nplanes * ntiles or len(counts) != len(offsets):
            raise TiledImageError(
                f"{name}: level {index} lists {len(offsets)} tile offsets and {len(counts)} "
                f"byte counts for {nplanes * ntiles} tiles ({rows} x {cols} tiles of "
                f"{seg[0]} x {seg[1]}, {nplanes} plane(s))")
        jpegtables = page.jpegtables
        fill = page.nodata
        if page.planarconfig == 2:
            planes += [_Plane(decode, offsets, counts, p * ntiles, 1, jpegtables, fill)
                       for p in range(spp)]
        else:
            planes.append(_Plane(decode, offsets, counts, 0, spp, jpegtables, fill))
    return _Level(height, width, tile[0], tile[1], pages[0].is_tiled, planes, codec)


def _raise_codec(name, index, code, why):
    import tifffile

    try:
        tifffile.TIFF.DECOMPRESSORS[code]
        missing = False
    except KeyError:
        missing = code != 1
    if not missing:
        raise TiledImageError(f"{name}: level {index} cannot be decoded ({why})")
    try:
        import imagecodecs

        have = f"imagecodecs {imagecodecs.__version__} is installed and lacks it"
    except ImportError:
        have = "imagecodecs is not installed"
    raise TiledImageError(
        f"{name}: level {index} is compressed with {_codec_name(code)} (TIFF compression "
        f"{code}), which cannot be decoded here: the package imagecodecs adds tifffile's "
        f"codecs (pip install imagecodecs); {have}")


def _check_segments(name, index, level: _Level, file_size: int, missing_tiles: str):
    for plane in level.planes:
        n = level.rows * level.cols
        offsets = plane.offsets[plane.base:plane.base + n]
        counts = plane.counts[plane.base:plane.base + n]
        missing = (offsets == 0) | (counts == 0)
        if missing.any() and missing_tiles == "error":
            i = int(np.flatnonzero(missing)[0])
            raise TiledImageError(
                f"{name}: level {index} tile (row {i // level.cols}, col {i % level.cols}) is "
                f"missing (offset {int(offsets[i])}, {int(counts[i])} bytes; "
                f"{int(missing.sum())} missing in the level): a sparse file; "
                f"open_tiled(..., missing_tiles='fill') reads missing tiles as the fill value "
                f"{plane.fill}")
        beyond = ~missing & (offsets + counts > file_size)
        if beyond.any():
            i = int(np.flatnonzero(beyond)[0])
            raise TiledImageError(
                f"{name}: level {index} tile (row {i // level.cols}, col {i % level.cols}) "
                f"at offset {int(offsets[i])}, {int(counts[i])} bytes, goes past the end of the "
                f"file ({file_size} bytes): truncated or corrupt")


class _TiffBackend:
    kind = "tifffile"

    def __init__(self, path: Path, name: str, options: dict, parsed=None):
        self.name = name
        self.meta, self.levels = parsed or _parse_tiff(path, name, options["max_untiled_pixels"],
                                                       options["missing_tiles"])
        self.missing_tiles = options["missing_tiles"]
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self.file_size = os.fstat(self.fd).st_size

    def tile(self, index: int, row: int, col: int):
        level = self.levels[index]
        th, tw = level.tile_h, level.tile_w
        valid_h = min(th, level.height - row * th)
        valid_w = min(tw, level.width - col * tw)
        parts, nread = [], 0
        for plane in level.planes:
            seg = plane.base + row * level.cols + col
            offset, count = int(plane.offsets[seg]), int(plane.counts[seg])
            where = (f"{self.name}: level {index} tile (row {row}, col {col}) at offset {offset}, "
                     f"{count} bytes")
            if offset == 0 or count == 0:
                if self.missing_tiles == "error":
                    raise TiledImageError(f"{where}: missing (a sparse file)")
                fill = plane.fill if plane.fill is not None else 0
                dtype = self.meta["np_dtype"]
                parts.append(np.full((valid_h, valid_w, plane.bands), fill, dtype))
                continue
            data = _read_at(self.fd, offset, count)
            nread += len(data)
            if len(data) != count:
                raise TiledImageError(f"{where}: only {len(data)} bytes before the end of the "
                                      f"file: truncated")
            try:
                array = plane.decode(data, seg, jpegtables=plane.jpegtables)[0]
            except Exception as exc:
                raise TiledImageError(f"{where}: cannot be decoded as {level.codec} "
                                      f"({type(exc).__name__}: {exc})") from exc
            if array is None or array.ndim != 4 or array.shape[0] != 1 \
                    or array.shape[1] < valid_h or array.shape[2] < valid_w \
                    or array.shape[3] != plane.bands:
                shape = None if array is None else array.shape
                raise TiledImageError(f"{where}: decoded to shape {shape}, not the tile's "
                                      f"({valid_h}, {valid_w}, {plane.bands})")
            array = array[0, :valid_h, :valid_w]
            array.setflags(write=False)
            parts.append(array)
        return parts, nread

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------
# OpenSlide backend

_OPENSLIDE_CACHE = {}


def _import_openslide(name: str, why: str):
    try:
        import openslide
    except ImportError as exc:
        raise ImportError(f"{name}: {why} is read through OpenSlide, which is not installed: "
                          f"{SLIDES_INSTALL}") from exc
    return openslide


class _SlideBackend:
    """OpenSlide, read in tiles of the slide's own tile size (256 x 256 where it
    does not say), each composited onto the background colour: RGB uint8."""

    kind = "openslide"

    def __init__(self, path: Path, name: str, options: dict, why: str = "this file"):
        openslide = _import_openslide(name, why)
        self.name = name
        try:
            self.slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise TiledImageError(f"{name}: OpenSlide cannot read it ({exc})") from exc
        # Tiles are cached here, decoded; OpenSlide's own cache would hold them twice.
        pid = os.getpid()
        if hasattr(openslide, "OpenSlideCache") and hasattr(self.slide, "set_cache"):
            if _OPENSLIDE_CACHE.get("pid") != pid:
                _OPENSLIDE_CACHE.update(pid=pid, cache=openslide.OpenSlideCache(0))
            self.slide.set_cache(_OPENSLIDE_CACHE["cache"])
        props = self.slide.properties
        self.background = "#" + props.get("openslide.background-color", "ffffff")
        levels = [(h, w) for w, h in self.slide.level_dimensions]
        tiles = []
        for i in range(len(levels)):
            th = int(props.get(f"openslide.level[{i}].tile-height", 256) or 256)
            tw = int(props.get(f"openslide.level[{i}].tile-width", 256) or 256)
            tiles.append((th, tw))

        def number(key):
            try:
                return float(props[key])
            except (KeyError, ValueError):
                return None

        self.meta = dict(backend="openslide",
                         format=props.get("openslide.vendor", "openslide"), levels=levels,
                         downsamples=[float(d) for d in self.slide.level_downsamples],
                         tile_size=tiles[0], mpp=_square(number("openslide.mpp-x"),
                                                         number("openslide.mpp-y")),
                         bands=3, np_dtype=np.dtype(np.uint8), tile_sizes=tiles,
                         codecs=["openslide"] * len(levels))

    def tile(self, index: int, row: int, col: int):
        from PIL import Image

        h, w = self.meta["levels"][index]
        th, tw = self.meta["tile_sizes"][index]
        top, left = row * th, col * tw
        size = (min(tw, w - left), min(th, h - top))
        ds = self.meta["downsamples"][index]
        # read_region takes the top-left corner in level-0 pixels.
        location = (int(round(left * ds)), int(round(top * ds)))
        try:
            region = self.slide.read_region(location, index, size)
        except Exception as exc:
            raise TiledImageError(f"{self.name}: level {index} tile (row {row}, col {col}): "
                                  f"OpenSlide cannot read it ({exc})") from exc
        rgb = Image.new("RGB", region.size, self.background)
        rgb.paste(region, None, region)
        array = np.asarray(rgb)
        array.setflags(write=False)
        return [array], 0

    def close(self):
        if self.slide is not None:
            self.slide.close()
            self.slide = None


# --------------------------------------------------------------------------------------
# The reader


def _file_key(path: Path) -> tuple:
    # Not the inode: a pickled reader may reopen the file through another mount.
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _index(value, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


class TiledImage:
    """A tiled (pyramidal) image file read box by box; see :func:`open_tiled`.

    Attributes: ``path``, ``backend`` ("tifffile" or "openslide"), ``format``
    ("tiff", "ome-tiff", "svs", "geotiff", or OpenSlide's vendor name), ``levels``
    ((height, width) per level, 0 the full resolution), ``downsamples`` (level 0's
    width over the level's for tifffile; OpenSlide's own figures for OpenSlide),
    ``tile_size`` ((height, width) of level 0's tiles), ``mpp`` (micrometres per
    pixel at level 0, or None), ``bands``, ``dtype`` (a torch dtype), ``cache``
    (the process's :class:`TileCache` it uses), ``stats``."""

    def __init__(self, path, *, tile_cache_mb: float = DEFAULT_TILE_CACHE_MB,
                 backend: str = "auto", max_untiled_pixels: int | None = MAX_UNTILED_PIXELS,
                 missing_tiles: str = "error"):
        if backend not in ("auto", "tifffile", "openslide"):
            raise ValueError(f"backend must be 'auto', 'tifffile' or 'openslide', got {backend!r}")
        if missing_tiles not in ("error", "fill"):
            raise ValueError(f"missing_tiles must be 'error' or 'fill', got {missing_tiles!r}")
        if not tile_cache_mb >= 0:
            raise ValueError(f"tile_cache_mb must be >= 0, got {tile_cache_mb!r}")
        self.path = Path(path)
        self._options = dict(tile_cache_mb=tile_cache_mb, backend=backend,
                             max_untiled_pixels=max_untiled_pixels, missing_tiles=missing_tiles)
        self._impl = None
        self._meta = None
        self._key = None
        self._cache_pid = None
        self.reset_stats()
        self._open()

    # -- opening, closing, pickling ----------------------------------------------------

    def _open(self) -> None:
        name = str(self.path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{name}: no such file")
        key = _file_key(self.path)
        if self._key is not None and key != self._key:
            raise TiledImageError(f"{name}: the file changed since it was opened "
                                  f"(size or modification time)")
        impl = self._make_backend(name)
        if self._meta is not None and impl.meta != self._meta:
            impl.close()
            raise TiledImageError(f"{name}: the file changed since it was opened")
        self._impl, self._meta, self._key = impl, impl.meta, key
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, impl.close)

    def _make_backend(self, name: str):
        opts = self._options
        if opts["backend"] == "openslide":
            return _SlideBackend(self.path, name, opts)
        with open(self.path, "rb") as f:
            head = f.read(4)
        if head in _TIFF_MAGIC:
            parsed = _parse_tiff(self.path, name, opts["max_untiled_pixels"],
                                 opts["missing_tiles"])
            if parsed[0] == "openslide":
                if opts["backend"] == "tifffile":
                    raise TiledImageError(f"{name}: a {parsed[1].upper()} file, which is read "
                                          f"through OpenSlide (backend='auto' or 'openslide')")
                return _SlideBackend(self.path, name, opts, why=f"a {parsed[1].upper()} slide")
            return _TiffBackend(self.path, name, opts, parsed)
        if opts["backend"] == "tifffile":
            raise TiledImageError(f"{name}: not a TIFF file")
        if self.path.suffix.lower() in _OPENSLIDE_EXTENSIONS:
            return _SlideBackend(self.path, name, opts,
                                 why=f"a {self.path.suffix.lower()[1:].upper()} slide")
        try:
            import openslide
        except ImportError:
            openslide = None
        if openslide is not None and openslide.OpenSlide.detect_format(str(self.path)):
            return _SlideBackend(self.path, name, opts)
        raise TiledImageError(
            f"{name}: not a tiled image (neither a TIFF file nor a slide format OpenSlide "
            f"{'reads' if openslide is not None else 'would read; it is not installed'}): "
            f"{_CONVERT_HINT}")

    def _ready(self):
        """The open backend of this process (reopened after a pickle or a fork)."""
        impl = self._impl
        if impl is not None and self._pid == os.getpid():
            return impl
        with _OPEN_LOCK:
            if self._impl is not None and self._pid != os.getpid():
                # inherited through a fork: this process's copy of the parent's handle
                self._finalizer.detach()
                self._impl.close()
                self._impl = None
            if self._impl is None:
                self._open()
            return self._impl

    def close(self) -> None:
        """Closes the file (a later read reopens it)."""
        if self._impl is not None:
            self._finalizer()
            self._impl = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        return dict(path=self.path, options=self._options, meta=self._meta, key=self._key)

    def __setstate__(self, state):
        self.path, self._options = state["path"], state["options"]
        self._meta, self._key = state["meta"], state["key"]
        self._impl = None
        self._pid = None
        self._cache_pid = None
        self.reset_stats()

    # -- what the file holds -----------------------------------------------------------

    @property
    def backend(self) -> str:
        return self._meta["backend"]

    @property
    def format(self) -> str:
        return self._meta["format"]

    @property
    def levels(self) -> list[tuple[int, int]]:
        return list(self._meta["levels"])

    @property
    def downsamples(self) -> list[float]:
        return list(self._meta["downsamples"])

    @property
    def tile_size(self) -> tuple[int, int]:
        return tuple(self._meta["tile_size"])

    @property
    def mpp(self) -> float | None:
        return self._meta["mpp"]

    @property
    def bands(self) -> int:
        return self._meta["bands"]

    @property
    def dtype(self) -> torch.dtype:
        return _TORCH_DTYPES[self._meta["np_dtype"]]

    @property
    def numpy_dtype(self) -> np.dtype:
        """:attr:`dtype` as a NumPy dtype."""
        return self._meta["np_dtype"]

    @property
    def cache(self) -> TileCache:
        if self._cache_pid != os.getpid():
            self._cache = tile_cache(self._options["tile_cache_mb"])
            self._cache_pid = os.getpid()
        return self._cache

    def level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (a crop
        read there is never upsampled)."""
        best = 0
        for i, d in enumerate(self._meta["downsamples"]):
            if d <= downsample * (1 + 1e-9):
                best = i
        return best

    # -- reading -----------------------------------------------------------------------

    @property
    def stats(self) -> dict:
        """tiles_decoded (tiles read from the file and decoded), cache_hits (tiles
        found decoded in the cache), bytes_read (compressed bytes read from the file;
        0 through OpenSlide, which reads its files itself): this reader, this process,
        since :meth:`reset_stats`."""
        return dict(self._stats)

    def reset_stats(self) -> None:
        self._stats = dict(tiles_decoded=0, cache_hits=0, bytes_read=0)

    def _tile(self, impl, level: int, row: int, col: int):
        key = (self._key, level, row, col)
        cache = self.cache
        parts = cache.get(key)
        if parts is not None:
            self._stats["cache_hits"] += 1
            return parts
        parts, nread = impl.tile(level, row, col)
        self._stats["tiles_decoded"] += 1
        self._stats["bytes_read"] += nread
        cache.put(key, parts, sum(p.nbytes for p in parts))
        return parts

    def read(self, level: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
        """The box (top, left, height, width) of ``level``, in that level's pixels, as
        a (bands, height, width) tensor of the file's dtype. Reads and decodes only
        the tiles the box touches (or finds them in the cache). A box not inside the
        level raises ValueError."""
        level = _index(level, "level")
        top, left = _index(top, "top"), _index(left, "left")
        height, width = _index(height, "height"), _index(width, "width")
        levels = self._meta["levels"]
        if not 0 <= level < len(levels):
            raise ValueError(f"{self.path}: no level {level} (levels 0 to {len(levels) - 1})")
        h, w = levels[level]
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > h \
                or left + width > w:
            raise ValueError(
                f"{self.path}: box (top={top}, left={left}, height={height}, width={width}) is "
                f"not inside level {level}, {h} x {w} (height x width)")
        impl = self._ready()
        th, tw = self._meta["tile_sizes"][level]
        out = np.empty((self._meta["bands"], height, width), self._meta["np_dtype"])
        bottom, right = top + height, left + width
        for row in range(top // th, (bottom - 1) // th + 1):
            y0, y1 = max(top, row * th), min(bottom, (row + 1) * th)
            for col in range(left // tw, (right - 1) // tw + 1):
                x0, x1 = max(left, col * tw), min(right, (col + 1) * tw)
                band = 0
                for part in self._tile(impl, level, row, col):
                    k = part.shape[2]
                    out[band:band + k, y0 - top:y1 - top, x0 - left:x1 - left] = \
                        part[y0 - row * th:y1 - row * th, x0 - col * tw:x1 - col * tw] \
                        .transpose(2, 0, 1)
                    band += k
        return torch.from_numpy(out)

    def read_level(self, level: int, max_pixels: int = MAX_UNTILED_PIXELS) -> torch.Tensor:
        """The whole ``level`` (refused above ``max_pixels`` pixels: read boxes)."""
        level = _index(level, "level")
        if not 0 <= level < len(self._meta["levels"]):
            raise ValueError(f"{self.path}: no level {level} "
                             f"(levels 0 to {len(self._meta['levels']) - 1})")
        h, w = self._meta["levels"][level]
        if max_pixels is not None and h * w > max_pixels:
            raise ValueError(f"{self.path}: level {level} has {h} x {w} pixels, more than "
                             f"max_pixels={max_pixels}; read boxes of it, or a coarser level")
        return self.read(level, 0, 0, h, w)

    def thumbnail(self, max_side: int = 1024) -> torch.Tensor:
        """The image with its longer side at most ``max_side``: the coarsest level
        whose longer side is at least ``max_side`` (level 0 if none is), read whole,
        then reduced by area averaging (rounded, for integer dtypes). Cheap when the
        file has a pyramid: for foreground masks."""
        max_side = _index(max_side, "max_side")
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, got {max_side}")
        levels = self._meta["levels"]
        level = 0
        for i, (h, w) in enumerate(levels):
            if max(h, w) >= max_side:
                level = i
        image = self.read_level(level)
        h, w = levels[level]
        scale = max_side / max(h, w)
        if scale >= 1:
            return image
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = torch.nn.functional.interpolate(image[None].double(), size=size, mode="area")[0]
        if not image.dtype.is_floating_point:
            info = torch.iinfo(image.dtype)
            small = small.round().clamp(info.min, info.max)
        return small.to(image.dtype)

    def __repr__(self) -> str:
        if self._meta is None:
            return f"TiledImage({str(self.path)!r})"
        return (f"TiledImage({str(self.path)!r}, backend={self.backend!r}, "
                f"format={self.format!r}, levels={self.levels}, bands={self.bands}, "
                f"dtype={self.dtype}, tile_size={self.tile_size}, mpp={self.mpp})")


def open_tiled(path, *, tile_cache_mb: float = DEFAULT_TILE_CACHE_MB, backend: str = "auto",
               max_untiled_pixels: int | None = MAX_UNTILED_PIXELS,
               missing_tiles: str = "error") -> TiledImage:
    """Opens a tiled (pyramidal) image: reads its directories, not its pixels.

    ``backend``: "auto" (tifffile for the TIFF files it reads tile by tile, OpenSlide
    for MIRAX, NDPI, VMS/VMU, SCN, BIF, Philips and other slides OpenSlide detects),
    "tifffile" or "openslide". ``tile_cache_mb``: the size of this process's LRU cache
    of decoded tiles this reader uses (shared by the readers opened with the same
    size; 0: no cache). ``max_untiled_pixels``: the largest untiled level (strips) or
    single tile decoded whole (None: no limit). ``missing_tiles``: "error" (default)
    or "fill" (sparse tiles read as the file's fill value). Errors: FileNotFoundError,
    :class:`TiledImageError` (the file cannot be read tile by tile, with the reason),
    ImportError (OpenSlide needed and not installed: ``pip install 'lomar[slides]'``).

    >>> img = open_tiled("slide.svs")                                   # doctest: +SKIP
    >>> img.levels, img.mpp                                             # doctest: +SKIP
    >>> window = img.read(level=1, top=2048, left=4096, height=224, width=224)  # doctest: +SKIP
    """
    return TiledImage(path, tile_cache_mb=tile_cache_mb, backend=backend,
                      max_untiled_pixels=max_untiled_pixels, missing_tiles=missing_tiles)
