"""The pretraining methods the throughput benchmark compares: each builds its
model for a resolution and says what one training step's forward is given.

Every method uses the same ViT (``SIZES``); LoMaR, BEiT and MAE attention all run
through lomar_ops.window_attention, so the comparison measures the methods. BEiT's
block masks are drawn outside the step, as BEiT's data loader does; LoMaR's windows
and masks, and BEiT-on-windows' windows, are drawn inside it (on the device)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import lomar_ops

from ..models import model_info
from ..models.baselines import BEiTPretrain, BEiTWindowPretrain, MaskedAutoencoderViT
from ..models.lomar_vit import LoMaRPretrain

# embed_dim, depth, heads; MAE decoder (dim, depth, heads); dVAE width; vocabulary
SIZES = {
    "base": dict(vit=tuple(model_info("vit_base_patch16").arch[k]
                           for k in ("embed_dim", "depth", "num_heads")),
                 decoder=tuple(model_info("mae_vit_base_patch16_dec512d8b").arch[k]
                               for k in ("decoder_embed_dim", "decoder_depth",
                                         "decoder_num_heads")),
                 tokenizer_width=256, vocab=8192),
    "quick": dict(vit=(192, 4, 3), decoder=(128, 2, 4), tokenizer_width=32, vocab=8192),
    "tiny": dict(vit=(32, 1, 2), decoder=(16, 1, 2), tokenizer_width=8, vocab=64),
}
PATCH = 16
WINDOW = 7
PAPER_WINDOWS = {224: 4, 384: 6, 448: 9}  # LoMaR's windows per image in the paper
OPS = ("window_patchify", "mask_substitute", "window_attention", "masked_patch_loss")


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    build: Callable[[int, dict], nn.Module]
    # (model, batch, resolution, device) -> the forward's keyword arguments
    step_kwargs: Callable[[nn.Module, int, int, torch.device], dict]
    resolutions: tuple[int, ...] | None = None  # None: every resolution
    ops_backend: str | None = None
    windows: Callable[[int], int] | None = None  # resolution -> windows per image

    def runs_at(self, resolution: int) -> bool:
        return self.resolutions is None or resolution in self.resolutions


def resolved_ops(device: torch.device, ops_backend: str | None) -> dict[str, str]:
    """The backend each lomar_ops op of a LoMaR step (7 x 7 windows: N = 50 tokens, L = 49)
    resolves to on ``device``: what "fused" means there."""
    sizes = {"window_attention": 1 + WINDOW * WINDOW, "mask_substitute": WINDOW * WINDOW}
    implemented = {"window_attention": importlib.import_module(
        "lomar_ops.ops.window_attention")._IMPLEMENTED}
    return {op: lomar_ops.resolve_backend(op, device, ops_backend, implemented.get(op),
                                          size=sizes.get(op))
            for op in OPS}


def _vit(size: dict) -> dict:
    dim, depth, heads = size["vit"]
    return dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=PATCH)


def _lomar(res, size):
    return LoMaRPretrain(**_vit(size))


def _mae(res, size):
    dim, depth, heads = size["decoder"]
    return MaskedAutoencoderViT(img_size=res, norm_pix_loss=True, decoder_embed_dim=dim,
                                decoder_depth=depth, decoder_num_heads=heads, **_vit(size))


def _beit(res, size):
    return BEiTPretrain(img_size=res, vocab_size=size["vocab"],
                        tokenizer_width=size["tokenizer_width"], **_vit(size))


def _beit_window(res, size):
    return BEiTWindowPretrain(window_size=WINDOW, vocab_size=size["vocab"],
                              tokenizer_width=size["tokenizer_width"], **_vit(size))


def _four(res):
    return 4


def _paper(res):
    return PAPER_WINDOWS[res]


METHODS = {m.name: m for m in (
    Method("lomar", "LoMaR, fused ops, 4 windows", _lomar,
           lambda model, b, res, dev: {"num_windows": 4}, windows=_four),
    Method("lomar_paper_windows", "LoMaR, fused ops, paper's windows (4/6/9)", _lomar,
           lambda model, b, res, dev: {"num_windows": PAPER_WINDOWS[res]},
           resolutions=tuple(PAPER_WINDOWS), windows=_paper),
    Method("lomar_reference", "LoMaR, reference ops, 4 windows", _lomar,
           lambda model, b, res, dev: {"num_windows": 4}, ops_backend="torch", windows=_four),
    Method("mae", "MAE (75% masked)", _mae,
           lambda model, b, res, dev: {"mask_ratio": 0.75}),
    Method("beit", "BEiT (with its dVAE tokenizer)", _beit,
           lambda model, b, res, dev: {"bool_masked_pos": model.sample_masks(b, device=dev)}),
    Method("beit_window", "BEiT on 4 windows (paper Table 5)", _beit_window,
           lambda model, b, res, dev: {"num_windows": 4,
                                       "window_mask": model.sample_masks(4 * b, device=dev)},
           windows=_four),
)}


def check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int) \
            or resolution < WINDOW * PATCH or resolution % PATCH:
        raise ValueError(f"resolution must be a multiple of {PATCH} and at least "
                         f"{WINDOW * PATCH} (one {WINDOW}x{WINDOW} window), got {resolution!r}")
    return resolution
