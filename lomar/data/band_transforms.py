"""Fine-tuning's transforms for files of any bands and bit depth (``data.bands`` "all"
or band indices): a file -> (C, S, S) float32, normalised per band.

timm's classification transforms work on 8-bit RGB PIL images; these do the
band-agnostic part of the same recipe on the file's own pixels
(:func:`lomar.data.pipelines.read_bands`):

- :class:`BandTrainTransform`: random-resized crop (bicubic, antialiased, the scale
  and ratio ranges of timm's), horizontal flip, values / the type's maximum (255 or
  65535), per-band mean and std, then timm's random erasing. RandAugment and colour
  jitter are colour-photo operations (hue, solarise, posterize of 8-bit RGB) and are
  not applied: the fine-tuning job refuses a config that asks for them with other
  bands rather than skip them silently.
- :class:`BandEvalTransform`: resize so the short side is ``size / crop_pct``, centre
  crop ``size``, the same normalisation: timm's evaluation transform.

The draws come from the global generator, which the training loop seeds per
(seed, epoch, index), as the pretraining pipelines' do."""

from __future__ import annotations

import math

import torch
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import v2

import lomar_ops

from .crop import Crop, render_crop, sample_crop
from .pipelines import check_bands, read_bands
from .resample import BACKEND

__all__ = ["BandEvalTransform", "BandTrainTransform"]


def _normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    scaled = v2.functional.to_dtype(pixels, torch.float32, scale=True)
    return v2.functional.normalize(scaled, list(mean), list(std))


class BandTrainTransform:
    """A file -> (C, size, size) float32: random-resized crop, flip, normalisation,
    random erasing (``reprob``, timm's modes). ``channels`` and ``dtype``: the band
    count and sample type every file must give (None: any)."""

    reads_files = True

    def __init__(self, size: int, mean, std, bands="all", scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip: float = 0.5, reprob: float = 0.0,
                 remode: str = "pixel", recount: int = 1, channels: int | None = None,
                 dtype: torch.dtype | None = None):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.bands, self.channels, self.dtype = check_bands(bands), channels, dtype
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        # timm's RandomErasing draws from torch's global generator: seeded per item too.
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu") \
            if reprob > 0 else None

    def __call__(self, source) -> torch.Tensor:
        pixels = read_bands(source, self.bands, self.channels, self.dtype)
        crop = sample_crop(tuple(pixels.shape[1:]), self.size, self.scale, self.ratio,
                           self.hflip)
        out = _normalise(render_crop(pixels, crop), self.mean, self.std)
        return self.erase(out) if self.erase is not None else out


class BandEvalTransform:
    """A file -> (C, size, size) float32: the short side resized to ``size / crop_pct``
    (bicubic, antialiased), the centre ``size`` x ``size``, normalised."""

    reads_files = True

    def __init__(self, size: int, mean, std, bands="all", crop_pct: float = 0.875,
                 channels: int | None = None, dtype: torch.dtype | None = None):
        self.size, self.crop_pct = size, crop_pct
        self.mean, self.std = tuple(mean), tuple(std)
        self.bands, self.channels, self.dtype = check_bands(bands), channels, dtype

    def __call__(self, source) -> torch.Tensor:
        pixels = read_bands(source, self.bands, self.channels, self.dtype)
        H, W = pixels.shape[1:]
        short = math.floor(self.size / self.crop_pct)  # timm's scale_size
        rh, rw = (short, int(short * W / H)) if H <= W else (int(short * H / W), short)
        top, left = (rh - self.size) // 2, (rw - self.size) // 2
        if min(top, left) < 0:  # crop_pct 1 on an image thinner than the ratio allows
            crop = Crop(0, 0, H, W, flip=False, size=(self.size, self.size), image_size=(H, W))
            return _normalise(render_crop(pixels, crop), self.mean, self.std)
        # The centre of the whole image's resize: the op resizes the whole image and
        # returns only that rectangle (no pixels outside it are computed).
        out = lomar_ops.resize_region(pixels.permute(1, 2, 0).contiguous(), (0, 0, H, W),
                                      (rh, rw), (top, left, self.size, self.size),
                                      backend=BACKEND)
        return _normalise(out, self.mean, self.std)
