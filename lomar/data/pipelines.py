"""The two pretraining pipelines: a file -> what the data loader ships to the device.

Both draw the same random-resized crop, flip and window corners for an item
(:class:`WindowSpec`):

- :class:`WindowCrops` ("windows", the default): only the LoMaR windows' pixels
  are produced, straight from the file (a JPEG at reduced scale when the crop
  allows it), as uint8; the model normalises them inside ``window_patchify``.
  Its cost does not grow with the input size.
- :class:`FullCrops` ("full"): the whole crop, as float32 normalised with
  ImageNet's mean and std, as timm/MAE pipelines make it.

The crop API under both is in :mod:`lomar.data.crop` (``sample_crop``,
``render_crop``, ``render_windows``); files are decoded by :mod:`lomar.data.decode`.
:func:`pretrain_transform` is the same augmentation as a torchvision transform of a
decoded image, for callers that hold tensors rather than files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

import lomar_ops

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .crop import WINDOW_DTYPES, Crop, render_crop, render_windows, sample_crop
from .decode import decode_rgb, open_image
from .read import band_names, read_image

__all__ = ["FullCrops", "WindowCrops", "WindowSpec", "band_indices", "check_bands", "pretrain_transform",
           "check_finite", "normalise_float", "probe_bands", "read_bands",
           "select_bands"]


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

    Only the windows' pixels are produced (:func:`lomar.data.crop.render_windows`), a JPEG
    decoded at 1/2, 1/4 or 1/8 scale when the crop shrinks it by that much
    (``reduced_decode``): the cost per image does not grow with ``input_size``.

    ``bands``: "rgb" (every file decoded as 8-bit RGB, as photos are), or "all" / a list
    of band indices: the file's own bands and bit depth through
    :func:`lomar.data.read_image` (multispectral, 16-bit, single-channel data), windows
    (n, C, K*p, K*p) uint8 or uint16, bit for bit what the file holds resampled; float32
    files' windows are normalised here with ``mean``/``std`` (in the file's units) and
    shipped as float32 (the model takes float windows as normalised)."""

    reads_files = True

    def __init__(self, spec: WindowSpec, reduced_decode: bool = True, bands="rgb",
                 channels: int | None = None, dtype: torch.dtype | None = None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.spec, self.reduced_decode = spec, reduced_decode
        self.bands = check_bands(bands)
        self.channels = channels  # the band count every file must give (None: any)
        self.dtype = dtype  # the sample type every file must have (None: any)
        self.mean, self.std = tuple(mean), tuple(std)  # float files' normalisation

    def __call__(self, source):
        if self.bands == "rgb":
            with open_image(source) as opened:
                crop, coords = self.spec.draw(opened.size)
                windows = render_windows(opened, crop, coords, self.spec.window_size,
                                         self.spec.patch_size, reduced_decode=self.reduced_decode)
            return windows, coords
        pixels = read_bands(source, self.bands, self.channels, self.dtype)
        crop, coords = self.spec.draw(tuple(pixels.shape[1:]))
        windows = render_windows(pixels, crop, coords, self.spec.window_size,
                                 self.spec.patch_size)
        if windows.dtype.is_floating_point:
            windows = normalise_float(windows, self.mean, self.std)
        return windows, coords


def check_bands(bands):
    """``data.bands``: "rgb", "all", or a non-empty list of distinct band indices >= 0 or
    of distinct band names (as the files name them: :func:`lomar.data.read.band_names`)."""
    if bands in ("rgb", "all"):
        return bands
    if isinstance(bands, (list, tuple)) and bands and len(set(bands)) == len(bands) and (
            all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bands)
            or all(isinstance(b, str) and b for b in bands)):
        return tuple(bands)
    raise ValueError(f"bands must be 'rgb', 'all' or a list of distinct band indices >= 0 or "
                     f"of distinct band names, got {bands!r}")


def band_indices(bands, source, count: int) -> tuple[int, ...] | str:
    """``bands`` ("all", indices or names) as "all" or the indices into ``source``'s
    ``count`` bands, names looked up in the file's own (OME channel names, GeoTIFF band
    descriptions); ValueError naming the file and what it has when one is missing."""
    if bands == "all":
        return bands
    if isinstance(bands[0], str):
        names = band_names(source)
        if names is None or len(names) != count:
            raise ValueError(f"{source}: data.bands picks bands by name ({list(bands)}), and "
                             f"the file does not name its {count} band(s) (OME channel names "
                             f"or GeoTIFF band descriptions): pick them by index")
        missing = [b for b in bands if b not in names]
        if missing:
            raise ValueError(f"{source}: data.bands asks for band {missing[0]!r}, the file's "
                             f"bands are {names}")
        return tuple(names.index(b) for b in bands)
    missing = [b for b in bands if b >= count]
    if missing:
        raise ValueError(f"{source}: data.bands asks for band {missing[0]}, the file has "
                         f"{count} (0 to {count - 1})")
    return tuple(bands)


