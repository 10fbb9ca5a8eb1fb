"""``lomar bench-data``: the input pipeline's cost per image, full crops against windows.

    lomar bench-data --out DIR                          # offline JPEGs, 224 to 2048
    lomar bench-data --images DIR --sizes 224 448 1024 --out DIR

For each source set and input size, both pretraining pipelines run on the same files
with the same draws (crop, flip, four 7x7-patch windows of 16-pixel patches), on one
thread, in passes over all the files that alternate between the pipelines:

- "full": :class:`lomar.data.FullCrops`, what the pretraining job runs with
  ``data.pipeline: full``: the file decoded at full scale, the random-resized crop
  of the whole image (bicubic, antialiased), the flip, float32 with ImageNet's
  normalisation; it sends the (3, S, S) float32 crop and the (4, 2) int64 corners.
- "windows": :class:`lomar.data.WindowCrops`, what the job runs with
  ``data.pipeline: windows`` (the default): JPEGs decoded at reduced scale when the
  crop shrinks them 2x or more, only the windows resampled; it sends (4, 3, 112, 112)
  uint8 windows and their (4, 2) int64 corners.

Written to DIR: ``data.json`` (one record per pipeline, source set and size:
``pipeline`` ("full" or "windows") and ``pipeline_class`` (the class that ran),
``ms_per_image`` the median over passes of a pass's mean, ``bytes_per_image`` as sent
to the device, ``psnr_db`` of the window pixels against the full-scale pipeline's
pixels at the same windows (null for "full", and null with ``max_abs_diff`` 0 when
they are identical)), ``data.png`` and ``decoders.json`` (decode time of each source
set with Pillow at full and reduced scale, and with simplejpeg when installed).

Without ``--images``, sources are made offline from the photos inside scikit-image:
"imagenet" (each photo resized to fit 500x375, ImageNet's typical size) and "12mp"
(4000x3000 mosaics of the photos at their native resolution, so that the JPEG carries
a photograph's detail, not an upscaled one's smoothness), JPEG quality 90."""

from __future__ import annotations

import datetime
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lomar_ops

from ..data import (DEMO_PHOTOS, FullCrops, WindowCrops, WindowSpec, decode_rgb, demo_photo_dir,
                    open_image, render_crop)
from ..engine.seeding import mix, seed_all

WINDOW = dict(patch_size=16, window_size=7, num_windows=4)
# The pretraining job's pipelines (lomar.engine.pretrain, data.pipeline), as it runs them.
PIPELINES = {"full": FullCrops, "windows": WindowCrops}


def build_sources(out: Path, seed: int = 0, sets=("imagenet", "12mp"),
                  subfolders: bool = False) -> dict[str, list[Path]]:
    """The offline source sets: {"imagenet": [...], "12mp": [...]} of JPEG paths, under
    out/sources (or out/sources/<set>/ with ``subfolders``)."""
    src = demo_photo_dir()
    photos = [np.asarray(Image.open(src / name).convert("RGB")) for name in DEMO_PHOTOS
              if not name.startswith(("moon", "camera", "coins", "grass", "gravel", "brick"))]
    made: dict[str, list[Path]] = {name: [] for name in sets}

    def folder_for(name: str) -> Path:
        folder = out / "sources" / name if subfolders else out / "sources"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    for i, photo in enumerate(photos if "imagenet" in sets else []):
        image = Image.fromarray(photo)
        s = min(500 / image.width, 375 / image.height)  # fit 500x375, as ImageNet's photos
        image = image.resize((round(image.width * s), round(image.height * s)),
                             Image.Resampling.BICUBIC)
        path = folder_for("imagenet") / f"imagenet_{i:02d}.jpg"
        image.save(path, quality=90)
        made["imagenet"].append(path)
    rng = np.random.default_rng(seed)
    for k in range(4 if "12mp" in sets else 0):
        canvas = np.zeros((3000, 4000, 3), np.uint8)
        y = 0
        while y < 3000:
            x, row = 0, 0
            while x < 4000:
                p = photos[rng.integers(len(photos))]
                if rng.random() < 0.5:
                    p = p[:, ::-1]
                h, w = min(p.shape[0], 3000 - y), min(p.shape[1], 4000 - x)
                canvas[y:y + h, x:x + w] = p[:h, :w]
                x, row = x + w, max(row, h)
            y += row
        path = folder_for("12mp") / f"12mp_{k:02d}.jpg"
        Image.fromarray(canvas).save(path, quality=90)
        made["12mp"].append(path)
    return made


