"""The optimizer-step loop shared by ``pretrain`` and ``finetune``.

A job hands :class:`StepLoop` its dataset, model and optimizer and a function
that turns a micro-batch into a loss; the loop owns what both recipes have in
common: the resumable data order, steps per epoch, warmup + cosine per
iteration, gradient accumulation (all-reduce on the last micro-batch only),
mixed precision (``amp``: bf16 autocast on GPU by default, fp16 with loss scaling,
see :mod:`.precision`), the non-finite-loss stop, clipping, the progress bar, the
JSONL/TensorBoard log and the atomic ``checkpoint-last.pt`` with exact resume.

The config is read by name (both job configs have these keys): ``seed``,
``batch_size``, ``epochs``, ``max_steps``, ``amp``, ``save_every``, ``log_every``,
``progress``, ``data.num_workers`` and ``optim.{accum_iter, warmup_epochs,
min_lr, clip_grad}``."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import ConfigError, to_dict
from ..run_log import RunLog
from ..schedule import lr_at, set_lr
from . import precision
from .seeding import ResumableSampler, SeededItems

# loss = compute_loss(net, batch, step, micro): micro is the index within the step.
LossFn = Callable[[nn.Module, tuple, int, int], torch.Tensor]


def to_device(batch, device: torch.device):
    """``batch`` with every tensor, nested in tuples, lists and dicts, on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class StepLoop:
    def __init__(self, job: str, cfg, info: distributed.DistInfo, dataset, model: nn.Module,
                 optimizer: torch.optim.Optimizer, peak_lr: float, log: RunLog,
                 trainable: Optional[nn.Module] = None, collate_fn: Optional[Callable] = None):
        """``trainable``: the module wrapped by DDP and called as ``net`` (the model by
        default; a linear probe's head). ``collate_fn``: the DataLoader's (default:
        stacking); a batch may nest tensors in tuples, lists and dicts."""
        self.job, self.cfg, self.info, self.log = job, cfg, info, log
        self.model, self.optimizer, self.peak_lr = model, optimizer, peak_lr
        self.collate_fn = collate_fn
        self.out = Path(cfg.output_dir)
        self.dataset = SeededItems(dataset, cfg.seed)
        self.sampler = ResumableSampler(len(dataset), cfg.seed, info.rank, info.world_size)
        accum = cfg.optim.accum_iter
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size // accum
        if self.steps_per_epoch < 1:
            raise ConfigError(f"config: {len(dataset)} images give no full optimizer step per "
                              f"epoch (batch_size {cfg.batch_size} x accum_iter {accum} "
                              f"x {info.world_size} processes)")
        self.total_steps = cfg.max_steps or max(1, int(cfg.epochs * self.steps_per_epoch))
        self.warmup_steps = min(self.total_steps,
                                int(cfg.optim.warmup_epochs * self.steps_per_epoch))
        self.step = 0
        self.extra_state: dict = {}  # job values saved with every checkpoint (e.g. best accuracy)
        trainable = model if trainable is None else trainable
        self.net = DistributedDataParallel(trainable) if info.enabled else trainable
        self.scaler = precision.grad_scaler(cfg.amp, info.device)

    def _loader(self) -> torch.utils.data.DataLoader:
        """One loader for the whole run: its workers live across epochs (the sampler's
        (epoch, index) keys carry the epoch to them), and keep a whole optimizer step of
        micro-batches (plus one) in flight."""
        cfg, workers = self.cfg, self.cfg.data.num_workers
        kwargs = {}
        if workers > 0:
            accum = cfg.optim.accum_iter
            kwargs = dict(persistent_workers=True,
                          prefetch_factor=max(2, math.ceil((accum + 1) / workers)))
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=workers,
            drop_last=True, collate_fn=self.collate_fn,
            pin_memory=self.info.device.type == "cuda", **kwargs)

    def resume(self, path: str) -> dict:
        """Load model, optimizer, RNG states, step and the job's extra state. A config
        that differs from the checkpoint's in a key that shapes the computation is said
        in one line (the schedule, data draws and masks follow the new values), e.g. a
        run extended with more epochs: its cosine stretches from the resumed step on."""
        state = load_checkpoint(path, map_location=self.info.device)
        changed = changed_keys(state.get("config") or {}, to_dict(self.cfg))
        if changed and self.info.is_main:
            print(f"resume: {path} was written by a run with other values of "
                  f"{'; '.join(changed)}: the run continues under the new values (its "
                  f"learning-rate schedule and data and mask draws included)", flush=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.extra_state = dict(state.get("extra", {}))
        return state

    def save(self, name: str, **extra) -> Path:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 "step": self.step, "config": to_dict(self.cfg),
                 "rng": rng_state(), "extra": {**self.extra_state, **extra}}
        return save_checkpoint(self.out / name, state)

    def run(self, compute_loss: LossFn, after_step: Optional[Callable[[int], None]] = None) -> float:
        """Train to ``total_steps``; ``after_step(step)`` runs after each optimizer step,
        before that step's checkpoint. Returns the last loss (mean over processes)."""
        cfg, info = self.cfg, self.info
        accum = cfg.optim.accum_iter
        scaler = self.scaler
        bar = None
        if info.is_main and cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       desc=self.job)
        last_loss = math.nan
        loader = self._loader()
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_position(epoch, offset * accum * cfg.batch_size)
            micro = 0
            t0 = time.perf_counter()
            waited = [0.0]  # seconds blocked on the loader since t0
            for batch in _timed(loader, waited):
                batch = to_device(tuple(batch), info.device)
                if micro % accum == 0:
                    set_lr(self.optimizer, lr_at(self.step, self.total_steps, self.warmup_steps,
                                                 self.peak_lr, cfg.optim.min_lr))
                last_micro = (micro + 1) % accum == 0
                # Gradients are all-reduced on the last micro-batch of a step only.
                sync = (self.net.no_sync() if info.enabled and not last_micro
                        else contextlib.nullcontext())
                with sync:
                    with precision.autocast(cfg.amp, info.device):
                        loss = compute_loss(self.net, batch, self.step, micro % accum)
                    if not distributed.all_finite(loss, info):
                        raise FloatingPointError(
                            f"{self.job}: the loss is not finite at step {self.step} "
                            f"({float(loss.detach())}); stopped without updating the weights. "
                            f"The last good checkpoint is {self.out / 'checkpoint-last.pt'} "
                            f"(if one was written).")
                    scaler.scale(loss / accum).backward()
                micro += 1
                if not last_micro:
                    continue
                if cfg.optim.clip_grad:
                    scaler.unscale_(self.optimizer)  # clip the true gradients
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
                scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
                scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                last_loss = distributed.mean_across(loss, info)
                step = self.step
                if step % cfg.log_every == 0 or step == self.total_steps:
                    elapsed = max(time.perf_counter() - t0, 1e-9)
                    ips = micro * cfg.batch_size * info.world_size / elapsed
                    # data_wait: the share of the time spent waiting for the data loader
                    # (0 when the workers keep up with the steps).
                    self.log.log(step, loss=last_loss, lr=self.optimizer.param_groups[0]["lr"]
                                 / self.optimizer.param_groups[0].get("lr_scale", 1.0),
                                 images_per_s=ips, data_wait=waited[0] / elapsed,
                                 epoch=step / self.steps_per_epoch)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
                if after_step is not None:
                    after_step(step)
                if bar is not None:
                    bar.update(1)
                if info.is_main and (step % cfg.save_every == 0 or step == self.total_steps):
                    self.save("checkpoint-last.pt")
                if step >= self.total_steps:
                    break
        if bar is not None:
            bar.close()
        return last_loss


# Keys that do not change what a run computes: where it writes, how it reports, how its
# data is loaded, and the resume itself.
_BOOKKEEPING = {"resume", "output_dir", "progress", "log_every", "save_every", "device",
                "data.num_workers", "eval_every", "figure_images"}


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf of two config dicts that differs, but for the
    bookkeeping keys; a key only one side has counts as changed."""
    out = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        if name in _BOOKKEEPING:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def _timed(loader, waited: list):
    """The loader's batches, adding the time spent waiting for each to waited[0]."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield batch
