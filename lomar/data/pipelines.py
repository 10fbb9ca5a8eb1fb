"""Images from a folder, the pretraining pipelines, and the offline demo set.

Folder layouts: ImageFolder (one sub-folder per class, images anywhere below it)
or flat (images directly in the folder, label -1). Files are decoded with Pillow
(:mod:`lomar.decode`: EXIF orientation, greyscale, palette, CMYK, alpha and 16-bit
files made RGB). A file that cannot be decoded is handled by a documented rule
(``on_corrupt``): "skip" (default) warns once with its path and serves the next
readable image in its place; "error" stops with its path.

Pretraining reads its data through one of two pipelines, which draw the same
random-resized crop, flip and window corners for an item:

- :class:`WindowCrops` ("windows", the default): only the LoMaR windows' pixels
  are produced, straight from the file (a JPEG at reduced scale when the crop
  allows it), as uint8; the model normalises them inside ``window_patchify``.
  Its cost does not grow with the input size.
- :class:`FullCrops` ("full"): the whole crop, as float32 normalised with
  ImageNet's mean and std, as timm/MAE pipelines make it.

The crop API under both is in :mod:`lomar.crop` (``sample_crop``,
``render_crop``, ``render_windows``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops

from .crop import Crop, render_crop, render_windows, sample_crop
from .decode import CorruptImageError, decode_rgb, open_image, read_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Real photographs bundled inside scikit-image's package folder (no download).
DEMO_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "coins.png",
               "moon.png", "grass.png", "gravel.png", "brick.png")


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
    passed through ``transform``. A transform with ``reads_files = True`` (the
    pretraining pipelines) gets the file's path instead and decodes it itself; a
    tuple it returns is spread into the item: (*outputs, label)."""

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

    def _load(self, path: Path):
        if getattr(self.transform, "reads_files", False):
            return self.transform(path)
        image = read_rgb(path)
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int):
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            path = self.files[i]
            try:
                out = self._load(path)
            except CorruptImageError as exc:
                if self.on_corrupt == "error":
                    raise RuntimeError(f"corrupt image file {path}: {exc}") from exc
                if path not in self._reported:
                    self._reported.add(path)
                    warnings.warn(f"skipping corrupt image file {path}: {exc}", stacklevel=2)
                continue
            return (*out, self.labels[i]) if isinstance(out, tuple) else (out, self.labels[i])
        raise RuntimeError(f"no readable image under {self.root}: every file failed to decode")


@dataclass(frozen=True)
class WindowSpec:
    """What a pretraining pipeline draws per image: a random-resized crop to
    ``input_size`` (``scale``, ``ratio``, flip with probability ``hflip``) and
    ``num_windows`` corners of ``window_size`` x ``window_size``-patch windows on its
    patch grid (uniform, independent per image)."""

    input_size: int
    patch_size: int
    window_size: int
    num_windows: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self):
        grid = self.input_size // self.patch_size
        if self.input_size % self.patch_size or not 1 <= self.window_size <= grid:
            raise ValueError(f"WindowSpec: input_size {self.input_size} must be a multiple of "
                             f"patch_size {self.patch_size} and window_size {self.window_size} "
                             f"in [1, {grid}]")
        if self.num_windows < 1:
            raise ValueError(f"WindowSpec: num_windows must be >= 1, got {self.num_windows}")

    def draw(self, image_size: tuple[int, int]) -> tuple[Crop, torch.Tensor]:
        """(crop, coords (n, 2) int64) from the global generator, in this order: what
        both pipelines draw for an item (seeded per item by the training loop)."""
        crop = sample_crop(image_size, self.input_size, self.scale, self.ratio, self.hflip)
        grid = self.input_size // self.patch_size
        coords = lomar_ops.sample_windows(1, grid, grid, self.num_windows, self.window_size)[0]
        return crop, coords


class WindowCrops:
    """The window pipeline: a file -> (windows (n, 3, K*p, K*p) uint8, coords (n, 2)).

    Only the windows' pixels are produced (:func:`lomar.crop.render_windows`), a JPEG
    decoded at 1/2, 1/4 or 1/8 scale when the crop shrinks it by that much
    (``reduced_decode``): the cost per image does not grow with ``input_size``."""

    reads_files = True

    def __init__(self, spec: WindowSpec, reduced_decode: bool = True):
        self.spec, self.reduced_decode = spec, reduced_decode

    def __call__(self, source):
        with open_image(source) as opened:
            crop, coords = self.spec.draw(opened.size)
            windows = render_windows(opened, crop, coords, self.spec.window_size,
                                     self.spec.patch_size, reduced_decode=self.reduced_decode)
        return windows, coords


class FullCrops:
    """The full-image pipeline: a file -> (crop (3, S, S) float32 normalised with
    ImageNet's mean/std, coords (n, 2)), the same draws as :class:`WindowCrops`."""

    reads_files = True

    def __init__(self, spec: WindowSpec):
        self.spec = spec

    def __call__(self, source):
        with open_image(source) as opened:
            crop, coords = self.spec.draw(opened.size)
            image = decode_rgb(opened).permute(2, 0, 1)
        pixels = render_crop(image, crop)
        return v2.functional.normalize(v2.functional.to_dtype(pixels, torch.float32, scale=True),
                                       IMAGENET_MEAN, IMAGENET_STD), coords


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
