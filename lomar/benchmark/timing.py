"""Timing one training step (forward, backward, AdamW step): warm-up then timed
iterations, each between device synchronisations, the largest batch that fits, and a
per-phase split of the step measured in a separate, synchronised pass."""

from __future__ import annotations

import statistics
import time

import torch

from ..engine import precision


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The pretraining recipe's AdamW (docs/method.md#pretraining-recipe); fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                             fused=device.type == "cuda")


def train_step(model, imgs, step_kwargs, optimizer, amp: precision.Amp = True,
               scaler: torch.amp.GradScaler | None = None) -> None:
    """One step as the jobs run it: forward under ``amp``'s autocast (bf16 on CUDA by
    default), backward (loss-scaled by ``scaler`` for fp16), optimizer step."""
    with precision.autocast(amp, imgs.device):
        loss = model(imgs, **step_kwargs)[0]
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(model, imgs, step_kwargs, optimizer, warmup: int, iters: int,
               amp: precision.Amp = True) -> dict:
    """Step time over ``iters`` steps after ``warmup``, each step timed between device
    synchronisations; the median is the figure (robust to a busy machine's spikes),
    the mean and every step are kept too. Peak memory on CUDA."""
    device = imgs.device
    scaler = precision.grad_scaler(amp, device)
    for _ in range(warmup):
        train_step(model, imgs, step_kwargs, optimizer, amp, scaler)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        train_step(model, imgs, step_kwargs, optimizer, amp, scaler)
        synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"step_ms": step_s * 1e3, "images_per_s": imgs.shape[0] / step_s,
            "ms_per_image": step_s * 1e3 / imgs.shape[0],
            "step_ms_mean": statistics.fmean(times) * 1e3,
            "step_ms_each": [t * 1e3 for t in times],
            "peak_memory_gib": peak / 2 ** 30 if peak is not None else None}


def fits(model, make_inputs, batch: int, device: torch.device,
         amp: precision.Amp = True) -> bool:
    """Whether two training steps at ``batch`` run without running out of memory."""
    try:
        imgs, kwargs = make_inputs(batch)
        optimizer = make_optimizer(model, device)
        scaler = precision.grad_scaler(amp, device)
        for _ in range(2):
            train_step(model, imgs, kwargs, optimizer, amp, scaler)
        synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def search_batch(model, make_inputs, device: torch.device, start: int, max_batch: int,
                 amp: precision.Amp = True) -> int:
    """The largest batch of the form start * 2**k (k may be negative) up to ``max_batch``
    that fits in memory: doubling from ``start`` while it fits, else halving until it
    does (0 if not even a batch of 1 fits)."""
    batch = min(start, max_batch)
    if not fits(model, make_inputs, batch, device, amp):
        while batch > 1:
            batch //= 2
            if fits(model, make_inputs, batch, device, amp):
                return batch
        return 0
    while batch * 2 <= max_batch and fits(model, make_inputs, batch * 2, device, amp):
        batch *= 2
    return batch


class PhaseTimer:
    """Per-phase times of the forward from module hooks (device synchronised at each
    boundary, so this pass is slower than the timed one and is only its split):
    data-side ops and embedding before the first encoder block (less the tokenizer,
    reported on its own), the encoder blocks, everything after them (head, MAE's
    decoder, loss), then backward and the optimizer step."""

    def __init__(self, model, amp: precision.Amp = True):
        self.model, self.amp = model, amp
        self.device = None
        self.marks: dict[str, float] = {}

    def _mark(self, name):
        def hook(*_args):
            synchronize(self.device)
            self.marks[name] = time.perf_counter()
        return hook

    def measure(self, imgs, step_kwargs, optimizer, iters: int) -> dict:
        self.device = imgs.device
        self.scaler = precision.grad_scaler(self.amp, imgs.device)
        blocks = self.model.blocks
        handles = [blocks[0].register_forward_pre_hook(self._mark("encoder_start")),
                   blocks[-1].register_forward_hook(self._mark("encoder_end"))]
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is not None:
            handles += [tokenizer.register_forward_pre_hook(self._mark("tokenizer_start")),
                        tokenizer.register_forward_hook(self._mark("tokenizer_end"))]
        sums: dict[str, float] = {}
        try:
            for _ in range(iters):
                for name, ms in self._one(imgs, step_kwargs, optimizer).items():
                    sums[name] = sums.get(name, 0.0) + ms
        finally:
            for h in handles:
                h.remove()
        return {name: total / iters for name, total in sums.items()}

    def _one(self, imgs, step_kwargs, optimizer) -> dict:
        self.marks = {}
        synchronize(self.device)
        t0 = time.perf_counter()
        with precision.autocast(self.amp, imgs.device):
            loss = self.model(imgs, **step_kwargs)[0]
        synchronize(self.device)
        t_fwd = time.perf_counter()
        self.scaler.scale(loss).backward()
        synchronize(self.device)
        t_bwd = time.perf_counter()
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        t_opt = time.perf_counter()
        m = self.marks
        tokenizer = m["tokenizer_end"] - m["tokenizer_start"] if "tokenizer_end" in m else 0.0
        split = {"data_and_embed_ms": m["encoder_start"] - t0 - tokenizer,
                 "encoder_forward_ms": m["encoder_end"] - m["encoder_start"],
                 "head_and_loss_forward_ms": t_fwd - m["encoder_end"],
                 "backward_ms": t_bwd - t_fwd, "optimizer_ms": t_opt - t_bwd}
        if "tokenizer_end" in m:
            split["tokenizer_ms"] = tokenizer
        return {k: v * 1e3 for k, v in split.items()}


def time_fed_steps(model, loader, num_windows: int, optimizer, device: torch.device,
                   warmup: int, iters: int, amp: precision.Amp = True) -> dict:
    """Training steps fed by the window pipeline's loader (uint8 windows and their
    corners, pinned and copied without blocking): the share of the wall time spent
    waiting for the loader, and the images per second end to end."""
    batches = iter(loader)
    scaler = precision.grad_scaler(amp, device)

    def step(wait: list) -> int:
        start = time.perf_counter()
        windows, coords, _ = next(batches)
        wait[0] += time.perf_counter() - start
        windows = windows.to(device, non_blocking=True)
        coords = coords.to(device, non_blocking=True)
        train_step(model, windows, {"num_windows": num_windows, "coords": coords}, optimizer,
                   amp, scaler)
        return windows.shape[0]

    for _ in range(warmup):
        step([0.0])
    synchronize(device)
    waited, images = [0.0], 0
    start = time.perf_counter()
    for _ in range(iters):
        images += step(waited)
    synchronize(device)
    wall = time.perf_counter() - start
    return {"data_wait_share": waited[0] / wall, "fed_images_per_s": images / wall}
