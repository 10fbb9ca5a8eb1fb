"""COCO-format detection data: a folder of images and a JSON file of instances
(boxes, and polygon or RLE masks), read with pycocotools.

Items are ``(image, target)``: image float (3, H, W) in [0, 1]; target a dict of
``boxes`` (N, 4) float x1, y1, x2, y2 in pixels, ``labels`` (N,) int64 in 1..C
(categories in id order; 0 is torchvision's background), ``masks`` (N, H, W) uint8
(with ``masks=True``) and ``image_id``. Crowd annotations are left out of training
targets (COCOeval treats them itself) and training skips images without instances.

Training augmentation is ViTDet's large-scale jitter: the image is scaled so that
its long side is s * input_size, s uniform in ``scale_range``, randomly cropped to
at most input_size x input_size (the detector pads it), and flipped horizontally
with probability ``hflip``. Boxes are recomputed from the cropped masks (clipped,
without masks); instances cropped away are dropped. Draws come from torch's global
generator, which the training loop seeds per (seed, epoch, index)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from ..data import read_rgb


def load_coco(annotations: str | Path):
    """pycocotools' COCO index of a JSON file (its progress prints silenced)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:  # an optional dependency
        raise ImportError("COCO data and AP need pycocotools: pip install pycocotools "
                          "(or pip install 'lomar[detect]')") from exc
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(str(path))
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            raise ValueError(f"{path} is not a COCO instances file: {exc!r}") from exc
    if not coco.getCatIds():
        raise ValueError(f"{path} defines no categories")
    return coco


def collate(batch):
    """(images, targets) tuples: detection images differ in size and are not stacked."""
    return tuple(zip(*batch))


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) x1, y1, x2, y2 of each mask's pixels (pixel edges); masks must be non-empty."""
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    h, w = masks.shape[-2:]
    y1 = rows.int().argmax(dim=1)
    y2 = h - rows.flip(1).int().argmax(dim=1)
    x1 = cols.int().argmax(dim=1)
    x2 = w - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


class CocoDetection(torch.utils.data.Dataset):
    def __init__(self, images: str | Path, annotations: str | Path, train: bool,
                 input_size: int = 1024, scale_range: tuple[float, float] = (0.1, 2.0),
                 hflip: float = 0.5, masks: bool = True):
        self.root = Path(images)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.root}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, "
                             f"got {tuple(scale_range)}")
        self.coco = load_coco(annotations)
        self.annotations = Path(annotations)
        self.train, self.input_size, self.scale_range = train, input_size, (lo, hi)
        self.hflip, self.masks = hflip, masks
        self.category_ids = sorted(self.coco.getCatIds())
        self.categories = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if self._instances(i)]
        if not ids:
            raise ValueError(f"{self.annotations}: no images{' with instances' if train else ''}")
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def _instances(self, image_id: int) -> list[dict]:
        return [a for a in self.coco.imgToAnns[image_id]
                if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0]

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = read_rgb(self.root / info["file_name"])
        target = {"image_id": torch.tensor(image_id)}
        if not self.train:
            return v2.functional.to_dtype(image, torch.float32, scale=True), target
        anns = self._instances(image_id)
        h, w = image.shape[-2:]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).view(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        masks = None
        if self.masks:
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])) \
                if anns else torch.zeros(0, h, w, dtype=torch.uint8)
        image, boxes, labels, masks = self._jitter(image, boxes, labels, masks)
        target.update(boxes=boxes, labels=labels)
        if masks is not None:
            target["masks"] = masks
        return v2.functional.to_dtype(image, torch.float32, scale=True), target

    def _jitter(self, image, boxes, labels, masks):
        S = self.input_size
        h, w = image.shape[-2:]
        lo, hi = self.scale_range
        scale = (lo + (hi - lo) * torch.rand(()).item()) * S / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = v2.functional.resize(image, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
        boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        top = int(torch.randint(0, max(0, nh - S) + 1, ()))
        left = int(torch.randint(0, max(0, nw - S) + 1, ()))
        image = image[:, top:top + S, left:left + S]
        ch, cw = image.shape[-2:]
        boxes = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
        if masks is not None:
            masks = v2.functional.resize(masks, [nh, nw], InterpolationMode.NEAREST_EXACT)
            masks = masks[:, top:top + S, left:left + S]
            keep = masks.flatten(1).amax(dim=1) > 0
            masks, labels = masks[keep], labels[keep]
            boxes = _tight_boxes(masks.bool()) if len(masks) else boxes.new_zeros(0, 4)
        else:
            keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            boxes, labels = boxes[keep], labels[keep]
        if torch.rand(()).item() < self.hflip:
            image = image.flip(-1)
            boxes = torch.stack([cw - boxes[:, 2], boxes[:, 1], cw - boxes[:, 0], boxes[:, 3]], 1)
            if masks is not None:
                masks = masks.flip(-1)
        return image.contiguous(), boxes, labels, masks
