"""Fine-tuning and linear probing of a LoMaR encoder: the recipe of
docs/method.md#fine-tuning-recipe as defaults (the job: docs/training.md).

    lomar finetune --config finetune_vit_base_448 data.path=/data/imagenet \\
        checkpoint=output/pretrain/checkpoint-last.pt

``data.path`` holds ``train/`` and ``val/`` in the ImageFolder layout (one
sub-folder per class; ``digits`` builds scikit-learn's digits there, offline).

Fine-tuning: timm's RandAugment (rand-m9-mstd0.5-inc1), random erasing 0.25,
mixup 0.8 / cutmix 1.0 with soft-target cross-entropy (label smoothing 0.1),
drop path 0.1, AdamW (0.9, 0.999), weight decay 0.05 (not on norms, biases,
tokens, iRPE tables), layer-wise lr decay 0.65, lr = blr * effective batch / 256
with blr 5e-4, 5 warmup epochs then cosine per iteration. Top-1/top-5 on val
after every epoch; the best epoch is kept as ``checkpoint-best.pt``.

Linear probe (``linear_probe: true``, MAE's protocol): the encoder is frozen (no
gradients, eval mode); the head is BatchNorm1d(affine=False) + Linear on the
encoder's pooled features (the same pooling as fine-tuning); augmentation is
random-resized crop + flip only (no RandAugment, erasing, mixup, smoothing), no
layer decay. MAE uses LARS at batch 16384; here the optimizer is ``optim.name``:
AdamW, or SGD with momentum 0.9, which serve the usual batch sizes.

Checkpoints, resume, logs and DDP work as for ``pretrain`` (lomar.engine.loop):
augmentation, mixup and drop path are drawn from seeds that are functions of
(seed, epoch, index) and (seed, step), so a resumed run repeats the straight one."""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional, Union

import torch
from PIL import Image
from timm.data import Mixup, auto_augment, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from torch import nn
from torchvision.transforms import v2

from .. import distributed
from ..config import ConfigError
from ..data import ImageFiles, build_demo_digits
from ..data.band_transforms import BandEvalTransform, BandTrainTransform
from ..data.pipelines import check_bands, probe_bands
from ..models import create_model
from ..run_log import plot_loss_curve
from . import precision
from ..checkpoint import read_weights
from ..data import IMAGENET_MEAN, IMAGENET_STD
from .init_weights import load_encoder_state
from .job import Job, OptimConfig, RunConfig, check_normalisation, run_job
from .param_groups import no_weight_decay_names, param_groups_layer_decay
from .seeding import mix, seed_all

DEMO_DIGITS = "digits"  # data.path value: scikit-learn's digits as an ImageFolder


@dataclass(frozen=True)
class FinetuneDataConfig:
    path: str = ""
    train_split: str = "train"
    val_split: str = "val"
    input_size: int = 224
    eval_crop_pct: float = 0.875  # val: resize to input_size / crop_pct, center crop
    num_workers: int = 2
    on_corrupt: Literal["skip", "error"] = "skip"
    digits_size: int = 64  # image side of the digits set when path is "digits"
    # Per-channel normalisation on values / 255 (null: ImageNet's). It must be the one
    # the checkpoint was pretrained with (data.mean/std of its run): a mismatch is refused.
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # "rgb": files decoded as 8-bit RGB (timm's transforms); "all", band indices or band
    # names: the files' own bands and samples (lomar.data.band_transforms), model_kwargs.in_chans
    # of them, as the checkpoint was pretrained on (docs/bands.md).
    bands: Union[Literal["rgb", "all"], list[Union[int, str]]] = "rgb"


@dataclass(frozen=True)
class AugmentConfig:
    min_scale: float = 0.08  # random-resized crop scale (min_scale, 1)
    hflip: float = 0.5  # horizontal flip probability
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: Optional[float] = None  # unused by timm while auto_augment is set
    reprob: float = 0.25
    remode: Literal["const", "rand", "pixel"] = "pixel"
    recount: int = 1
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    smoothing: float = 0.1


