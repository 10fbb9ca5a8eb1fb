"""Baselines LoMaR is compared against: MAE, and the parts of BEiT (block-wise
masking, the dVAE tokenizer architecture); the BEiT model comes with the fused
attention op."""

from .beit_masking import BlockMaskGenerator
from .dvae import DVAEEncoder
from .mae import MAE_MODELS, MaskedAutoencoderViT, create_mae

__all__ = ["BlockMaskGenerator", "DVAEEncoder", "MAE_MODELS", "MaskedAutoencoderViT", "create_mae"]
