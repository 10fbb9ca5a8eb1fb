"""``lomar bench-data --source FILE``: the window pipeline's cost per sample on one file,
and the tiled sources of ``lomar bench-data --tiled``.

A sample is what pretraining draws per item (a random-resized crop to ``--size``, four
7x7-patch windows of 16-pixel patches, their pixels only), timed on one thread:

- from a tiled file (:func:`lomar.data.open_tiled`), as ``data.region_size`` runs it
  (:class:`lomar.data.TiledRegions`): a region of ``region`` pixels at level 0
  (default: the file's shorter side, at most 3000), the crop inside it, the windows read
  at the level the crop needs, only the tiles under them, through the per-process tile
  cache (``--tile-cache-mb``);
- from any other image file: :class:`lomar.data.WindowCrops` on it (a JPEG decoded at
  reduced scale when the crop allows).

Recorded per source: ``ms_per_sample`` (the median of the samples' times),
``tiles_per_sample`` (tiles decoded from the file per sample, mean; null for non-tiled
files), ``cache_hit_rate``, ``peak_rss_mb`` (the process's peak resident memory, the
shared libraries' pages included: torch alone maps about 500 MB), ``anon_rss_start_mb``
and ``anon_rss_peak_mb`` (the process's own memory after opening the file and a warm-up,
and its peak over the samples) and ``rss_growth_mb`` (their difference: what the tile
cache and the pipeline add, the figure to hold against the cache size). ``data.json`` is that record for
one source, a list of records for several. ``--tiled`` builds the offline sources and times
each: a 12 MP JPEG (the photos inside scikit-image), that photo as a tiled pyramid in each
codec of :data:`CODECS` (JPEG q90 is what ``lomar convert`` writes) and the demo gigapixel
slide (32768 x 32768, JPEG q90 tiles)."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

import lomar_ops

from ..data import (TILED_EXTENSIONS, RegionSpec, TiledRegions, WindowCrops, WindowSpec,
                    build_demo_slide)
from ..engine.seeding import mix, seed_all

WINDOW = dict(patch_size=16, window_size=7, num_windows=4)
MAX_REGION = 3000  # the default region: the file's shorter side, at most this (a 12 MP photo's)


def _anon_rss_mb() -> float:
    """The process's own resident memory (Linux: RssAnon of /proc/self/status), in MB: the
    heap, the tile cache, the arrays; not the shared libraries' pages (torch's alone are
    about 500 MB of RSS, shared by every worker and the main process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise OSError("no RssAnon in /proc/self/status (the RSS figures need Linux)")


def _is_tiled(path: Path) -> bool:
    return any(path.name.lower().endswith(ext) for ext in TILED_EXTENSIONS)


def measure_source(path: str | Path, size: int = 1024, samples: int = 200, seed: int = 0,
                   tile_cache_mb: float = 256, region: int | None = None,
                   warmup: int = 10) -> dict:
    """One source's record (see the module docstring), ``samples`` samples after
    ``warmup``, each drawn from mix(seed, i) as the training loop seeds its items."""
    path = Path(path)
    torch.set_num_threads(1)
    spec = WindowSpec(size, **WINDOW)
    record = {"source": str(path), "size": size, "samples": samples}
    if _is_tiled(path):
        data = TiledRegions(path, spec, RegionSpec(1), samples_per_file=1,
                            tile_cache_mb=tile_cache_mb)
        image, _ = data._source(0)
        side = region or min(*image.levels[0], MAX_REGION)
        data = TiledRegions(path, spec, RegionSpec(side), samples_per_file=samples + warmup,
                            tile_cache_mb=tile_cache_mb)
        image, _ = data._source(0)
        record.update(kind="tiled", region=side, levels=image.levels, tile_size=image.tile_size,
                      tile_cache_mb=tile_cache_mb)

        def one(i):
            return data.sample(0)
    else:
        pipeline = WindowCrops(spec)
        image = None
        record.update(kind="image")

        def one(i):
            return pipeline(path)

    for i in range(warmup):
        seed_all(mix(seed, i), devices=False)
        one(i)
    if image is not None:
        image.reset_stats()
    start_anon, times = _anon_rss_mb(), []
    peak_anon = start_anon
    for i in range(warmup, warmup + samples):
        seed_all(mix(seed, i), devices=False)
        t0 = time.perf_counter()
        one(i)
        times.append((time.perf_counter() - t0) * 1e3)
        peak_anon = max(peak_anon, _anon_rss_mb())  # outside the timed part
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    record.update(ms_per_sample=statistics.median(times), ms_mean=statistics.fmean(times),
                  ms_p90=sorted(times)[int(0.9 * (len(times) - 1))],
                  peak_rss_mb=round(peak, 1), anon_rss_start_mb=round(start_anon, 1),
                  anon_rss_peak_mb=round(peak_anon, 1),
                  rss_growth_mb=round(peak_anon - start_anon, 1))
    if image is not None:
        stats = image.stats
        decoded, hits = stats["tiles_decoded"], stats["cache_hits"]
        record.update(tiles_per_sample=decoded / samples,
                      cache_hit_rate=hits / max(1, decoded + hits),
                      mb_read_per_sample=stats["bytes_read"] / samples / 2**20)
    else:
        record.update(tiles_per_sample=None, cache_hit_rate=None)
    return record


