"""LoMaR's models and the baselines, by name: ``create_model(name, **kwargs)``;
``model_info(name)`` gives a name's facts (family, task, patch size, width, depth,
heads) and ``model_names(task=...)`` lists them (lomar/models/registry.py)."""

from __future__ import annotations

from .lomar_vit import IRPEAttention, LoMaRPretrain, LoMaRPretrainAsymmetric, LoMaRViT
from .registry import ModelInfo, create_model, model_info, model_names
from .vitdet import ViTDetBackbone

__all__ = ["IRPEAttention", "LoMaRPretrain", "LoMaRPretrainAsymmetric", "LoMaRViT", "ModelInfo",
           "ViTDetBackbone", "create_model", "model_info", "model_names"]
