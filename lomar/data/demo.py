"""The offline demo data sets, written as image folders from data that ships inside
installed packages (no download): crops of scikit-image's photographs for
pretraining, scikit-learn's handwritten digits for the probe, 6-band 16-bit scenes
and 16-bit greyscale slices made from the photographs for the non-RGB path."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from .constants import DEMO_PHOTOS
from .decode import read_rgb

__all__ = ["DEMO_BAND_NAMES", "build_demo_bands", "build_demo_digits", "build_demo_grey16",
           "build_demo_photos", "demo_photo_dir", "photo_crop"]


def demo_photo_dir() -> Path:
    """The folder of scikit-image's bundled photographs (:data:`DEMO_PHOTOS` are in it)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def build_demo_photos(out_dir: str | Path, num_images: int = 256, size: int = 224,
                      seed: int = 0) -> Path:
    """Write ``num_images`` PNG crops (``size`` x ``size``) of the real photographs
    that ship inside scikit-image into ``out_dir`` (a flat image folder), offline and
    reproducibly. Crops cover 35-100% of a photo's shorter side, at random places,
    randomly flipped. An existing complete set with the same parameters is reused."""
    out = Path(out_dir)
    stamp = out / ".demo_photos"
    tag = f"{num_images} {size} {seed} {','.join(DEMO_PHOTOS)}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    start_build(out, stamp, "photo_*.png")
    src = demo_photo_dir()
    photos = [read_rgb(src / name) for name in DEMO_PHOTOS]
    g = torch.Generator().manual_seed(seed)
    for i in range(num_images):
        crop = photo_crop(photos[i % len(photos)], size, g)
        Image.fromarray(crop.permute(1, 2, 0).contiguous().numpy()).save(out / f"photo_{i:05d}.png")
    stamp.write_text(tag)
    return out


def start_build(folder: Path, stamp: Path, pattern: str) -> None:
    """Before (re)writing a demo set: its stamp and the files of a previous build (its
    own names, ``pattern``) go, so that a set built again smaller keeps no stale files
    and an interrupted build is redone; other files are left alone."""
    stamp.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(pattern):
        old.unlink()


