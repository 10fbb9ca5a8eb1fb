"""Images to tiled pyramidal TIFF (``lomar convert SRC... DST``).

The output is what :func:`~lomar.data.tiled.open_tiled` and OpenSlide (as a
"generic tiled TIFF") both read: level 0 then each level halved (sizes rounded up,
2 x 2 box average, the last row or column repeated where a side is odd) down to
about one tile, each a page of ``tile`` x ``tile`` tiles, the reduced levels marked
reduced-resolution (NewSubfileType 1), BigTIFF when the pixels exceed 2 GiB. Tiles
are JPEG (quality 90, YCbCr 4:2:0; 8-bit greyscale or RGB only) by default, or
zstd with the horizontal-differencing predictor (``lossless``: every value kept,
the dtype and bands too: uint16 stays uint16). A micrometres-per-pixel size the
source states (see ``TiledImage.mpp``) is written as the TIFF resolution
(pixels per centimetre).

Streaming: level 0 is read in bands of ``tile`` rows and written tile by tile;
each band is halved into the next level as it passes, which waits in memory, or
for more than 64 MiB in a temporary file beside the output (a third of level 0's
pixels in all), and is written once level 0 is done. Inputs read tile by tile or
strip by strip (TIFF files, slides) are never whole in memory; a JPEG, PNG or
other photo cannot be decoded in parts by Pillow and is decoded whole once (its
EXIF orientation applied, as :mod:`lomar.data.decode` does; Pillow's
decompression-bomb limit lifted: converting big photos is the point).

Resumable: each output is written as ``.NAME.tmp`` beside its final name, made
durable, then renamed (atomic), so a file under the final name is always
complete. A rerun skips the outputs that exist and were written by this command
with the same parameters (their ImageDescription says so), rewrites any leftover
``.tmp``, and refuses to overwrite a file it did not write. Several files convert
in parallel (``jobs`` processes); each file is converted by one."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from .constants import IMAGE_EXTENSIONS, TILED_EXTENSIONS
from .decode import CorruptImageError
from .tiled import TiledImageError, _read_at, open_tiled

__all__ = ["CONVERT_EXTENSIONS", "convert_image", "convert_images", "plan_outputs",
           "write_pyramid"]

CONVERT_EXTENSIONS = tuple(dict.fromkeys(IMAGE_EXTENSIONS + TILED_EXTENSIONS))
_IN_MEMORY_BYTES = 64 * 2**20
# tifffile compresses tiles in threads, this many bytes of tiles at a time (its
# default, 512 MiB, would hold that much of the image in memory)
_ENCODE_BUFFER = 32 * 2**20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SLIDE_NOT_TIFF = (".mrxs", ".vms", ".vmu")
DESCRIPTION_PREFIX = "lomar convert:"


# --------------------------------------------------------------------------------------
# Sources: level 0 of an input, row band by row band


class _TiledSource:
    """A file :func:`open_tiled` reads (TIFF, slides): only the tiles or strips of
    each band of rows are decoded; the cache holds two rows of them, so a tile
    taller than a band is decoded once."""

    def __init__(self, path: Path):
        probe = open_tiled(path, tile_cache_mb=0, max_untiled_pixels=None)
        (h, w), (th, tw) = probe.levels[0], probe.tile_size
        itemsize = probe.numpy_dtype.itemsize
        row_bytes = math.ceil(w / tw) * tw * th * probe.bands * itemsize
        probe.close()
        self.image = open_tiled(path, tile_cache_mb=math.ceil(2 * row_bytes / 2**20) + 1,
                                max_untiled_pixels=None)
        self.height, self.width = h, w
        self.bands, self.dtype = self.image.bands, self.image.numpy_dtype
        self.mpp = self.image.mpp

    def read_rows(self, top: int, n: int) -> np.ndarray:
        return self.image.read(0, top, 0, n, self.width).numpy().transpose(1, 2, 0)

    def close(self):
        self.image.cache.clear()
        self.image.close()


class _PhotoSource:
    """A photo Pillow decodes (whole, once)."""

    def __init__(self, path: Path):
        from PIL import Image, ImageOps

        with _no_pixel_limit():
            try:
                with Image.open(path) as image:
                    if image.format == "JPEG":
                        image = ImageOps.exif_transpose(image)
                    array = _photo_array(image, path)
            except (OSError, SyntaxError, ValueError) as exc:
                raise CorruptImageError(f"{path}: cannot be decoded ({exc})") from exc
        self.array = array if array.ndim == 3 else array[:, :, None]
        self.height, self.width, self.bands = self.array.shape
        self.dtype = self.array.dtype
        self.mpp = None

    def read_rows(self, top: int, n: int) -> np.ndarray:
        return self.array[top:top + n]

    def close(self):
        self.array = None


@contextlib.contextmanager
def _no_pixel_limit():
    """Pillow's decompression-bomb limit lifted (converting big photos is the point)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _photo_array(image, path) -> np.ndarray:
    """The pixels as stored, in a dtype (modes Pillow has no lossless array of, such
    as CMYK, are refused rather than changed)."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "P":
        return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return np.asarray(image)
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    raise ValueError(f"{path}: Pillow mode {mode} is not converted "
                     f"({', '.join(_MODES)} and P are)")


def _open_source(path: Path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head in _TIFF_MAGIC or path.suffix.lower() in _SLIDE_NOT_TIFF:
        return _TiledSource(path)
    return _PhotoSource(path)


# Pillow mode -> (bands, dtype) of the array _photo_array makes.
_MODES = {"1": (1, "uint8"), "L": (1, "uint8"), "LA": (2, "uint8"), "RGB": (3, "uint8"),
          "RGBA": (4, "uint8"), "I": (1, "int32"), "F": (1, "float32"), "I;16": (1, "uint16"),
          "I;16L": (1, "uint16"), "I;16B": (1, "uint16"), "I;16N": (1, "uint16")}


def _header(path: Path) -> tuple[int, int, int, str]:
    """(height, width, bands, dtype name) of a source, from its header."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in _TIFF_MAGIC or path.suffix.lower() in _SLIDE_NOT_TIFF:
        image = open_tiled(path, tile_cache_mb=0, max_untiled_pixels=None)
        (h, w), bands, dtype = image.levels[0], image.bands, image.numpy_dtype.name
        image.close()
        return h, w, bands, dtype
    with _no_pixel_limit():
        from PIL import Image

        try:
            with Image.open(path) as image:
                (w, h), mode, info = image.size, image.mode, dict(image.info)
                orientation = image.getexif().get(0x0112, 1) if image.format == "JPEG" else 1
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{path}: cannot be read as an image ({exc})") from exc
    if orientation in (5, 6, 7, 8):  # displayed transposed
        h, w = w, h
    if mode == "P":
        return h, w, 4 if "transparency" in info else 3, "uint8"
    if mode not in _MODES:
        raise ValueError(f"{path}: Pillow mode {mode} is not converted "
                         f"({', '.join(_MODES)} and P are)")
    return (h, w) + _MODES[mode]


