"""The Triton kernels compiled ahead of time for sm_80 and sm_90 on this machine,
without a GPU (tests/triton_compile_sweep.py; `make triton-compile-check`
runs every case, with this Triton and with the GPU image's), and what Triton's
interpreter can check of the same fixes: a float scalar typed fp64 (as Inductor's
launch of a triton_op types it) gives the results of the fp32 one (triton.jit's), and
masked_patch_loss's rows longer than a tile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lomar_ops
from lomar_ops.backends import triton_interpret

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per block
PRETRAIN_BF16 = "pretrain_vit_base_448 (lomar_vit_base_patch16) bfloat16"


def run_sweep(*args: str, timeout: int) -> subprocess.CompletedProcess:
    # A subprocess without TRITON_INTERPRET (set for this one by conftest.py):
    # interpreted kernels cannot be compiled.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(ROOT / "tests" / "triton_compile_sweep.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_pretraining_step_kernels_compile_for_sm80_and_sm90(tmp_path):
    # What one bf16 pretraining step of LoMaR ViT-B/16 launches (recorded from the
    # model), compiled for A100 and H100 as eager mode's triton.jit launch compiles it
    # (float scalars fp32) and as torch.compile's does (fp64, Triton's debug option on).
    rows_file = tmp_path / "rows.json"
    done = run_sweep("--model", PRETRAIN_BF16, "--json", str(rows_file), timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    rows = json.loads(rows_file.read_text())["rows"]
    assert {row["arch"] for row in rows} == {80, 90}
    kernels = {row["kernel"].split(".")[1] for row in rows}
    assert kernels == {"_window_patchify_fwd_kernel", "_mask_substitute_fwd_kernel",
                       "_mask_substitute_bwd_rows_kernel", "_sum_chunks_kernel", "_fwd_kernel",
                       "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_loss_rows_kernel",
                       "_loss_sum_kernel", "_loss_bwd_kernel"}
    for row in rows:
        assert row["ok"] and row["registers"] > 0, row
        assert row["shared_bytes"] <= SHARED_LIMIT[row["arch"]], row
    # Inductor compiles with Triton's debug option (device asserts, 32-bit overflow checks)
    assert {row["kernel"] for row in rows if row["debug"]} == {row["kernel"] for row in rows}
    fp64_scalars = {row["kernel"] for row in rows if "fp64" in row["signature"]}
    assert fp64_scalars == {"window_attention._fwd_kernel", "window_attention._bwd_dq_kernel",
                            "window_attention._bwd_dkdv_kernel",
                            "masked_patch_loss._loss_rows_kernel",
                            "masked_patch_loss._loss_bwd_kernel"}
    # Bool masks reach the kernels as bool tensors (*i1), not viewed as uint8: Inductor
    # cannot lower a bool -> uint8 view.
    mask_kernels = [row for row in rows if row["kernel"].split(".")[1] in (
        "_mask_substitute_fwd_kernel", "_loss_rows_kernel", "_loss_sum_kernel")]
    assert mask_kernels and all("*i1" in row["signature"] and "*u8" not in row["signature"]
                                for row in mask_kernels)


@pytest.mark.slow
def test_sweep_covers_every_model_step_and_random_calls():
    # Every launch of a training step of each model config (fp32, bf16 and fp16) and of
    # random calls of the ops whose block choices the sweep enumerates is one the sweep
    # compiles: a new shape class (a head dim, a window size) fails here, not on a GPU.
    done = run_sweep("--check-coverage", "--seed", "20261204", timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


# ---- in the interpreter --------------------------------------------------------

needs_interpreter = pytest.mark.skipif(
    not triton_interpret(), reason="runs Triton's interpreter (TRITON_INTERPRET=1, set by "
                                   "conftest.py without a GPU)")


def _fp64_scalar_launch(kernel, grid, args, kwargs):
    """Launch with every Python float argument made an fp64 scalar, the type Inductor
    gives it (the interpreter passes Python floats to the kernel untyped)."""
    import numpy as np
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    def fp64(a):
        if isinstance(a, float):
            return tl.tensor(TensorHandle(np.array([a], dtype=np.float64), tl.float64),
                             tl.float64)
        return a

    return kernel[grid](*map(fp64, args), **kwargs)


def _both_typings(step):
    from lomar_ops.triton_kernels import _launch

    plain = step()
    with _launch.intercepted(_fp64_scalar_launch):
        typed = step()
    return plain, typed


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_masked_patch_loss_eps_as_fp64_gives_the_same_bits(dtype):
    torch.manual_seed(0)
    pred = torch.randn(2, 9, 17, dtype=torch.float64).to(dtype)
    target = (0.01 * torch.randn(2, 9, 17, dtype=torch.float64)).to(dtype)
    mask = torch.rand(2, 9) < 0.6
    mask[0, 0] = True

    def step():
        p = pred.clone().requires_grad_(True)
        # eps = 0.1 is no fp32 number and matters next to the targets' variance
        loss = lomar_ops.masked_patch_loss(p, target, mask, norm_pix=True, eps=0.1,
                                           backend="triton")
        (grad,) = torch.autograd.grad(loss, p)
        return loss, grad

    (loss, grad), (loss64, grad64) = _both_typings(step)
    assert torch.equal(loss, loss64) and torch.equal(grad, grad64)


@needs_interpreter
@pytest.mark.parametrize("mode", ["contextual", None])
def test_window_attention_scale_as_fp64_gives_the_same_bits(mode):
    torch.manual_seed(0)
    S, N, H, d, NB = 2, 20, 2, 16, 10
    q, k, v = (torch.randn(S, N, H, d) for _ in range(3))
    rpe = torch.randn(NB, d) if mode else None
    ids = (torch.arange(N * N, dtype=torch.int32) % NB).view(N, N) if mode else None

    def step():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = lomar_ops.window_attention(*leaves, rpe=rpe, rpe_mode=mode, bucket_ids=ids,
                                         scale=0.3, backend="triton")  # 0.3: no fp32 number
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    plain, typed = _both_typings(step)
    for a, b in zip(plain, typed):
        assert torch.equal(a, b)


@needs_interpreter
@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_masked_patch_loss_rows_longer_than_a_tile(monkeypatch, dtype, norm_pix):
    # P > 1024 (a row in several tiles: the statistics in two passes over the tiles, the
    # error in a third) is what ONE_TILE=False runs; 16-wide tiles make it cheap here.
    from lomar_ops.reference import masked_patch_loss_reference
    from lomar_ops.triton_kernels import masked_patch_loss as mpl

    monkeypatch.setattr(mpl, "_blocks", lambda P: (8, 16))
    torch.manual_seed(0)
    pred = torch.randn(2, 5, 37, dtype=dtype, requires_grad=True)
    target = 3.0 + torch.randn(2, 5, 37, dtype=dtype)
    mask = torch.rand(2, 5) < 0.6
    mask[0, 0] = True
    loss = lomar_ops.masked_patch_loss(pred, target, mask, norm_pix, backend="triton")
    (grad,) = torch.autograd.grad(loss, pred)
    ref_pred = pred.detach().double().requires_grad_(True)
    ref = masked_patch_loss_reference(ref_pred, target.double(), mask, norm_pix)
    (ref_grad,) = torch.autograd.grad(ref, ref_pred)
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)
    assert torch.all(grad[~mask] == 0)
