"""Samples from tiled, pyramidal files (whole-slide images, satellite scenes, big photos):
regions where the foreground is, then the usual crop and windows inside them, read
tile by tile at the pyramid level the crop needs.

An item of :class:`TiledRegions` is one sample of one file (``samples_per_file`` per
file and epoch). Its draws, all from the generators the training loop seeds per
(epoch, item), so that resume stays exact:

1. a region of ``region_size`` x ``region_size`` pixels at the target scale (``mpp``
   micrometres per pixel, or ``downsample`` level-0 pixels per pixel), uniform among
   the positions whose foreground share is at least ``min_foreground`` (the mask:
   Otsu's threshold on a small level, computed once per file and cached on disk);
2. the pipeline's random-resized crop of the region and its window corners
   (:class:`lomar.data.pipelines.WindowSpec`);
3. the pixels: the coarsest level whose downsample does not exceed the crop's
   reduction (as the JPEG path decodes at reduced scale), only the tiles under the
   windows' source pixels (:func:`render_tiled_windows`), or the whole crop for the
   full pipeline (:func:`render_tiled_crop`).

A file that cannot be read, or whose foreground is empty, is skipped with its path
named once (``on_corrupt="skip"``), or stops the run (``"error"``): never a crash
mid-epoch, never a black window."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .constants import IMAGENET_MEAN, IMAGENET_STD, TILED_EXTENSIONS
from .crop import Crop, window_boxes
from .crop import WINDOW_DTYPES
from .pipelines import WindowSpec, band_indices, check_bands, check_finite, normalise_float
from .tiled import open_tiled

__all__ = ["RegionSpec", "TiledRegions", "find_tiled_files", "foreground_mask",
           "render_tiled_crop", "render_tiled_windows"]

MASK_SIDE = 1024  # the foreground mask comes from the coarsest level, or one this small


def find_tiled_files(path: str | Path) -> list[Path]:
    """The tiled files of ``path``: a folder (searched recursively by extension), one
    tiled file, or a text file listing one path per line (relative to the list's folder;
    # comments)."""
    path = Path(path)
    if path.is_file() and _is_tiled(path):
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_tiled(p))
        if not files:
            raise ValueError(f"no tiled image files ({', '.join(TILED_EXTENSIONS)}) found "
                             f"under {path}")
        return files
    if path.is_file():
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        files = [(path.parent / line) if not Path(line).is_absolute() else Path(line)
                 for line in lines if line]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{path} lists files that do not exist: "
                                    f"{', '.join(missing[:3])}")
        if not files:
            raise ValueError(f"{path} lists no files")
        return files
    raise FileNotFoundError(f"data path not found: {path} (a folder of tiled files or a "
                            f"list file)")


def _is_tiled(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(ext) for ext in TILED_EXTENSIONS)


# ---- the foreground mask ------------------------------------------------------------

