"""Training jobs: ``pretrain`` (LoMaR pretraining), ``finetune`` (fine-tuning
and linear probing of the encoder), ``detect`` (the encoder as a detection
backbone) and ``segment`` (the encoder as a semantic segmentation backbone)."""

from .detect import DetectConfig, detect
from .finetune import FinetuneConfig, finetune
from .pretrain import PretrainConfig, pretrain
from .segment import SegmentConfig, segment

__all__ = ["DetectConfig", "FinetuneConfig", "PretrainConfig", "SegmentConfig", "detect",
           "finetune", "pretrain", "segment"]
