"""Semantic segmentation with a LoMaR backbone: the confusion-matrix metrics
(:mod:`.metrics`: :class:`SegmentationMetrics`).

Work in progress: the data (``SegmentationFolder``, ``collate``, ``val_collate``),
the synthetic demo set (``build_demo_segmentation``) and the figures
(:mod:`.figures`) follow in this package."""

from .metrics import SegmentationMetrics

__all__ = ["SegmentationMetrics"]
