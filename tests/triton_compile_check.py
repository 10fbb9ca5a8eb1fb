"""Compile the window_attention Triton kernels of one shape for a GPU architecture
without a GPU; prints one JSON line per kernel with its registers, spill bytes and
shared memory (tests/ops/test_window_attention.py runs it).

    python tests/triton_compile_check.py --arch 90 --dtype bfloat16 --N 50 --d 64

A front end to the compile sweep of every kernel (tests/triton_compile_sweep.py,
`make triton-compile-check`): the launches are recorded from the
op's wrapper (forward and backward), not written by hand, and compiled as triton.jit
types them. Run it with TRITON_INTERPRET unset: interpreted kernels cannot be
compiled."""

from __future__ import annotations

import argparse
import json

import torch

import triton_compile_sweep as compile_sweep

_NAMES = {"_fwd_kernel": "fwd", "_bwd_dq_kernel": "dq", "_bwd_dkdv_kernel": "dkdv"}


def compile_kernels(arch: int, dtype: torch.dtype, N: int, d: int, mode: str, nb: int = 50,
                    heads: int = 2):
    case = compile_sweep.Case("window_attention", f"{dtype} N={N} d={d} {mode}",
                              compile_sweep.window_attention_case(2, N, heads, d, dtype, mode,
                                                                  NB=nb, packed=False))
    specs = compile_sweep.specs_of(compile_sweep.record_cases([case]), ("jit",))
    for spec in specs:
        row = compile_sweep.compile_spec(spec, arch)
        if not row["ok"]:
            raise RuntimeError("\n".join([compile_sweep.format_row(row)] + row["error"]))
        yield dict(kernel=_NAMES[spec.kernel.split(".")[1]], arch=arch, dtype=str(dtype), N=N,
                   d=d, mode=mode, warps=row["num_warps"], registers=row["registers"],
                   spill_bytes=row["spill_bytes"], shared_bytes=row["shared_bytes"],
                   constexprs=row["constexprs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--N", type=int, default=50)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--modes", default="contextual,bias,none")
    args = parser.parse_args()
    for mode in args.modes.split(","):
        for row in compile_kernels(args.arch, getattr(torch, args.dtype), args.N, args.d, mode):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
