"""Semantic segmentation with a LoMaR backbone.

- :mod:`.metrics`: :class:`SegmentationMetrics` (num_classes, ignore_index=255):
  ``update(pred, target)``, ``compute()`` -> {miou, iou, pixel_accuracy,
  mean_accuracy, accuracy}, ``all_reduce()`` (DDP), ``reset()``, ``confusion``;
- :mod:`.data`: :class:`SegmentationFolder` (ADE20K layout or any folder of image +
  label-map pairs; train items (C, S, S) + (S, S) augmented, eval items the whole
  image, by default scaled to mmseg's bound with the mask at its own size),
  :func:`collate` (training: stacked), :func:`val_collate` (evaluation: lists),
  :data:`ADE20K_CLASSES`, :func:`read_label_map`;
- :mod:`.transforms`: mmsegmentation's ADE20K augmentation on image and mask
  together (:class:`TrainTransform`, :func:`resize_to_bound`);
- :mod:`.synthetic`: :func:`build_demo_segmentation` (root, num_train=256,
  num_val=64, size=128, seed=0) -> Path, an offline set in the ADE20K layout
  (:data:`DEMO_CLASSES`);
- :mod:`.figures` (imported on its own: matplotlib): ``draw_segmentations``,
  ``plot_class_iou``, ``plot_miou``."""

from .data import ADE20K_CLASSES, SegmentationFolder, collate, read_label_map, val_collate
from .metrics import SegmentationMetrics
from .synthetic import DEMO_CLASSES, build_demo_segmentation
from .transforms import TrainTransform, resize_to_bound

__all__ = ["ADE20K_CLASSES", "DEMO_CLASSES", "SegmentationFolder", "SegmentationMetrics",
           "TrainTransform", "build_demo_segmentation", "collate", "read_label_map",
           "resize_to_bound", "val_collate"]
from .segmenter import Segmenter, build_segmenter  # noqa: E402,F401 (the model: upernet, segmenter)
