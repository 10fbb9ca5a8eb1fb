"""Image files to uint8 RGB pixels, at reduced scale where the crop allows it.

:func:`open_image` reads the header only (size after the EXIF orientation);
:func:`decode_rgb` decodes, for a JPEG optionally at 1/2, 1/4 or 1/8 scale with
libjpeg's DCT scaling: the decoder then computes a quarter, a sixteenth or a
sixty-fourth of the pixels. RGB and greyscale JPEGs go to simplejpeg when it is
installed (libjpeg-turbo straight into a NumPy array: the same pixels as Pillow's
decoder, bit for bit, in a quarter of the time for a 12-megapixel photo at full
scale; ``lomar bench-data`` times both); everything else, and any JPEG simplejpeg
refuses, to Pillow (``draft`` for the scaling). Every file is turned into RGB the
same way: EXIF orientation applied, greyscale, palette, CMYK and alpha images
converted (alpha dropped, as ``Image.convert("RGB")`` does), 16-bit greyscale
scaled to 8 bits. A file that cannot be decoded raises :class:`CorruptImageError`
(an ``OSError``) naming it; so does a decompression bomb (Pillow's limit)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything without it
    simplejpeg = None

__all__ = ["CorruptImageError", "OpenedImage", "decode_rgb", "open_image", "read_rgb"]

# Orientations (EXIF tag 0x0112) that swap width and height.
_TRANSPOSING = (5, 6, 7, 8)
_ORIENTATION = 0x0112
_REDUCTIONS = (8, 4, 2, 1)  # libjpeg's power-of-two DCT scalings


class CorruptImageError(OSError):
    """A file that cannot be decoded (truncated, corrupt, not an image, too large)."""


class OpenedImage:
    """An image file opened for its header (a context manager)."""

    def __init__(self, source):
        self.name = str(source) if isinstance(source, (str, Path)) else f"<{len(source)} bytes>"
        try:
            # The file's bytes once: the header, then whichever decoder, read them.
            self.data = Path(source).read_bytes() if isinstance(source, (str, Path)) \
                else bytes(source)
        except OSError as exc:
            raise CorruptImageError(f"{self.name}: cannot be read ({exc})") from exc
        try:
            self.image = Image.open(io.BytesIO(self.data))
        except Image.DecompressionBombError as exc:
            raise CorruptImageError(f"{self.name}: refused as a decompression bomb ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptImageError(f"{self.name}: cannot be read as an image ({exc})") from exc
        self.stored_size, self.mode, self.format = self.image.size, self.image.mode, self.image.format
        self._drafted = False  # Pillow's draft + load change self.image in place
        try:
            self.orientation = int(self.image.getexif().get(_ORIENTATION, 1)) \
                if self.is_jpeg else 1
        except Exception:  # a malformed EXIF block: the pixels may still be fine
            self.orientation = 1
        w, h = self.image.size
        self.size = (w, h) if self.orientation in _TRANSPOSING else (h, w)  # (H, W) displayed

    @property
    def is_jpeg(self) -> bool:
        return self.format == "JPEG"

    def reduction_for(self, shrink: float) -> int:
        """The DCT scaling (1, 2, 4 or 8) for a crop that the resize shrinks by
        ``shrink``: the largest that keeps the crop at least its output size, so the
        final resize still only shrinks. 1 for other formats."""
        if not self.is_jpeg:
            return 1
        w, h = self.stored_size
        return next((r for r in _REDUCTIONS if r <= shrink and w >= r and h >= r), 1)

    def close(self) -> None:
        self.image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_image(source) -> OpenedImage:
    """The header of a file (path or bytes): :attr:`OpenedImage.size` is (H, W) as
    displayed (after the EXIF orientation)."""
    return OpenedImage(source)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) greyscale: convert("RGB") would clip at 255.
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8),
                               "L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8),
                               "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for, then alpha dropped below
    return image if image.mode == "RGB" else image.convert("RGB")


# EXIF orientation -> the same transform as ImageOps.exif_transpose, on (H, W, C).
_ORIENT = {
    2: lambda a: a[:, ::-1],                      # mirrored left-right
    3: lambda a: a[::-1, ::-1],                   # rotated 180
    4: lambda a: a[::-1],                         # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),            # transposed
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],   # rotated 90 clockwise to display
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # transversed
    8: lambda a: a.transpose(1, 0, 2)[::-1],      # rotated 90 counter-clockwise
}


def _decode_simplejpeg(opened: OpenedImage, reduce: int) -> np.ndarray | None:
    """An RGB or greyscale JPEG through simplejpeg; None where Pillow must decide
    (simplejpeg missing, another colour space, or data it refuses: Pillow then
    decodes it or reports it corrupt, so both paths accept the same files)."""
    if simplejpeg is None or opened.mode not in ("RGB", "L"):
        return None
    w, h = opened.stored_size
    want = (math.ceil(h / reduce), math.ceil(w / reduce))
    try:
        # The smallest libjpeg scaling of at least 1/reduce that keeps want: exactly it.
        array = simplejpeg.decode_jpeg(opened.data, colorspace="RGB", min_height=want[0],
                                       min_width=want[1], min_factor=reduce)
    except ValueError:
        return None
    if array.shape[:2] != want:
        raise RuntimeError(f"{opened.name}: simplejpeg scaled {w}x{h} to "
                           f"{array.shape[1]}x{array.shape[0]}, not 1/{reduce}")
    if opened.orientation in _ORIENT:
        array = _ORIENT[opened.orientation](array)
    return array


def decode_rgb(opened: OpenedImage, reduce: int = 1, decoder: str = "auto") -> torch.Tensor:
    """The pixels as an (H', W', 3) uint8 tensor, with H' = ceil(H / reduce) (JPEG DCT
    scaling; ``reduce`` in 1, 2, 4, 8 and at most the image's side). ``decoder``:
    ``"auto"`` (simplejpeg for the JPEGs it takes, else Pillow), ``"pillow"`` or
    ``"simplejpeg"`` (an error for a file it cannot decode)."""
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of 1, 2, 4, 8, got {reduce}")
    if decoder not in ("auto", "pillow", "simplejpeg"):
        raise ValueError(f"decoder must be 'auto', 'pillow' or 'simplejpeg', got {decoder!r}")
    if decoder == "simplejpeg" and simplejpeg is None:
        raise ImportError("decoder='simplejpeg' needs the simplejpeg package "
                          "(pip install simplejpeg)")
    w, h = opened.stored_size
    if reduce > 1 and not opened.is_jpeg:
        raise ValueError(f"{opened.name}: reduced-scale decoding is for JPEG files, this is "
                         f"{opened.format}")
    if opened.is_jpeg and decoder != "pillow":
        array = _decode_simplejpeg(opened, reduce)
        if array is not None:
            return torch.from_numpy(np.ascontiguousarray(array))
    if decoder == "simplejpeg":
        raise CorruptImageError(f"{opened.name}: simplejpeg cannot decode this file "
                                f"({opened.format}, mode {opened.mode})")
    try:
        # A second decode of the same file (another scale) starts from its bytes again.
        image = Image.open(io.BytesIO(opened.data)) if opened._drafted else opened.image
        opened._drafted = True
        if reduce > 1:
            image.draft("RGB", (w // reduce, h // reduce))
            want = (math.ceil(w / reduce), math.ceil(h / reduce))
            if image.size != want:
                raise RuntimeError(f"{opened.name}: the JPEG decoder scaled {w}x{h} to "
                                   f"{image.size}, not {want} (1/{reduce})")
        image.load()
        if opened.orientation != 1:
            image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
        array = np.array(rgb)  # one copy, writable (np.asarray's view is read-only)
    except Image.DecompressionBombError as exc:
        raise CorruptImageError(f"{opened.name}: refused as a decompression bomb ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{opened.name}: cannot be decoded ({exc})") from exc
    return torch.from_numpy(array)


def read_rgb(source) -> torch.Tensor:
    """A file (path or bytes) as a uint8 (3, H, W) RGB tensor at full scale."""
    with open_image(source) as opened:
        return decode_rgb(opened).permute(2, 0, 1).contiguous()