# --------------------------------------------------------------------------------------
# The writer


def level_sizes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Level 0, then halved (rounded up) until the longer side is at most ``tile``."""
    sizes = [(height, width)]
    while max(sizes[-1]) > tile:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 box average of (H, W, B), the last row/column repeated on odd sides;
    integers rounded half up, floats in float64 then cast back."""
    if a.shape[0] % 2:
        a = np.concatenate([a, a[-1:]], axis=0)
    if a.shape[1] % 2:
        a = np.concatenate([a, a[:, -1:]], axis=1)
    if np.issubdtype(a.dtype, np.integer):
        # the narrowest type that holds the sum of four values (and the rounding 2)
        wide = {1: np.int16, 2: np.int32}.get(a.dtype.itemsize, np.int64)
        rows = a[0::2].astype(wide)
        rows += a[1::2]
        s = rows[:, 0::2] + rows[:, 1::2]
        s += 2
        s //= 4  # floor division: halves rounded up, negative values too
        return s.astype(a.dtype)
    rows = a[0::2].astype(np.float64)
    rows += a[1::2]
    return ((rows[:, 0::2] + rows[:, 1::2]) / 4).astype(a.dtype)


def _codec(dtype: np.dtype, bands: int, lossless: bool, quality: int, name: str) -> dict:
    if lossless:
        return dict(compression="zstd", predictor=True)
    if dtype != np.uint8 or bands not in (1, 3):
        raise ValueError(f"{name}: {bands} band(s) of {dtype}: JPEG holds 8-bit greyscale or "
                         f"RGB; convert it with --lossless (zstd: every value and the dtype kept)")
    return dict(compression="jpeg", compressionargs={"level": int(quality)})


