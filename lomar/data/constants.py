"""The data constants: ImageNet's channel statistics (the models normalise with them),
the image file extensions a folder is searched for, and the demo photographs. No
imports, so that the models take the statistics without the data pipelines' imports."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# Real photographs bundled inside scikit-image's package folder (no download).
DEMO_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "coins.png",
               "moon.png", "grass.png", "gravel.png", "brick.png")

# Tiled (pyramidal) image files lomar.data.open_tiled reads: TIFF, OME-TIFF, and the
# slide formats (Aperio SVS, Hamamatsu NDPI/VMS/VMU, MIRAX, Leica SCN, Ventana BIF).
TILED_EXTENSIONS = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8", ".svs", ".ndpi",
                    ".mrxs", ".scn", ".vms", ".vmu", ".bif")
