"""A folder of images and label maps as a segmentation dataset: the ADE20K layout
and any other folder of (image, label map) pairs matched by file name stem.

Layout (ADE20K's ``ADEChallengeData2016``; the sub-folders are arguments)::

    root/images/training/*.jpg        root/annotations/training/*.png
    root/images/validation/*.jpg      root/annotations/validation/*.png

A label map is a single-band integer image (8- or 16-bit PNG, palette PNG whose
indices are the labels, TIFF) of the image's size. Images are read by
:func:`lomar.data.read_image`: any number of bands (all images of a set alike),
uint8, uint16 or float32, scaled to [0, 1] by their type's range (``PIXEL_SCALE``:
float32 values are taken as they are, and the photometric distortion clips to
[0, 1], so float data should be in that range).

Classes and label values:

- ``reduce_zero_label=True`` (ADE20K, as mmsegmentation reads it): 0 is "other"
  and becomes ``ignore_index``; every other value v becomes class v - 1 (and 255
  stays ignored).
- ``class_map``: a file saying what the values are.

  - ``.txt``, or a JSON/YAML list: one class name per line / entry; the label
    values (after ``reduce_zero_label``) are the class indices.
  - JSON/YAML mapping ``{raw value: class name}``: the file's raw values. Values
    that share a name are merged into one class; classes are numbered in the order
    of their smallest raw value; a raw value mapped to null, or not listed, is
    ignored. With a mapping ``reduce_zero_label`` must be False (the mapping says
    what 0 is).
  - JSON/YAML mapping ``{raw value: class index}`` (e.g. Cityscapes' label ids to
    train ids): the same with the indices given; the classes are ``class_0`` up to
    the largest index.
- without ``class_map``: ``root/classes.txt`` (as above) if present; ADE20K's 150
  names (mmsegmentation's list) if ``root/objectInfo150.txt`` (shipped with
  ADEChallengeData2016) is present; otherwise every label map is scanned once
  for its largest value and the classes are named ``class_0`` ... .

Items: ``(image, mask)``, image float32 (C, H, W), mask int64 (H, W) of class
indices and ``ignore_index``. With ``mean`` and ``std`` the image is normalised,
(x - mean) / std per band, before padding (so padding is 0 in normalised units, as
mmsegmentation pads); without them it stays in [0, 1] (lomar's models normalise
themselves). Training items are augmented (:class:`.transforms.TrainTransform`)
to crop_size x crop_size; evaluation items (``train=False``) are the whole image,
with ``eval_resize=True`` (default, mmsegmentation's ADE20K test pipeline) scaled
to fit mmseg's keep-ratio bound (4 crop_size, crop_size) while the mask stays at
the annotation's size: predictions must be resized to the mask's (H, W) before
scoring. Batch training items with :func:`collate`, evaluation items with
:func:`val_collate` (lists: sizes differ).

Problems are found at construction, naming the file: an image without a label map
or the reverse, two files with one stem, and (decoding the first pair) a label map
that is not single-band integer or not the image's size. Later pairs are checked
as they are read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import IMAGE_EXTENSIONS, read_image
from ..data.stats import PIXEL_SCALE
from .transforms import TrainTransform, resize_to_bound

__all__ = ["ADE20K_CLASSES", "SegmentationFolder", "collate", "read_label_map",
           "val_collate"]

LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")

# ADE20K's 150 SceneParsing classes, in label order (1..150), as mmsegmentation names them.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")


def read_label_map(path: str | Path) -> torch.Tensor:
    """A label map file as an (H, W) int64 tensor of its raw values: a palette PNG's
    indices, else :func:`lomar.data.read_image`'s single uint8 or uint16 band. Any
    other file (colour, several bands, float samples) raises ValueError naming it."""
    from PIL import Image

    path = Path(path)
    with Image.open(path) as opened:
        if opened.mode == "P":  # the indices are the labels, not the palette's colours
            return torch.from_numpy(np.asarray(opened).astype(np.int64))
    pixels = read_image(path)
    if pixels.shape[0] != 1 or pixels.dtype not in (torch.uint8, torch.uint16):
        raise ValueError(f"label map {path} must be a single-band uint8 or uint16 image "
                         f"(or a palette PNG), got {pixels.shape[0]} band(s) of "
                         f"{str(pixels.dtype).replace('torch.', '')}")
    return pixels[0].to(torch.int64)


def _files_by_stem(folder: Path, extensions, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in found:
                raise ValueError(f"two {what} files with the stem {path.stem!r}: "
                                 f"{found[path.stem]} and {path}")
            found[path.stem] = path
    if not found:
        raise ValueError(f"no {what} files ({', '.join(extensions)}) in {folder}")
    return found


def _pair(images: dict[str, Path], labels: dict[str, Path]) -> list[tuple[Path, Path]]:
    for have, lack, partner in ((images, labels, "label map"), (labels, images, "image")):
        missing = sorted(set(have) - set(lack))
        if missing:
            shown = ", ".join(str(have[s]) for s in missing[:3])
            raise ValueError(f"{len(missing)} file(s) without a {partner} of the same stem, "
                             f"e.g. {shown}")
    return [(images[s], labels[s]) for s in sorted(images)]


def _load_class_map(path: Path, reduce_zero_label: bool):
    """(class names, lookup table raw value -> class or None) from a mapping file."""
    if not path.is_file():
        raise FileNotFoundError(f"class_map file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".txt":
        content = [line.strip() for line in text.splitlines() if line.strip()]
    elif path.suffix.lower() == ".json":
        content = json.loads(text)
    elif path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        content = yaml.safe_load(text)
    else:
        raise ValueError(f"class_map {path}: the suffix must be .txt, .json, .yaml or .yml")
    if isinstance(content, list):
        if not content or not all(isinstance(n, str) for n in content):
            raise ValueError(f"class_map {path}: a list must hold at least one class name "
                             f"(strings)")
        return list(content), None
    if not isinstance(content, dict) or not content:
        raise ValueError(f"class_map {path} must be a list of class names or a mapping "
                         f"{{raw label value: class name}}, got {type(content).__name__}")
    if reduce_zero_label:
        raise ValueError(f"class_map {path} maps raw label values, so reduce_zero_label "
                         f"must be False (map 0 to null to ignore it)")
    try:
        entries = sorted((int(k), v) for k, v in content.items())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"class_map {path}: the keys must be raw label values (integers), "
                         f"got {sorted(map(str, content))[:5]}") from exc
    values = [v for _, v in entries if v is not None]
    by_index = bool(values) and all(isinstance(v, int) and not isinstance(v, bool)
                                    for v in values)
    if not by_index and not all(isinstance(v, str) for v in values):
        raise ValueError(f"class_map {path}: map every raw value to a class name, or every "
                         f"one to a class index (or null to ignore it), not a mix, got "
                         f"{sorted({type(v).__name__ for v in values})}")
    names: list[str] = []
    table = torch.full((65536,), -1, dtype=torch.int64)  # -1: ignored
    for raw, value in entries:
        if not 0 <= raw < 65536:
            raise ValueError(f"class_map {path}: raw value {raw} is outside 0..65535 "
                             f"(label maps are 8- or 16-bit)")
        if value is None:
            continue
        if by_index:
            if value < 0:
                raise ValueError(f"class_map {path}: value {raw} maps to the class index "
                                 f"{value}; indices are >= 0")
            table[raw] = value
            continue
        if value not in names:
            names.append(value)
        table[raw] = names.index(value)
    if by_index:
        names = [f"class_{i}" for i in range(max(values) + 1)]
    if not names:
        raise ValueError(f"class_map {path} maps every value to null: no classes")
    return names, table


class SegmentationFolder(torch.utils.data.Dataset):
    """(image, mask) pairs of a folder (the module docstring gives the layout, the
    class rules, what items are and what is checked). ``crop_size``,
    ``scale_range``, ``hflip``, ``photometric`` configure the training augmentation
    (:class:`.transforms.TrainTransform`). Attributes: ``pairs`` [(image path,
    label path)], ``classes``, ``num_classes``, ``ignore_index``, ``bands`` (of the
    images)."""

    def __init__(self, root: str | Path, images: str = "images/training",
                 annotations: str = "annotations/training", train: bool = True,
                 crop_size: int = 512, scale_range: tuple[float, float] = (0.5, 2.0),
                 hflip: float = 0.5, photometric: bool = True, ignore_index: int = 255,
                 reduce_zero_label: bool = True, class_map: str | Path | None = None,
                 mean=None, std=None, eval_resize: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"segmentation data folder not found: {self.root}")
        if not isinstance(ignore_index, int) or ignore_index < 0:
            raise ValueError(f"ignore_index must be an int >= 0, got {ignore_index!r}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std go together: give both or neither")
        self.transform = TrainTransform(crop_size, scale_range, hflip, photometric,
                                        ignore_index)  # checks its arguments
        self.train, self.crop_size, self.eval_resize = train, crop_size, eval_resize
        self.ignore_index, self.reduce_zero_label = ignore_index, reduce_zero_label
        self.pairs = _pair(_files_by_stem(self.root / images, IMAGE_EXTENSIONS, "image"),
                           _files_by_stem(self.root / annotations, LABEL_EXTENSIONS,
                                          "label map"))
        self._table = None
        if class_map is not None:
            self.classes, self._table = _load_class_map(Path(class_map), reduce_zero_label)
        elif (self.root / "classes.txt").is_file():
            self.classes, _ = _load_class_map(self.root / "classes.txt", reduce_zero_label)
        elif (self.root / "objectInfo150.txt").is_file():
            self.classes = list(ADE20K_CLASSES)
        else:
            self.classes = [f"class_{i}" for i in range(self._scan_num_classes())]
        self.num_classes = len(self.classes)
        if ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a class index (there are "
                             f"{self.num_classes} classes); choose a value >= {self.num_classes}")
        self.bands = None
        image, _ = self._read(0)  # the first pair decodes, and is consistent
        self.bands = bands = image.shape[0]
        self.mean = self.std = None
        if mean is not None:
            self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
            self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
            if len(self.mean) != bands or len(self.std) != bands or (self.std <= 0).any():
                raise ValueError(f"mean and std need one value per band ({bands}, std > 0), "
                                 f"got mean={mean}, std={std}")
        self.transform.mean, self.transform.std = self.mean, self.std

    def __len__(self) -> int:
        return len(self.pairs)

    def _labels(self, raw: torch.Tensor) -> torch.Tensor:
        if self._table is not None:
            mask = self._table[raw]
            return mask.masked_fill_(mask < 0, self.ignore_index)
        if self.reduce_zero_label:
            ignored = (raw == 0) | (raw == self.ignore_index)
            return (raw - 1).masked_fill_(ignored, self.ignore_index)
        return raw

    def _scan_num_classes(self) -> int:
        largest = -1
        for _, label_path in self.pairs:
            mask = self._labels(read_label_map(label_path))
            kept = mask[mask != self.ignore_index]
            if kept.numel():
                largest = max(largest, int(kept.max()))
        if largest < 0:
            raise ValueError(f"every pixel of every label map under {self.root} is ignored: "
                             f"no classes")
        return largest + 1

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        pixels = read_image(image_path)
        raw = read_label_map(label_path)
        if raw.shape != pixels.shape[-2:]:
            raise ValueError(f"label map {label_path} is {raw.shape[1]} x {raw.shape[0]} "
                             f"pixels but its image {image_path} is {pixels.shape[-1]} x "
                             f"{pixels.shape[-2]}")
        if self.bands is not None and pixels.shape[0] != self.bands:
            raise ValueError(f"{image_path} has {pixels.shape[0]} band(s), the first image "
                             f"{self.pairs[0][0]} {self.bands}: a dataset's images share bands")
        mask = self._labels(raw)
        bad = (mask >= self.num_classes) & (mask != self.ignore_index)
        if bad.any():
            raise ValueError(f"label map {label_path} holds the label {int(raw[bad][0])}, "
                             f"which is not one of the {self.num_classes} classes "
                             f"(reduce_zero_label={self.reduce_zero_label}) nor ignored")
        image = pixels.to(torch.float32) / PIXEL_SCALE[pixels.dtype]
        return image, mask

    def __getitem__(self, index: int):
        image, mask = self._read(index)
        if self.train:
            image, mask = self.transform(image, mask)
        elif self.eval_resize:
            image = resize_to_bound(image, self.crop_size)
        if self.mean is not None and not self.train:  # the training transform normalised
            image = (image - self.mean) / self.std
        return image, mask


def collate(batch):
    """Training items stacked: images (B, C, S, S) float32, masks (B, S, S) int64."""
    images, masks = zip(*batch)
    return torch.stack(images), torch.stack(masks)


def val_collate(batch):
    """Evaluation items as two lists (their sizes differ)."""
    images, masks = zip(*batch)
    return list(images), list(masks)
