"""Training jobs: ``pretrain`` (LoMaR pretraining), ``finetune`` (fine-tuning
and linear probing of the encoder) and ``detect`` (the encoder as a detection
backbone)."""

from .detect import DetectConfig, detect
from .finetune import FinetuneConfig, finetune
from .pretrain import PretrainConfig, pretrain

__all__ = ["DetectConfig", "FinetuneConfig", "PretrainConfig", "detect", "finetune", "pretrain"]