def _photometric(dtype: np.dtype, bands: int) -> dict:
    if bands == 3:
        return dict(photometric="rgb")
    if bands == 4 and dtype in (np.uint8, np.uint16):
        return dict(photometric="rgb", extrasamples=("unassalpha",))
    if bands == 1:
        return dict(photometric="minisblack")
    return dict(photometric="minisblack", planarconfig="contig")


def describe(name: str, height: int, width: int, bands: int, dtype: str, tile: int,
             lossless: bool, quality: int) -> str:
    """The ImageDescription of an output: what it was converted from, and how."""
    codec = "zstd" if lossless else f"jpeg quality={int(quality)}"
    return (f"{DESCRIPTION_PREFIX} source={name} size={height}x{width} bands={bands} "
            f"dtype={dtype} tile={tile} codec={codec}")


def _tiles(band: np.ndarray, tile: int):
    """The tiles of a band of rows, left to right, edge tiles padded by repeating
    the last row and column (no black border in the codec's blocks)."""
    width = band.shape[1]
    for left in range(0, width, tile):
        t = band[:, left:left + tile]
        if t.shape[0] < tile or t.shape[1] < tile:
            t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), mode="edge")
        yield np.ascontiguousarray(t[:, :, 0] if t.shape[2] == 1 else t)


