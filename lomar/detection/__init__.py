"""Detection and instance segmentation with a LoMaR backbone: torchvision's
Mask R-CNN / Faster R-CNN (:mod:`.detector`), COCO-format data (:mod:`.coco`),
COCO AP (:mod:`.evaluate`), the offline synthetic set (:mod:`.synthetic`) and
prediction figures (:mod:`.figures`). The job is ``lomar detect``
(:mod:`lomar.engine.detect`)."""

from .coco import CocoDetection, collate, load_coco
from .detector import DETECTORS, SquareTransform, build_detector
from .evaluate import coco_ap, coco_results
from .synthetic import build_demo_detection

__all__ = ["DETECTORS", "CocoDetection", "SquareTransform", "build_demo_detection",
           "build_detector", "coco_ap", "coco_results", "collate", "load_coco"]
