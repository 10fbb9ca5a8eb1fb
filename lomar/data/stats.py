"""Per-band statistics of a data set (``lomar stats PATH``): mean, std, min, max and a
histogram per band, over a seeded sample of its files or of regions of its big files.

Values are in the units the model normalises: a uint8 sample value / 255, a uint16
one / 65535, a float one as it is (``PIXEL_SCALE``), so the mean and std can go
straight into ``data.mean`` and ``data.std``. Files are read as they are
(:func:`lomar.data.read_image`: every band, every bit); files larger than
``max_pixels`` are sampled by ``regions_per_file`` random boxes of ``region`` pixels
at full resolution through the tiled reader, so a gigapixel slide costs what its
boxes cost. The moments are merged per image in float64 with Chan's pairwise update
(no cancellation from a sum of squares); min and max are exact; the histogram has
``bins`` bins between the smallest and the largest value seen, from up to 65,536
evenly spaced values per band of every image read."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .constants import IMAGE_EXTENSIONS, TILED_EXTENSIONS
from .decode import CorruptImageError
from .read import band_names, read_image

__all__ = ["PIXEL_SCALE", "BandStatistics", "band_statistics", "find_stat_files"]

# Sample value -> the unit the model's normalisation works in (window_patchify's).
PIXEL_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0, torch.float32: 1.0}
_HIST_VALUES = 1 << 16  # values per band and image kept for the histogram


@dataclass
class BandStatistics:
    """What :func:`band_statistics` measured; ``mean``/``std``/``min``/``max`` per band
    in model units (see the module's docstring), ``histogram`` (bands, bins) counts
    over ``edges`` (bins + 1) in the same units."""

    files: list[str]
    skipped: list[tuple[str, str]]
    bands: int
    dtype: torch.dtype
    pixels: int  # per band
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    histogram: torch.Tensor = field(repr=False)
    edges: torch.Tensor = field(repr=False)
    # The bands' names when every file measured gives the same ones (OME channels,
    # GeoTIFF descriptions: lomar.data.read.band_names), else None.
    names: list[str] | None = None

    def label(self, band: int) -> str:
        return f"band {band} ({self.names[band]})" if self.names else f"band {band}"

    def yaml(self) -> str:
        """A config fragment (``--config`` layers it over another config; see
        docs/training.md) with data.mean and data.std, and what they came from."""
        def floats(values):
            return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"

        return (f"# lomar stats: {len(self.files)} files, {self.bands} band(s) of "
                f"{str(self.dtype).replace('torch.', '')}, {self.pixels} pixels per band; "
                f"values / {PIXEL_SCALE[self.dtype]:g}\n"
                + (f"# band names {self.names} (data.bands can pick by name)\n"
                   if self.names else "") +
                f"# min {floats(self.min)}\n# max {floats(self.max)}\n"
                f"data:\n  mean: {floats(self.mean)}\n  std: {floats(self.std)}\n")


def find_stat_files(path: str | Path) -> list[Path]:
    """The image files under ``path`` (a folder, searched recursively, or one file)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"lomar stats: no such file or folder: {path}")
    extensions = tuple(sorted(set(IMAGE_EXTENSIONS) | set(TILED_EXTENSIONS)))
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(extensions))
    if not files:
        raise ValueError(f"lomar stats: no image files ({', '.join(extensions)}) under {path}")
    return files


def _pixels_of(path: Path, rng: random.Random, max_pixels: int, region: int,
               regions_per_file: int) -> list[torch.Tensor]:
    """The (bands, h, w) arrays to count from one file: the whole image, or boxes."""
    if path.name.lower().endswith(TILED_EXTENSIONS):
        from .tiled import TiledImageError, open_tiled

        try:
            image = open_tiled(path, tile_cache_mb=0)
        except TiledImageError as exc:
            raise CorruptImageError(str(exc)) from exc
        try:
            h, w = image.levels[0]
            if h * w > max_pixels:
                side_h, side_w = min(region, h), min(region, w)
                return [image.read(0, rng.randrange(h - side_h + 1), rng.randrange(w - side_w + 1),
                                   side_h, side_w) for _ in range(regions_per_file)]
        finally:
            image.close()
    return [read_image(path)]


