"""Optimizer parameter groups of the recipes: no weight decay for norms, biases,
tokens and iRPE tables; layer-wise lr decay for fine-tuning (BEiT/MAE rule)."""

from __future__ import annotations

from torch import nn

NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "pos_embed", "rpe_table")


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Tokens, position embeddings and iRPE tables (by name), and whatever the model's
    ``no_weight_decay()`` lists. One-dimensional parameters (norms, biases) are
    excluded by the group builders themselves."""
    names = {n for n, _ in model.named_parameters() if n.endswith(NO_DECAY_SUFFIXES)}
    if hasattr(model, "no_weight_decay"):
        names |= set(model.no_weight_decay())
    return names


def layer_id(name: str, depth: int) -> int:
    """0 for the embedding (patch embedding, cls token), i + 1 for ``blocks.i``,
    depth + 1 for what follows the blocks (final norm, head)."""
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float,
                             no_decay: set[str] = frozenset()) -> list[dict]:
    """Groups keyed by (layer, decay or not), each with ``lr_scale`` =
    layer_decay ** (depth + 1 - layer): the head trains at the full lr, block i at
    layer_decay ** (depth - i), the embedding at layer_decay ** (depth + 1).
    Frozen parameters (requires_grad False) are left out."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in no_decay)
        layer = layer_id(name, depth)
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr_scale": layer_decay ** (depth + 1 - layer), "layer": layer})
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]