# The 12 MP photo's pyramid in each codec a tiled TIFF commonly carries (tifffile options;
# predictors where the codec takes one, as lomar convert --lossless writes zstd).
CODECS = {
    "jpeg-q90": None,  # lomar convert's default
    "zstd": dict(compression="zstd", predictor=True),  # lomar convert --lossless
    "deflate": dict(compression="zlib", predictor=True),
    "lzw": dict(compression="lzw", predictor=True),
    "webp-q90": dict(compression="webp", compressionargs={"level": 90}),
    "jpeg2000": dict(compression="jpeg2000"),  # lossless, as pathology scanners' J2K tiles
    "none": dict(compression=None),
}


class _ArraySource:
    """An (H, W, bands) array as write_pyramid's source."""

    def __init__(self, array):
        self.array = array
        self.height, self.width, self.bands = array.shape
        self.dtype, self.mpp = array.dtype, None

    def read_rows(self, top, n):
        return self.array[top:top + n]


def build_tiled_sources(out: Path) -> dict[str, Path]:
    """The offline sources of ``--tiled``: a 12 MP JPEG ("12mp-jpeg"), the same photo as a
    tiled pyramid in each of CODECS ("12mp-tiled-<codec>"), and the demo gigapixel slide
    ("gigapixel-tiled-jpeg-q90", 32768 x 32768, 256-pixel JPEG q90 tiles)."""
    import numpy as np
    from PIL import Image

    from ..data.convert import convert_image, write_pyramid
    from .data_pipeline import build_sources

    jpeg = build_sources(out, sets=("12mp",))["12mp"][0]
    tiled = out / "sources" / "tiled"
    tiled.mkdir(parents=True, exist_ok=True)
    sources = {"12mp-jpeg": jpeg}
    pixels = None
    for name, options in CODECS.items():
        path = tiled / f"{jpeg.stem}-{name}.tif"
        sources[f"12mp-tiled-{name}"] = path
        if options is None:
            convert_image(jpeg, path)  # JPEG q90 tiles of 256, levels by 2 (skipped if made)
        elif not path.is_file():
            pixels = np.asarray(Image.open(jpeg).convert("RGB")) if pixels is None else pixels
            tmp = path.with_name(path.name + ".tmp")
            write_pyramid(tmp, _ArraySource(pixels), compression=options)
            tmp.replace(path)
    sources["gigapixel-tiled-jpeg-q90"] = build_demo_slide(tiled / "gigapixel.tif",
                                                           size=32768, seed=0)
    return sources


def _measure_in_fresh_process(*args) -> dict:
    """measure_source in a spawned process: its peak RSS is this source's alone (a worker's),
    not the largest of the sources timed before it. The process does not outlive the
    measurement: it is ended when this one is stopped (SIGTERM, Ctrl-C) and, on Linux,
    when this one dies, so that a stopped benchmark leaves nothing loading the machine."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_measure_child, args=(send, os.getpid(), args), daemon=True)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    child.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        raise RuntimeError(f"lomar bench-data: the measuring process ended without a result "
                           f"(exit code {child.exitcode})") from None
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        signal.signal(signal.SIGTERM, previous)
    if not ok:
        raise RuntimeError(f"lomar bench-data: measuring {args[0]} failed: {value}")
    return value


def _raise_exit(signum, frame):  # SIGTERM -> SystemExit: the finally blocks run
    raise SystemExit(128 + signum)


def _measure_child(send, parent: int, args) -> None:
    if sys.platform.startswith("linux"):  # die with the parent, even a SIGKILLed one
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before prctl took effect
            return
    try:
        send.send((True, measure_source(*args)))
    except Exception as exc:  # sent to the parent, which raises it with the source named
        send.send((False, f"{type(exc).__name__}: {exc}"))


def run(sources: list[str], out: str, sizes: list[int] = (1024,), samples: int = 200,
        seed: int = 0, tile_cache_mb: list[float] = (256,), tiled: bool = False) -> list[dict]:
    """Time each source at each size and, for tiled files, each tile cache size (each run
    in a fresh process), write DIR/data.json (the record with the environment; a list of
    them for several), print one line per record."""
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise ValueError(f"--source: no such file: {', '.join(missing)}")
    if not sources and not tiled:
        raise ValueError("no source: give --source FILE [FILE ...] or --tiled")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    named = {Path(s).name: Path(s) for s in sources}
    if tiled:
        named.update(build_tiled_sources(out_dir))
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.machine(), "processor": platform.processor() or None,
            "threads": 1, "torch": torch.__version__, "lomar_ops": lomar_ops.__version__}
    records = []
    runs = [(name, path, size, cache) for name, path in named.items() for size in sizes
            for cache in (tile_cache_mb if _is_tiled(path) else tile_cache_mb[:1])]
    for name, path, size, cache in runs:
        record = {"name": name, **_measure_in_fresh_process(path, size, samples, seed,
                                                               cache), **meta}
        records.append(record)
        tiles = (f", {record['tiles_per_sample']:.1f} tiles/sample, cache hits "
                 f"{record['cache_hit_rate']:.0%}" if record["tiles_per_sample"] is not None
                 else "")
        cached = f", cache {cache:g} MB" if record["kind"] == "tiled" else ""
        print(f"{name} at {size}{cached}: {record['ms_per_sample']:.2f} ms/sample{tiles}, "
              f"peak RSS "
              f"{record['peak_rss_mb']:.0f} MB (+{record['rss_growth_mb']:.0f} MB over "
              f"{samples} samples)", flush=True)
    value = records[0] if len(records) == 1 else records
    tmp = out_dir / "data.json.tmp"
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(out_dir / "data.json")
    return records
