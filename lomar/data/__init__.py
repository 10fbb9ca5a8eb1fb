"""The data path of lomar, one module per stage:

- :mod:`~lomar.data.constants`: ImageNet's mean and std, the image file extensions,
  the demo photographs (no imports: the models take the statistics from it);
- :mod:`~lomar.data.decode`: a file to uint8 RGB pixels (RGB and greyscale JPEGs by
  simplejpeg, at reduced scale where the crop allows it; everything else by Pillow);
- :mod:`~lomar.data.read`: a file as the pixels it holds, any bands, uint8, uint16 or
  float32 (:func:`read_image`: multispectral, 16-bit, single-channel data);
- :mod:`~lomar.data.crop`: the random-resized crop, drawn apart from its pixels,
  rendered whole or as the LoMaR windows only;
- :mod:`~lomar.data.resample`: the windows' pixels, through the op
  :func:`lomar_ops.resize_regions`;
- :mod:`~lomar.data.pipelines`: the two pretraining pipelines (:class:`WindowCrops`,
  :class:`FullCrops`) and what they draw (:class:`WindowSpec`);
- :mod:`~lomar.data.folder`: a folder of images as a dataset (:class:`ImageFiles`);
- :mod:`~lomar.data.demo`: the offline demo sets (photos, digits, 6-band 16-bit scenes,
  16-bit greyscale slices);
- :mod:`~lomar.data.tiled`: gigapixel images (tiled TIFF pyramids, slides) read
  box by box, only the tiles a box touches (:func:`open_tiled`);
- :mod:`~lomar.data.regions`: samples of tiled files for pretraining: regions where
  the foreground is, the crop and windows inside them, read at the level the crop
  needs (:class:`TiledRegions`);
- :mod:`~lomar.data.convert`: images to tiled pyramidal TIFF (``lomar convert``).

The public names are re-exported here: ``from lomar.data import ImageFiles``."""

from .constants import DEMO_PHOTOS, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD
from .crop import Crop, render_crop, render_windows, sample_crop, window_boxes
from .decode import CorruptImageError, OpenedImage, decode_rgb, open_image, read_rgb
from .demo import (DEMO_BAND_NAMES, build_demo_bands, build_demo_digits, build_demo_grey16,
                   build_demo_photos, demo_photo_dir, photo_crop)
from .read import READ_DTYPES, read_image
from .folder import ImageFiles, find_images
from .pipelines import FullCrops, WindowCrops, WindowSpec, pretrain_transform
from .resample import resize_windows
from .constants import TILED_EXTENSIONS
from .demo import build_demo_slide
from .tiled import TiledImage, TiledImageError, open_tiled
from .regions import RegionSpec, TiledRegions

__all__ = [
    "DEMO_PHOTOS", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD",
    "Crop", "render_crop", "render_windows", "sample_crop", "window_boxes",
    "CorruptImageError", "OpenedImage", "decode_rgb", "open_image", "read_rgb",
    "DEMO_BAND_NAMES", "build_demo_bands", "build_demo_digits", "build_demo_grey16",
    "build_demo_photos", "demo_photo_dir", "photo_crop",
    "READ_DTYPES", "read_image",
    "ImageFiles", "find_images",
    "FullCrops", "WindowCrops", "WindowSpec", "pretrain_transform",
    "resize_windows",
    "TILED_EXTENSIONS", "build_demo_slide", "TiledImage", "TiledImageError", "open_tiled",
    "RegionSpec", "TiledRegions",
]
