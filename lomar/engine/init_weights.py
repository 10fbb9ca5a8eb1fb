"""Initialise a fine-tuning encoder (LoMaRViT) from a pretraining checkpoint.

Accepted: our ``checkpoint-last.pt`` (key ``model``) or ``model.safetensors`` from
``lomar pretrain``, and the authors' checkpoints (detected by their iRPE table
names, converted by :func:`lomar.checkpoint.convert_official`); read by
:func:`lomar.checkpoint.read_weights`. The pretraining
model's encoder (patch embedding, cls token, blocks) maps one to one onto the
encoder's names; its mask token, final norm and pixel head have no place in the
encoder and are reported as unused, the new fc_norm/head as newly initialised. Weights
of another number of input channels (an RGB checkpoint for a 6-band model) adapt the
patch embedding as timm does (:data:`ADAPTED_INPUT`): channels repeated and rescaled
by 3 / in_chans (summed for one channel), and the report says so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from timm.models import adapt_input_conv
from torch import nn

from ..checkpoint import read_weights

ADAPTED_INPUT = "patch_embed.proj.weight"  # the one tensor whose input channels may differ


@dataclass(frozen=True)
class LoadReport:
    source: str          # "lomar" or "official"
    loaded: list[str]    # encoder names taken from the checkpoint
    missing: list[str]   # encoder names not in the checkpoint (newly initialised)
    unused: list[str]    # checkpoint names the encoder has no place for
    adapted: str = ""    # how the patch embedding's input channels were adapted, if they were

    def summary(self) -> str:
        adapted = f"; {self.adapted}" if self.adapted else ""
        return (f"{len(self.loaded)} tensors loaded ({self.source} checkpoint); newly "
                f"initialised: {', '.join(self.missing) or 'none'}; unused: "
                f"{', '.join(self.unused) or 'none'}{adapted}")


def load_encoder_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Copy the matching tensors of a pretraining checkpoint into ``model``; fails when
    none match or a matching name has another shape (another architecture)."""
    state, source, _ = read_weights(path)
    return load_encoder_state(model, state, source, path)


def load_encoder_state(model: nn.Module, state: dict, source: str, path) -> LoadReport:
    """:func:`load_encoder_weights` for a state dict already read from ``path``."""
    own = model.state_dict()
    shared = [k for k in state if k in own]
    if not shared:
        raise ValueError(f"checkpoint {path}: none of its {len(state)} tensors match the "
                         f"encoder's names (e.g. checkpoint {sorted(state)[:3]} vs encoder "
                         f"{sorted(own)[:3]}); is it a LoMaR checkpoint?")
    # A classifier trained for other classes is not reused (it is reported as unused).
    shared = [k for k in shared if not (k.startswith("head.") and state[k].shape != own[k].shape)]
    adapted = ""
    theirs, ours = state.get(ADAPTED_INPUT), own.get(ADAPTED_INPUT)
    if theirs is not None and ours is not None and theirs.ndim == ours.ndim == 4 and \
            theirs.shape[1] != ours.shape[1] and theirs.shape[:1] + theirs.shape[2:] == \
            ours.shape[:1] + ours.shape[2:]:
        state = {**state, ADAPTED_INPUT: adapt_input_conv(ours.shape[1], theirs).to(theirs.dtype)}
        adapted = (f"{ADAPTED_INPUT} adapted from {theirs.shape[1]} to {ours.shape[1]} input "
                   f"channels (repeated and rescaled, as timm does)")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shared
             if state[k].shape != own[k].shape]
    if wrong:
        raise ValueError(f"checkpoint {path} does not fit the model (another size?): "
                         f"{'; '.join(wrong[:4])}")
    model.load_state_dict({k: state[k] for k in shared}, strict=False)
    return LoadReport(source, sorted(shared), sorted(set(own) - set(shared)),
                      sorted(set(state) - set(shared)), adapted)
