"""The random-resized crop of the pretraining recipe, drawn apart from its pixels.

:func:`sample_crop` draws what ``RandomResizedCrop`` + ``RandomHorizontalFlip``
draw (the same algorithm and, from the global generator, the same numbers);
:func:`render_crop` makes the whole crop, as the full-image pipeline does;
:func:`render_windows` makes only the LoMaR windows of it, straight from the
source, so that the data side of a step costs the same at 1024 as at 224: each
window is a rectangle of the same bicubic antialiased resize
(:func:`lomar_ops.resize_regions`, through :mod:`lomar.data.resample`), and a JPEG
source is decoded at reduced scale when the crop shrinks it by 2x or more
(:mod:`lomar.data.decode`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops

from .decode import OpenedImage, decode_rgb, open_image
from .resample import BACKEND, resize_windows

__all__ = ["Crop", "sample_crop", "render_crop", "render_windows", "window_boxes"]


@dataclass(frozen=True)
class Crop:
    """A random-resized crop: the source box, the flip and the output size.

    ``top``, ``left``, ``height``, ``width``: the box in the full-scale source's
    pixels (as ``torchvision.transforms.v2.functional.resized_crop`` takes it);
    ``flip``: mirrored left-right after the resize; ``size``: (out_h, out_w);
    ``image_size``: (H, W) of the source it was drawn for."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    size: tuple[int, int]
    image_size: tuple[int, int]

    @property
    def reduction(self) -> float:
        """How much the resize shrinks the box (>= 1: downscaling), the smaller axis's."""
        return min(self.height / self.size[0], self.width / self.size[1])


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ValueError(f"sample_crop: {name} must be a positive int or (height, width), "
                         f"got {value!r}")
    return int(value[0]), int(value[1])


def sample_crop(image_size, input_size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                generator: torch.Generator | None = None) -> Crop:
    """A random-resized crop (box area ``scale`` of the image, aspect ``ratio``,
    log-uniform) and a horizontal flip with probability ``hflip``.

    The draw is torchvision's ``RandomResizedCrop.get_params`` (ten tries, then the
    central crop of the closest aspect) followed by ``RandomHorizontalFlip``'s: from
    the global generator (``generator=None``) it reproduces
    ``v2.Compose([v2.RandomResizedCrop(...), v2.RandomHorizontalFlip(hflip)])``.

    Args:
        image_size: (H, W) of the source (after its EXIF orientation).
        input_size: side, or (height, width), of the output.
    """
    H, W = _pair("image_size", image_size)
    size = _pair("input_size", input_size)
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"sample_crop: scale must satisfy 0 < min <= max <= 1, got {scale}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"sample_crop: ratio must satisfy 0 < min <= max, got {ratio}")
    if not 0 <= hflip <= 1:
        raise ValueError(f"sample_crop: hflip must be a probability in [0, 1], got {hflip}")
    area = H * W
    log_ratio = torch.log(torch.tensor(ratio))
    box = None
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]),
                                                   generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            i = int(torch.randint(0, H - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, W - w + 1, size=(1,), generator=generator).item())
            box = (i, j, h, w)
            break
    if box is None:  # central crop of the closest allowed aspect
        in_ratio = W / H
        if in_ratio < min(ratio):
            w, h = W, int(round(W / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = H, int(round(H * max(ratio)))
        else:
            w, h = W, H
        box = ((H - h) // 2, (W - w) // 2, h, w)
    flip = bool(torch.rand(1, generator=generator) < hflip)
    return Crop(*box, flip=flip, size=size, image_size=(H, W))


def render_crop(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """The whole crop: (C, out_h, out_w) from a decoded (C, H, W) uint8, uint16 or float32
    image, in its dtype, as the full-image pipeline makes it (``resized_crop``, bicubic,
    antialiased, then the flip). torch does not resample uint16: the others go through the
    op :func:`lomar_ops.resize_region`, the same filter (to the bit on uint8 too)."""
    _check_image(image, crop, WINDOW_DTYPES)
    if image.dtype == torch.uint8:
        out = v2.functional.resized_crop(image, crop.top, crop.left, crop.height, crop.width,
                                         list(crop.size), InterpolationMode.BICUBIC,
                                         antialias=True)
    else:
        box = (crop.top, crop.left, crop.height, crop.width)
        out = lomar_ops.resize_region(image.permute(1, 2, 0).contiguous(), box, crop.size,
                                      (0, 0, *crop.size), backend=BACKEND)
    return out.flip(-1) if crop.flip else out


def _check_image(image: torch.Tensor, crop: Crop, dtypes=(torch.uint8,)) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.dtype not in dtypes:
        got = (f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor)
               else type(image).__name__)
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"image must be a decoded (C, H, W) {allowed} tensor, got {got}")
    if tuple(image.shape[1:]) != tuple(crop.image_size):
        raise ValueError(f"image is {tuple(image.shape[1:])} but the crop was drawn for "
                         f"{crop.image_size}")


# What render_windows and render_crop resample (resize_region): the files' integer pixels,
# which the model normalises on the device, and float32 ones (reflectances, CT in
# Hounsfield units), which the pipelines normalise before shipping them.
WINDOW_DTYPES = (torch.uint8, torch.uint16, torch.float32)


def window_boxes(crop: Crop, coords: torch.Tensor, window_size: int,
                 patch_size: int) -> list[tuple[int, int, int]]:
    """(y0, x0 in the unflipped resize, side) in output pixels of each window."""
    coords = torch.as_tensor(coords)
    if coords.dim() != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2) window corners (row, col) in patches, got "
                         f"shape {tuple(coords.shape)}")
    K, p = window_size, patch_size
    side = K * p
    out_h, out_w = crop.size
    boxes = []
    for row, col in coords.tolist():
        y0, x0 = row * p, col * p
        if row < 0 or col < 0 or y0 + side > out_h or x0 + side > out_w:
            raise ValueError(f"coords: window ({row}, {col}) of {K}x{K} patches of {p} pixels "
                             f"does not fit the {out_h}x{out_w} crop")
        if crop.flip:
            x0 = out_w - x0 - side  # the flip mirrors the window: render it mirrored
        boxes.append((y0, x0, side))
    return boxes