def _exact_windows(path: Path, spec: WindowSpec, draw_seed: int) -> torch.Tensor:
    """The windows at full-scale decoding (the full pipeline's pixels), same draw."""
    seed_all(draw_seed, devices=False)
    with open_image(path) as opened:
        crop, coords = spec.draw(opened.size)
        pixels = render_crop(decode_rgb(opened).permute(2, 0, 1), crop)
    K, p = spec.window_size, spec.patch_size
    return torch.stack([pixels[:, r * p:(r + K) * p, c * p:(c + K) * p]
                        for r, c in coords.tolist()])


def measure(files: list[Path], size: int, passes: int, seed: int = 0) -> dict[str, dict]:
    """ms per image (median of the passes' means), bytes per image, and the window
    pixels' PSNR against full-scale decoding, for both pipelines on ``files``."""
    spec = WindowSpec(size, **WINDOW)
    pipelines = {name: cls(spec) for name, cls in PIPELINES.items()}
    times = {name: [] for name in pipelines}
    sent = {name: 0 for name in pipelines}
    for k in range(passes):
        # A pipeline's pass over all the files, then the other's, in alternating order:
        # each runs with its own working set in the caches, as in a loader process (a
        # 50 MB full crop between two files would evict the other's).
        order = list(pipelines) if k % 2 == 0 else list(pipelines)[::-1]
        for name in order:
            spent = 0.0
            for i, path in enumerate(files):
                seed_all(mix(seed, k, i), devices=False)  # both pipelines: the same draws
                start = time.perf_counter()
                out = pipelines[name](path)
                spent += time.perf_counter() - start
                if k == 0:
                    tensors = out if isinstance(out, tuple) else (out,)
                    sent[name] += sum(t.numel() * t.element_size() for t in tensors)
                del out
            times[name].append(spent / len(files) * 1e3)
    squared, count, max_diff = 0.0, 0, 0
    for i, path in enumerate(files):
        seed_all(mix(seed, 0, i), devices=False)
        windows, _ = pipelines["windows"](path)
        exact = _exact_windows(path, spec, mix(seed, 0, i))
        diff = windows.double() - exact.double()
        squared += float(diff.pow(2).sum())
        count += diff.numel()
        max_diff = max(max_diff, int(diff.abs().max()))
    mse = squared / count
    psnr = None if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    return {name: {"pipeline_class": f"{PIPELINES[name].__module__}.{PIPELINES[name].__qualname__}",
                   "ms_per_image": statistics.median(times[name]),
                   "ms_per_image_passes": times[name],
                   "bytes_per_image": sent[name] // len(files),
                   "psnr_db": psnr if name == "windows" else None,
                   **({"max_abs_diff": max_diff} if name == "windows" else {})}
            for name in pipelines}