class _Moments:
    """Per-band count, mean and M2 (sum of squared deviations), merged pairwise."""

    def __init__(self, bands: int):
        self.n = 0
        self.mean = torch.zeros(bands, dtype=torch.float64)
        self.m2 = torch.zeros(bands, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:  # x: (bands, pixels) float64
        n_b = x.shape[1]
        mean_b = x.mean(1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(1)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n


def band_statistics(path: str | Path, max_files: int = 1000, seed: int = 0, bins: int = 256,
                    max_pixels: int = 1 << 24, region: int = 1024, regions_per_file: int = 8,
                    progress: bool = False) -> BandStatistics:
    """Statistics of up to ``max_files`` files of ``path`` (drawn with ``seed`` when there
    are more). Every file must have the first file's bands and dtype (else ValueError,
    naming both); unreadable files are skipped and listed in ``skipped``."""
    for name, value, ok in (("max_files", max_files, max_files >= 1), ("bins", bins, bins >= 1),
                            ("region", region, region >= 1),
                            ("regions_per_file", regions_per_file, regions_per_file >= 1)):
        if not ok:
            raise ValueError(f"lomar stats: {name} must be >= 1, got {value}")
    files = find_stat_files(path)
    rng = random.Random(seed)
    if len(files) > max_files:
        files = sorted(rng.sample(files, max_files))
    if progress:
        from tqdm import tqdm

        files_iter = tqdm(files, desc="lomar stats", unit="file")
    else:
        files_iter = files
    used, skipped, kept, names = [], [], [], []
    moments = bands = dtype = low = high = None
    for file in files_iter:
        try:
            arrays = _pixels_of(file, rng, max_pixels, region, regions_per_file)
        except (CorruptImageError, ValueError) as exc:
            skipped.append((str(file), str(exc)))
            continue
        if bands is None:
            bands, dtype = arrays[0].shape[0], arrays[0].dtype
            if dtype not in PIXEL_SCALE:
                raise ValueError(f"lomar stats: {file} holds {dtype}, not uint8, uint16 or "
                                 f"float32")
            moments = _Moments(bands)
            low = torch.full((bands,), math.inf, dtype=torch.float64)
            high = torch.full((bands,), -math.inf, dtype=torch.float64)
        for a in arrays:
            if a.shape[0] != bands or a.dtype != dtype:
                raise ValueError(f"lomar stats: {file} has {a.shape[0]} band(s) of "
                                 f"{str(a.dtype).replace('torch.', '')}, the first file "
                                 f"{used[0] if used else file} {bands} of "
                                 f"{str(dtype).replace('torch.', '')}: one data set, one layout")
            x = a.reshape(bands, -1).to(torch.float64) / PIXEL_SCALE[dtype]
            if dtype == torch.float32 and not torch.isfinite(x).all():
                raise ValueError(f"lomar stats: {file} holds NaN or infinite values")
            moments.add(x)
            low, high = torch.minimum(low, x.min(1).values), torch.maximum(high, x.max(1).values)
            step = max(1, x.shape[1] // _HIST_VALUES)
            kept.append(x[:, ::step])
        used.append(str(file))
        names.append(band_names(file))
    if not used:
        raise ValueError(f"lomar stats: no readable image under {path} ({len(skipped)} skipped: "
                         f"{skipped[0][1] if skipped else ''})")
    lo, hi = float(low.min()), float(high.max())  # 12-bit data in uint16 fills its bins too
    hi = hi if hi > lo else lo + 1.0
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    values = torch.cat(kept, 1)
    histogram = torch.stack([torch.histc(v, bins, lo, hi) for v in values]).to(torch.int64)
    std = (moments.m2 / moments.n).sqrt()
    same_names = names[0] if names[0] and len(names[0]) == bands and all(
        n == names[0] for n in names) else None
    return BandStatistics(used, skipped, bands, dtype, moments.n, moments.mean.tolist(),
                          std.tolist(), low.tolist(), high.tolist(), histogram, edges,
                          same_names)


def plot_histograms(stats: BandStatistics, out: str | Path) -> Path:
    """One panel per band (at most 16): the histogram, the mean and mean +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(stats.bands, 16)
    cols = min(shown, 4)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    centers = ((stats.edges[1:] + stats.edges[:-1]) / 2).numpy()
    width = float(stats.edges[1] - stats.edges[0])
    for b, ax in enumerate(axes.flat):
        if b >= shown:
            ax.axis("off")
            continue
        ax.bar(centers, stats.histogram[b].numpy(), width=width, color="tab:blue")
        m, s = stats.mean[b], stats.std[b]
        ax.axvline(m, color="k", lw=1)
        ax.axvspan(m - s, m + s, color="k", alpha=0.1)
        ax.set_title(f"{stats.label(b)}: mean {m:.4g}, std {s:.4g}", fontsize=8)
        ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{len(stats.files)} files, {stats.bands} band(s) of "
                 f"{str(stats.dtype).replace('torch.', '')} (values / "
                 f"{PIXEL_SCALE[stats.dtype]:g})", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