def _decode_for(opened: OpenedImage, crop: Crop, reduced_decode: bool):
    if opened.size != crop.image_size:
        raise ValueError(f"{opened.name}: the image is {opened.size} but the crop was drawn "
                         f"for {crop.image_size}")
    factor = opened.reduction_for(crop.reduction) if reduced_decode else 1
    return factor, decode_rgb(opened, reduce=factor)


def render_windows(source, crop: Crop, coords: torch.Tensor, window_size: int,
                   patch_size: int, reduced_decode: bool = True) -> torch.Tensor:
    """The LoMaR windows of a crop, rendered from the source without the rest of it.

    Args:
        source: a decoded (C, H, W) uint8 or uint16 tensor (any bands, e.g. from
            :func:`lomar.data.read_image`), a path, the file's bytes, or an
            :class:`lomar.data.decode.OpenedImage` (decoded as RGB).
        crop: from :func:`sample_crop` for this source's size.
        coords: (n, 2) window corners (row, col) in patches of the crop, as
            :func:`lomar_ops.window_patchify` takes them.
        reduced_decode: decode a JPEG file at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
            scaling) when the crop shrinks the source by that much or more; the
            pixels then differ slightly from the full-scale path's (``lomar
            bench-data`` reports the PSNR).

    Returns:
        (n, C, K*p, K*p) in the tensor's dtype (uint8 for files). With a decoded uint8
        tensor (or ``reduced_decode=False``),
        window i is ``render_crop(image, crop)[:, r*p:(r+K)*p, c*p:(c+K)*p]`` with
        (r, c) = coords[i], to the bit where torch resizes uint8 with AVX2.
    """
    boxes = window_boxes(crop, coords, window_size, patch_size)
    if isinstance(source, torch.Tensor):
        _check_image(source, crop, WINDOW_DTYPES)
        hwc, factor = source.permute(1, 2, 0).contiguous(), 1
    elif isinstance(source, OpenedImage):
        factor, hwc = _decode_for(source, crop, reduced_decode)
    else:
        if not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
            raise TypeError(f"source must be a (3, H, W) uint8 tensor, a path or bytes, got "
                            f"{type(source).__name__}")
        with open_image(source) as opened:
            factor, hwc = _decode_for(opened, crop, reduced_decode)
    box = (crop.top / factor, crop.left / factor, crop.height / factor, crop.width / factor)
    out = resize_windows(hwc, box, crop.size, [(y0, x0) for y0, x0, _ in boxes],
                         window_size * patch_size)
    return out.flip(-1) if crop.flip else out
