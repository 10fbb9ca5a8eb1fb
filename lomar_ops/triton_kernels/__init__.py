"""Triton kernels of the lomar ops, one file per op, each registered as a
torch.library.triton_op (so torch.compile sees into it) with its autograd.
Imported lazily: importing triton is slow and it may be absent."""
