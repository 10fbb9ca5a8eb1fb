"""An offline COCO-format instance segmentation set: scikit-learn's handwritten
digits (10 categories) pasted at random sizes and places onto crops of the photos
bundled with scikit-image. Nothing is downloaded; boxes and masks are exact.

Each digit (an 8x8 image of ink levels 0-16) is scaled bilinearly to its size, its
mask is where the scaled ink exceeds half the maximum level, and those pixels (all
of them, no others) take one colour chosen to contrast with the photo behind it
(dark on bright ground, bright on dark). Digits do not overlap, so every mask is
the visible object. The digits of the train and val images are disjoint subsets
of the 1797 (a seeded 80/20 split), the photo crops differ.

Layout (a COCO folder as ``lomar detect`` reads it)::

    out/train/*.png   out/val/*.png
    out/annotations/instances_train.json   out/annotations/instances_val.json"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ..data import DEMO_PHOTOS, demo_photo_dir, photo_crop, read_rgb

SPLITS = ("train", "val")


def _photo_crop(photos, size, g) -> torch.Tensor:
    """A crop of a photo drawn from ``photos`` (lomar.data.photo_crop)."""
    return photo_crop(photos[int(torch.randint(0, len(photos), (), generator=g))], size, g)


def _digit_mask(digit: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ink = torch.nn.functional.interpolate(digit[None, None], size=(h, w), mode="bilinear",
                                          align_corners=False)[0, 0]
    return ink > 8.0  # half of the digits' 16 ink levels


def _paste(canvas, digits, pool, sizes, max_digits, g):
    """Paste 1..max_digits digits onto ``canvas`` (3, S, S) uint8, in place; returns
    [(label, (S, S) bool mask)]."""
    S = canvas.shape[-1]
    taken = torch.zeros(S, S, dtype=torch.bool)
    placed = []
    for _ in range(int(torch.randint(1, max_digits + 1, (), generator=g))):
        for _attempt in range(20):
            index = pool[int(torch.randint(0, len(pool), (), generator=g))]
            h = int(torch.randint(sizes[0], sizes[1] + 1, (), generator=g))
            w = max(4, round(h * (0.7 + 0.3 * torch.rand((), generator=g).item())))
            top = int(torch.randint(0, S - h + 1, (), generator=g))
            left = int(torch.randint(0, S - w + 1, (), generator=g))
            local = _digit_mask(digits[0][index], h, w)
            # a 2-pixel margin keeps digits apart
            if not local.any() or taken[max(0, top - 2):top + h + 2,
                                        max(0, left - 2):left + w + 2].any():
                continue
            mask = torch.zeros(S, S, dtype=torch.bool)
            mask[top:top + h, left:left + w] = local
            ground = canvas[:, mask].float().mean(dim=1)
            luma = float(ground @ torch.tensor([0.299, 0.587, 0.114]))
            tone = torch.randint(0, 70, (3,), generator=g)
            colour = (tone if luma > 110 else 255 - tone).to(torch.uint8)
            canvas[:, mask] = colour[:, None]
            taken[top:top + h, left:left + w] = True
            placed.append((int(digits[1][index]), mask))
            break
    return placed


def build_demo_detection(out_dir: str | Path, num_train: int = 512, num_val: int = 128,
                         size: int = 128, digit_sizes: tuple[int, int] = (16, 48),
                         max_digits: int = 4, seed: int = 0) -> Path:
    """Write the set (layout in the module docstring) into ``out_dir``; deterministic
    for its arguments, and an existing complete set with the same ones is reused.
    ``digit_sizes``: (smallest, largest) digit height in pixels."""
    lo, hi = digit_sizes
    if size < 16 or not 4 <= lo <= hi <= size or num_train < 1 or num_val < 1 \
            or max_digits < 1:
        raise ValueError(f"build_demo_detection: need size >= 16, 4 <= digit_sizes[0] <= "
                         f"digit_sizes[1] <= size, num_train, num_val, max_digits >= 1; got "
                         f"size={size}, digit_sizes={tuple(digit_sizes)}, num_train={num_train}, "
                         f"num_val={num_val}, max_digits={max_digits}")
    from pycocotools import mask as mask_utils
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    stamp = out / ".demo_detection"
    tag = f"{num_train} {num_val} {size} {lo} {hi} {max_digits} {seed} {','.join(DEMO_PHOTOS)}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    loaded = load_digits()
    digits = (torch.from_numpy(loaded.images).float(), torch.from_numpy(loaded.target))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(digits[1]), generator=g)
    n_val_digits = round(0.2 * len(order))
    pools = {"train": order[n_val_digits:].tolist(), "val": order[:n_val_digits].tolist()}
    src = demo_photo_dir()
    photos = [read_rgb(src / name) for name in DEMO_PHOTOS]
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            canvas = _photo_crop(photos, size, g)
            placed = _paste(canvas, digits, pools[split], (lo, hi), max_digits, g)
            name = f"{split}_{i:05d}.png"
            Image.fromarray(canvas.permute(1, 2, 0).contiguous().numpy()).save(folder / name)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for label, mask in placed:
                rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)), "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    stamp.write_text(tag)
    return out