def write_pyramid(path, source, *, tile: int = 256, lossless: bool = False, quality: int = 90,
                  description: str | None = None, progress=None,
                  compression: dict | None = None) -> Path:
    """Writes ``source`` (``height``, ``width``, ``bands``, ``dtype``, ``mpp``,
    ``read_rows(top, n) -> (n, width, bands)`` array) to ``path`` as a tiled
    pyramidal TIFF, streaming (see the module's docstring). ``progress(rows)`` is
    called as level-0 rows are written. ``compression``: tifffile's codec options
    (e.g. ``{"compression": "webp", "compressionargs": {"level": 90}}``) instead of
    the ``lossless``/``quality`` choice."""
    import tifffile

    path = Path(path)
    if tile % 16 or tile < 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF tiles), got {tile}")
    h0, w0, bands, dtype = source.height, source.width, source.bands, np.dtype(source.dtype)
    codec = compression if compression is not None else _codec(dtype, bands, lossless, quality,
                                                                str(path))
    options = codec | _photometric(dtype, bands)
    sizes = level_sizes(h0, w0, tile)
    raw = sum(h * w for h, w in sizes) * bands * dtype.itemsize
    scratch: list[Path] = []
    current = below = None

    def next_level(k: int):
        h, w = sizes[k]
        if h * w * bands * dtype.itemsize <= _IN_MEMORY_BYTES:
            return np.empty((h, w, bands), dtype)
        file = path.with_name(f".{path.name}.level{k}.tmp")
        scratch.append(file)
        return _DiskLevel(file, (h, w, bands), dtype)

    def level_tiles(k: int, read_rows, below: np.ndarray | None):
        h, w = sizes[k]
        for top in range(0, h, tile):
            n = min(tile, h - top)
            band = read_rows(top, n)
            if band.shape != (n, w, bands) or band.dtype != dtype:
                raise RuntimeError(f"{path}: level {k} rows {top}-{top + n}: got {band.shape} "
                                   f"{band.dtype}, expected {(n, w, bands)} {dtype}")
            if below is not None:
                below[top // 2:top // 2 + (n + 1) // 2] = halve(band)
            yield from _tiles(band, tile)
            if k == 0 and progress is not None:
                progress(n)

    resolution = {}
    if source.mpp:
        resolution = dict(resolution=(1e4 / source.mpp, 1e4 / source.mpp),
                          resolutionunit="CENTIMETER")
    try:
        with tifffile.TiffWriter(path, bigtiff=raw > 2**31) as tif:
            read_rows = source.read_rows
            for k, (h, w) in enumerate(sizes):
                below = next_level(k + 1) if k + 1 < len(sizes) else None
                if k and resolution:
                    scale = w / w0
                    resolution["resolution"] = (1e4 / source.mpp * scale,
                                                1e4 / source.mpp * scale)
                shape = (h, w) if bands == 1 else (h, w, bands)
                tif.write(level_tiles(k, read_rows, below), shape=shape, dtype=dtype,
                          tile=(tile, tile), subfiletype=1 if k else 0, metadata=None,
                          description=description if k == 0 else None, software="lomar",
                          buffersize=_ENCODE_BUFFER, **resolution, **options)
                if isinstance(current, _DiskLevel):
                    current.close()
                current = below
                read_rows = _rows_of(below)
    finally:
        for level in (current, below):
            if isinstance(level, _DiskLevel):
                level.close()
        for file in scratch:
            file.unlink(missing_ok=True)
    return path


def _rows_of(level):
    return lambda top, n: level[top:top + n]


class _DiskLevel:
    """A level waiting in a scratch file, written and read by bands of rows with
    pwrite/pread (not mapped: its pages stay out of the process's memory)."""

    def __init__(self, file: Path, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.row_bytes = shape[1] * shape[2] * self.dtype.itemsize
        self.fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0))

    def __setitem__(self, rows: slice, band: np.ndarray) -> None:
        data = np.ascontiguousarray(band, self.dtype).tobytes()
        _write_at(self.fd, data, rows.start * self.row_bytes)

    def __getitem__(self, rows: slice) -> np.ndarray:
        stop = min(rows.stop, self.shape[0])
        count = (stop - rows.start) * self.row_bytes
        data = _read_at(self.fd, rows.start * self.row_bytes, count)
        if len(data) != count:
            raise OSError(f"scratch file: read {len(data)} of {count} bytes")
        return np.frombuffer(data, self.dtype).reshape(stop - rows.start, *self.shape[1:])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view, offset)
        else:  # pragma: no cover (Windows)
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, view)
        view, offset = view[n:], offset + n


# --------------------------------------------------------------------------------------
# Files, resume, parallel


def _find(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in CONVERT_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _out_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)] + ".tif"
    return path.stem + ".tif"


def plan_outputs(sources, dst) -> list[tuple[Path, Path]]:
    """(source, output) pairs: one source file and a DST ending in .tif/.tiff give
    that file; otherwise DST is a folder, files go to DST/NAME.tif and a folder's
    images (searched recursively) keep their sub-folders."""
    dst = Path(dst)
    sources = [Path(s) for s in sources]
    if not sources:
        raise ValueError("no source given")
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f"{s}: no such file or folder")
    if len(sources) == 1 and sources[0].is_file() and dst.suffix.lower() in (".tif", ".tiff"):
        pairs = [(sources[0], dst)]
    else:
        pairs = []
        for s in sources:
            if s.is_dir():
                found = _find(s)
                if not found:
                    raise ValueError(f"{s}: no images ({', '.join(CONVERT_EXTENSIONS)}) in it")
                pairs += [(f, dst / f.relative_to(s).parent / _out_name(f)) for f in found]
            else:
                pairs.append((s, dst / _out_name(s)))
    seen = {}
    for src, out in pairs:
        if out in seen:
            raise ValueError(f"{seen[out]} and {src} would both be converted to {out}")
        if out.resolve() == src.resolve():
            raise ValueError(f"{src}: the output would overwrite the source")
        seen[out] = src
    return pairs


