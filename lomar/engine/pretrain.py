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
from typing import ClassVar, Literal, Optional, Union

import torch
from timm.optim import param_groups_weight_decay

from .. import distributed
from ..config import ConfigError
from ..data import (FullCrops, ImageFiles, RegionSpec, TiledRegions, WindowCrops, WindowSpec,
                    build_demo_bands, build_demo_photos, build_demo_slide)
from ..data.pipelines import check_bands, probe_bands
from ..models import create_model
from .job import Job, OptimConfig, RunConfig, check_normalisation, run_job
from .knn import KnnMonitor
from .param_groups import no_weight_decay_names
from .seeding import sample_generators

DEMO_DATA = "demo"  # data.path value: the offline photo set built from scikit-image
DEMO_SLIDE = "demo_slide"  # data.path value: the offline gigapixel pyramid (with region_size)
DEMO_BANDS = "demo_bands"  # data.path value: offline 6-band uint16 scenes (data.bands)
# The offline sets: data.path value -> (folder under output_dir, builder(folder, data config)).
DEMO_SETS = {
    DEMO_DATA: ("demo_photos", lambda path, d: build_demo_photos(
        path, num_images=d.demo_images, size=max(256, d.input_size), seed=0)),
    DEMO_SLIDE: ("demo_slide", lambda path, d: build_demo_slide(
        Path(path) / "slide.tif", size=d.demo_slide_size, seed=0)),
    DEMO_BANDS: ("demo_bands", lambda path, d: build_demo_bands(
        path, num_images=d.demo_images, size=max(256, d.input_size), seed=0)),
}


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
    demo_images: int = 512  # size of the demo set when path is "demo" or "demo_bands"
    demo_slide_size: int = 32768  # side of the demo slide when path is "demo_slide"
    # Tiled, pyramidal files (slides, scenes): region_size > 0 samples regions of that many
    # pixels at mpp micrometres per pixel (or at downsample level-0 pixels per pixel)
    # where at least min_foreground of the region is foreground, samples_per_file per
    # file and epoch; the crop and windows are drawn inside the region (lomar/data/regions.py).
    region_size: int = 0
    mpp: Optional[float] = None
    downsample: float = 1.0
    min_foreground: float = 0.0
    samples_per_file: int = 16
    tile_cache_mb: float = 256.0  # decoded tiles kept per data-loader worker
    # Per-channel normalisation on values / 255, one value per channel (the pipelines give
    # RGB); null: ImageNet's. `lomar stats PATH` measures a data set's and writes them as a
    # config fragment (--config base.yaml --config stats.yaml).
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # "rgb": every file decoded as 8-bit RGB (photos); "all" or a list of band indices or
    # of the files' band names (OME channels, GeoTIFF descriptions): the files' own bands
    # and samples (uint8/uint16/float32: multispectral, 16-bit microscopy, CT),
    # model_kwargs.in_chans of them, with data.mean/std per band (both pipelines, whole
    # images and tiled regions; docs/bands.md).
    bands: Union[Literal["rgb", "all"], list[Union[int, str]]] = "rgb"


@dataclass(frozen=True)
class MaskConfig:
    window_size: int = 7
    num_windows: int = 4
    mask_ratio: float = 0.8
    window_sampling: Literal["image", "batch"] = "image"