def measure_decoders(files: list[Path], repeats: int) -> dict[str, float]:
    """Median ms to decode one file of the set at 1, 1/2, 1/4 and 1/8 scale with each
    decoder of :func:`lomar.data.decode.decode_rgb` (Pillow, and simplejpeg when installed:
    the one the pipelines use then), to a uint8 tensor, with the largest difference
    of their pixels."""
    from ..data import decode as decoding

    def decode_with(decoder):
        def run(path, reduce):
            with open_image(path) as opened:
                return decode_rgb(opened, reduce=reduce, decoder=decoder)
        return run

    pillow, turbo = decode_with("pillow"), decode_with("simplejpeg")
    simplejpeg = decoding.simplejpeg

    out = {}
    for reduce in (1, 2, 4, 8):
        for name, decode in (("pillow", pillow), ("simplejpeg", turbo)):
            if name == "simplejpeg" and simplejpeg is None:
                continue
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                for path in files:
                    decode(path, reduce)
                runs.append((time.perf_counter() - start) / len(files) * 1e3)
            out[f"{name}_1/{reduce}"] = statistics.median(runs)
        if simplejpeg is not None:
            out[f"max_abs_diff_1/{reduce}"] = max(
                int((pillow(p, reduce).int() - turbo(p, reduce).int())
                    .abs().max()) for p in files)
    return out


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(11, 4.6))
    styles = {"full": "--", "windows": "-"}  # one colour per source set
    for i, source in enumerate(dict.fromkeys(r["source"] for r in records)):
        for pipeline in ("full", "windows"):
            mine = sorted((r for r in records if r["source"] == source
                           and r["pipeline"] == pipeline), key=lambda r: r["input_size"])
            if not mine:
                continue
            sizes = [r["input_size"] for r in mine]
            style = dict(linestyle=styles[pipeline], marker="o", color=f"C{i}",
                         label=f"{pipeline}, {source}")
            ax_t.plot(sizes, [r["ms_per_image"] for r in mine], **style)
            ax_b.plot(sizes, [r["bytes_per_image"] / 2 ** 20 for r in mine], **style)
    for ax, ylabel in ((ax_t, "ms per image (one thread, log)"),
                       (ax_b, "MiB per image to the device (log)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input size (pixels per side)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    sizes = sorted({r["input_size"] for r in records})
    ax_t.set_xticks(sizes, [str(s) for s in sizes])
    ax_b.set_xticks(sizes, [str(s) for s in sizes])
    fig.suptitle("Input pipeline per image: the whole crop (full) vs only the LoMaR windows "
                 "(4 windows of 7x7 patches)", fontsize=10)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(images: str | None, sizes, out: str, passes: int = 5, seed: int = 0,
        log=print) -> list[dict]:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if images:
        files = sorted(p for p in Path(images).iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"--images: no .jpg/.jpeg files in {images}")
        sets = {Path(images).name: files}
    else:
        sets = build_sources(out_dir, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the figures are per worker thread
    records: list[dict] = []
    decoders = {}
    try:
        for source, files in sets.items():
            sides = []
            for path in files:
                with open_image(path) as opened:
                    sides.append(opened.size)
            shape = f"{max(w for _, w in sides)}x{max(h for h, _ in sides)}"
            label = f"{source} ({len(files)} JPEGs, up to {shape})"
            decoders[label] = measure_decoders(files, repeats=max(3, passes))
            for size in sizes:
                for pipeline, rec in measure(files, size, passes, seed).items():
                    records.append({"pipeline": pipeline, "source": label, "input_size": size,
                                    **rec})
                    log(f"{pipeline:>8} {label:<40} {size:>5}  {rec['ms_per_image']:8.2f} ms"
                        f"  {rec['bytes_per_image']:>10} B"
                        + (f"  PSNR {rec['psnr_db']:.1f} dB" if rec.get("psnr_db") else ""))
                _write(out_dir, records, decoders, sizes, passes)
    finally:
        torch.set_num_threads(threads)
    plot(records, out_dir / "data.png")
    return records


def _simplejpeg_version() -> str | None:
    """The JPEG decoder the pipelines used (None: Pillow decoded everything)."""
    from ..data import decode

    return getattr(decode.simplejpeg, "__version__", "installed") if decode.simplejpeg else None


def _write(out_dir: Path, records, decoders, sizes, passes) -> None:
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, one thread",
            "torch": torch.__version__, "lomar_ops": lomar_ops.__version__,
            "pillow": Image.__version__, "simplejpeg": _simplejpeg_version(),
            "sizes": list(sizes), "passes": passes, **WINDOW}
    for name, value in (("data.json", records),
                        ("decoders.json", {"meta": meta, "ms_per_file": decoders}),
                        ("meta.json", meta)):
        tmp = out_dir / f"{name}.tmp"
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(out_dir / name)
