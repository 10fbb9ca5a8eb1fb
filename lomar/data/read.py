"""An image file as the pixels it holds: (bands, H, W) in the file's dtype.

:func:`read_image` is the reader for data that is not a colour photo: multispectral
scenes, 16-bit microscopy, CT and X-ray slices. It converts nothing that carries
data:

- TIFF (striped or tiled, chunky or planar, any number of bands, one image; the
  pyramid's full-resolution level) is read by tifffile, through the tiled-image
  reader: every band and every bit. uint8, uint16 and float32 stay as they are;
  int8, int16 and float16 become float32, which holds each of their values exactly;
  other sample types (32- and 64-bit integers, float64) are refused, since float32
  would round them. The TIFF Orientation tag is applied, as EXIF's is for JPEGs.
- PNG is decoded by imagecodecs (libpng): 8- and 16-bit samples kept (Pillow reads a
  16-bit RGB PNG as 8 bits); greyscale stays one band; palette images become RGB;
  an alpha band is dropped (a photo's transparency, not data).
- JPEG, WebP, BMP, GIF (colour photo formats) are decoded as the pretraining
  pipelines decode them (:mod:`lomar.data.decode`): RGB, or one band for a greyscale
  JPEG; CMYK and palette converted to RGB, alpha dropped, EXIF orientation applied.

A file that cannot be read raises :class:`~lomar.data.decode.CorruptImageError`
naming it; a readable file whose pixels this function will not return unchanged
raises ValueError saying why (never a silent conversion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .decode import _ORIENT, CorruptImageError, decode_rgb, open_image

__all__ = ["READ_DTYPES", "band_names", "read_image"]

READ_DTYPES = (torch.uint8, torch.uint16, torch.float32)  # what read_image returns
# Sample types float32 holds exactly (every value), so reading them as float32 loses nothing.
_EXACT_IN_FLOAT32 = (torch.int8, torch.int16, torch.float16)
_MAX_PIXELS = 2 ** 28  # a whole image in memory; larger ones are read by region (tiled reader)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_TIFF_ORIENTATION = 274
_GDAL_METADATA = 42112  # GeoTIFF files' band descriptions, as GDAL writes them


def read_image(source) -> torch.Tensor:
    """The pixels of an image file (a path) as a (bands, H, W) tensor of dtype uint8,
    uint16 or float32 (see the module's docstring for what each format gives)."""
    path = Path(source)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CorruptImageError(f"{path}: cannot be read ({exc})") from exc
    if head.startswith(_TIFF_SIGNATURES):
        return _read_tiff(path)
    if head.startswith(_PNG_SIGNATURE):
        return _read_png(path)
    with open_image(path) as opened:
        pixels = decode_rgb(opened).permute(2, 0, 1)
        # decode_rgb makes every file RGB: a greyscale one's three bands are copies of
        # its one, which is what it holds.
        return (pixels[:1] if opened.mode in ("L", "LA") else pixels).contiguous()


def _read_png(path: Path) -> torch.Tensor:
    import imagecodecs

    try:
        array = imagecodecs.png_decode(path.read_bytes())
    except Exception as exc:  # imagecodecs raises its own PngError, and MemoryError
        raise CorruptImageError(f"{path}: cannot be decoded as PNG ({exc})") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] in (2, 4):  # grey + alpha, RGB + alpha: the alpha is not data
        array = array[:, :, :-1]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _read_tiff(path: Path) -> torch.Tensor:
    from .tiled import TiledImageError, open_tiled

    try:
        image = open_tiled(path, tile_cache_mb=0, backend="tifffile", max_untiled_pixels=None)
    except TiledImageError as exc:
        raise CorruptImageError(str(exc)) from exc
    try:
        h, w = image.levels[0]
        if h * w > _MAX_PIXELS:
            raise ValueError(f"{path}: {w} x {h} pixels is more than read_image holds in memory "
                             f"({_MAX_PIXELS} pixels); read it by region (lomar.data.open_tiled, "
                             f"or data.region_size in a run)")
        if image.dtype not in READ_DTYPES and image.dtype not in _EXACT_IN_FLOAT32:
            raise ValueError(f"{path}: samples of {str(image.dtype).replace('torch.', '')}: "
                             f"read_image returns uint8, uint16 or float32, and float32 would "
                             f"round these; convert the file (e.g. rescale to uint16) first")
        try:
            pixels = image.read(0, 0, 0, h, w)
        except TiledImageError as exc:
            raise CorruptImageError(str(exc)) from exc
        orientation = _tiff_orientation(path)
    finally:
        image.close()
    if pixels.dtype in _EXACT_IN_FLOAT32:
        pixels = pixels.to(torch.float32)
    if orientation in _ORIENT:  # the same transform as EXIF's, on (H, W, bands)
        pixels = torch.from_numpy(np.ascontiguousarray(
            _ORIENT[orientation](pixels.permute(1, 2, 0).numpy()))).permute(2, 0, 1)
    return pixels.contiguous()


def _tiff_orientation(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(_TIFF_ORIENTATION)
        return int(tag.value) if tag is not None else 1


def band_names(source) -> list[str] | None:
    """The names a file gives its bands, in band order, or None when it names none:
    an OME-TIFF's channel names (``<Channel Name=...>``), a GeoTIFF's band descriptions
    (GDAL's metadata tag, ``<Item name="DESCRIPTION" sample=i>``). Other formats name
    no bands. A file that names only some bands gives "" for the others."""
    path = Path(source)
    with open(path, "rb") as f:
        if f.read(4) not in _TIFF_SIGNATURES:
            return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_channel_names(tif.ome_metadata)
        tag = tif.pages[0].tags.get(_GDAL_METADATA)
        return _gdal_band_names(tag.value) if tag is not None else None


def _ome_channel_names(xml: str) -> list[str] | None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None
    names = [c.get("Name", "") for c in pixels if c.tag.endswith("}Channel")]
    return names if any(names) else None


def _gdal_band_names(xml: str) -> list[str] | None:
    import xml.etree.ElementTree as ET

    items = {}
    for item in ET.fromstring(xml).iter("Item"):
        if item.get("name") == "DESCRIPTION" and item.get("sample") is not None:
            items[int(item.get("sample"))] = (item.text or "").strip()
    if not items:
        return None
    return [items.get(i, "") for i in range(max(items) + 1)]