@dataclass(frozen=True)
class EvalConfig:
    """The kNN monitor (lomar/engine/knn.py, docs/training.md#knn-monitor): every
    knn_every epochs and at the end, DINO's weighted kNN top-1/top-5 of the encoder's
    features of knn_data's val/ against its train/, logged as knn_top1, knn_top5 and
    knn_seconds. Off (0) by default: it costs a forward pass over both sets."""

    knn_every: float = 0.0  # epochs between evaluations (fractions allowed); 0: off
    # an ImageFolder-layout folder with train/ and val/, or "digits" (scikit-learn's
    # digits at data.input_size, offline: the demo probe's set)
    knn_data: str = ""
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_batch_size: int = 64
    knn_max_images: int = 10000  # per split, evenly spaced over the files (0: all)


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    TASK: ClassVar[str] = "pretrain"

    model: str = "lomar_vit_base_patch16"
    norm_pix_loss: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    epochs: float = 300.0
    output_dir: str = "output/pretrain"

    def validate(self) -> None:
        self.check_run(f"an image folder, a folder or list file of tiled images with "
                       f"data.region_size, '{DEMO_DATA}' for the offline demo photos, "
                       f"'{DEMO_SLIDE}' for the offline gigapixel pyramid or '{DEMO_BANDS}' "
                       f"for offline 6-band 16-bit scenes")
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
        d = self.data
        for name, ok, allowed in (
                ("region_size", d.region_size >= 0, ">= 0 (0: whole images)"),
                ("mpp", d.mpp is None or d.mpp > 0, "> 0 or null"),
                ("downsample", d.downsample > 0, "> 0"),
                ("min_foreground", 0 <= d.min_foreground <= 1, "in [0, 1]"),
                ("samples_per_file", d.samples_per_file >= 1, ">= 1"),
                ("tile_cache_mb", d.tile_cache_mb >= 0, ">= 0")):
            if not ok:
                raise ConfigError(f"config: data.{name} must be {allowed}, got "
                                  f"{getattr(d, name)}")
        channels = self.model_kwargs.get("in_chans", 3)
        try:
            bands = check_bands(d.bands)
        except ValueError as exc:
            raise ConfigError(f"config: data.{exc}") from None
        if bands != "rgb":
            if isinstance(bands, tuple) and len(bands) != channels:
                raise ConfigError(f"config: data.bands picks {len(bands)} band(s), the model "
                                  f"takes model_kwargs.in_chans = {channels}")
            if channels != 3 and d.mean is None:
                raise ConfigError(f"config: {channels} band(s) need their own data.mean and "
                                  f"data.std (ImageNet's are for RGB): lomar stats PATH "
                                  f"measures them")
        elif channels != 3:
            raise ConfigError(f"config: model_kwargs.in_chans = {channels} needs data.bands "
                              f"'all' or a list of band indices (data.bands 'rgb' gives 3)")
        check_normalisation(d.mean, d.std, self.model_kwargs.get("in_chans", 3))
        if d.mean is not None:
            if {"pixel_mean", "pixel_std"} & set(self.model_kwargs):
                raise ConfigError("config: give the normalisation once: data.mean/data.std, "
                                  "not also model_kwargs.pixel_mean/pixel_std")
        if d.path == DEMO_SLIDE and not d.region_size:
            raise ConfigError(f"config: data.path '{DEMO_SLIDE}' is a tiled image: set "
                              f"data.region_size (e.g. 1024)")
        if self.data.pipeline == "windows" and self.mask.window_sampling != "image":
            raise ConfigError("config: data.pipeline 'windows' draws each image's windows in "
                              "the data loader, so mask.window_sampling must be 'image' (the "
                              "authors' per-batch windows need data.pipeline=full)")
        self._check_eval()

    def _check_eval(self) -> None:
        e = self.eval
        for name, value, ok, allowed in (
                ("knn_every", e.knn_every, e.knn_every >= 0, ">= 0 (epochs; 0: off)"),
                ("knn_k", e.knn_k, e.knn_k >= 1, ">= 1"),
                ("knn_temperature", e.knn_temperature, e.knn_temperature > 0, "> 0"),
                ("knn_batch_size", e.knn_batch_size, e.knn_batch_size >= 1, ">= 1"),
                ("knn_max_images", e.knn_max_images, e.knn_max_images >= 0, ">= 0 (0: all)")):
            if not ok:
                raise ConfigError(f"config: eval.{name} must be {allowed}, got {value}")
        if not e.knn_every:
            return
        if not e.knn_data:
            raise ConfigError("config: eval.knn_every > 0 needs eval.knn_data: a folder with "
                              "train/ and val/ (one sub-folder per class) or 'digits'")
        if getattr(self.model_info.builder, "forward_features", None) is None:
            raise ConfigError(f"config: eval.knn_every > 0 needs a model with whole-image "
                              f"features (forward_features); {self.model} has none: set "
                              f"eval.knn_every=0")
        if self.data.bands != "rgb":
            raise ConfigError(f"config: eval.knn_every > 0 reads its images as RGB, so it needs "
                              f"data.bands 'rgb', got {self.data.bands}: set eval.knn_every=0")


def _normalisation(d: DataConfig) -> dict:
    """data.mean/std as the pipelines' and the model's keyword arguments ({}: ImageNet's)."""
    return {} if d.mean is None else {"mean": tuple(d.mean), "std": tuple(d.std)}


