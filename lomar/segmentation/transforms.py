"""The augmentations of mmsegmentation's ADE20K recipe, on an image and its label
map together: (image float (C, H, W) in [0, 1], mask int64 (H, W)) in, the same out.

The two travel as ``tv_tensors.Image`` and ``tv_tensors.Mask`` through
torchvision's v2 functionals, which resize a mask by nearest neighbour whatever
interpolation the image gets. Draws come from torch's global generator, which the
training loop seeds per (seed, epoch, index) (:class:`lomar.engine.seeding.SeededItems`),
so a resumed run draws what the uninterrupted one drew.

Training (:class:`TrainTransform`), in mmsegmentation's order:

1. random resize: mmseg's ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0),
   keep_ratio=True)`` for a 512 crop, generalised to any crop size S: the image is
   scaled by s * min(4S / long side, S / short side), s uniform in ``scale_range``
   (for the usual photo, whose long side is under 4x its short side, the short
   side becomes s * S);
2. random crop of S x S (smaller sides kept whole), with ``cat_max_ratio`` 0.75: up
   to 10 draws until no single class covers 75% or more of the crop's labelled
   pixels and at least two classes are in it (otherwise the last draw is kept);
3. horizontal flip with probability ``hflip``;
4. photometric distortion (mmseg's ``PhotoMetricDistortion``, each step with
   probability 1/2): brightness +-32/255, then contrast x U(0.5, 1.5) either here or
   last, saturation x U(0.5, 1.5) and hue +-18/180 of the circle in HSV; images
   without three bands get brightness and contrast only (saturation and hue have
   no meaning for them). Values are clipped to [0, 1] after each step, as mmseg
   clips to [0, 255];
5. with ``mean`` and ``std``, normalisation (x - mean) / std per band;
6. padding to S x S at the bottom and right: the image with 0, the mask with the
   ignore index (mmseg's data preprocessor pads the normalised image with 0).

Evaluation (:func:`resize_to_bound`): mmseg's ``Resize(scale=(2048, 512),
keep_ratio=True)`` generalised the same way, the image scaled by
min(4S / long side, S / short side); the label map is not resized (mmseg scores
predictions at the annotation's resolution)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

__all__ = ["TrainTransform", "resize_to_bound", "photometric_distortion", "random_crop",
           "resize_scale"]

BRIGHTNESS_DELTA = 32 / 255
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18 / 180  # OpenCV's 8-bit hue runs over 0..180: 18 is a tenth of the circle
LONG_SIDE_BOUND = 4  # mmseg's scale (2048, 512): the long side at most 4x the crop


def resize_scale(height: int, width: int, crop_size: int) -> float:
    """The factor that fits (height, width) in mmseg's keep-ratio bound
    (4 * crop_size, crop_size): min(4S / long side, S / short side)."""
    return min(LONG_SIDE_BOUND * crop_size / max(height, width), crop_size / min(height, width))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _resize(image: torch.Tensor, mask: torch.Tensor | None, scale: float):
    h, w = image.shape[-2:]
    size = [max(1, round(h * scale)), max(1, round(w * scale))]
    if size == [h, w]:
        return tv_tensors.Image(image), None if mask is None else tv_tensors.Mask(mask)
    image = v2.functional.resize(tv_tensors.Image(image), size, InterpolationMode.BILINEAR,
                                 antialias=True)
    if mask is not None:
        mask = v2.functional.resize(tv_tensors.Mask(mask), size)  # nearest for a Mask
    return image, mask


def resize_to_bound(image: torch.Tensor, crop_size: int) -> torch.Tensor:
    """An evaluation image scaled to mmseg's bound (module docstring), bilinear."""
    scale = resize_scale(*image.shape[-2:], crop_size)
    return image if scale == 1 else _resize(image, None, scale)[0].as_subclass(torch.Tensor)


