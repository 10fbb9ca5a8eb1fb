"""rpe_gather, pure PyTorch: out[s,h,i,j] = table[s,h,i,bucket_ids[i,j]]."""

import torch


def rpe_gather_reference(table: torch.Tensor, bucket_ids: torch.Tensor) -> torch.Tensor:
    S, H, N, _ = table.shape
    index = bucket_ids.to(torch.int64).expand(S, H, N, N)
    if table.dtype in (torch.float16, torch.bfloat16):
        # Gather from an fp32 copy so that autograd's scatter-add backward
        # accumulates in fp32; the forward values are exact copies either way.
        return torch.gather(table.float(), 3, index).to(table.dtype)
    return torch.gather(table, 3, index)
