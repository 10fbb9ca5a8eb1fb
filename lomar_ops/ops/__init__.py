"""The public ops: argument checks, backend choice, and the autograd and
fake-tensor rules of the C++ custom ops. One file per op."""

from .mask_substitute import mask_substitute
from .masked_patch_loss import masked_patch_loss
from .resize_region import resize_region, resize_regions
from .rpe_gather import rpe_gather
from .window_attention import window_attention, window_attention_qkvpacked
from .window_patchify import window_patchify

__all__ = ["mask_substitute", "masked_patch_loss", "resize_region", "resize_regions",
           "rpe_gather", "window_attention", "window_attention_qkvpacked", "window_patchify"]