def _check_float_normalisation(dtype, d: DataConfig, path) -> None:
    if dtype == torch.float32 and d.mean is None:
        raise ConfigError(f"config: {path} holds float32 pixels, which need data.mean and "
                          f"data.std in their own units (ImageNet's are for 8-bit photos): "
                          f"lomar stats PATH measures them")


def _dataset(cfg: PretrainConfig, info: distributed.DistInfo, patch_size: int):
    d = cfg.data
    spec = WindowSpec(d.input_size, patch_size, cfg.mask.window_size, cfg.mask.num_windows,
                      scale=(d.min_scale, 1.0))
    path = d.path
    if path in DEMO_SETS:
        folder, build = DEMO_SETS[path]
        path = str(Path(cfg.output_dir) / folder)
        if info.is_main:
            build(path, d)
        if info.enabled:
            torch.distributed.barrier()
    channels = cfg.model_kwargs.get("in_chans", 3)
    if d.region_size:  # every file's header is checked (bands, dtype) before training
        region = RegionSpec(d.region_size, d.mpp, d.downsample, d.min_foreground)
        regions = TiledRegions(path, spec, region, d.samples_per_file, d.pipeline,
                               d.tile_cache_mb, mask_dir=Path(cfg.output_dir) / "foreground_masks",
                               on_corrupt=d.on_corrupt, bands=d.bands, channels=channels,
                               **_normalisation(d))
        _check_float_normalisation(regions.dtype, d, path)
        return regions
    images = ImageFiles(path, None, on_corrupt=d.on_corrupt)
    bands, dtype = check_bands(d.bands), None
    if bands != "rgb":  # the first file of each kind (bands, dtype), before any training
        try:
            dtype = probe_bands(images.files, bands, channels)
        except ValueError as exc:
            raise ConfigError(f"config: data.bands={d.bands} with model_kwargs.in_chans = "
                              f"{channels}: {exc}") from None
        _check_float_normalisation(dtype, d, path)
    images.transform = (WindowCrops(spec, d.reduced_decode, bands, channels, dtype,
                                    **_normalisation(d))
                        if d.pipeline == "windows" else
                        FullCrops(spec, bands=bands, channels=channels, dtype=dtype,
                                  **_normalisation(d)))
    return images


class PretrainJob(Job):
    name, kind = "pretrain", "pretraining"

    def datasets(self):
        train = _dataset(self.cfg, self.info, self.cfg.model_info.patch_size)
        self.knn = None
        e = self.cfg.eval
        if e.knn_every:  # its folder is checked here too, before any model is built
            self.knn = KnnMonitor(e.knn_data, self.cfg.data.input_size, self.cfg.output_dir,
                                  self.info, e.knn_k, e.knn_temperature, e.knn_batch_size,
                                  e.knn_max_images, self.cfg.amp, self.cfg.data.num_workers)
            if self.info.is_main:
                print(self.knn.describe(), flush=True)
        return train, None

    def build_model(self, train_set):
        cfg = self.cfg
        # The window pipeline ships uint8 and the model normalises (window_patchify).
        norm = {f"pixel_{k}": v for k, v in _normalisation(cfg.data).items()}
        model = create_model(cfg.model, norm_pix_loss=cfg.norm_pix_loss,
                             window_sampling=cfg.mask.window_sampling, **norm, **cfg.model_kwargs)
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

    def on_step(self, step):
        # The kNN monitor every eval.knn_every epochs (at least every step) and at the end.
        if self.knn is None:
            return
        every = max(1, round(self.cfg.eval.knn_every * self.loop.steps_per_epoch))
        if step % every and step != self.loop.total_steps:
            return
        self.latest = self.knn.evaluate(self.model)
        epoch = step / self.loop.steps_per_epoch
        self.log.log(step, epoch=epoch, **self.latest)
        if self.info.is_main:
            m = self.latest
            print(f"{self.name} step {step} (epoch {epoch:.2f}): kNN top-1 {m['knn_top1']:.2f}%, "
                  f"top-5 {m['knn_top5']:.2f}% ({m['knn_seconds']:.1f} s)", flush=True)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) a pretraining job; returns a summary (steps, last loss, paths)."""
    return run_job(PretrainJob, cfg)