def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the split of a 256-bin histogram that
    maximises the between-class variance."""
    hist = torch.histc(values.float().flatten(), bins=bins, min=0.0, max=1.0).double()
    if hist.sum() == 0:
        return 0.5
    p = hist / hist.sum()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    w0 = p.cumsum(0)
    mu = (p * centers).cumsum(0)
    mu_t = mu[-1]
    between = (mu_t * w0 - mu) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    return float(centers[int(between.argmax())] + 0.5 / bins)


def foreground_mask(image: torch.Tensor) -> torch.Tensor:
    """(h, w) bool from a small (bands, h, w) image: pixels darker than Otsu's
    threshold of the brightness (the mean of the bands, scaled to [0, 1] by the dtype's
    range). Brightfield slides put dark tissue on bright glass; a scene without such a
    background wants ``min_foreground=0`` (no mask)."""
    if image.dtype.is_floating_point:
        grey = image.float().mean(0)
        lo, hi = float(grey.min()), float(grey.max())
        grey = (grey - lo) / max(hi - lo, 1e-12)
    else:
        grey = image.float().mean(0) / float(torch.iinfo(image.dtype).max)
    if float(grey.max() - grey.min()) < 1e-6:  # a uniform image has no foreground
        return torch.zeros(grey.shape, dtype=torch.bool)
    return grey < otsu_threshold(grey)


@dataclass(frozen=True)
class RegionSpec:
    """Where the samples of a file come from: ``region_size`` pixels at ``mpp``
    micrometres per pixel (the file must say its own) or, without mpp, at
    ``downsample`` level-0 pixels per pixel; only where at least ``min_foreground`` of
    the region is foreground (0: anywhere)."""

    region_size: int
    mpp: float | None = None
    downsample: float = 1.0
    min_foreground: float = 0.0

    def __post_init__(self):
        if self.region_size < 1:
            raise ValueError(f"RegionSpec: region_size must be >= 1, got {self.region_size}")
        if self.mpp is not None and not self.mpp > 0:
            raise ValueError(f"RegionSpec: mpp must be > 0 or None, got {self.mpp}")
        if not self.downsample > 0:
            raise ValueError(f"RegionSpec: downsample must be > 0, got {self.downsample}")
        if not 0 <= self.min_foreground <= 1:
            raise ValueError(f"RegionSpec: min_foreground must be in [0, 1], got "
                             f"{self.min_foreground}")

    def scale(self, image, path) -> float:
        """Level-0 pixels per region pixel for ``image`` (from open_tiled) at ``path``."""
        if self.mpp is None:
            return self.downsample
        if image.mpp is None:
            raise ValueError(f"{path}: data.mpp = {self.mpp} needs the file's pixel size, "
                             f"and the file does not say it; use data.downsample instead")
        return self.mpp / image.mpp


class _Positions:
    """The region corners of a file where the foreground share is high enough, on the
    mask's grid: drawn uniformly, then placed uniformly inside the mask pixel."""

    def __init__(self, image, path: Path, spec: RegionSpec, mask_dir: Path | None):
        H0, W0 = image.levels[0]
        self.extent = spec.region_size * spec.scale(image, path)  # level-0 pixels per side
        if self.extent > min(H0, W0):
            raise ValueError(f"{path}: a region of {spec.region_size} pixels at "
                             f"{spec.scale(image, path):g} level-0 pixels per pixel "
                             f"({self.extent:.0f} pixels) does not fit the {H0}x{W0} image")
        self.max_top, self.max_left = H0 - self.extent, W0 - self.extent
        if spec.min_foreground == 0:
            self.cells = None
            return
        mask, cell = _cached_mask(image, path, mask_dir)
        k = min(max(1, int(round(self.extent / cell))), *mask.shape)
        cells = (_box_share(mask, k) >= spec.min_foreground).nonzero()
        if len(cells) == 0:
            raise EmptyForeground(f"{path}: no region of {spec.region_size} pixels has "
                                  f"{spec.min_foreground:.0%} foreground (data.min_foreground)")
        self.cells, self.cell = cells, cell

    def draw(self) -> tuple[float, float]:
        """(top, left) of a region in level-0 pixels, from the global generator."""
        if self.cells is None:
            u = torch.rand(2)
            return float(u[0]) * self.max_top, float(u[1]) * self.max_left
        i = int(torch.randint(len(self.cells), (1,)))
        u = torch.rand(2)
        row, col = self.cells[i].tolist()
        top = min((row + float(u[0])) * self.cell, self.max_top)
        left = min((col + float(u[1])) * self.cell, self.max_left)
        return top, left


def _box_share(mask: torch.Tensor, k: int) -> torch.Tensor:
    """The foreground share of every k x k box of the mask, by its corner (an integral
    image: linear in the mask's size, whatever k)."""
    ii = F.pad(mask.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    return (ii[k:, k:] - ii[:-k, k:] - ii[k:, :-k] + ii[:-k, :-k]) / (k * k)


class EmptyForeground(ValueError):
    """A file with no region where the foreground is (skipped like a corrupt file)."""


class UnsupportedImage(ValueError):
    """A file the pipelines cannot take (its bands or dtype): an error, never skipped."""


def _mask_level(image) -> int:
    """The finest level no larger than MASK_SIDE on its long side (else the coarsest)."""
    for level, (h, w) in enumerate(image.levels):
        if max(h, w) <= MASK_SIDE:
            return level
    return len(image.levels) - 1


def _cached_mask(image, path: Path, mask_dir: Path | None) -> tuple[torch.Tensor, float]:
    """(mask (h, w) bool, level-0 pixels per mask pixel), from ``mask_dir`` when this
    file (path, size, modification time) was seen before; written atomically."""
    level = _mask_level(image)
    cell = image.levels[0][1] / image.levels[level][1]
    stat = os.stat(path)
    key = hashlib.sha1(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}:"
                       f"{level}".encode()).hexdigest()[:20]
    cached = mask_dir / f"{key}.pt" if mask_dir is not None else None
    if cached is not None and cached.is_file():
        return torch.load(cached, weights_only=True), cell
    h, w = image.levels[level]
    mask = foreground_mask(image.read(level, 0, 0, h, w))
    if cached is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=mask_dir)
        os.close(fd)
        torch.save(mask, tmp)
        os.replace(tmp, cached)
    return mask, cell


