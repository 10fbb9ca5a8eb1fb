"""Images from a folder, the pretraining augmentation, and the offline demo set.

Folder layouts: ImageFolder (one sub-folder per class, images anywhere below it)
or flat (images directly in the folder, label -1). Files are decoded with Pillow,
as torchvision's ImageFolder does (torchvision's own decoders are deprecated). A file that cannot be decoded is handled by a documented rule
(``on_corrupt``): "skip" (default) warns once with its path and serves the next
readable image in its place; "error" stops with its path."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Real photographs bundled inside scikit-image's package folder (no download).
DEMO_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "coins.png",
               "moon.png", "grass.png", "gravel.png", "brick.png")


def read_rgb(path: str | Path) -> torch.Tensor:
    """A file as a uint8 (3, H, W) RGB tensor."""
    with Image.open(path) as image:
        return v2.functional.pil_to_tensor(image.convert("RGB"))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) under ``root``, sorted, in either layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if _is_image(p))
        files += found
        labels += [label] * len(found)
    if not files:  # flat layout
        classes = []
        files = sorted(p for p in root.iterdir() if _is_image(p))
        labels = [-1] * len(files)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files, labels, classes


class ImageFiles(torch.utils.data.Dataset):
    """(image, label) pairs from a folder; the image is a uint8 (3, H, W) RGB tensor
    passed through ``transform``."""

    def __init__(self, root: str | Path, transform=None, on_corrupt: str = "skip"):
        if on_corrupt not in ("skip", "error"):
            raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
        self.root = Path(root)
        self.files, self.labels, self.classes = find_images(self.root)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: Path) -> torch.Tensor:
        return read_rgb(path)

    def __getitem__(self, index: int):
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            path = self.files[i]
            try:
                image = self._decode(path)
            except OSError as exc:  # Pillow's errors for unreadable or truncated data
                if self.on_corrupt == "error":
                    raise RuntimeError(f"corrupt image file {path}: {exc}") from exc
                if path not in self._reported:
                    self._reported.add(path)
                    warnings.warn(f"skipping corrupt image file {path}: {exc}", stacklevel=2)
                continue
            if self.transform is not None:
                image = self.transform(image)
            return image, self.labels[i]
        raise RuntimeError(f"no readable image under {self.root}: every file failed to decode")


def pretrain_transform(size: int | tuple[int, int], scale=(0.2, 1.0)) -> v2.Compose:
    """Random-resized crop (bicubic) + horizontal flip + ImageNet normalisation,
    as in the LoMaR/MAE recipe, at any resolution (``size`` = side or (H, W))."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _demo_photo_dir() -> Path:
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
    src = _demo_photo_dir()
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
