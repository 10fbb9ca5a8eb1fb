"""The data path of lomar: the folder dataset, the pretraining pipelines and the demo
sets (:mod:`lomar.data.pipelines`), the crop (:mod:`lomar.data.crop`), the decoder
(:mod:`lomar.data.decode`) and the windows' resampler (:mod:`lomar.data.resample`).
The public names are re-exported here: ``from lomar.data import ImageFiles``."""

from .crop import Crop, render_crop, render_windows, sample_crop, window_boxes
from .decode import CorruptImageError, OpenedImage, decode_rgb, open_image, read_rgb
from .pipelines import (DEMO_PHOTOS, IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD, FullCrops,
                        ImageFiles, WindowCrops, WindowSpec, _demo_photo_dir, build_demo_digits,
                        build_demo_photos, find_images, pretrain_transform)
