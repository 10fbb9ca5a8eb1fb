"""Baselines LoMaR is compared against (MAE; BEiT to come)."""

from .mae import MAE_MODELS, MaskedAutoencoderViT, create_mae

__all__ = ["MAE_MODELS", "MaskedAutoencoderViT", "create_mae"]
