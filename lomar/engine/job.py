"""The one skeleton of a training job; pretrain, finetune, detect and segment hold what differs.

A job's config is a :class:`RunConfig` (the keys every job has: model, batch, steps,
seed, device, mixed precision, output, checkpoints, logs) with its own sections,
and an optimizer section derived from :class:`OptimConfig`. :meth:`RunConfig.check_run`
refuses a bad value of those keys before any work, naming the key, the value and
what is allowed.

:class:`Job` runs the skeleton, in this order (the order of the random draws, so that
a run is a function of its config): the datasets (a bad folder fails before a model
is built), the seeded model, the peak learning rate (``optim.lr``, or blr * effective
batch / 256 when unset), the optimizer, the run log, the step loop
(:class:`lomar.engine.loop.StepLoop`), resume, the config written beside the run; then
training with evaluation at the job's points and the best checkpoint kept; last the
safetensors export and the figures. A job subclass supplies the parts:
``datasets``, ``build_model``, ``optimizer``, ``compute_loss`` and, when it evaluates,
``evaluate`` and ``best_metric``."""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Literal, Optional, Union

import torch
from torch import nn

from .. import distributed
from ..checkpoint import export_safetensors
from ..config import ConfigError, save_config
from ..models import ModelInfo, model_info
from ..run_log import RunLog, plot_loss_curve
from ..schedule import scaled_lr
from . import precision
from .loop import StepLoop


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer keys every job has (pretraining's recipe as defaults)."""

    blr: float = 1.5e-4
    # absolute peak lr; null or "auto": blr * effective batch / 256 (0 is zero: frozen)
    lr: Optional[Union[float, Literal["auto"]]] = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 20.0
    min_lr: float = 0.0
    clip_grad: Optional[float] = None
    accum_iter: int = 1

    def peak_lr(self, effective_batch: int) -> float:
        """``lr`` when set (0 included), else the linear scaling rule."""
        if self.lr is None or self.lr == "auto":
            return scaled_lr(self.blr, effective_batch)
        return float(self.lr)


@dataclass(frozen=True)
class RunConfig:
    """The keys every job has. A job's config subclasses it, with its own defaults and
    sections (``data`` with ``path`` and ``num_workers``, ``optim`` an OptimConfig)."""

    TASK: ClassVar[str] = ""  # the registry task of the job's models

    model: str = ""
    model_kwargs: dict = field(default_factory=dict)
    batch_size: int = 64  # per process
    epochs: float = 100.0
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    seed: int = 0
    device: Literal["auto", "cuda", "cpu"] = "auto"
    amp: precision.Amp = True  # bf16 autocast on CUDA; 'bf16'/'fp16' anywhere (engine/precision.py)
    ops_backend: Optional[str] = None
    output_dir: str = "output/run"
    save_every: int = 1000
    log_every: int = 10
    resume: Optional[str] = None
    progress: bool = True

    @property
    def model_info(self) -> ModelInfo:
        """The model's facts (registry), with model_kwargs applied; ConfigError if the
        name is unknown or of another task."""
        try:
            return model_info(self.model, self.TASK).with_kwargs(self.model_kwargs)
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None

    def check_run(self, data_path_help: str) -> None:
        """The checks of the keys every job has, before any work."""
        self.model_info  # noqa: B018 (raises for an unknown model)
        for name in ("resume", "checkpoint"):
            path = getattr(self, name, None)
            if path and not Path(path).is_file():
                raise ConfigError(f"config: {name} file not found: {path}")
        if not self.data.path:
            raise ConfigError(f"config: data.path is required ({data_path_help})")
        for name in ("batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        o = self.optim
        for name, value, ok, allowed in (
                ("optim.accum_iter", o.accum_iter, o.accum_iter >= 1, ">= 1"),
                ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
                ("optim.lr", o.lr, o.lr in (None, "auto") or o.lr >= 0,
                 ">= 0, or null/auto for blr * effective batch / 256"),
                ("optim.blr", o.blr, o.blr > 0, "> 0")):
            if not ok:
                raise ConfigError(f"config: {name} must be {allowed}, got {value}")


def check_normalisation(mean, std, channels: int) -> None:
    """data.mean/data.std: both or neither, one finite value per channel, std > 0."""
    if (mean is None) != (std is None):
        raise ConfigError(f"config: data.mean and data.std go together (one value per "
                          f"channel each), got mean={mean}, std={std}")
    if mean is None:
        return
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConfigError(f"config: data.{name} needs one value per channel ({channels}: "
                              f"model_kwargs.in_chans, 3 by default), got {list(values)}")
    if not all(math.isfinite(v) and v > 0 for v in std) or \
            not all(math.isfinite(v) for v in mean):
        raise ConfigError(f"config: data.std must be finite and > 0 and data.mean finite, got "
                          f"mean={list(mean)}, std={list(std)}")


class Job:
    """One training run: :meth:`run` is the skeleton; subclasses fill in the parts."""

    name: str = "job"  # the loop's and the progress bar's name
    kind: str = "training"  # for titles: "<model> <kind> loss"
    best_metric: Optional[str] = None  # the metric to keep the best of (higher is better)
    best_key: Optional[str] = None  # its name in the checkpoint's extra state and the summary

    def __init__(self, cfg: RunConfig, info: distributed.DistInfo):
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.output_dir)
        self.latest: dict = {}  # the last evaluation's metrics

    # ---- the parts ---------------------------------------------------------------
    def datasets(self) -> tuple:
        """(train, val or None); a bad folder fails here, before any model is built."""
        raise NotImplementedError

    def build_model(self, train_set) -> tuple[nn.Module, Optional[str]]:
        """(model, a line on its initialisation or None), called after the seeding."""
        raise NotImplementedError

    def optimizer(self, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def compute_loss(self, net, batch, step: int, micro: int) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Metrics on the val set (with ``best_metric`` among them)."""
        raise NotImplementedError

    def evaluates_at(self, step: int) -> bool:
        """Whether to evaluate after optimizer step ``step`` (default: never)."""
        return False

    def eval_line(self, step: int, best: float) -> str:
        return f"{self.name} step {step}: {self.best_metric} {self.latest[self.best_metric]:.2f}"

    def on_step(self, step: int) -> None:
        """After each optimizer step, before any evaluation."""

    def train_mode(self) -> None:
        self.model.train()

    def trainable(self) -> Optional[nn.Module]:
        """The module DDP wraps and the loop calls (default: the model)."""
        return None

    collate_fn: Optional[Callable] = None

    def summary(self) -> dict:
        """The job's own summary keys (the metrics worth returning)."""
        return dict(self.latest)

    def figures(self) -> dict:
        """Figures drawn at the end, on the main process: {summary key: path}."""
        return {}

    # ---- the skeleton ------------------------------------------------------------
    def run(self) -> dict:
        cfg, info = self.cfg, self.info
        self.train_set, self.val_set = self.datasets()
        torch.manual_seed(cfg.seed)
        self.model, report = self.build_model(self.train_set)
        self.model.to(info.device)
        if info.is_main and report:
            print(report, flush=True)
        effective_batch = cfg.batch_size * cfg.optim.accum_iter * info.world_size
        peak_lr = cfg.optim.peak_lr(effective_batch)
        optimizer = self.optimizer(self.model, peak_lr)
        self.log = RunLog(self.out, enabled=info.is_main)
        self.loop = StepLoop(self.name, cfg, info, self.train_set, self.model, optimizer,
                             peak_lr, self.log, trainable=self.trainable(),
                             collate_fn=self.collate_fn)
        if cfg.resume:
            self.loop.resume(cfg.resume)
        if info.is_main:
            save_config(cfg, self.out / "config.yaml")
        self.train_mode()
        last_loss = self.loop.run(self.compute_loss, self._after_step)
        summary = {"steps": self.loop.step, "loss": last_loss, **self.summary(),
                   "output_dir": str(self.out)}
        if self.best_key:
            summary[self.best_key] = self.loop.extra_state.get(self.best_key)
        if info.is_main:
            export_safetensors(self.model.state_dict(), self.out / "model.safetensors")
            self.log.close()
            summary["loss_curve"] = str(plot_loss_curve(
                self.out / "log.jsonl", self.out / "loss.png",
                title=f"{cfg.model} {self.kind} loss"))
            summary.update({k: str(v) for k, v in self.figures().items()})
            summary["checkpoint"] = str(self.out / "checkpoint-last.pt")
        return summary

    def _after_step(self, step: int) -> None:
        self.on_step(step)
        if not (self.best_metric and self.evaluates_at(step)):
            return
        self.latest.update(self.evaluate())
        self.train_mode()
        self.log.log(step, epoch=step / self.loop.steps_per_epoch, **self.latest)
        key, state = self.best_key, self.loop.extra_state
        if self.latest[self.best_metric] > state.get(key, -1.0):
            state.update({key: self.latest[self.best_metric], "best_step": step})
            if self.info.is_main:
                self.loop.save("checkpoint-best.pt")
        if self.info.is_main:
            print(self.eval_line(step, state[key]), flush=True)


class LossTermsJob(Job):
    """A job whose model returns its loss as named terms (detection's RPN and RoI
    losses, segmentation's decode and auxiliary losses): :meth:`sum_terms` is the loss
    to step on; each term, averaged over the steps since the last log and across
    processes, is logged; evaluation every ``eval_every`` steps and at the end."""

    def __init__(self, cfg: RunConfig, info: distributed.DistInfo):
        super().__init__(cfg, info)
        self.parts: dict[str, torch.Tensor] = {}  # loss terms summed since the last log
        self.counted = 0  # optimizer steps since the last log

    def sum_terms(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, value in losses.items():
            share = value.detach() / self.cfg.optim.accum_iter
            self.parts[name] = self.parts.get(name, 0.0) + share
        return sum(losses.values())

    def on_step(self, step):  # the loss terms, averaged since the last log
        self.counted += 1
        if step % self.cfg.log_every == 0 or step == self.loop.total_steps:
            self.log.log(step, **{name: distributed.mean_across(value / self.counted, self.info)
                                  for name, value in self.parts.items()})
            self.parts.clear()
            self.counted = 0

    def evaluates_at(self, step):
        every = self.cfg.eval_every
        return (every and step % every == 0) or step == self.loop.total_steps


def run_job(job_cls: type[Job], cfg: RunConfig) -> dict:
    """Validate ``cfg``, set up the processes (torchrun/DDP or one), run, clean up."""
    cfg.validate()
    info = distributed.setup(cfg.device)
    try:
        return job_cls(cfg, info).run()
    finally:
        distributed.cleanup()
