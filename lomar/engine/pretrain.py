"""LoMaR pretraining: the recipe of docs/method.md#pretraining-recipe as defaults
(the job: docs/training.md).

    lomar pretrain --config pretrain_vit_base_448 data.path=/data/imagenet/train

lr = blr * effective batch / 256; AdamW (0.9, 0.95), weight decay 0.05 off for
norms, biases, tokens and iRPE tables; linear warmup then cosine per iteration;
gradient accumulation; bf16 autocast on GPU; optional gradient clipping; DDP
under torchrun. Checkpoints (model, optimizer, step, RNG states, config) are
written atomically every ``save_every`` steps and at the end; ``resume`` continues
exactly: data order, augmentation and windows are functions of (seed, epoch,
index), masks of (seed, step, index in the step's global batch), not of process
history nor of how many processes share the batch.

Data: ``data.pipeline`` "windows" (default) decodes and resamples only the
windows' pixels, ships them as uint8 and normalises them on the device inside
``window_patchify``; "full" ships the whole normalised crop (lomar/data.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
from timm.optim import param_groups_weight_decay

from .. import distributed
from ..checkpoint import export_safetensors
from ..config import ConfigError, save_config
from ..data import FullCrops, ImageFiles, WindowCrops, WindowSpec, build_demo_photos
from ..models import ModelInfo, create_model, model_info
from ..run_log import RunLog, plot_loss_curve
from ..schedule import scaled_lr
from . import precision
from .loop import StepLoop
from .param_groups import no_weight_decay_names
from .seeding import sample_generators

DEMO_DATA = "demo"  # data.path value: the offline photo set built from scikit-image


@dataclass(frozen=True)
class DataConfig:
    path: str = ""
    input_size: int = 224
    min_scale: float = 0.2
    # "windows": only the windows' pixels are decoded and resampled, sent as uint8 and
    # normalised on the device (cost flat in input_size); "full": the whole crop as
    # normalised float32 (the MAE/timm pipeline). Both draw the same crops and windows.
    pipeline: Literal["windows", "full"] = "windows"
    reduced_decode: bool = True  # windows pipeline: JPEGs at 1/2, 1/4, 1/8 scale when possible
    num_workers: int = 2
    on_corrupt: Literal["skip", "error"] = "skip"
    demo_images: int = 512  # size of the demo set when path is "demo"


@dataclass(frozen=True)
class MaskConfig:
    window_size: int = 7
    num_windows: int = 4
    mask_ratio: float = 0.8
    window_sampling: Literal["image", "batch"] = "image"


@dataclass(frozen=True)
class OptimConfig:
    blr: float = 1.5e-4
    lr: Optional[float] = None  # absolute lr; default blr * effective batch / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 20.0
    min_lr: float = 0.0
    clip_grad: Optional[float] = None
    accum_iter: int = 1


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "lomar_vit_base_patch16"
    model_kwargs: dict = field(default_factory=dict)
    norm_pix_loss: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64  # per process
    epochs: float = 300.0
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    seed: int = 0
    device: Literal["auto", "cuda", "cpu"] = "auto"
    amp: precision.Amp = True  # bf16 autocast on CUDA; 'bf16'/'fp16' anywhere (engine/precision.py)
    ops_backend: Optional[str] = None
    output_dir: str = "output/pretrain"
    save_every: int = 1000
    log_every: int = 10
    resume: Optional[str] = None
    progress: bool = True

    @property
    def model_info(self) -> ModelInfo:
        """The model's facts (registry), with model_kwargs applied; ConfigError if unknown."""
        try:
            return model_info(self.model, "pretrain").with_kwargs(self.model_kwargs)
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None

    def validate(self) -> None:
        patch = self.model_info.patch_size
        size, K = self.data.input_size, self.mask.window_size
        if size % patch:
            raise ConfigError(f"config: data.input_size {size} must be a multiple of the "
                              f"patch size {patch}")
        if K < 1 or K > size // patch:
            raise ConfigError(f"config: mask.window_size {K} must be in [1, {size // patch}] "
                              f"(the patch grid of {size}x{size} images)")
        if not 0 < self.mask.mask_ratio < 1 or int(K * K * self.mask.mask_ratio) == 0:
            raise ConfigError(f"config: mask.mask_ratio must be in (0, 1) and mask at least one "
                              f"of the {K * K} patches of a window, got {self.mask.mask_ratio}")
        for name in ("batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.optim.accum_iter < 1 or self.mask.num_windows < 1:
            raise ConfigError("config: optim.accum_iter and mask.num_windows must be >= 1")
        if self.data.pipeline == "windows" and self.mask.window_sampling != "image":
            raise ConfigError("config: data.pipeline 'windows' draws each image's windows in "
                              "the data loader, so mask.window_sampling must be 'image' (the "
                              "authors' per-batch windows need data.pipeline=full)")
        if not self.data.path:
            raise ConfigError(f"config: data.path is required (an image folder, or "
                              f"'{DEMO_DATA}' for the offline demo photos)")


def _dataset(cfg: PretrainConfig, info: distributed.DistInfo, patch_size: int) -> ImageFiles:
    path = cfg.data.path
    if path == DEMO_DATA:
        path = str(Path(cfg.output_dir) / "demo_photos")
        if info.is_main:
            build_demo_photos(path, num_images=cfg.data.demo_images,
                              size=max(256, cfg.data.input_size), seed=0)
        if info.enabled:
            torch.distributed.barrier()
    spec = WindowSpec(cfg.data.input_size, patch_size, cfg.mask.window_size,
                      cfg.mask.num_windows, scale=(cfg.data.min_scale, 1.0))
    transform = (WindowCrops(spec, cfg.data.reduced_decode) if cfg.data.pipeline == "windows"
                 else FullCrops(spec))
    return ImageFiles(path, transform, on_corrupt=cfg.data.on_corrupt)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) a pretraining job; returns a summary (steps, last loss, paths)."""
    cfg.validate()
    info = distributed.setup(cfg.device)
    try:
        return _run(cfg, info)
    finally:
        distributed.cleanup()


def _run(cfg: PretrainConfig, info: distributed.DistInfo) -> dict:
    out = Path(cfg.output_dir)
    dataset = _dataset(cfg, info, cfg.model_info.patch_size)  # fails clearly on a bad folder
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, norm_pix_loss=cfg.norm_pix_loss,
                         window_sampling=cfg.mask.window_sampling, **cfg.model_kwargs)
    model.ops_backend = cfg.ops_backend
    model.to(info.device)
    groups = param_groups_weight_decay(model, cfg.optim.weight_decay, no_weight_decay_names(model))
    effective_batch = cfg.batch_size * cfg.optim.accum_iter * info.world_size
    peak_lr = cfg.optim.lr or scaled_lr(cfg.optim.blr, effective_batch)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=cfg.optim.betas)
    log = RunLog(out, enabled=info.is_main)
    loop = StepLoop("pretrain", cfg, info, dataset, model, optimizer, peak_lr, log)
    if cfg.resume:
        loop.resume(cfg.resume)
    if info.is_main:
        save_config(cfg, out / "config.yaml")

    K, n, ratio = cfg.mask.window_size, cfg.mask.num_windows, cfg.mask.mask_ratio

    def compute_loss(net, batch, step, micro):
        # batch: (windows or crops, coords, labels). The crops and window corners come
        # from the data loader, drawn per item from (seed, epoch, index); the masks from
        # one generator per sample seeded by its index in the step's global batch
        # (seeding.sample_generators): the DDP split changes neither.
        world = info.world_size
        g = sample_generators(cfg.seed, step, world * micro * cfg.batch_size + info.rank,
                              len(batch[0]), stride=world)
        # The authors' per-batch windows ("batch", full pipeline only) are drawn here.
        coords = batch[1] if cfg.mask.window_sampling == "image" else None
        return net(batch[0], K, n, ratio, generator=g, coords=coords)[0]

    last_loss = loop.run(compute_loss)
    summary = {"steps": loop.step, "loss": last_loss, "output_dir": str(out)}
    if info.is_main:
        export_safetensors(model.state_dict(), out / "model.safetensors")
        log.close()
        summary["loss_curve"] = str(plot_loss_curve(out / "log.jsonl", out / "loss.png",
                                                    title=f"{cfg.model} pretraining loss"))
        summary["checkpoint"] = str(out / "checkpoint-last.pt")
    return summary