def photo_crop(photo: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random square of 35-100% of the (C, H, W) photo's shorter side, resized to
    ``size`` (bicubic, antialiased; in the photo's dtype) and mirrored with probability
    1/2: the crop every offline set is made of. Draws the side, top, left and flip from
    ``generator``, in that order (the sets' bytes depend on it)."""
    _, h, w = photo.shape
    side = int(min(h, w) * (0.35 + 0.65 * torch.rand((), generator=generator).item()))
    top = int(torch.randint(0, h - side + 1, (), generator=generator))
    left = int(torch.randint(0, w - side + 1, (), generator=generator))
    crop = v2.functional.resize(photo[:, top:top + side, left:left + side], [size, size],
                                interpolation=InterpolationMode.BICUBIC, antialias=True)
    return crop.flip(-1) if torch.rand((), generator=generator) < 0.5 else crop


def _photo_crops(num_images: int, size: int, seed: int):
    """(index, crop (3, size, size) float32 in 0..255) of the bundled photos in turn;
    the float resize keeps the fractions that 16-bit samples can hold."""
    photos = [read_rgb(demo_photo_dir() / name).float() for name in DEMO_PHOTOS]
    g = torch.Generator().manual_seed(seed)
    for i in range(num_images):
        yield i, photo_crop(photos[i % len(photos)], size, g).clamp(0, 255)


# The demo scenes' bands: the photo's colours and three bands derived from them, so
# that bands differ in content as a multispectral scene's do.
DEMO_BAND_NAMES = ("Red", "Green", "Blue", "Luminance", "Saturation", "Edges")


def _scene_bands(rgb: torch.Tensor) -> torch.Tensor:
    """(6, H, W) uint16 from an RGB crop in 0..255 (12-bit colours, as many sensors
    write them, full-range derived bands)."""
    luminance = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    saturation = (rgb.amax(0) - rgb.amin(0))[None]
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.T])[:, None]
    grad = torch.nn.functional.conv2d(luminance[None], kernels, padding=1)[0]
    edges = grad.square().sum(0, keepdim=True).sqrt()
    bands = torch.cat([rgb * (4095 / 255), luminance * (65535 / 255),
                       saturation * (65535 / 255), (edges * 64).clamp(max=65535)])
    return bands.round().to(torch.int32).to(torch.uint16)


def build_demo_bands(out_dir: str | Path, num_images: int = 64, size: int = 256,
                     seed: int = 0) -> Path:
    """Write ``num_images`` 6-band uint16 TIFF scenes (``size`` x ``size``) into
    ``out_dir``, offline and reproducibly, from crops of the bundled photos: 12-bit
    red, green and blue, then luminance, saturation and edge strength at full 16-bit
    range (:data:`DEMO_BAND_NAMES`, written as GeoTIFF-style band descriptions, so
    ``data.bands`` can pick them by name). Layouts alternate, as real archives mix them:
    tiled and interleaved, striped and planar. An existing complete set is reused."""
    import tifffile

    out = Path(out_dir)
    stamp = out / ".demo_bands"
    tag = f"{num_images} {size} {seed} {','.join(DEMO_PHOTOS)} {','.join(DEMO_BAND_NAMES)}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    start_build(out, stamp, "scene_*.tif")
    items = "".join(f'<Item name="DESCRIPTION" sample="{b}" role="description">{name}</Item>'
                    for b, name in enumerate(DEMO_BAND_NAMES))
    described = [(42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>", True)]
    for i, crop in _photo_crops(num_images, size, seed):
        bands = _scene_bands(crop).numpy()
        layout = (dict(tile=(64, 64), planarconfig="contig", data=bands.transpose(1, 2, 0))
                  if i % 2 == 0 else dict(planarconfig="separate", data=bands))
        tifffile.imwrite(out / f"scene_{i:05d}.tif", photometric="minisblack",
                         compression="zlib", extratags=described, **layout)
    stamp.write_text(tag)
    return out


def build_demo_grey16(out_dir: str | Path, num_images: int = 64, size: int = 256,
                      seed: int = 0) -> Path:
    """Write ``num_images`` one-band 16-bit PNGs (``size`` x ``size``) into ``out_dir``:
    the photos' luminance as 12-bit counts with shot noise, as a microscope's or an
    X-ray detector's frames hold them; offline, reproducible, reused when complete."""
    import imagecodecs

    out = Path(out_dir)
    stamp = out / ".demo_grey16"
    tag = f"{num_images} {size} {seed} {','.join(DEMO_PHOTOS)}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    start_build(out, stamp, "slice_*.png")
    g = torch.Generator().manual_seed(seed + 1)
    for i, crop in _photo_crops(num_images, size, seed):
        counts = (0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2]) * (4095 / 255)
        noisy = torch.poisson(counts + 100, generator=g).clamp(0, 65535)  # dark offset 100
        slice16 = noisy.to(torch.int32).to(torch.uint16).numpy()
        (out / f"slice_{i:05d}.png").write_bytes(imagecodecs.png_encode(slice16))
    stamp.write_text(tag)
    return out


def build_demo_digits(out_dir: str | Path, size: int = 64, val_fraction: float = 0.2,
                      seed: int = 0) -> Path:
    """Write scikit-learn's handwritten digits (1797 8x8 images, 10 classes, shipped
    inside the package: no download) as an ImageFolder ``train/<digit>/`` and
    ``val/<digit>/`` of ``size`` x ``size`` RGB PNGs (bicubic upscaling, white on
    black), split per class with a seeded shuffle (``val_fraction`` of each class in
    val). Deterministic; an existing complete set with the same parameters is reused."""
    if size < 8 or not 0 < val_fraction < 1:
        raise ValueError(f"build_demo_digits: size must be >= 8 and val_fraction in (0, 1), "
                         f"got size={size}, val_fraction={val_fraction}")
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    stamp = out / ".demo_digits"
    tag = f"{size} {val_fraction} {seed}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    digits = load_digits()
    images = torch.from_numpy(digits.images).float()[:, None] * (255.0 / 16.0)  # (N, 1, 8, 8)
    images = v2.functional.resize(images, [size, size], interpolation=InterpolationMode.BICUBIC,
                                  antialias=True)
    images = images.clamp(0, 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.from_numpy(digits.target)
    g = torch.Generator().manual_seed(seed)
    for label in range(10):
        idx = (labels == label).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * val_fraction))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part.tolist():
                Image.fromarray(images[i].permute(1, 2, 0).contiguous().numpy()).save(
                    folder / f"digit_{i:04d}.png")
    stamp.write_text(tag)
    return out


def build_demo_slide(out_path: str | Path, size: int = 32768, *, tile: int = 256,
                     quality: int = 90, seed: int = 0, cell: int = 1024, bands: int = 3,
                     dtype: str = "uint8", mpp: float | None = 0.5) -> Path:
    """Write a gigapixel-class tiled pyramidal TIFF (``size`` x ``size``, 32768 by
    default: 1.07 gigapixels) made of the photographs that ship inside scikit-image,
    offline and reproducibly (seeded), for the tiled reader and whatever samples
    windows from whole slides. ``size=4096`` is the small variant the tests use.

    The picture: a few "tissue" islands (rotated ellipses, edges in 8-pixel steps) on
    an off-white background with faint noise (what a foreground mask must separate);
    inside them, a grid of ``cell`` x ``cell`` cells, each one of the photographs
    (centre square, resized to the cell) in one of its eight flips and rotations.
    Written through :func:`lomar.data.convert.write_pyramid` band by band of rows
    (never whole in memory): tiles of ``tile``, levels halved down to one tile, JPEG
    at ``quality`` for 8-bit RGB. ``dtype="uint16"`` (values x 257 plus 0..256 of
    noise) or ``bands`` other than 3 (extra bands: means of two colour bands; 1:
    luminance) give a multi-band variant, written lossless (zstd). ``mpp`` is a
    nominal pixel size (0.5 um, a 20x scan) written as the TIFF resolution, so code
    working in physical units has one to use. An existing file with the same
    parameters (its stamp ``.NAME.stamp`` beside it) is reused."""
    import os

    import numpy as np

    from .convert import write_pyramid

    if size < tile or cell < 8 or cell % 8 or bands < 1 or dtype not in ("uint8", "uint16"):
        raise ValueError(f"build_demo_slide: size >= tile, cell a multiple of 8, bands >= 1 and "
                         f"dtype uint8 or uint16, got size={size}, tile={tile}, cell={cell}, "
                         f"bands={bands}, dtype={dtype!r}")
    out = Path(out_path)
    stamp = out.with_name(f".{out.name}.stamp")
    tag = (f"{size} {tile} {quality} {seed} {cell} {bands} {dtype} {mpp} "
           f"{','.join(DEMO_PHOTOS)}")
    if out.is_file() and stamp.is_file() and stamp.read_text() == tag:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    src = demo_photo_dir()
    photos = []
    for name in DEMO_PHOTOS:
        photo = read_rgb(src / name)
        _, h, w = photo.shape
        side = min(h, w)
        square = photo[:, (h - side) // 2:(h - side) // 2 + side,
                       (w - side) // 2:(w - side) // 2 + side]
        square = Image.fromarray(square.permute(1, 2, 0).contiguous().numpy())
        square = np.asarray(square.resize((cell, cell), Image.Resampling.BICUBIC))
        photos.append([np.rot90(square, k) for k in range(4)] +
                      [np.rot90(square[:, ::-1], k) for k in range(4)])
    rng = np.random.default_rng(seed)
    grid = -(-size // cell)
    which = rng.integers(0, len(photos), (grid, grid))
    turn = rng.integers(0, 8, (grid, grid))
    islands = []  # (centre y, centre x, semi-axis a, semi-axis b, angle), in pixels
    for _ in range(3 + size // 8192):
        islands.append((rng.uniform(0.15, 0.85) * size, rng.uniform(0.15, 0.85) * size,
                        rng.uniform(0.08, 0.25) * size, rng.uniform(0.08, 0.25) * size,
                        rng.uniform(0, np.pi)))
    background = np.array([238, 236, 240], np.int16)
    noise = rng.integers(-3, 4, (tile, tile, 3), dtype=np.int16)
    step = 8  # the mask is computed on 8 x 8 blocks
    xs = (np.arange(-(-size // step)) + 0.5) * step

    def read_rows(top: int, n: int) -> np.ndarray:
        ys = (np.arange(top // step, -(-(top + n) // step)) + 0.5) * step
        mask = np.zeros((len(ys), len(xs)), bool)
        for cy, cx, a, b, angle in islands:
            dy, dx = ys[:, None] - cy, xs[None, :] - cx
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / a
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / b
            mask |= u * u + v * v <= 1
        mask = np.repeat(np.repeat(mask, step, 0), step, 1)
        mask = mask[top - (top // step) * step:][:n, :size]
        rows = np.arange(top, top + n) % tile
        bg = np.tile(noise[rows], (1, -(-size // tile), 1))[:, :size] + background
        content = np.empty((n, size, 3), np.uint8)
        for i in range(top // cell, (top + n - 1) // cell + 1):
            r0, r1 = max(top, i * cell), min(top + n, (i + 1) * cell)
            for j in range(grid):
                c1 = min(size, (j + 1) * cell)
                photo = photos[which[i, j]][turn[i, j]]
                content[r0 - top:r1 - top, j * cell:c1] = \
                    photo[r0 - i * cell:r1 - i * cell, :c1 - j * cell]
        rgb = np.where(mask[:, :, None], content, bg.astype(np.uint8))
        planes = [rgb[:, :, k] for k in range(3)]
        if bands == 1:
            planes = [((rgb.astype(np.uint16) * np.array([77, 150, 29])).sum(2) >> 8)]
        for k in range(3, bands):
            a, b = planes[k % 3], planes[(k + 1) % 3]
            planes.append((a.astype(np.uint16) + b) // 2)
        data = np.stack(planes[:bands], axis=2)
        if dtype == "uint16":
            data = data.astype(np.uint16) * 257 + np.tile(
                noise[rows, :, 0].astype(np.uint16) % 257, (1, -(-size // tile)))[:, :size, None]
            return data
        return data.astype(np.uint8)

    class Source:
        pass

    source = Source()
    source.height = source.width = size
    source.bands, source.dtype, source.mpp, source.read_rows = bands, np.dtype(dtype), mpp, \
        read_rows
    lossless = not (dtype == "uint8" and bands in (1, 3))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        write_pyramid(tmp, source, tile=tile, lossless=lossless, quality=quality,
                      description=f"lomar demo slide: {tag}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(tag)
    return out


__all__ += ["build_demo_slide"]