# ---- pixels of a crop of a tiled file ---------------------------------------------------

def _level_for(image, shrink: float) -> int:
    """The coarsest level whose downsample does not exceed ``shrink`` (level-0 pixels
    per output pixel): the resize still only shrinks it."""
    best = 0
    for level, d in enumerate(image.downsamples):
        if d <= shrink * (1 + 1e-9) and d >= image.downsamples[best]:
            best = level
    return best


def _box_at(image, box0: tuple[float, float, float, float], level: int):
    """A level-0 box (top, left, height, width) in ``level``'s pixels, kept inside it."""
    H, W = image.levels[level]
    sy, sx = image.levels[0][0] / H, image.levels[0][1] / W
    top, left = box0[0] / sy, box0[1] / sx
    height, width = min(box0[2] / sy, H - top), min(box0[3] / sx, W - left)
    return top, left, height, width


def _taps(start: float, length: float, out_size: int, lo: int, count: int) -> tuple[int, int]:
    """Source pixels [first, last) the bicubic antialiased resize of [start, start+length)
    to ``out_size`` reads for outputs [lo, lo + count) (the resampler's own rule, clipped
    to the box), one pixel wider on each side."""
    scale = length / out_size
    support = 2.0 * max(scale, 1.0)
    first = math.floor(start + scale * (lo + 0.5) - support + 0.5) - 1
    last = int(start + scale * (lo + count - 0.5) + support + 0.5) + 1
    return max(first, math.floor(start)), min(last, math.ceil(start + length))


def render_tiled_windows(image, level: int, box: tuple[float, float, float, float], crop: Crop,
                         coords: torch.Tensor, window_size: int, patch_size: int,
                         bands: tuple[int, ...] | None = None) -> torch.Tensor:
    """The windows of ``crop`` of ``box`` (top, left, height, width in ``level``'s pixels)
    of a tiled image, reading only the tiles under the windows' source pixels:
    (n, bands, K*p, K*p) in the image's dtype (uint8, uint16 or float32 for the
    resampler); ``bands``: the band indices kept, in that order (None: all).

    The crop is resampled from a canvas that holds the box's pixels where the windows'
    taps fall and nothing elsewhere (never read): the result is, to the bit, what
    :func:`lomar.data.crop.render_windows` gives on the whole decoded level."""
    boxes = window_boxes(crop, coords, window_size, patch_size)
    side = window_size * patch_size
    top, left, height, width = box
    y_org, x_org = math.floor(top), math.floor(left)
    y_end, x_end = math.ceil(top + height), math.ceil(left + width)
    keep = list(bands) if bands is not None else slice(None)
    count = len(bands) if bands is not None else image.bands
    canvas = _new_canvas((y_end - y_org, x_end - x_org, count), image.dtype)
    out_h, out_w = crop.size
    for y0, x0, _ in boxes:
        ya, yb = _taps(top, height, out_h, y0, side)
        xa, xb = _taps(left, width, out_w, x0, side)
        canvas[ya - y_org:yb - y_org, xa - x_org:xb - x_org] = image.read(
            level, ya, xa, yb - ya, xb - xa)[keep].permute(1, 2, 0)
    rel = (top - y_org, left - x_org, height, width)
    out = _resize_each(canvas, rel, crop.size, [(y0, x0) for y0, x0, _ in boxes], side)
    return out.flip(-1) if crop.flip else out


def _new_canvas(shape, dtype) -> torch.Tensor:
    # Not zeroed: the resampler reads only the windows' taps, which are written (a test
    # fills the canvas with other values and gets the same windows); untouched pages of
    # a large allocation are never materialised.
    return torch.empty(shape, dtype=dtype)


def _resize_each(canvas, box, size, corners, side):
    # One region per window (resize_windows may resize the windows' union in one call,
    # which would read the canvas between the windows, where nothing was written).
    from lomar_ops import resize_regions

    from .resample import BACKEND

    return resize_regions(canvas, box, size, [(y0, x0, side, side) for y0, x0 in corners],
                          backend=BACKEND)