def _tmp(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp")


def _existing_description(out: Path) -> str | None:
    import tifffile

    try:
        with tifffile.TiffFile(out) as tf:
            return tf.pages.first.description
    except Exception:
        return None


def convert_image(src, out, *, tile: int = 256, quality: int = 90, lossless: bool = False,
                  progress=None) -> str:
    """Converts one file; returns "converted" or "skipped" (``out`` exists, written
    by this command from the same source with the same parameters). Refuses an
    existing ``out`` it did not write. ``progress``: a tqdm bar (its total is set
    to the image's rows, updated as they are written), or None."""
    src, out = Path(src), Path(out)
    h, w, bands, dtype = _header(src)
    if progress is not None:
        progress.total = h
        progress.refresh()
    _codec(np.dtype(dtype), bands, lossless, quality, str(src))  # refused before decoding
    expected = describe(src.name, h, w, bands, dtype, tile, lossless, quality)
    if out.exists():
        found = _existing_description(out)
        if found == expected:
            return "skipped"
        raise FileExistsError(
            f"{out} exists and is not this conversion of {src} (its description: "
            f"{found!r:.120}); remove it, or choose another destination")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(out)
    for leftover in [tmp, *out.parent.glob(f".{tmp.name}.level*.tmp")]:  # a killed run's
        leftover.unlink(missing_ok=True)
    source = _open_source(src)
    try:
        write_pyramid(tmp, source, tile=tile, lossless=lossless, quality=quality,
                      description=expected,
                      progress=None if progress is None else progress.update)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    return "converted"


def _convert_job(args) -> tuple[str, str]:
    src, out, kwargs = args
    try:
        return convert_image(src, out, **kwargs), ""
    except (OSError, ValueError, TiledImageError, ImportError) as exc:
        return "failed", f"{type(exc).__name__}: {exc}"


def convert_images(sources, dst, *, tile: int = 256, quality: int = 90, lossless: bool = False,
                   jobs: int = 1, progress: bool = True) -> dict[str, list]:
    """Converts files and folders of images (see :func:`plan_outputs`) to tiled
    pyramidal TIFFs, ``jobs`` files at a time. Returns {"converted": [out, ...],
    "skipped": [...], "failed": [(src, reason), ...]}; a failed file leaves no
    output, the others go on."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if tile % 16 or tile < 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF tiles), got {tile}")
    from tqdm import tqdm

    pairs = plan_outputs(sources, dst)
    kwargs = dict(tile=tile, quality=quality, lossless=lossless)
    result = {"converted": [], "skipped": [], "failed": []}

    def record(src, out, status, reason):
        if status == "failed":
            result["failed"].append((src, reason))
        else:
            result[status].append(out)

    bar = tqdm(total=len(pairs), unit="file", desc="lomar convert", disable=not progress,
               file=sys.stderr)
    try:
        if jobs == 1 or len(pairs) == 1:
            for src, out in pairs:
                rows = tqdm(unit="row", desc=src.name, leave=False, disable=not progress,
                            file=sys.stderr)
                status, reason = _convert_job((src, out, dict(kwargs, progress=rows)))
                rows.close()
                record(src, out, status, reason)
                bar.update()
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(pairs)), mp_context=context) as pool:
                futures = {pool.submit(_convert_job, (src, out, kwargs)): (src, out)
                           for src, out in pairs}
                for future in as_completed(futures):
                    src, out = futures[future]
                    record(src, out, *future.result())
                    bar.update()
    finally:
        bar.close()
    return result