def select_bands(pixels: torch.Tensor, bands, source) -> torch.Tensor:
    """The file's (C, H, W) pixels, or the bands picked from it (indices or names), for a
    pipeline: uint8, uint16 or float32; a float band with NaN or infinite values is
    refused (a model cannot learn from them, and no fill value would be the file's data)."""
    if pixels.dtype not in WINDOW_DTYPES:
        raise ValueError(f"{source}: {str(pixels.dtype).replace('torch.', '')} pixels: the "
                         f"pretraining pipelines take uint8, uint16 or float32 files")
    picked = band_indices(bands, source, pixels.shape[0])
    if picked != "all":
        pixels = pixels[list(picked)]
    if pixels.dtype.is_floating_point:
        check_finite(pixels, source)
    return pixels


def check_finite(pixels: torch.Tensor, source) -> None:
    """ValueError naming the source and the bands when float pixels hold NaN or inf."""
    bad = (~torch.isfinite(pixels)).flatten(1).any(1)
    if bad.any():
        raise ValueError(f"{source}: NaN or infinite values in band(s) "
                         f"{bad.nonzero().flatten().tolist()}: a float image must be finite "
                         f"(fill or mask its no-data pixels when converting it)")


def normalise_float(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """Float pixels normalised per band (dim -3) with ``mean``/``std`` (the file's units):
    integer pixels travel raw and the model normalises them, float ones go normalised."""
    if not len(mean) == len(std) == pixels.shape[-3]:
        raise ValueError(f"float pixels of {pixels.shape[-3]} band(s) need one mean and std "
                         f"per band (data.mean/data.std), got mean={list(mean)}, "
                         f"std={list(std)}")
    shape = (-1, 1, 1)
    return (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def read_bands(source, bands, channels: int | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """A file's pixels for a pipeline on its own bands (``bands`` "all" or indices):
    (C, H, W) uint8, uint16 or float32 (finite), refused with the file's name when it does not give the
    run's band count ``channels`` or sample type ``dtype`` (None: any)."""
    pixels = select_bands(read_image(source), bands, source)
    if channels is not None and pixels.shape[0] != channels:
        raise ValueError(f"{source}: {pixels.shape[0]} band(s) where the run takes "
                         f"{channels} (model_kwargs.in_chans): one data set, one band layout")
    if dtype is not None and pixels.dtype != dtype:
        name = str(pixels.dtype).replace("torch.", "")
        raise ValueError(f"{source}: samples of {name} where the run's first files hold "
                         f"{str(dtype).replace('torch.', '')}: one data set, one sample type")
    return pixels


def probe_bands(files, bands, channels: int) -> torch.dtype:
    """The sample type of a data set on its own bands, from the first file of each kind
    (file extension) before any training: each must give ``channels`` bands after the
    ``bands`` pick, uint8, uint16 or float32 (finite), all of one type; else ValueError
    naming the file.
    (A later file that differs stops the run with its name when it is read.)"""
    first: dict[str, Path] = {}
    for path in files:
        first.setdefault(Path(path).suffix.lower(), Path(path))
    dtype = None
    for path in first.values():
        pixels = read_bands(path, bands, channels, dtype)
        dtype = pixels.dtype
    return dtype


class FullCrops:
    """The full-image pipeline: a file -> (crop (C, S, S) float32 normalised with
    ``mean``/``std`` (per channel, on values / the type's maximum: 255 or 65535;
    ImageNet's by default), coords (n, 2)), the same draws as :class:`WindowCrops`.
    ``bands``, ``channels`` and ``dtype`` as there."""

    reads_files = True

    def __init__(self, spec: WindowSpec, mean=IMAGENET_MEAN, std=IMAGENET_STD, bands="rgb",
                 channels: int | None = None, dtype: torch.dtype | None = None):
        self.spec = spec
        self.mean, self.std = tuple(mean), tuple(std)
        self.bands, self.channels, self.dtype = check_bands(bands), channels, dtype

    def __call__(self, source):
        if self.bands == "rgb":
            with open_image(source) as opened:
                crop, coords = self.spec.draw(opened.size)
                image = decode_rgb(opened).permute(2, 0, 1)
        else:
            image = read_bands(source, self.bands, self.channels, self.dtype)
            crop, coords = self.spec.draw(tuple(image.shape[1:]))
        pixels = render_crop(image, crop)
        return v2.functional.normalize(v2.functional.to_dtype(pixels, torch.float32, scale=True),
                                       self.mean, self.std), coords


def pretrain_transform(size: int | tuple[int, int], scale=(0.2, 1.0)) -> v2.Compose:
    """Random-resized crop (bicubic) + horizontal flip + ImageNet normalisation,
    as in the LoMaR/MAE recipe, at any resolution (``size`` = side or (H, W)), as a
    torchvision transform of a decoded (3, H, W) uint8 image. The pretraining job
    does not use it: it reads files through :class:`WindowCrops` or :class:`FullCrops`."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
