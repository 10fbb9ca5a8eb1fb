"""python -m lomar_ops [info|smoke]

info   what was built and which backends can run here (default)
smoke  every op through every backend that can run here, checked against the
       reference, with a rough timing (a smoke run, not a benchmark: see bench/)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import lomar_ops
from lomar_ops.reference import (mask_substitute_reference, masked_patch_loss_reference,
                                 rpe_gather_reference, window_patchify_reference)


def _median_ms(fn, device: torch.device, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def smoke(windows: int, heads: int) -> int:
    print(lomar_ops.format_build_info())
    failures = 0
    if not lomar_ops.build_info()["cpu_kernels"]:
        print("\nFAIL: the C++ extension is missing, so the cpu and cuda backends cannot run")
        failures += 1
    ids = lomar_ops.irpe_bucket_ids(7, 7)
    nb = lomar_ops.irpe_num_buckets()
    print(f"\nrpe_gather: {windows} windows of 7x7 patches + cls (N = 50), {heads} heads, "
          f"{nb} iRPE buckets, fp32, forward + backward against the reference")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        table = torch.randn(windows, heads, 50, nb, device=device, requires_grad=True)
        grad = torch.randn(windows, heads, 50, 50, device=device)
        d_ids = ids.to(device)
        ref = rpe_gather_reference(table, d_ids)
        (ref_grad,) = torch.autograd.grad(ref, table, grad)
        for backend, status in lomar_ops.backend_report(device).items():
            if status != "available":
                print(f"  {device.type:>4} {backend:<7} skipped: {status}")
                continue

            def step():
                out = lomar_ops.rpe_gather(table, d_ids, backend=backend)
                return out, torch.autograd.grad(out, table, grad)[0]

            out, g = step()
            ok = torch.equal(out, ref) and torch.allclose(g, ref_grad, atol=1e-5, rtol=1e-5)
            failures += not ok
            ms = _median_ms(step, device)
            print(f"  {device.type:>4} {backend:<7} {'OK  ' if ok else 'FAIL'} {ms:8.2f} ms")
    failures += _smoke_window_patchify(devices)
    failures += _smoke_mask_and_loss(windows, devices)
    print("\nsmoke run " + ("passed" if failures == 0 else f"FAILED ({failures})"))
    return 1 if failures else 0


def _smoke_window_patchify(devices) -> int:
    batch, size = 16, 448
    print(f"\nwindow_patchify: {batch} images {size}x{size}, 4 windows of 7x7 patches of 16, "
          "fp32, channels-last, forward + backward against the reference")
    failures = 0
    for device in devices:
        images = torch.randn(batch, 3, size, size, device=device)
        images = images.contiguous(memory_format=torch.channels_last).requires_grad_()
        coords = lomar_ops.sample_windows(batch, size // 16, size // 16, 4, 7, device=device)
        ref = window_patchify_reference(images, coords, 7, 16)
        grad = torch.randn_like(ref)
        (ref_grad,) = torch.autograd.grad(ref, images, grad)
        for backend, status in lomar_ops.backend_report(device).items():
            if status != "available":
                print(f"  {device.type:>4} {backend:<7} skipped: {status}")
                continue

            def step():
                out = lomar_ops.window_patchify(images, coords, 7, 16, backend=backend)
                return out, torch.autograd.grad(out, images, grad)[0]

            out, g = step()
            ok = torch.equal(out, ref) and torch.allclose(g, ref_grad, atol=1e-5, rtol=1e-5)
            failures += not ok
            ms = _median_ms(step, device)
            print(f"  {device.type:>4} {backend:<7} {'OK  ' if ok else 'FAIL'} {ms:8.2f} ms")
    return failures


def _smoke_mask_and_loss(windows: int, devices: list[torch.device]) -> int:
    """mask_substitute -> masked_patch_loss on ViT-B/16 windows (L = 49, D = P = 768)."""
    print(f"\nmask_substitute + masked_patch_loss: {windows} windows of 7x7 patches, 39 masked, "
          "D = P = 768, fp32, forward + backward against the reference")
    failures = 0
    for device in devices:
        tokens = torch.randn(windows, 49, 768, device=device, requires_grad=True)
        tokens_ref = tokens.detach().clone().requires_grad_(True)
        mask = torch.rand(windows, 49, device=device).argsort(dim=1) < 39
        mask_token = torch.randn(768, device=device)
        cls_token = torch.randn(768, device=device)
        target = torch.randn(windows, 49, 768, device=device)
        ref_out = mask_substitute_reference(tokens_ref, mask, mask_token, cls_token)
        ref_loss = masked_patch_loss_reference(ref_out[:, 1:], target, mask)
        (ref_grad,) = torch.autograd.grad(ref_loss, tokens_ref)
        for backend, status in lomar_ops.backend_report(device).items():
            if status != "available":
                print(f"  {device.type:>4} {backend:<7} skipped: {status}")
                continue

            def step():
                out = lomar_ops.mask_substitute(tokens, mask, mask_token, cls_token,
                                                backend=backend)
                loss = lomar_ops.masked_patch_loss(out[:, 1:], target, mask, backend=backend)
                return out, loss, torch.autograd.grad(loss, tokens)[0]

            out, loss, g = step()
            ok = (torch.equal(out, ref_out) and torch.allclose(loss, ref_loss, rtol=1e-5)
                  and torch.allclose(g, ref_grad, atol=1e-9, rtol=1e-4))
            failures += not ok
            ms = _median_ms(step, device)
            print(f"  {device.type:>4} {backend:<7} {'OK  ' if ok else 'FAIL'} {ms:8.2f} ms")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lomar_ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="info", choices=["info", "smoke"])
    parser.add_argument("--windows", type=int, default=256, help="sequences (smoke)")
    parser.add_argument("--heads", type=int, default=12, help="heads (smoke)")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(lomar_ops.format_build_info())
        print("\n".join(lomar_ops.backends.defaults_report()))
        return 0
    return smoke(args.windows, args.heads)


if __name__ == "__main__":
    sys.exit(main())
