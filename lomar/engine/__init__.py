"""Training jobs: ``pretrain`` (LoMaR pretraining) and ``finetune`` (fine-tuning
and linear probing of the encoder)."""

from .finetune import FinetuneConfig, finetune
from .pretrain import PretrainConfig, pretrain

__all__ = ["FinetuneConfig", "PretrainConfig", "finetune", "pretrain"]