def random_crop(image: torch.Tensor, mask: torch.Tensor, crop_size: int, ignore_index: int,
                cat_max_ratio: float = 0.75, tries: int = 10):
    """mmseg's RandomCrop with ``cat_max_ratio`` (module docstring, step 2)."""
    h, w = mask.shape[-2:]

    def draw():
        top = int(torch.randint(0, max(0, h - crop_size) + 1, ()))
        left = int(torch.randint(0, max(0, w - crop_size) + 1, ()))
        return top, left

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(tries):
            window = mask[..., top:top + crop_size, left:left + crop_size]
            counts = torch.bincount(window[window != ignore_index].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    return (image[..., top:top + crop_size, left:left + crop_size],
            mask[..., top:top + crop_size, left:left + crop_size])


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(0)
    value, _ = rgb.max(0)
    low, _ = rgb.min(0)
    chroma = value - low
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), 0)
    safe = chroma.clamp_min(1e-12)
    hue = torch.where(value == r, ((g - b) / safe) % 6,
                      torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, 0)
    return torch.stack([hue, saturation, value])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = hsv.unbind(0)
    k = (torch.tensor([5.0, 3.0, 1.0])[:, None, None] + hue * 6) % 6
    return value - value * saturation * (torch.minimum(k, 4 - k).clamp(0, 1))


def photometric_distortion(image: torch.Tensor) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a float image in [0, 1] (module docstring,
    step 4)."""
    if torch.rand(()) < 0.5:
        image = (image + _uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)).clamp(0, 1)
    contrast_first = torch.rand(()) < 0.5

    def contrast(x):
        return (x * _uniform(*CONTRAST_RANGE)).clamp(0, 1) if torch.rand(()) < 0.5 else x

    if contrast_first:
        image = contrast(image)
    if image.shape[0] == 3:
        saturate, shift = torch.rand(()) < 0.5, None
        factor = _uniform(*SATURATION_RANGE) if saturate else 1.0
        if torch.rand(()) < 0.5:
            shift = _uniform(-HUE_DELTA, HUE_DELTA)
        if saturate or shift is not None:
            hsv = _rgb_to_hsv(image)
            hsv[1] = (hsv[1] * factor).clamp(0, 1)
            if shift is not None:
                hsv[0] = (hsv[0] + shift) % 1
            image = _hsv_to_rgb(hsv).clamp(0, 1)
    if not contrast_first:
        image = contrast(image)
    return image


class TrainTransform:
    """Steps 1-6 of the module docstring: (image, mask) -> (image (C, S, S),
    mask (S, S)), S = ``crop_size``."""

    def __init__(self, crop_size: int = 512, scale_range: tuple[float, float] = (0.5, 2.0),
                 hflip: float = 0.5, photometric: bool = True, ignore_index: int = 255,
                 cat_max_ratio: float = 0.75, mean=None, std=None):
        lo, hi = scale_range
        if not isinstance(crop_size, int) or crop_size < 1:
            raise ValueError(f"crop_size must be an int >= 1, got {crop_size!r}")
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, "
                             f"got {tuple(scale_range)}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip!r}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1], got {cat_max_ratio!r}")
        self.crop_size, self.scale_range, self.hflip = crop_size, (lo, hi), hflip
        self.photometric, self.ignore_index = photometric, ignore_index
        self.cat_max_ratio = cat_max_ratio
        # per-band (C, 1, 1) statistics to normalise with before padding, or None
        self.mean, self.std = mean, std

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        S = self.crop_size
        scale = _uniform(*self.scale_range) * resize_scale(*image.shape[-2:], S)
        image, mask = _resize(image, mask, scale)
        image, mask = random_crop(image, mask, S, self.ignore_index, self.cat_max_ratio)
        if torch.rand(()) < self.hflip:
            image, mask = v2.functional.horizontal_flip(image), v2.functional.horizontal_flip(mask)
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        if self.photometric:
            image = photometric_distortion(image)
        if self.mean is not None:
            image = (image - self.mean) / self.std
        pad = (0, S - image.shape[-1], 0, S - image.shape[-2])  # right and bottom
        if any(pad):
            image = torch.nn.functional.pad(image, pad, value=0.0)
            mask = torch.nn.functional.pad(mask, pad, value=self.ignore_index)
        return image.contiguous(), mask.contiguous()
