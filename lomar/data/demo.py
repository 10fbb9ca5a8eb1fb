"""The offline demo data sets, written as image folders from data that ships inside
installed packages (no download): crops of scikit-image's photographs for
pretraining, scikit-learn's handwritten digits for the probe."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from .constants import DEMO_PHOTOS
from .decode import read_rgb

__all__ = ["build_demo_digits", "build_demo_photos", "demo_photo_dir"]


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
    out.mkdir(parents=True, exist_ok=True)
    src = demo_photo_dir()
    photos = [read_rgb(src / name) for name in DEMO_PHOTOS]
    g = torch.Generator().manual_seed(seed)
    for i in range(num_images):
        photo = photos[i % len(photos)]
        _, h, w = photo.shape
        side = int(min(h, w) * (0.35 + 0.65 * torch.rand((), generator=g).item()))
        top = int(torch.randint(0, h - side + 1, (), generator=g))
        left = int(torch.randint(0, w - side + 1, (), generator=g))
        crop = photo[:, top:top + side, left:left + side]
        crop = v2.functional.resize(crop, [size, size], interpolation=InterpolationMode.BICUBIC,
                                    antialias=True)
        if torch.rand((), generator=g) < 0.5:
            crop = crop.flip(-1)
        Image.fromarray(crop.permute(1, 2, 0).contiguous().numpy()).save(out / f"photo_{i:05d}.png")
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
