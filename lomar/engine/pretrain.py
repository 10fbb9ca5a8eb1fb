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
``window_patchify``; "full" ships the whole normalised crop (lomar/data/pipelines.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from timm.optim import param_groups_weight_decay

from .. import distributed
from ..config import ConfigError
from ..data import FullCrops, ImageFiles, WindowCrops, WindowSpec, build_demo_photos
from ..models import create_model
from .job import Job, OptimConfig, RunConfig, run_job
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
class PretrainConfig(RunConfig):
    TASK: ClassVar[str] = "pretrain"

    model: str = "lomar_vit_base_patch16"
    norm_pix_loss: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: float = 300.0
    output_dir: str = "output/pretrain"

    def validate(self) -> None:
        self.check_run(f"an image folder, or '{DEMO_DATA}' for the offline demo photos")
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
        if self.mask.num_windows < 1:
            raise ConfigError(f"config: mask.num_windows must be >= 1, got "
                              f"{self.mask.num_windows}")
        if self.data.pipeline == "windows" and self.mask.window_sampling != "image":
            raise ConfigError("config: data.pipeline 'windows' draws each image's windows in "
                              "the data loader, so mask.window_sampling must be 'image' (the "
                              "authors' per-batch windows need data.pipeline=full)")


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


class PretrainJob(Job):
    name, kind = "pretrain", "pretraining"

    def datasets(self):
        return _dataset(self.cfg, self.info, self.cfg.model_info.patch_size), None

    def build_model(self, train_set):
        cfg = self.cfg
        model = create_model(cfg.model, norm_pix_loss=cfg.norm_pix_loss,
                             window_sampling=cfg.mask.window_sampling, **cfg.model_kwargs)
        model.ops_backend = cfg.ops_backend
        return model, None

    def optimizer(self, model, peak_lr):
        groups = param_groups_weight_decay(model, self.cfg.optim.weight_decay,
                                           no_weight_decay_names(model))
        return torch.optim.AdamW(groups, lr=peak_lr, betas=self.cfg.optim.betas)

    def compute_loss(self, net, batch, step, micro):
        # batch: (windows or crops, coords, labels). The crops and window corners come
        # from the data loader, drawn per item from (seed, epoch, index); the masks from
        # one generator per sample seeded by its index in the step's global batch
        # (seeding.sample_generators): the DDP split changes neither.
        cfg, world = self.cfg, self.info.world_size
        g = sample_generators(cfg.seed, step, world * micro * cfg.batch_size + self.info.rank,
                              len(batch[0]), stride=world)
        # The authors' per-batch windows ("batch", full pipeline only) are drawn here.
        coords = batch[1] if cfg.mask.window_sampling == "image" else None
        m = cfg.mask
        return net(batch[0], m.window_size, m.num_windows, m.mask_ratio, generator=g,
                   coords=coords)[0]


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) a pretraining job; returns a summary (steps, last loss, paths)."""
    return run_job(PretrainJob, cfg)
