"""rpe_gather, pure PyTorch: out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]].

The forward is an exact copy on every device. The backward sums, per (s, h, i), the
gradients of the keys j that share a bucket; it is written so that autograd's own
backward is deterministic (bitwise the same run to run) on each device:
* CUDA: advanced indexing, whose backward is ``index_put_(accumulate=True)``; on
  CUDA that always takes ATen's sort-based kernel, which adds duplicates in a fixed
  order (``torch.gather``'s backward, ``scatter_add_``, adds them with atomics);
* CPU: ``torch.gather``, whose backward ``scatter_add_`` runs each (s, h, i) row on one
  thread in key order (indexing's backward on CPU adds float32 with atomics when
  it runs in parallel)."""

import torch


def rpe_gather_reference(table: torch.Tensor, bucket_ids: torch.Tensor) -> torch.Tensor:
    S, H, N, _ = table.shape
    ids = bucket_ids.to(torch.int64)
    source = table
    if table.dtype in (torch.float16, torch.bfloat16):
        # Gather from an fp32 copy so that the backward accumulates in fp32; the
        # forward values are exact copies either way.
        source = table.float()
    if table.device.type == "cuda":
        rows = torch.arange(N, device=ids.device)[:, None]
        out = source[:, :, rows, ids]
    else:
        out = torch.gather(source, 3, ids.expand(S, H, N, N))
    return out.to(table.dtype)