@dataclass(frozen=True)
class FinetuneOptimConfig(OptimConfig):
    name: Literal["adamw", "sgd"] = "adamw"
    blr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    momentum: float = 0.9  # sgd
    layer_decay: float = 0.65
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6


@dataclass(frozen=True)
class FinetuneConfig(RunConfig):
    TASK: ClassVar[str] = "encoder"

    model: str = "vit_base_patch16"
    global_pool: bool = True  # mean-pooled patch features + fc_norm; false: cls token
    drop_path: float = 0.1
    checkpoint: Optional[str] = None  # pretraining weights (ours or the authors'); none: random
    linear_probe: bool = False
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    output_dir: str = "output/finetune"

    @property
    def uses_mixup(self) -> bool:
        return not self.linear_probe and (self.aug.mixup > 0 or self.aug.cutmix > 0)

    def validate(self) -> None:
        self.check_run(f"a folder with {self.data.train_split}/ and {self.data.val_split}/, "
                       f"or '{DEMO_DIGITS}' for scikit-learn's digits")
        patch = self.model_info.patch_size
        if self.data.input_size % patch:
            raise ConfigError(f"config: data.input_size {self.data.input_size} must be a "
                              f"multiple of the patch size {patch}")
        o, a = self.optim, self.aug
        checks = [
            ("optim.layer_decay", o.layer_decay, 0 < o.layer_decay <= 1, "in (0, 1]"),
            ("drop_path", self.drop_path, 0 <= self.drop_path < 1, "in [0, 1)"),
            ("aug.min_scale", a.min_scale, 0 < a.min_scale <= 1, "in (0, 1]"),
            ("aug.hflip", a.hflip, 0 <= a.hflip <= 1, "in [0, 1]"),
            ("aug.reprob", a.reprob, 0 <= a.reprob <= 1, "in [0, 1]"),
            ("aug.smoothing", a.smoothing, 0 <= a.smoothing < 1, "in [0, 1)"),
            ("aug.mixup", a.mixup, a.mixup >= 0, ">= 0"),
            ("aug.cutmix", a.cutmix, a.cutmix >= 0, ">= 0"),
            ("data.eval_crop_pct", self.data.eval_crop_pct, 0 < self.data.eval_crop_pct <= 1,
             "in (0, 1]"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config: {name} must be {allowed}, got {value}")
        check_normalisation(self.data.mean, self.data.std, self.model_kwargs.get("in_chans", 3))
        self._check_bands()
        if self.uses_mixup and self.batch_size % 2:
            raise ConfigError(f"config: batch_size must be even with mixup/cutmix (timm pairs "
                              f"images), got {self.batch_size}")


    def _check_bands(self) -> None:
        d, a, channels = self.data, self.aug, self.model_kwargs.get("in_chans", 3)
        try:
            bands = check_bands(d.bands)
        except ValueError as exc:
            raise ConfigError(f"config: data.{exc}") from None
        if bands == "rgb":
            if channels != 3:
                raise ConfigError(f"config: model_kwargs.in_chans = {channels} needs data.bands "
                                  f"'all' or a list of band indices (data.bands 'rgb' gives 3)")
            return
        if isinstance(bands, tuple) and len(bands) != channels:
            raise ConfigError(f"config: data.bands picks {len(bands)} band(s), the model takes "
                              f"model_kwargs.in_chans = {channels}")
        if d.mean is None:
            raise ConfigError(f"config: data.bands={d.bands} needs its own data.mean and data.std "
                              f"(ImageNet's are for 8-bit RGB photos): lomar stats PATH "
                              f"measures them")
        for name, value in (("aug.auto_augment", a.auto_augment),
                            ("aug.color_jitter", a.color_jitter)):
            if value:
                raise ConfigError(f"config: {name}={value} is a colour-photo augmentation "
                                  f"(8-bit RGB); with data.bands={d.bands} set {name}=null "
                                  f"(crop, flip, erasing, mixup and cutmix still apply)")


def _posterize_zero_bits_black(img, bits_to_keep, **kwargs):
    # RandAugment's PosterizeIncreasing keeps 0 bits at magnitude 10 (reached with
    # m9-mstd0.5): a black image in the recipe's Pillow; Pillow >= 11 refuses 0 bits.
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(transform) -> None:
    for t in getattr(transform, "transforms", []):
        if isinstance(t, auto_augment.RandAugment):
            for op in t.ops:
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = _posterize_zero_bits_black


def normalisation(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a run normalises with: its data.mean/std, else ImageNet's."""
    if mean is None:
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _transforms(cfg: FinetuneConfig, dtype: Optional[torch.dtype] = None):
    """(train, val) transforms: on uint8 (3, H, W) tensors (timm's, through PIL) for
    data.bands "rgb"; else on the files' own bands (``dtype``: the data set's)."""
    size, a = cfg.data.input_size, cfg.aug
    norm = dict(zip(("mean", "std"), normalisation(cfg.data.mean, cfg.data.std)))
    if cfg.data.bands != "rgb":
        bands = dict(bands=check_bands(cfg.data.bands), dtype=dtype,
                     channels=cfg.model_kwargs.get("in_chans", 3), **norm)
        erase = {} if cfg.linear_probe else dict(reprob=a.reprob, remode=a.remode,
                                                 recount=a.recount)
        return (BandTrainTransform(size, scale=(a.min_scale, 1.0), hflip=a.hflip, **erase,
                                   **bands),
                BandEvalTransform(size, crop_pct=cfg.data.eval_crop_pct, **bands))
    if cfg.linear_probe:  # random-resized crop + flip only
        timm_train = create_transform(size, is_training=True, scale=(a.min_scale, 1.0),
                                      hflip=a.hflip, color_jitter=None, interpolation="bicubic",
                                      **norm)
    else:
        timm_train = create_transform(
            size, is_training=True, scale=(a.min_scale, 1.0), hflip=a.hflip,
            color_jitter=a.color_jitter, auto_augment=a.auto_augment, interpolation="bicubic",
            re_prob=a.reprob, re_mode=a.remode, re_count=a.recount, **norm)
        _patch_posterize(timm_train)
    train = v2.Compose([v2.ToPILImage(), timm_train])
    val = v2.Compose([v2.ToPILImage(), create_transform(
        size, is_training=False, interpolation="bicubic", crop_pct=cfg.data.eval_crop_pct,
        **norm)])
    return train, val


def _datasets(cfg: FinetuneConfig, info: distributed.DistInfo) -> tuple[ImageFiles, ImageFiles]:
    root = Path(cfg.data.path)
    if cfg.data.path == DEMO_DIGITS:
        root = Path(cfg.output_dir) / "demo_digits"
        if info.is_main:
            build_demo_digits(root, size=cfg.data.digits_size, seed=0)
        if info.enabled:
            torch.distributed.barrier()
    train = ImageFiles(root / cfg.data.train_split, None, on_corrupt=cfg.data.on_corrupt)
    val = ImageFiles(root / cfg.data.val_split, None, on_corrupt=cfg.data.on_corrupt)
    dtype = None
    if cfg.data.bands != "rgb":  # the first file of each kind, before any training
        try:
            dtype = probe_bands(train.files + val.files, check_bands(cfg.data.bands),
                                cfg.model_kwargs.get("in_chans", 3))
        except ValueError as exc:
            raise ConfigError(f"config: data.bands={cfg.data.bands} with model_kwargs.in_chans"
                              f" = {cfg.model_kwargs.get('in_chans', 3)}: {exc}") from None
    train.transform, val.transform = _transforms(cfg, dtype)
    if not train.classes:
        raise ConfigError(f"config: {train.root} must hold one sub-folder per class "
                          f"(ImageFolder layout); it holds images only")
    if val.classes != train.classes:
        raise ConfigError(f"config: the classes of {val.root} ({', '.join(val.classes) or 'none'})"
                          f" differ from those of {train.root} ({', '.join(train.classes)})")
    return train, val


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """How many rows have their target among the k highest logits, for each k (k is
    capped at the number of classes). Counts, not means: they add across batches and
    processes exactly."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg: FinetuneConfig, info: distributed.DistInfo) -> dict:
    """Top-1/top-5 accuracy (%) and cross-entropy over the whole val set; each process
    takes every world_size-th image and the counts are summed."""
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=cfg.batch_size,
                                         num_workers=cfg.data.num_workers)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=info.device)  # top1, top5, loss, n
    for imgs, target in loader:
        imgs, target = imgs.to(info.device), target.to(info.device)
        with precision.autocast(cfg.amp, info.device):
            logits = model(imgs).float()
        top1, top5 = topk_correct(logits, target)
        loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        sums += torch.tensor([top1, top5, float(loss), len(target)], dtype=torch.float64,
                             device=info.device)
    if info.enabled:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    top1, top5, loss, n = sums.tolist()
    return {"val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_loss": loss / n}


def attach_probe_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the encoder's head by the linear probe's: BatchNorm1d(affine=False) +
    Linear (weights N(0, 0.01) truncated, zero bias), as MAE's protocol has it."""
    head = nn.Linear(model.embed_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6), head)
    return model


def _listed(bands):  # data.bands as a comparable value (a config gives lists or tuples)
    return bands if bands in ("rgb", "all") else list(bands)


def _band_layout(bands, in_chans: int) -> str:
    return f"data.bands={_listed(bands)} ({in_chans} band(s))"


def check_pretrained_data(config: dict, cfg: FinetuneConfig) -> None:
    """Refuse, in one line, fine-tuning data unlike the checkpoint's pretraining data:
    other bands (a pretraining on its own bands; an RGB checkpoint's weights are adapted
    to other bands instead), or another normalisation of the same bands."""
    data = config.get("data") or {}
    pre_bands = data.get("bands", "rgb")
    pre_chans = (config.get("model_kwargs") or {}).get("in_chans", 3)
    ours_chans = cfg.model_kwargs.get("in_chans", 3)
    same_bands = _listed(pre_bands) == _listed(cfg.data.bands)
    if pre_bands != "rgb" and (not same_bands or pre_chans != ours_chans):
        raise ConfigError(f"checkpoint {cfg.checkpoint} was pretrained on "
                          f"{_band_layout(pre_bands, pre_chans)}: fine-tune on the same bands, "
                          f"not {_band_layout(cfg.data.bands, ours_chans)}")
    if not same_bands:
        return  # an RGB checkpoint for other bands: its weights are adapted (init_weights)
    pretrained = normalisation(data.get("mean"), data.get("std"))
    ours = normalisation(cfg.data.mean, cfg.data.std)
    if len(pretrained[0]) != len(ours[0]) or not all(
            math.isclose(a, b, rel_tol=1e-6) for a, b in zip(sum(pretrained, ()), sum(ours, ()))):
        raise ConfigError(f"checkpoint {cfg.checkpoint} was pretrained on pixels normalised "
                          f"with data.mean={list(pretrained[0])} data.std="
                          f"{list(pretrained[1])}: fine-tune with the same, not "
                          f"mean={list(ours[0])} std={list(ours[1])}")


def _build_model(cfg: FinetuneConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The encoder with its head (the linear probe's, frozen encoder, for a probe), the
    pretraining weights loaded when ``cfg.checkpoint`` is set; and a line on its init."""
    kwargs = {"global_pool": cfg.global_pool, "drop_path_rate": 0.0 if cfg.linear_probe
              else cfg.drop_path, **cfg.model_kwargs, "num_classes": num_classes}
    model = create_model(cfg.model, **kwargs)
    report = "random initialisation"
    if cfg.checkpoint:
        state, source, config = read_weights(cfg.checkpoint)
        if source == "lomar" and config:
            check_pretrained_data(config, cfg)
        report = load_encoder_state(model, state, source, cfg.checkpoint).summary()
    if cfg.linear_probe:
        attach_probe_head(model, num_classes)
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("head.")
    model.ops_backend = cfg.ops_backend
    return model, report


def set_train_mode(model: nn.Module, linear_probe: bool) -> None:
    """Train mode; a linear probe keeps the frozen encoder in eval mode (no drop path,
    fixed statistics) and trains only its head."""
    model.train(not linear_probe)
    if linear_probe:
        model.head.train()


def _optimizer(cfg: FinetuneConfig, model: nn.Module, peak_lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if cfg.linear_probe:
        groups = param_groups_weight_decay(model.head, o.weight_decay)
    else:
        groups = param_groups_layer_decay(model, o.weight_decay, o.layer_decay,
                                          no_weight_decay_names(model))
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr, momentum=o.momentum)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=o.betas)


def _criterion(cfg: FinetuneConfig) -> nn.Module:
    if cfg.uses_mixup:
        return SoftTargetCrossEntropy()  # mixup makes the (smoothed) soft targets
    if cfg.aug.smoothing > 0 and not cfg.linear_probe:
        return LabelSmoothingCrossEntropy(cfg.aug.smoothing)
    return nn.CrossEntropyLoss()


class FinetuneJob(Job):
    best_metric, best_key = "val_top1", "best_top1"

    def __init__(self, cfg: FinetuneConfig, info: distributed.DistInfo):
        super().__init__(cfg, info)
        self.name = "linear probe" if cfg.linear_probe else "finetune"
        self.kind = "linear probe" if cfg.linear_probe else "fine-tuning"

    def datasets(self):
        return _datasets(self.cfg, self.info)

    def build_model(self, train_set):
        cfg = self.cfg
        num_classes = len(train_set.classes)
        model, report = _build_model(cfg, num_classes)
        self.mixup = None
        if cfg.uses_mixup:
            a = cfg.aug
            self.mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                               switch_prob=a.mixup_switch_prob, mode=a.mixup_mode,
                               label_smoothing=a.smoothing, num_classes=num_classes)
        self.criterion = _criterion(cfg)
        return model, (f"finetune: {cfg.model}, {num_classes} classes, "
                       f"{'linear probe' if cfg.linear_probe else 'fine-tuning'}; init: {report}")

    def optimizer(self, model, peak_lr):
        return _optimizer(self.cfg, model, peak_lr)

    def trainable(self):
        return self.model.head if self.cfg.linear_probe else None

    def train_mode(self):
        set_train_mode(self.model, self.cfg.linear_probe)

    def compute_loss(self, net, batch, step, micro):
        cfg = self.cfg
        seed_all(mix(cfg.seed, step, micro, self.info.rank))  # drop path and mixup draws
        imgs, target = batch
        if self.mixup is not None:
            imgs, target = self.mixup(imgs, target)
        if cfg.linear_probe:
            with torch.no_grad():
                features = self.model.forward_features(imgs)
            return self.criterion(net(features), target)
        return self.criterion(net(imgs), target)

    def evaluates_at(self, step):  # at the end of every epoch, and of the run
        return step % self.loop.steps_per_epoch == 0 or step == self.loop.total_steps

    def evaluate(self):
        return evaluate(self.model, self.val_set, self.cfg, self.info)

    def eval_line(self, step, best):
        m, epoch = self.latest, step / self.loop.steps_per_epoch
        return (f"{self.name} step {step} (epoch {epoch:.2f}): val top-1 {m['val_top1']:.2f}%, "
                f"top-5 {m['val_top5']:.2f}%, best top-1 {best:.2f}%")

    def figures(self):
        if not self.latest:
            return {}
        return {"accuracy_curve": plot_loss_curve(
            self.out / "log.jsonl", self.out / "accuracy.png", key="val_top1",
            title=f"{self.cfg.model} {self.kind}: val top-1 (%)")}


def finetune(cfg: FinetuneConfig) -> dict:
    """Run (or resume) a fine-tuning or linear-probe job; returns a summary."""
    return run_job(FinetuneJob, cfg)
