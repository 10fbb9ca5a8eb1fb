"""Compile the window_attention Triton kernels for a GPU architecture without a GPU
(Triton's own ptxas), so lowering errors show up on a CPU-only machine; prints one
JSON line per kernel with its registers, spill bytes and shared memory.

    python tests/triton_compile_check.py --arch 90 --dtype bfloat16 --N 50 --d 64

Run it with TRITON_INTERPRET unset: interpreted kernels cannot be compiled."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lomar_ops.triton_kernels import window_attention as wa

_INDEX_PTRS = ("ids_ptr", "order_ptr", "first_ptr", "last_ptr")
_FP32_PTRS = ("stats_ptr", "delta_ptr", "part_ptr")
_TRITON_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _signature(kernel, constexprs: dict, dtype: torch.dtype) -> dict:
    def kind(name):
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return "*i32" if name in _INDEX_PTRS else "*fp32" if name in _FP32_PTRS else \
                "*" + _TRITON_TYPE[dtype]
        return "fp32" if name == "scale" else "i32"
    return {name: kind(name) for name in kernel.arg_names}


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    try:
        log = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)), int(spills.group(1)) if spills else 0


def compile_kernels(arch: int, dtype: torch.dtype, N: int, d: int, mode: str, nb: int = 50):
    cfg = wa._config(N, d, nb, dtype)
    cfg["PREC"] = "ieee" if dtype == torch.float32 else "tf32"  # the compiled choice
    common = dict(MODE=wa.MODES[mode], PREC=cfg["PREC"], BLOCK_D=cfg["BLOCK_D"],
                  BLOCK_B=cfg["BLOCK_B"])
    dq_extra = dict(ONE_KEY_BLOCK=N <= cfg["dq"]["BLOCK_N"])
    for name, kernel, blocks, extra in (("fwd", wa._fwd_kernel, cfg["fwd"], {}),
                                        ("dq", wa._bwd_dq_kernel, cfg["dq"], dq_extra),
                                        ("dkdv", wa._bwd_dkdv_kernel, cfg["dkdv"], {})):
        blocks = dict(blocks)
        warps = blocks.pop("num_warps")
        constexprs = {**common, **blocks, **extra}
        src = ASTSource(kernel, _signature(kernel, constexprs, dtype),
                        constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": warps})
        regs, spills = _ptxas_usage(compiled.asm["ptx"], arch)
        yield dict(kernel=name, arch=arch, dtype=str(dtype), N=N, d=d, mode=mode, warps=warps,
                   registers=regs, spill_bytes=spills, shared_bytes=compiled.metadata.shared)


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
