"""Model registry: ``create_model(name, **kwargs)``.

* ``lomar_vit_{small,base,large,huge}_patch{16,14,8}``: LoMaR pretraining models;
* ``lomar_vit_{small,base,large,huge}_patch{16,14,8}_dec512d8b``: the asymmetric
  encoder-decoder variant (paper's Fig. 4) with MAE's light decoder (512 wide, 8 blocks,
  16 heads);
* ``vit_{small,base,large,huge}_patch{16,14,8}``: encoders for fine-tuning and inference;
* ``vitdet_{small,base,large,huge}_patch{16,14,8}``: the encoder as a ViTDet backbone with
  its simple feature pyramid, for torchvision's detectors (lomar/models/vitdet.py);
* ``mae_vit_{base,large}_patch16_dec512d8b``, ``mae_vit_huge_patch14_dec512d8b``: MAE;
* ``beit_base_patch16``, ``beit_window_base_patch16``: BEiT, and BEiT on LoMaR windows."""

from __future__ import annotations

from .lomar_vit import IRPEAttention, LoMaRPretrain, LoMaRPretrainAsymmetric, LoMaRViT
from .vitdet import ViTDetBackbone

SIZES = {  # embed_dim, depth, num_heads
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
PATCHES = (16, 14, 8)
DECODER = "_dec512d8b"  # decoder_embed_dim, decoder_depth, decoder_num_heads below
DECODER_ARGS = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}


def _baselines() -> dict:
    """{name: factory} of the baselines; imported here, not at the top, because the
    baselines build on lomar_vit's blocks (an import cycle otherwise)."""
    from ..baselines.beit import BEIT_MODELS, create_beit
    from ..baselines.mae import MAE_MODELS, create_mae

    return {**dict.fromkeys(MAE_MODELS, create_mae), **dict.fromkeys(BEIT_MODELS, create_beit)}


def model_names() -> list[str]:
    names = [f"{kind}_{size}_patch{p}" for kind in ("lomar_vit", "vit", "vitdet") for size in SIZES
             for p in PATCHES]
    asymmetric = [f"lomar_vit_{size}_patch{p}{DECODER}" for size in SIZES for p in PATCHES]
    return names + asymmetric + list(_baselines())


def create_model(name: str, **kwargs):
    """A model by name; kwargs override the architecture's defaults."""
    baselines = _baselines()
    if name in baselines:
        return baselines[name](name, **kwargs)
    base, defaults, kinds = name, {}, (("lomar_vit_", LoMaRPretrain), ("vit_", LoMaRViT),
                                  ("vitdet_", ViTDetBackbone))
    if name.startswith("lomar_vit_") and name.endswith(DECODER):
        base, defaults = name[:-len(DECODER)], DECODER_ARGS
        kinds = (("lomar_vit_", LoMaRPretrainAsymmetric),)
    for kind, cls in kinds:
        if base.startswith(kind):
            size, _, patch = base[len(kind):].partition("_patch")
            if size in SIZES and patch.isdigit() and int(patch) in PATCHES:
                dim, depth, heads = SIZES[size]
                return cls(**{"patch_size": int(patch), "embed_dim": dim, "depth": depth,
                              "num_heads": heads, **defaults, **kwargs})
    raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")


__all__ = ["IRPEAttention", "LoMaRPretrain", "LoMaRPretrainAsymmetric", "LoMaRViT",
           "ViTDetBackbone", "create_model", "model_names"]
