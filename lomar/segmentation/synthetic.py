"""An offline semantic segmentation set in the ADE20K layout: shapes of four
classes (disc, square, triangle, ring) on crops of the photographs bundled with
scikit-image. Nothing is downloaded; the label maps are exact.

Each scene is a crop of one photo (class "background") with 1-4 shapes at random
places, sizes and rotations, later shapes occluding earlier ones. A shape is filled
with a crop of another photo blended 60/40 with a random colour, so neither
texture nor colour tells the classes apart: only the outline does (a ring's hole
shows the background). A one-pixel band around each shape's outline is labelled
0, "unlabelled", which ``reduce_zero_label`` turns into the ignore index (ADE20K's
convention: label v is class v - 1), so ignored pixels are part of every scene.

Layout (what :class:`lomar.segmentation.SegmentationFolder` reads)::

    root/images/training/scene_00000.png      root/annotations/training/scene_00000.png
    root/images/validation/scene_00000.png    root/annotations/validation/scene_00000.png
    root/classes.txt                          (background, disc, square, triangle, ring)"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from ..data import DEMO_PHOTOS, demo_photo_dir, photo_crop, read_rgb
from ..data.demo import start_build

__all__ = ["DEMO_CLASSES", "build_demo_segmentation"]

DEMO_CLASSES = ("background", "disc", "square", "triangle", "ring")
SPLITS = (("training", "num_train"), ("validation", "num_val"))
UNLABELLED = 0  # the raw value of the band around outlines


def _shape_mask(kind: str, ys, xs, cy, cx, radius, angle) -> torch.Tensor:
    """Pixels (centres) inside a shape of circumradius ``radius``, rotated by ``angle``."""
    dy, dx = ys - cy, xs - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    dist = torch.sqrt(u * u + v * v)
    if kind == "disc":
        return dist <= radius
    if kind == "ring":
        return (dist <= radius) & (dist >= 0.55 * radius)
    if kind == "square":
        half = radius / math.sqrt(2)
        return (u.abs() <= half) & (v.abs() <= half)
    if kind == "triangle":  # equilateral: inside the three edges at distance radius / 2
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            theta = angle + 2 * math.pi * k / 3
            inside &= (dx * math.cos(theta) + dy * math.sin(theta)) <= radius / 2
        return inside
    raise ValueError(f"unknown shape {kind!r}")


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 3, 1, 1)[0, 0] > 0


def _texture(photos, h: int, w: int, g: torch.Generator) -> torch.Tensor:
    """An (h, w) piece of a random photo at its own scale, maybe mirrored (no resize:
    the photos are already shrunk to about the scene's scale)."""
    photo = photos[int(torch.randint(0, len(photos), (), generator=g))]
    top = int(torch.randint(0, photo.shape[-2] - h + 1, (), generator=g))
    left = int(torch.randint(0, photo.shape[-1] - w + 1, (), generator=g))
    piece = photo[:, top:top + h, left:left + w]
    return piece.flip(-1) if torch.rand((), generator=g) < 0.5 else piece


def _scene(photos, size: int, g: torch.Generator):
    """One (image (3, S, S) uint8, raw labels (S, S) uint8) scene."""
    which = int(torch.randint(0, len(photos), (), generator=g))
    torch.randint(0, 1, (), generator=g)  # a pick among one photo: the draws the set was made with
    image = photo_crop(photos[which], size, g)
    labels = torch.ones(size, size, dtype=torch.uint8)  # 1: background
    others = [p for i, p in enumerate(photos) if i != which]
    for _ in range(int(torch.randint(1, 5, (), generator=g))):
        cls = int(torch.randint(1, len(DEMO_CLASSES), (), generator=g))
        radius = size * (0.1 + 0.14 * torch.rand((), generator=g).item())
        cy, cx = (radius * 0.6 + (size - 1.2 * radius) * torch.rand(2, generator=g)).tolist()
        angle = 2 * math.pi * torch.rand((), generator=g).item()
        # the shape's box, one pixel wider for the band around it
        y0, x0 = max(0, int(cy - radius) - 1), max(0, int(cx - radius) - 1)
        y1, x1 = min(size, int(cy + radius) + 3), min(size, int(cx + radius) + 3)
        ys, xs = torch.meshgrid(torch.arange(y0, y1) + 0.5, torch.arange(x0, x1) + 0.5,
                                indexing="ij")
        inside = _shape_mask(DEMO_CLASSES[cls], ys, xs, cy, cx, radius, angle)
        texture = _texture(others, y1 - y0, x1 - x0, g)
        colour = torch.randint(0, 256, (3, 1, 1), generator=g)
        fill = ((6 * texture.short() + 4 * colour.short() + 5) // 10).to(torch.uint8)
        box = labels[y0:y1, x0:x1]
        box[_dilate(inside) & ~inside] = UNLABELLED
        box[inside] = cls + 1
        image[:, y0:y1, x0:x1][:, inside] = fill[:, inside]
    return image, labels


def _shrunk(photo: torch.Tensor, short_side: int) -> torch.Tensor:
    """A photo scaled down (never up) so that its short side is ``short_side``: the
    crops of a small scene then resize from a few hundred pixels, not thousands."""
    h, w = photo.shape[-2:]
    scale = short_side / min(h, w)
    if scale >= 1:
        return photo
    return v2.functional.resize(photo, [round(h * scale), round(w * scale)],
                                InterpolationMode.BICUBIC, antialias=True)


def build_demo_segmentation(root: str | Path, num_train: int = 256, num_val: int = 64,
                            size: int = 128, seed: int = 0) -> Path:
    """Write the set (layout in the module docstring) under ``root`` and return it;
    deterministic for its arguments, and an existing complete set with the same
    ones is reused."""
    if size < 32 or num_train < 1 or num_val < 1:
        raise ValueError(f"build_demo_segmentation: need size >= 32, num_train >= 1 and "
                         f"num_val >= 1, got size={size}, num_train={num_train}, "
                         f"num_val={num_val}")
    out = Path(root)
    stamp = out / ".demo_segmentation"
    tag = f"{num_train} {num_val} {size} {seed} {','.join(DEMO_PHOTOS)}"
    if stamp.is_file() and stamp.read_text() == tag:
        return out
    # Every operation here is on a few thousand pixels: one intra-op thread is
    # several times faster than a pool (measured: 2 s instead of 15 s of CPU for
    # the default set) and leaves the other cores alone.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        src = demo_photo_dir()
        photos = [_shrunk(read_rgb(src / name), 2 * size) for name in DEMO_PHOTOS]
        g = torch.Generator().manual_seed(seed)
        counts = {"num_train": num_train, "num_val": num_val}
        for split, count in SPLITS:
            images, annotations = out / "images" / split, out / "annotations" / split
            start_build(images, stamp, "scene_*.png")  # no stale scenes of a larger build
            start_build(annotations, stamp, "scene_*.png")
            for i in range(counts[count]):
                image, labels = _scene(photos, size, g)
                name = f"scene_{i:05d}.png"
                Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(images / name)
                Image.fromarray(labels.numpy()).save(annotations / name)
    finally:
        torch.set_num_threads(threads)
    (out / "classes.txt").write_text("\n".join(DEMO_CLASSES) + "\n")
    stamp.write_text(tag)
    return out
