"""The baselines LoMaR is compared against, built on the same blocks: MAE, BEiT
(block-wise masking, the dVAE tokenizer's architecture) and BEiT on LoMaR's windows.
By name through :func:`lomar.models.create_model` (``mae_vit_*``, ``beit_*``)."""

from .beit import BEiTPretrain, BEiTWindowPretrain
from .beit_masking import BlockMaskGenerator
from .dvae import DVAEEncoder
from .mae import MaskedAutoencoderViT

__all__ = ["BEiTPretrain", "BEiTWindowPretrain", "BlockMaskGenerator", "DVAEEncoder",
           "MaskedAutoencoderViT"]
