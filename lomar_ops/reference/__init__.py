"""Pure-PyTorch references of every lomar op: the ground truth the CPU, CUDA and
Triton backends are tested against, and the "torch" backend. Written as the plain
formula, for clarity rather than speed."""

from .mask_substitute import mask_substitute_reference
from .masked_patch_loss import masked_patch_loss_reference
from .resize_region import resize_region_reference, resize_regions_reference
from .rpe_gather import rpe_gather_reference
from .window_attention import window_attention_reference
from .window_patchify import window_patchify_reference

__all__ = ["mask_substitute_reference", "masked_patch_loss_reference",
           "resize_region_reference", "resize_regions_reference", "rpe_gather_reference",
           "window_attention_reference", "window_patchify_reference"]
