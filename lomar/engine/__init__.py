"""Training jobs: ``pretrain`` (LoMaR pretraining)."""

from .pretrain import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
