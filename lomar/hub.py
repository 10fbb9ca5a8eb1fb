"""LoMaR models by name, with weights from a file when one is given: what the
repository's ``hubconf.py`` exposes to ``torch.hub``, usable without it too.

    model = lomar.hub.load_model("lomar_vit_base_patch16")                  # random init
    model = lomar.hub.load_model("lomar_vit_small_patch16",
                                 checkpoint="output/demo_pretrain/checkpoint-last.pt")
    model = lomar.hub.load_model("vit_base_patch16", checkpoint="lomar_official.pth")

Models: the pretraining models (``lomar_vit_*``, ``lomar_vit_*_dec512d8b``) and the
encoders for fine-tuning and inference (``vit_*``). Checkpoints (local files):

* ``checkpoint-*.pt`` written by ``lomar pretrain`` or ``lomar finetune``: the
  architecture's arguments (``model_kwargs``, e.g. a reduced depth) come from the
  config stored inside;
* ``model.safetensors`` written by the same jobs: from the ``config.yaml`` beside it
  when there is one;
* the authors' LoMaR checkpoints (recognised by their iRPE table names, converted by
  :func:`lomar.checkpoint.convert_official`).

A pretraining model takes its checkpoint whole (every name must match). An encoder
takes a fine-tuning checkpoint whole (its class count, and the linear probe's
BatchNorm + Linear head, from the checkpoint) or the encoder part of a pretraining
checkpoint, with a new head, as ``lomar finetune`` starts from one. Arguments given
to :func:`load_model` override those from the checkpoint. Every file is read
without unpickling code."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from .engine.finetune import attach_probe_head
from .checkpoint import read_weights
from .engine.init_weights import load_encoder_state
from .models import create_model, model_info, model_names

HUB_TASKS = ("pretrain", "encoder")


def hub_model_names() -> list[str]:
    """The LoMaR models a hub entry point exists for."""
    return [n for n in model_names() if model_info(n).task in HUB_TASKS]


def _model_class(name: str) -> type[nn.Module]:
    return model_info(name).builder


def _kwargs_from_config(name: str, config: dict, state: dict) -> dict:
    """The model arguments a checkpoint implies: its job's ``model_kwargs`` that the
    model's class accepts, norm_pix_loss, global_pool, window_sampling, a head's classes."""
    accepted = set(inspect.signature(_model_class(name)).parameters)
    kwargs = {k: v for k, v in (config.get("model_kwargs") or {}).items() if k in accepted}
    job = {"norm_pix_loss": config.get("norm_pix_loss"), "global_pool": config.get("global_pool"),
           "window_sampling": (config.get("mask") or {}).get("window_sampling")}
    kwargs.update({k: v for k, v in job.items() if v is not None and k in accepted})
    if model_info(name).task == "encoder":
        head = state.get("head.weight", state.get("head.1.weight"))
        if head is not None:
            kwargs["num_classes"] = head.shape[0]
    return kwargs


def load_model(name: str, checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
    """The model ``name`` (see :func:`hub_model_names`), with the weights of
    ``checkpoint`` when given; ``kwargs`` are the model's arguments (they override
    the checkpoint's). In training mode, as every freshly built module: call
    ``.eval()`` for inference."""
    if name not in hub_model_names():
        raise ValueError(f"load_model: unknown model {name!r}; known: "
                         f"{', '.join(hub_model_names())}")
    if checkpoint is None:
        return create_model(name, **kwargs)
    state, source, config = read_weights(checkpoint)  # ours or the authors' (converted)
    model = create_model(name, **{**_kwargs_from_config(name, config, state), **kwargs})
    task = model_info(name).task
    if task == "encoder" and "head.1.weight" in state:  # a linear probe's head
        attach_probe_head(model, model.num_classes)
    if task == "pretrain" or any(k.startswith("head.") for k in state):
        _load_whole(model, state, name, checkpoint, config.get("model"))
    else:  # a pretraining checkpoint into an encoder: the encoder's part, a new head
        load_encoder_state(model, state, source, checkpoint)
    return model


def _load_whole(model: nn.Module, state: dict, name: str, checkpoint, written_for) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        origin = f" (written for {written_for})" if written_for else ""
        raise ValueError(
            f"load_model: checkpoint {checkpoint}{origin} does not fit {name}: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing[:4])}" if missing else "",
                f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
                f"other shapes {'; '.join(wrong[:4])}" if wrong else "") if part))
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def _entry_point(name: str):
    def entry(checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
        return load_model(name, checkpoint, **kwargs)

    kind = ("LoMaR pretraining model" if model_info(name).task == "pretrain"
            else "ViT encoder with iRPE, for fine-tuning and inference")
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"{name}: {kind}.\n\n    checkpoint: a local file, ours (checkpoint-*.pt, "
                     f"model.safetensors) or the authors'; none: random initialisation.\n    "
                     f"kwargs: the model's arguments (lomar.models.create_model).")
    return entry


def entry_points() -> dict:
    """``{name: function(checkpoint=None, **kwargs)}`` for hubconf.py."""
    return {name: _entry_point(name) for name in hub_model_names()}
