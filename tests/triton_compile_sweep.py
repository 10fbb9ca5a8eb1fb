"""Ahead-of-time compile sweep of every Triton kernel of lomar_ops, for sm_80 and
sm_90, on a machine without a GPU.

    python tests/triton_compile_sweep.py [--arch 80,90] [--op OP,...]
        [--typing jit,inductor] [--full] [--model PATTERN] [--jobs N] [--json FILE]
        [--list] [--check-coverage [--seed N]]

What is compiled is what the wrappers launch, recorded, never written by hand: each
op's public function is called with backend="triton" on CPU tensors, forward and
backward (autograd), over cases() (every dtype, every mode, every block size the
wrappers' config functions choose; see its docstring), while the launcher
(_launch.intercepted) records each launch instead of running it: the kernel, its
arguments, constexprs, num_warps and num_stages. Each launch becomes a compile in
two typings of its arguments:

* "jit": what ``kernel[grid](...)`` gives (eager mode): Python floats fp32.
* "inductor": how torch.compile's launch of a triton_op compiles the kernel:
  Python floats fp64 (torch/_inductor/codegen/triton_utils.py, signature_of:
  config._use_fp64_for_unbacked_floats, on GPUs with fp64) and Triton's debug
  option on (triton_heuristics.py, _should_enable_triton_debug_asserts: device
  asserts, and overflow checks on 32-bit integer arithmetic). What these change
  depends on the code path, not on the tile sizes: this typing is compiled once per
  code path (the argument types and the constexprs but BLOCK_*), at the first tile
  configuration the cases reach it with (``--every-tile``: at every one).

Bool tensors are *i1 in both (triton.jit says *u1: the same IR type). Pointers are
16-byte aligned (tt.divisibility) when the case's tensor is, as triton.jit and
Inductor specialise them; integers are compiled generic (i32, i64 past its range),
without the divisibility and "== 1" specialisations that depend on a run's sizes.
The compiles are deduplicated and each is run by triton.compile for each
architecture in an empty cache; Triton's own ptxas assembles the PTX and its -v log
gives registers and spills. One line per compile (kernel, arch, constexprs, warps,
registers, spill bytes, shared memory), failures with the first lines of the
compiler's error; exit status 1 if any compile failed or needs more shared memory
than the architecture has.

``--model PATTERN`` compiles instead what a training step of the matching models of
model_cases() launches (e.g. 'pretrain_vit_base_448'); ``--check-coverage`` compiles
nothing and checks that cases() covers the model steps and random calls.

Run it with TRITON_INTERPRET unset (interpreted kernels cannot be compiled), with
any Triton version (`make triton-compile-check`: this venv's and the GPU image's)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from typing import Callable, Iterable

import torch

from lomar_ops.backends import triton_interpret

if triton_interpret():
    raise ImportError("tests/triton_compile_sweep.py compiles kernels: run it with "
                      "TRITON_INTERPRET unset (interpreted kernels cannot be compiled)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lomar_ops.triton_kernels import _launch  # noqa: E402

ARCHS = (80, 90)
TYPINGS = ("jit", "inductor")
OPS = ("masked_patch_loss", "mask_substitute", "rpe_gather", "window_attention",
       "window_patchify")
# Shared memory per block (the opt-in maximum): sm_80 163 KB, sm_90 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

_TENSOR_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                torch.float64: "fp64", torch.int8: "i8", torch.int16: "i16",
                torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
                torch.uint16: "u16"}
# triton.jit types a bool tensor *u1, Inductor *i1: the same IR type (MLIR integers are
# signless; Triton stores bools as bytes), so both typings compile "*i1".
_FLOAT_TYPE = {"jit": "fp32", "inductor": "fp64"}


# ---- recording ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Launch:
    """One recorded launch. args: ((name, description), ...) of the runtime
    arguments, a description being ("tensor", dtype name, 16-byte aligned),
    ("int", value), ("float",) or ("bool",); constexprs: ((name, value), ...)."""
    kernel: str
    args: tuple
    constexprs: tuple
    num_warps: int | None
    num_stages: int | None

    def structure(self) -> tuple:
        """The launch without its run-time values: what the sweep promises to cover."""
        kinds = tuple((n, d[1] if d[0] == "tensor" else d[0]) for n, d in self.args)
        return (self.kernel, kinds, self.constexprs, self.num_warps, self.num_stages)


KERNELS: dict[str, object] = {}  # kernel name -> JITFunction, filled while recording


def kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


def _describe(value):
    if isinstance(value, torch.Tensor):
        dtype = "bool" if value.dtype == torch.bool else _TENSOR_TYPE[value.dtype]
        return ("tensor", dtype, value.data_ptr() % 16 == 0)
    if isinstance(value, bool):
        return ("bool",)
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float",)
    raise TypeError(f"compile_sweep: no Triton type for an argument {type(value).__name__}")


class Recorder:
    """The launches of the calls made while it records (see :func:`record`)."""

    def __init__(self):
        self.launches: list[Launch] = []

    def __call__(self, kernel, grid, args, kwargs):
        params = kernel.params
        names = [p.name for p in params]
        bound = dict(zip(names, args))
        options = {}
        for key, value in kwargs.items():
            (bound if key in names else options)[key] = value
        unknown = set(options) - {"num_warps", "num_stages"}
        if unknown:
            raise TypeError(f"compile_sweep: launch option(s) {sorted(unknown)} of "
                            f"{kernel_name(kernel)} are not swept")
        missing = [n for n in names if n not in bound]
        if missing:
            raise TypeError(f"compile_sweep: {kernel_name(kernel)} launched without {missing}")
        runtime, constexprs = [], []
        for p in params:
            if p.is_constexpr:
                constexprs.append((p.name, bound[p.name]))
            else:
                runtime.append((p.name, _describe(bound[p.name])))
        name = kernel_name(kernel)
        KERNELS[name] = kernel
        self.launches.append(Launch(name, tuple(runtime), tuple(constexprs),
                                    options.get("num_warps"), options.get("num_stages")))


@contextlib.contextmanager
def record():
    """Records the Triton launches of the ops called within the block (CPU tensors,
    backend="triton"): nothing runs, the outputs are left as allocated."""
    from lomar_ops import backends

    if triton_interpret():
        raise RuntimeError("compile_sweep.record needs TRITON_INTERPRET unset")
    recorder = Recorder()
    reason = backends.unavailable_reason

    def triton_on_cpu(backend, device):
        return None if backend == "triton" else reason(backend, device)

    backends.unavailable_reason = triton_on_cpu
    try:
        with _launch.intercepted(recorder):
            yield recorder
    finally:
        backends.unavailable_reason = reason


# ---- the cases ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    name: str
    run: Callable[[], None]


HALF_AND_SINGLE = (torch.float16, torch.bfloat16, torch.float32)
FLOATS = HALF_AND_SINGLE + (torch.float64,)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _backward(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    torch.autograd.grad(out, inputs, torch.ones_like(out))


def _leaf(*shape, dtype, grad=True):
    return torch.empty(shape, dtype=dtype).requires_grad_(grad)


def _mask(S, L, ratio=0.75):
    mask = torch.zeros(S, L, dtype=torch.bool)
    mask[:, : max(1, int(L * ratio))] = True
    return mask


def masked_patch_loss_case(S, L, P, dtype, norm_pix, cls_row=False):
    import lomar_ops

    def run():
        if cls_row:  # the head's output sliced past its cls row (a view), as in LoMaR
            head = _leaf(S, L + 1, P, dtype=dtype)
            pred = head[:, 1:]
        else:
            head = pred = _leaf(S, L, P, dtype=dtype)
        target = torch.empty(S, L, P, dtype=dtype)
        loss = lomar_ops.masked_patch_loss(pred, target, _mask(S, L), norm_pix=norm_pix,
                                           backend="triton")
        _backward(loss, head)
    return run


def mask_substitute_case(S, L, D, dtype, cls):
    import lomar_ops

    def run():
        tokens, mask_token = _leaf(S, L, D, dtype=dtype), _leaf(D, dtype=dtype)
        cls_token = _leaf(D, dtype=dtype) if cls else None
        out = lomar_ops.mask_substitute(tokens, _mask(S, L), mask_token, cls_token,
                                        backend="triton")
        _backward(out, *[t for t in (tokens, mask_token, cls_token) if t is not None])
    return run


def rpe_gather_case(S, H, N, NB, dtype):
    import lomar_ops

    def run():
        table = _leaf(S, H, N, NB, dtype=dtype)
        ids = (torch.arange(N * N, dtype=torch.int32) % NB).view(N, N)
        _backward(lomar_ops.rpe_gather(table, ids, backend="triton"), table)
    return run


def window_attention_case(S, N, H, d, dtype, mode, NB=50, per_head=False, packed=True):
    import lomar_ops

    def run():
        if packed:  # the qkv projection's output, read as views
            qkv = _leaf(S, N, 3, H, d, dtype=dtype)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            leaves = [qkv]
        else:
            q, k, v = (_leaf(S, N, H, d, dtype=dtype) for _ in range(3))
            leaves = [q, k, v]
        rpe = ids = None
        if mode == "contextual":
            rpe = _leaf(*((H, NB, d) if per_head else (NB, d)), dtype=dtype)
        elif mode == "bias":
            rpe = _leaf(H, NB, dtype=dtype)
        if rpe is not None:
            ids = (torch.arange(N * N, dtype=torch.int32) % NB).view(N, N)
            leaves.append(rpe)
        out = lomar_ops.window_attention(q, k, v, rpe=rpe, bucket_ids=ids, backend="triton",
                                         rpe_mode=None if mode == "none" else mode)
        _backward(out, *leaves)
    return run


def window_patchify_case(B, n, K, p, C, images_dtype, out_dtype=None, normalize=False,
                         channels_last=False):
    import lomar_ops

    def run():
        side = (K + 1) * p
        grad = images_dtype.is_floating_point
        images = _leaf(B, C, side, side, dtype=images_dtype, grad=grad)
        leaf = images
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        coords = torch.zeros(B, n, 2, dtype=torch.int32)
        norm = dict(mean=[0.5] * C, std=[0.25] * C) if normalize else {}
        out = lomar_ops.window_patchify(images, coords, K, p, out_dtype=out_dtype,
                                        backend="triton", **norm)
        if grad:
            _backward(out, leaf)
    return run


def cases(full: bool = False) -> list[Case]:
    """The sweep's inputs. The wrappers choose (see each one): masked_patch_loss
    BLOCK_P = pow2(P) in [16, 1024] (ONE_TILE when P <= 1024); mask_substitute BLOCK_D =
    pow2(D) in [16, 128]; rpe_gather BLOCK_N = pow2(N) in [16, 128] (forward), BLOCK_N
    and BLOCK_B = pow2(N), pow2(NB) in [16, 64] (backward); window_attention BLOCK_D =
    pow2(d) >= 16, query/key tiles pow2(N) in [16, caps set by the dtype and d],
    BLOCK_B = pow2(NB) >= 16 (contextual tables: NB <= 128); window_patchify BLOCK_PY
    = pow2(p), BLOCK_J = pow2(p*C) and the pixel transform's flags.

    bfloat16 and float32 (training's and the default dtype) take every block choice
    in every mode; float16 (bfloat16's code with another element type) and float64
    (float32's with fp64 accumulators) the smallest and largest blocks in every mode,
    and the pretraining shapes; ``full``: every dtype at every choice (about twice
    the compiles)."""
    out = []

    def add(op, name, run):
        out.append(Case(op, name, run))

    def every(dtype):
        return full or dtype in (torch.bfloat16, torch.float32)

    # masked_patch_loss: norm_pix x BLOCK_P 16 ... 1024, one tile and several (P > 1024).
    for dtype in FLOATS:
        for norm in (True, False):
            for P in (3, 24, 48, 100, 192, 400, 768, 2000) if every(dtype) else (3, 768, 2000):
                add("masked_patch_loss", f"{_dt(dtype)} P={P} norm_pix={norm}",
                    masked_patch_loss_case(2, 5, P, dtype, norm, cls_row=P == 768))
    # mask_substitute: with and without a cls row x BLOCK_D 16 ... 128.
    for dtype in FLOATS:
        for cls in (False, True):
            for D in (8, 32, 48, 512) if every(dtype) else (8, 512):
                add("mask_substitute", f"{_dt(dtype)} D={D} cls={cls}",
                    mask_substitute_case(3, 49, D, dtype, cls))
    # rpe_gather: forward BLOCK_N 16 ... 128, backward (BLOCK_N, BLOCK_B) in {16, 32, 64}^2.
    for dtype in FLOATS:
        shapes = [(N, NB) for N in (11, 26, 50) for NB in (9, 26, 50)] + [(100, 82)] \
            if every(dtype) else [(11, 9), (100, 82)]
        for N, NB in shapes:
            add("rpe_gather", f"{_dt(dtype)} N={N} NB={NB}", rpe_gather_case(2, 2, N, NB, dtype))
    # window_attention (fp16/bf16/fp32; float64 never runs on Triton). Every dtype: the
    # models' shapes (model_cases), q, k, v read as views of the qkv projection, iRPE's
    # shared table of NB = 50 (BLOCK_B 64): LoMaR ViT-B/16's 7x7 window (N = 1 + 49,
    # d = 64: 64-wide tiles, one key block) in every mode; the asymmetric variant's
    # encoder (N = 1 + 10: 16-wide tiles) and decoder (d = 32); the demo's 5x5 window
    # (N = 26: 32-wide tiles); fine-tuning's and ViTDet's grids (N >= 65: several key
    # blocks).
    for dtype in HALF_AND_SINGLE:
        def wa(name, *args, **kwargs):
            add("window_attention", f"{_dt(dtype)} {name}", window_attention_case(*args, **kwargs))
        for mode in ("contextual", "bias", "none"):
            wa(f"N=50 d=64 {mode}", 2, 50, 12, 64, dtype, mode)
        wa("N=11 d=64 contextual", 4, 11, 12, 64, dtype, "contextual")
        wa("N=50 d=32 contextual", 2, 50, 16, 32, dtype, "contextual")
        wa("N=26 d=64 contextual", 2, 26, 3, 64, dtype, "contextual")
        wa("N=196 d=64 contextual", 1, 196, 2, 64, dtype, "contextual")
        if not every(dtype):
            continue
        # The other choices: 16-wide tiles in the other modes, per-head tables (one head
        # per dq program: the same constexprs), head dims padded to 16 and to 128 (d = 80:
        # the big tiles), contextual NB 10 ... 128 (BLOCK_B 16 ... 128), BEiT's bias of
        # (2*14 - 1)^2 + 3 = 732 entries (BLOCK_B 1024).
        for mode in ("bias", "none"):
            wa(f"N=11 d=64 {mode}", 4, 11, 12, 64, dtype, mode)
        wa("N=50 d=32 per-head table", 2, 50, 16, 32, dtype, "contextual", per_head=True)
        wa("N=50 d=16 contextual", 2, 50, 2, 16, dtype, "contextual")
        for mode in ("contextual", "none"):
            wa(f"N=65 d=80 {mode}", 1, 65, 2, 80, dtype, mode)
        for NB in (10, 26, 128):
            wa(f"N=50 d=64 NB={NB}", 2, 50, 2, 64, dtype, "contextual", NB=NB)
        wa("N=197 d=64 bias NB=732", 1, 197, 2, 64, dtype, "bias", NB=732)
    # window_patchify at p = 16, C = 3 (the pretraining patch): every images dtype as it
    # is and normalised; uint8 and uint16 (the input pipeline) into every output dtype;
    # float images into another float dtype. Then other patch sizes and channel counts
    # (uint16: one band and six), and a channels-last image.
    pixel = (torch.uint8, torch.uint16) + FLOATS
    conversions = [(images, None, norm) for images in pixel for norm in (False, True)]
    conversions += [(ints, out_dtype, norm) for ints in (torch.uint8, torch.uint16)
                    for out_dtype in FLOATS for norm in (False, True)]
    conversions += [(images, out_dtype, True) for images, out_dtype in (
        (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32), (torch.float32, torch.float64),
        (torch.float64, torch.float32))]
    if full:
        conversions = [(images, out_dtype, norm) for images in pixel
                       for out_dtype in (None,) + FLOATS for norm in (False, True)]
    for images, out_dtype, norm in dict.fromkeys(conversions):
        add("window_patchify", f"{_dt(images)}->{_dt(out_dtype) if out_dtype else 'default'} "
            f"p=16 C=3 normalize={norm}",
            window_patchify_case(2, 2, 3, 16, 3, images, out_dtype, norm))
    for p, C in ((2, 1), (4, 3), (8, 3), (14, 3), (32, 3), (16, 1)):
        for images in (torch.uint8, torch.float32, torch.bfloat16):
            norm = images == torch.uint8
            add("window_patchify", f"{_dt(images)} p={p} C={C} normalize={norm}",
                window_patchify_case(1, 2, 2, p, C, images, normalize=norm))
    for p, C in ((16, 1), (16, 6), (5, 6), (14, 1)):
        add("window_patchify", f"uint16 p={p} C={C} normalize=True",
            window_patchify_case(1, 2, 2, p, C, torch.uint16, normalize=True))
    add("window_patchify", "float32 p=16 C=3 channels-last",
        window_patchify_case(2, 2, 3, 16, 3, torch.float32, channels_last=True))
    add("window_patchify", "uint16 p=16 C=6 channels-last",
        window_patchify_case(2, 2, 3, 16, 6, torch.uint16, normalize=True, channels_last=True))
    return out


def _model_step(name, dtype, call, **kwargs):
    """One forward and backward of model ``name`` (lomar.models.create_model) with every
    op on Triton, under ``dtype`` autocast (float32: none)."""
    def run():
        from lomar.models import create_model

        torch.manual_seed(0)
        model = create_model(name, **kwargs)
        model.ops_backend = "triton"
        autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
        with autocast:
            out = call(model)
        loss = out[0] if isinstance(out, tuple) else out
        if isinstance(loss, dict):
            loss = sum(v.float().sum() for v in loss.values())
        loss.float().sum().backward()
    return run


def _images(size, dtype=torch.uint8, batch=1):
    if dtype == torch.uint8:
        return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return torch.randn(batch, 3, size, size, dtype=dtype)


def model_cases() -> list[Case]:
    """A training step of each of the project's models (lomar/configs), in float32 and
    under bfloat16 and float16 autocast (lomar.engine.precision's choices), on CPU
    tensors with every op on Triton. Depths are cut to one or two blocks, batches to
    one image and two windows: every block launches the same kernels, and the sizes
    cut only change run-time integers. ``--model`` compiles what these launch, as they
    launch it; ``--check-coverage`` (tests/ops/test_triton_compile.py) checks that cases()
    covers them, so that a new model shape cannot go unchecked."""
    out = []
    for dtype in HALF_AND_SINGLE:
        def add(config, name, call, **kwargs):
            out.append(Case("model", f"{config} ({name}) {_dt(dtype)}",
                            _model_step(name, dtype, call, **kwargs)))
        # pretrain_vit_base_448.yaml: LoMaR ViT-B/16, 7x7 windows, 80% masked, uint8 images.
        add("pretrain_vit_base_448", "lomar_vit_base_patch16",
            lambda m: m(_images(448), window_size=7, num_windows=2, mask_ratio=0.8), depth=1)
        add("asymmetric_vit_base_448", "lomar_vit_base_patch16_dec512d8b",
            lambda m: m(_images(448), window_size=7, num_windows=2, mask_ratio=0.8),
            depth=1, decoder_depth=1)
        # demo_pretrain.yaml: 192 wide, 3 heads, 5x5 windows, 75% masked, 128 px.
        add("demo_pretrain", "lomar_vit_small_patch16",
            lambda m: m(_images(128), window_size=5, num_windows=2, mask_ratio=0.75),
            depth=1, embed_dim=192, num_heads=3)
        # finetune_vit_base_448.yaml: the whole grid (N = 1 + 28 * 28; 224 px here, N = 197:
        # the same tiles); detect_vitdet_base_1024.yaml: 14x14 windows and global blocks;
        # demo_detect.yaml: 4x4 windows, 192 wide, 128 px.
        add("finetune_vit_base_448", "vit_base_patch16",
            lambda m: m(_images(224, torch.float32)), depth=1)
        add("detect_vitdet_base_1024", "vitdet_base_patch16",
            lambda m: m.forward_features(_images(224, torch.float32)), depth=2,
            global_blocks=[1])
        add("demo_detect", "vitdet_small_patch16",
            lambda m: m.forward_features(_images(128, torch.float32)), depth=2,
            embed_dim=192, num_heads=3, window_size=4, global_blocks=[1])
    return out


def probe_cases(seed: int, count: int = 40) -> list[Case]:
    """Random calls of the ops whose every block choice cases() sweeps for bfloat16 and
    float32 (all sizes map onto those choices): each must launch what cases() covers."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        dtype = rng.choice((torch.bfloat16, torch.float32))
        op = rng.choice(("masked_patch_loss", "mask_substitute", "rpe_gather"))
        if op == "masked_patch_loss":
            S, L, P, norm = rng.randint(1, 4), rng.randint(1, 60), rng.randint(2, 3000), \
                rng.random() < 0.5
            run = masked_patch_loss_case(S, L, P, dtype, norm, cls_row=rng.random() < 0.3)
            name = f"{_dt(dtype)} S={S} L={L} P={P} norm_pix={norm}"
        elif op == "mask_substitute":
            S, L, D, cls = rng.randint(1, 4), rng.randint(1, 60), rng.randint(1, 1100), \
                rng.random() < 0.5
            run, name = mask_substitute_case(S, L, D, dtype, cls), \
                f"{_dt(dtype)} S={S} L={L} D={D} cls={cls}"
        else:
            N, NB = rng.randint(1, 300), rng.randint(1, 300)
            run, name = rpe_gather_case(1, 2, N, NB, dtype), f"{_dt(dtype)} N={N} NB={NB}"
        out.append(Case(op, name, run))
    return out


def record_cases(selected: Iterable[Case]) -> list[tuple[Case, Launch]]:
    """(case, launch) for every launch of every case."""
    found = []
    for case in selected:
        with record() as recorder:
            case.run()
        if not recorder.launches:
            raise RuntimeError(f"compile_sweep: case {case.op} {case.name} launched nothing")
        found += [(case, launch) for launch in recorder.launches]
    return found


# ---- compiling ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Spec:
    """One compile: the kernel with a full signature, constexprs and attributes."""
    kernel: str
    signature: tuple       # ((name, type), ...) over every parameter, "constexpr" included
    constexprs: tuple      # ((name, value), ...)
    aligned: tuple         # names of the 16-byte aligned pointers
    num_warps: int | None
    num_stages: int | None
    debug: bool = False    # Triton's debug option: device asserts, integer overflow checks

    def short(self) -> str:
        consts = " ".join(f"{k}={v}" for k, v in self.constexprs)
        types = ",".join(t for n, t in self.signature if t != "constexpr")
        return f"{self.kernel} [{consts}] ({types}){' debug' if self.debug else ''}"

    def code_path(self) -> tuple:
        """The compile without its tile sizes (the BLOCK_* constexprs, warps, stages):
        the argument types and the constexprs that choose what the kernel computes."""
        return (self.kernel, self.signature, self.debug,
                tuple((k, v) for k, v in self.constexprs if not k.startswith("BLOCK")))


def spec_of(launch: Launch, typing: str) -> Spec:
    kernel = KERNELS[launch.kernel]
    types = {}
    aligned = []
    for name, desc in launch.args:
        if desc[0] == "tensor":
            dtype = desc[1]
            types[name] = "*" + ("i1" if dtype == "bool" else dtype)
            if desc[2]:
                aligned.append(name)
        elif desc[0] == "int":
            types[name] = "i32" if -2**31 <= desc[1] < 2**31 else "i64"
        elif desc[0] == "float":
            types[name] = _FLOAT_TYPE[typing]
        else:
            types[name] = "i1"
    consts = dict(launch.constexprs)
    signature = tuple((p.name, "constexpr" if p.name in consts else types[p.name])
                      for p in kernel.params)
    return Spec(launch.kernel, signature, launch.constexprs, tuple(aligned),
                launch.num_warps, launch.num_stages, debug=typing == "inductor")


def specs_of(found: list[tuple[Case, Launch]], typings=TYPINGS,
             every_tile: bool = True) -> dict[Spec, dict]:
    """The unique compiles, each with the cases and typings that need it. Without
    ``every_tile``, the "inductor" typing is compiled for each code path
    (Spec.code_path: what its fp64 scalars and debug checks change) at the first tile
    configuration that reaches it, the "jit" typing at every one."""
    specs: dict[Spec, dict] = {}
    paths = set()
    for case, launch in found:
        for typing in typings:
            spec = spec_of(launch, typing)
            if typing == "inductor" and not every_tile and spec not in specs:
                if spec.code_path() in paths:
                    continue
                paths.add(spec.code_path())
            entry = specs.setdefault(spec, dict(cases=[], typings=set()))
            entry["typings"].add(typing)
            if f"{case.op} {case.name}" not in entry["cases"]:
                entry["cases"].append(f"{case.op} {case.name}")
    return specs


@contextlib.contextmanager
def _captured_stderr():
    """The process's file descriptor 2 (MLIR prints its diagnostics there) into a
    string: ``with _captured_stderr() as text: ...; text()``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        chunks = []
        try:
            yield lambda: "".join(chunks)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            chunks.append(f.read().decode(errors="replace"))


def _ptxas_numbers(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spill_st = re.search(r"(\d+) bytes spill stores", log)
    spill_ld = re.search(r"(\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_bytes=(int(spill_st.group(1)) if spill_st else 0)
                + (int(spill_ld.group(1)) if spill_ld else 0),
                stack_bytes=int(stack.group(1)) if stack else 0)


def _error_lines(text: str, limit: int = 6) -> list[str]:
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if "error" in ln.lower() or "Error" in ln]
    return (picked or lines)[:limit]


def compile_spec(spec: Spec, arch: int) -> dict:
    """Compiles one specification for sm_<arch>; a row for the report."""
    kernel = KERNELS[spec.kernel]
    index = {p.name: i for i, p in enumerate(kernel.params)}
    src = ASTSource(kernel, dict(spec.signature),
                    constexprs={(index[k],): v for k, v in spec.constexprs},
                    attrs={(index[k],): [["tt.divisibility", 16]] for k in spec.aligned})
    options = {k: v for k, v in (("num_warps", spec.num_warps),
                                 ("num_stages", spec.num_stages)) if v is not None}
    if spec.debug:
        options["debug"] = True
    row = dict(kernel=spec.kernel, arch=arch, constexprs=dict(spec.constexprs),
               signature=[t for _, t in spec.signature if t != "constexpr"],
               num_warps=spec.num_warps or 4, num_stages=spec.num_stages or 3,
               debug=spec.debug)
    start = time.perf_counter()
    stdout = io.StringIO()
    triton.knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's log
    try:
        with _fresh_cache(), _captured_stderr() as err, contextlib.redirect_stdout(stdout):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # noqa: BLE001: every failure is reported, then counted
        lines = [ln for ln in f"{type(exc).__name__}: {exc}".splitlines() if ln.strip()]
        row.update(ok=False, error=_error_lines(err()) + list(dict.fromkeys(
            lines[:1] + lines[-1:])))  # a CompilationError's place, then its message
    else:
        row.update(ok=True, shared_bytes=compiled.metadata.shared, **_ptxas_numbers(
            stdout.getvalue()))
    finally:
        triton.knobs.nvidia.dump_ptxas_log = False
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


@contextlib.contextmanager
def _fresh_cache():
    """An empty Triton cache for one compile: every compile is real (and runs ptxas,
    whose log gives the register and spill counts), and nothing is left behind."""
    cache = tempfile.mkdtemp(prefix="lomar-triton-sweep-")
    saved = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = cache
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = saved
        shutil.rmtree(cache, ignore_errors=True)


def format_row(row: dict) -> str:
    consts = " ".join(f"{k}={v}" for k, v in row["constexprs"].items())
    head = f"sm_{row['arch']} {row['kernel']} [{consts}] warps={row['num_warps']}"
    head += " inductor(fp64,debug)" if row["debug"] else " jit"
    if not row["ok"]:
        return f"FAILED {head}\n" + "\n".join("    " + ln for ln in row["error"])
    return (f"ok     {head} regs={row['registers']} spill={row['spill_bytes']}B "
            f"shared={row['shared_bytes']}B ({row['seconds']}s)")


# ---- the command --------------------------------------------------------------

def _compile_all(work: list[tuple[Spec, int]], jobs: int, report) -> list[dict]:
    if jobs <= 1:
        rows = []
        for spec, arch in work:
            rows.append(compile_spec(spec, arch))
            report(rows[-1])
        return rows
    import multiprocessing as mp

    with mp.get_context("fork").Pool(jobs) as pool:
        rows = []
        for row in pool.imap(_compile_star, work, chunksize=1):
            rows.append(row)
            report(row)
        return rows


def _compile_star(item):
    return compile_spec(*item)


def uncovered(extra: list[Case], full: bool = False) -> list[tuple[Case, Launch]]:
    """The launches of ``extra`` whose structure (kernel, argument types, constexprs,
    warps, stages) no case of cases(full) launches."""
    swept = {launch.structure() for _, launch in record_cases(cases(full))}
    return [(case, launch) for case, launch in record_cases(extra)
            if launch.structure() not in swept]


def _check_coverage(seed: int, full: bool) -> int:
    extra = model_cases() + probe_cases(seed)
    missing = uncovered(extra, full)
    for case, launch in missing:
        kinds = ",".join(k for _, k in launch.structure()[1])
        print(f"NOT SWEPT {launch.kernel} [{' '.join(f'{k}={v}' for k, v in launch.constexprs)}]"
              f" warps={launch.num_warps} ({kinds})\n    launched by {case.op} {case.name}")
    print(f"compile_sweep --check-coverage: {len(extra)} model steps and random calls (seed "
          f"{seed}), {len(missing)} launch(es) the sweep does not cover"
          + (": add a case to cases() in lomar_ops/triton_kernels/compile_sweep.py"
             if missing else ""))
    return 1 if missing else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(map(str, ARCHS)),
                        help="comma-separated compute capabilities (default 80,90)")
    parser.add_argument("--op", default=",".join(OPS), help="comma-separated ops")
    parser.add_argument("--typing", default=",".join(TYPINGS),
                        help="jit (floats fp32), inductor (floats fp64), or both")
    parser.add_argument("--full", action="store_true",
                        help="every dtype at every block choice (see cases())")
    parser.add_argument("--every-tile", action="store_true",
                        help="the inductor typing at every tile configuration too, not once "
                             "per code path")
    parser.add_argument("--model", default=None, metavar="PATTERN",
                        help="compile what the model steps whose names contain PATTERN "
                             "launch (model_cases(), e.g. 'pretrain_vit_base_448')")
    parser.add_argument("--check-coverage", action="store_true",
                        help="compile nothing: check that the cases cover the model steps "
                             "and random calls (exit status 1 if not)")
    parser.add_argument("--seed", type=int, default=0, help="of --check-coverage's calls")
    parser.add_argument("--jobs", type=int, default=1, help="compiles in parallel")
    parser.add_argument("--json", default=None, help="write every row to this file")
    parser.add_argument("--list", action="store_true",
                        help="list the compiles without compiling")
    args = parser.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",")]
    ops = args.op.split(",")
    typings = args.typing.split(",")
    unknown = (set(ops) - set(OPS)) | (set(typings) - set(TYPINGS))
    if unknown:
        parser.error(f"unknown op or typing: {sorted(unknown)}")
    if args.check_coverage:
        return _check_coverage(args.seed, args.full)

    start = time.perf_counter()
    if args.model is not None:
        selected = [c for c in model_cases() if args.model in c.name]
        if not selected:
            parser.error(f"no model step matches {args.model!r}; there are: "
                         + ", ".join(c.name for c in model_cases()))
    else:
        selected = [c for c in cases(args.full) if c.op in ops]
    found = [(c, launch) for c, launch in record_cases(selected)
             if launch.kernel.split(".")[0] in ops]
    specs = specs_of(found, typings, every_tile=args.every_tile or args.model is not None)
    print(f"compile_sweep: Triton {triton.__version__}, torch {torch.__version__}: "
          f"{len(selected)} cases, {len(specs)} unique compiles x {len(archs)} arch(s) "
          f"(recorded in {time.perf_counter() - start:.1f}s)", flush=True)
    if args.list:
        for spec, entry in specs.items():
            print(f"{spec.short()} warps={spec.num_warps} typings={sorted(entry['typings'])}")
        return 0

    work = [(spec, arch) for arch in archs for spec in specs]
    rows = _compile_all(work, args.jobs, lambda row: print(format_row(row), flush=True))
    for row, (spec, _) in zip(rows, work):
        entry = specs[spec]
        row.update(typings=sorted(entry["typings"]), cases=entry["cases"])
        if row["ok"] and row["shared_bytes"] > SHARED_LIMIT[row["arch"]]:
            row.update(ok=False, error=[f"shared memory {row['shared_bytes']} B over the "
                                        f"sm_{row['arch']} limit {SHARED_LIMIT[row['arch']]}"])
            print(format_row(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(triton=triton.__version__, torch=torch.__version__, rows=rows), f,
                      indent=1)
    failed = [r for r in rows if not r["ok"]]
    spilled = [r for r in rows if r["ok"] and r["spill_bytes"]]
    elapsed = time.perf_counter() - start
    print(f"compile_sweep: Triton {triton.__version__}: {len(rows) - len(failed)} of "
          f"{len(rows)} compiled ({', '.join(f'sm_{a}' for a in archs)}), {len(failed)} "
          f"failed, {len(spilled)} with spills, {elapsed:.0f}s")
    for row in failed:
        print(format_row(row))
        print(f"    needed by: {'; '.join(row['cases'][:3])} ({'/'.join(row['typings'])})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