def render_tiled_crop(image, level: int, box: tuple[float, float, float, float],
                      crop: Crop, bands: tuple[int, ...] | None = None) -> torch.Tensor:
    """The whole crop from ``level`` (the full pipeline): (bands, out_h, out_w) in the
    image's dtype, :func:`lomar.data.crop.render_crop` of the decoded level to the bit;
    ``bands`` as for :func:`render_tiled_windows`."""
    from lomar_ops import resize_region

    from .resample import BACKEND

    top, left, height, width = box
    y_org, x_org = math.floor(top), math.floor(left)
    pixels = image.read(level, y_org, x_org, math.ceil(top + height) - y_org,
                        math.ceil(left + width) - x_org)
    if bands is not None:
        pixels = pixels[list(bands)]
    rel = (top - y_org, left - x_org, height, width)
    out = resize_region(pixels.permute(1, 2, 0).contiguous(), rel, crop.size,
                        (0, 0, *crop.size), backend=BACKEND)
    return out.flip(-1) if crop.flip else out


# ---- the dataset -------------------------------------------------------------------------

class TiledRegions(torch.utils.data.Dataset):
    """Samples of tiled files for pretraining: item i is sample i % samples_per_file of
    file i // samples_per_file; ``(windows, coords, -1)`` with the window pipeline
    ("windows": (n, 3, K*p, K*p) uint8), ``(crop, coords, -1)`` with the full one
    ("full": (3, S, S) float32 normalised with ``mean`` and ``std``, per channel on
    values / 255, ImageNet's by default).

    ``bands`` "rgb" (the default): the files must hold 3-band uint8 pixels (RGB).
    "all" or a list of band indices: the files' own bands (those picked, in that order),
    uint8, uint16 or float32, ``channels`` of them (None: any count), one band count and
    one dtype across the data set (the window pipeline ships integer values raw and the
    model normalises them by their type's maximum and ``mean``/``std``; float32 windows
    are normalised here; the full pipeline normalises all). A float sample with NaN or
    infinite values is an unreadable sample: its file is skipped and named.
    ``tile_cache_mb`` bounds each worker's cache of decoded tiles; foreground masks are
    cached in ``mask_dir``."""

    def __init__(self, path: str | Path, window: WindowSpec, region: RegionSpec,
                 samples_per_file: int = 16, pipeline: str = "windows",
                 tile_cache_mb: float = 256, mask_dir: str | Path | None = None,
                 on_corrupt: str = "skip", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 bands="rgb", channels: int | None = None):
        if pipeline not in ("windows", "full"):
            raise ValueError(f"pipeline must be 'windows' or 'full', got {pipeline!r}")
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        if samples_per_file < 1:
            raise ValueError(f"samples_per_file must be >= 1, got {samples_per_file}")
        self.files = find_tiled_files(path)
        self.window, self.region = window, region
        self.samples_per_file, self.pipeline = samples_per_file, pipeline
        self.tile_cache_mb, self.on_corrupt = tile_cache_mb, on_corrupt
        self.mean, self.std = tuple(mean), tuple(std)  # full pipeline's, float windows'
        self.bands = check_bands(bands)
        self.channels = 3 if self.bands == "rgb" else channels
        self.dtype: torch.dtype | None = None  # the data set's, from the first file taken
        self._picks: dict[Path, tuple[int, ...] | None] = {}  # per file: data.bands' indices
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self._open: dict[int, tuple] = {}  # per process: file index -> (image, positions)
        self._bad: set[int] = set()  # per process: files that failed, skipped from then on
        self.check_files()

    def __len__(self) -> int:
        return len(self.files) * self.samples_per_file

    def check_files(self) -> None:
        """Read every file's header before any training (directories, not pixels): files
        the pipelines cannot take (bands, dtype) stop here, all named, not mid-epoch;
        files that cannot be opened, or lack the pixel size data.mpp needs, follow
        ``on_corrupt`` (skipped and named, or an error) here rather than at their first
        sample. The first readable file's foreground is checked too (its mask built)."""
        unsupported = []
        for i, path in enumerate(self.files):
            try:
                image = open_tiled(path, tile_cache_mb=self.tile_cache_mb)
            except (OSError, ValueError) as exc:
                self._skip(i, exc)
                continue
            try:
                reason = self._unsupported(image, path)
                if reason:
                    unsupported.append(f"{path} ({reason})")
                    continue
                self.region.scale(image, path)
            except ValueError as exc:
                self._skip(i, exc)
            finally:
                image.close()
        if unsupported:
            more = f" and {len(unsupported) - 5} more" if len(unsupported) > 5 else ""
            raise UnsupportedImage(f"the pretraining pipelines take {self._wanted()}; "
                                   f"{len(unsupported)} of the {len(self.files)} files do not "
                                   f"give that: {', '.join(unsupported[:5])}{more}")
        for i in range(len(self.files)):
            if i not in self._bad:
                try:
                    self._source(i)
                except EmptyForeground as exc:
                    self._skip(i, exc)
                    continue
                return
        raise ValueError(f"no tiled file under {self.files[0].parent} can be sampled: every "
                         f"one was skipped (see the warnings above)")

    def _wanted(self) -> str:
        if self.bands == "rgb":
            return "3-band uint8 (RGB) images with data.bands=rgb"
        count = f"{self.channels} band(s)" if self.channels else "one band count"
        picked = "" if self.bands == "all" else f" as data.bands={list(self.bands)} picks them"
        dtype = str(self.dtype).replace("torch.", "") if self.dtype else "uint8, uint16 or float32"
        return f"{count} of {dtype}{picked}"

    def _unsupported(self, image, path: Path) -> str | None:
        """Why the pipelines cannot take this file's pixels (None: they can). The first
        file taken sets the data set's dtype (and band count when ``channels`` is None)."""
        dtype = str(image.dtype).replace("torch.", "")
        if self.bands == "rgb":
            ok = image.bands == 3 and image.dtype == torch.uint8
            return None if ok else f"{image.bands} band(s) of {dtype}"
        if image.dtype not in WINDOW_DTYPES or (self.dtype and image.dtype != self.dtype):
            return f"samples of {dtype}"
        try:
            picks = band_indices(self.bands, path, image.bands)
        except ValueError as exc:
            return str(exc).removeprefix(f"{path}: ")
        picked = image.bands if picks == "all" else len(picks)
        if self.channels is not None and picked != self.channels:
            return f"{image.bands} band(s)"
        self.dtype, self.channels = image.dtype, picked
        self._picks[path] = None if picks == "all" else picks
        return None

    def _skip(self, index: int, exc: Exception) -> None:
        """A file that cannot be sampled: skipped with its path named once, or, with
        on_corrupt="error", the run stops."""
        path = self.files[index]
        if self.on_corrupt == "error":
            raise RuntimeError(f"cannot sample {path}: {exc}") from exc
        self._bad.add(index)
        self._open.pop(index, None)
        warnings.warn(f"skipping {path}: {exc}", stacklevel=3)

    def _source(self, index: int):
        if index not in self._open:
            path = self.files[index]
            image = open_tiled(path, tile_cache_mb=self.tile_cache_mb)
            reason = self._unsupported(image, path)
            if reason:
                image.close()
                raise UnsupportedImage(f"{path}: the pretraining pipelines take "
                                       f"{self._wanted()}, this file has {reason}")
            self._open[index] = (image, _Positions(image, path, self.region, self.mask_dir))
        return self._open[index]

    def sample(self, index: int) -> tuple:
        """One sample of file ``index``, from the global generator (seeded per item)."""
        image, positions = self._source(index)
        s = self.region.scale(image, self.files[index])
        top0, left0 = positions.draw()
        size = self.region.region_size
        crop, coords = self.window.draw((size, size))
        box0 = (top0 + crop.top * s, left0 + crop.left * s, crop.height * s, crop.width * s)
        level = _level_for(image, s * crop.reduction)
        box = _box_at(image, box0, level)
        bands = self._picks.get(self.files[index])  # this file's band indices (None: all)
        if self.pipeline == "windows":
            windows = render_tiled_windows(image, level, box, crop, coords,
                                           self.window.window_size, self.window.patch_size, bands)
            if windows.dtype.is_floating_point:  # shipped normalised (integers travel raw)
                check_finite(windows, self.files[index])
                windows = normalise_float(windows, self.mean, self.std)
            return windows, coords
        pixels = render_tiled_crop(image, level, box, crop, bands)
        if pixels.dtype.is_floating_point:
            check_finite(pixels, self.files[index])
        return v2.functional.normalize(v2.functional.to_dtype(pixels, torch.float32, scale=True),
                                       self.mean, self.std), coords

    def __getitem__(self, index: int):
        file_index = index // self.samples_per_file
        for attempt in range(len(self.files)):
            i = (file_index + attempt) % len(self.files)
            if i in self._bad:
                continue
            try:
                return (*self.sample(i), -1)
            except UnsupportedImage:
                raise
            except (OSError, ValueError) as exc:  # unreadable tiles, empty foreground, ...
                self._skip(i, exc)
        raise RuntimeError(f"no readable tiled file under {self.files[0].parent}: every file "
                           f"failed (see the warnings above)")

    def __getstate__(self):  # workers reopen the files (no handles cross processes)
        state = dict(self.__dict__)
        state["_open"], state["_bad"] = {}, set(self._bad)  # known-bad files stay skipped
        return state
