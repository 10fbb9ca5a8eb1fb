"""A folder of image files as a dataset.

Folder layouts: ImageFolder (one sub-folder per class, images anywhere below it)
or flat (images directly in the folder, label -1). Files are decoded by
:mod:`lomar.data.decode` (RGB and greyscale JPEGs by simplejpeg, everything else by
Pillow; EXIF orientation applied, greyscale, palette, CMYK, alpha and 16-bit files
made RGB). A file that cannot be decoded is handled by a documented rule
(``on_corrupt``): "skip" (default) warns once with its path and serves the next
readable image in its place; "error" stops with its path."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .constants import IMAGE_EXTENSIONS
from .decode import CorruptImageError, read_rgb

__all__ = ["ImageFiles", "find_images"]


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
