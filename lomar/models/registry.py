"""The model registry: every model name and its facts, in one place.

``model_info(name)`` answers what the rest of the package would otherwise parse out
of a name: the family and task, the ViT's patch size, width, depth and heads, the
decoder of the asymmetric variants, the input channels and the class that builds it.
``create_model(name, **kwargs)`` builds one (kwargs override the architecture's
defaults, e.g. a reduced depth); ``model_names(task=...)`` lists them.

Names (timm's style):

* ``lomar_vit_{small,base,large,huge}_patch{16,14,8}``: LoMaR pretraining models;
* ``lomar_vit_..._dec512d8b``: the asymmetric encoder-decoder variant (the paper's
  Fig. 4) with MAE's light decoder (512 wide, 8 blocks, 16 heads);
* ``vit_{small,base,large,huge}_patch{16,14,8}``: encoders for fine-tuning and inference;
* ``vitdet_{small,base,large,huge}_patch{16,14,8}``: the encoder as a ViTDet backbone
  with its simple feature pyramid, for torchvision's detectors;
* ``mae_vit_{base,large}_patch16_dec512d8b``, ``mae_vit_huge_patch14_dec512d8b``: MAE;
* ``beit_base_patch16``, ``beit_window_base_patch16``: BEiT, and BEiT on LoMaR windows."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .baselines.beit import BEiTPretrain, BEiTWindowPretrain
from .baselines.mae import MaskedAutoencoderViT
from .lomar_vit import LoMaRPretrain, LoMaRPretrainAsymmetric, LoMaRViT
from .vitdet import ViTDetBackbone

SIZES = {  # embed_dim, depth, num_heads
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
PATCHES = (16, 14, 8)
LIGHT_DECODER = {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}

# task -> what a model of that task is (lomar pretrain and visualize take "pretrain",
# finetune "encoder", detect "detection"; lomar bench compares "pretrain" and "baseline")
TASKS = {
    "pretrain": "LoMaR pretraining model",
    "encoder": "fine-tuning encoder",
    "detection": "detection backbone",
    "baseline": "baseline pretraining model",
}


@dataclass(frozen=True)
class ModelInfo:
    """What a model name means. ``arch`` holds the constructor's architecture arguments
    (patch size, width, depth, heads, decoder); :meth:`with_kwargs` gives the facts of a
    model built with overrides."""

    name: str
    family: str        # lomar, lomar_asymmetric, vit, vitdet, mae, beit, beit_window
    task: str          # a key of TASKS
    size: str          # small, base, large, huge
    builder: Callable[..., nn.Module]
    arch: dict = field(default_factory=dict)

    @property
    def patch_size(self) -> int:
        return self.arch["patch_size"]

    @property
    def embed_dim(self) -> int:
        return self.arch["embed_dim"]

    @property
    def depth(self) -> int:
        return self.arch["depth"]

    @property
    def num_heads(self) -> int:
        return self.arch["num_heads"]

    @property
    def in_chans(self) -> int:
        return self.arch.get("in_chans", 3)

    def with_kwargs(self, kwargs: dict | None) -> ModelInfo:
        """The facts of ``create_model(name, **kwargs)``: the architecture's defaults
        with the overrides among them applied."""
        known = {k: v for k, v in (kwargs or {}).items() if k in self.arch or k == "in_chans"}
        return dataclasses.replace(self, arch={**self.arch, **known}) if known else self


def _registry() -> dict[str, ModelInfo]:
    table: dict[str, ModelInfo] = {}

    def add(name, family, task, size, builder, **arch):
        table[name] = ModelInfo(name, family, task, size, builder, arch)

    families = (("lomar_vit", "lomar", "pretrain", LoMaRPretrain, {}),
                ("vit", "vit", "encoder", LoMaRViT, {}),
                ("vitdet", "vitdet", "detection", ViTDetBackbone, {}),
                ("lomar_vit", "lomar_asymmetric", "pretrain", LoMaRPretrainAsymmetric,
                 LIGHT_DECODER))
    for prefix, family, task, builder, extra in families:
        suffix = "_dec512d8b" if extra else ""
        for size, (dim, depth, heads) in SIZES.items():
            for patch in PATCHES:
                add(f"{prefix}_{size}_patch{patch}{suffix}", family, task, size, builder,
                    patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, **extra)
    for size, patch in (("base", 16), ("large", 16), ("huge", 14)):
        dim, depth, heads = SIZES[size]
        add(f"mae_vit_{size}_patch{patch}_dec512d8b", "mae", "baseline", size,
            MaskedAutoencoderViT, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
            **LIGHT_DECODER)
    base = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    add("beit_base_patch16", "beit", "baseline", "base", BEiTPretrain, **base)
    add("beit_window_base_patch16", "beit_window", "baseline", "base", BEiTWindowPretrain, **base)
    return table


REGISTRY = _registry()


def model_names(task: str | None = None) -> list[str]:
    """Every model name, or those of one task (a key of TASKS)."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return [n for n, info in REGISTRY.items() if task is None or info.task == task]


def model_info(name: str, task: str | None = None) -> ModelInfo:
    """The facts of ``name``; a ValueError naming the known models (of ``task``, when
    given) for an unknown one or one of another task."""
    info = REGISTRY.get(name)
    if info is None and task is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    if info is None or (task is not None and info.task != task):
        raise ValueError(f"model must be a {TASKS[task]}, got {name!r}; "
                         f"known: {', '.join(model_names(task))}")
    return info


def create_model(name: str, **kwargs) -> nn.Module:
    """A model by name; kwargs override the architecture's defaults."""
    info = model_info(name)
    return info.builder(**{**info.arch, **kwargs})
