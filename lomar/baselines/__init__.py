"""Baselines LoMaR is compared against: MAE, and the parts of BEiT (block-wise
masking, the dVAE tokenizer architecture). The BEiT models (lomar.baselines.beit)
build on lomar.models' patch embedding: import them from there or through
lomar.models.create_model."""

from .beit_masking import BlockMaskGenerator
from .dvae import DVAEEncoder
from .mae import MAE_MODELS, MaskedAutoencoderViT, create_mae

__all__ = ["BlockMaskGenerator", "DVAEEncoder", "MAE_MODELS", "MaskedAutoencoderViT", "create_mae"]
