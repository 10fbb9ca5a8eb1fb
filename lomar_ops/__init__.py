"""lomar_ops: the fused ops of lomar, each with CUDA, Triton, CPU C++ and
pure-PyTorch implementations behind one function and a backend chooser.

    >>> import lomar_ops
    >>> ids = lomar_ops.irpe_bucket_ids(7, 7)          # (50, 50) int32
    >>> out = lomar_ops.rpe_gather(table, ids)          # backend by device
    >>> lomar_ops.build_info()                          # what was compiled
"""

from __future__ import annotations

from ._version import __version__  # the distribution's one version number

from . import _extension
from ._build_info import build_info, format_build_info
from .backends import (BACKENDS, BackendUnavailableError, available_backends, backend_report,
                       resolve_backend)
from .irpe import irpe_bucket_ids, irpe_num_buckets, piecewise_index
from .ops import (mask_substitute, masked_patch_loss, resize_region, resize_regions, rpe_gather,
                  window_attention, window_attention_qkvpacked, window_patchify)
from .sampling import sample_window_masks, sample_windows

__all__ = [
    "__version__", "BACKENDS", "BackendUnavailableError", "available_backends", "backend_report",
    "build_info", "format_build_info", "irpe_bucket_ids", "irpe_num_buckets",
    "mask_substitute", "masked_patch_loss", "piecewise_index", "resize_region", "resize_regions",
    "resolve_backend", "rpe_gather",
    "sample_window_masks", "sample_windows", "window_attention", "window_attention_qkvpacked",
    "window_patchify",
]
