"""Semantic segmentation with a LoMaR encoder: UperNet (with the auxiliary FCN
head) on the encoder as a ViTDet backbone, trained on crops and evaluated (mIoU)
with sliding windows over whole images.

    lomar segment --config segment_upernet_base_512 data.path=/data/ADEChallengeData2016 \\
        checkpoint=output/lomar_vit_base_448/checkpoint-last.pt

``data.path`` is a folder in the ADE20K layout (``images/{training,validation}``,
``annotations/{training,validation}``; lomar.segmentation.SegmentationFolder says
how classes and label values are read); ``synthetic`` builds the offline shapes
set (lomar.segmentation.synthetic) in ``data.synthetic_dir`` and uses it.

The model (lomar.segmentation): the backbone of ``model`` (a ``vitdet_*`` name:
windowed blocks with a few global ones, then the simple feature pyramid at strides
4-32, each level ``head.in_channels`` wide), UperNet's head on the four levels and
the FCN head on stride 16, its loss weighted ``head.aux_weight``. BatchNorm in the
heads becomes SyncBatchNorm under DDP on CUDA. The backbone's weights come from
``checkpoint`` (ours, the authors', or MAE/BEiT's through the one reader) with a
report of the loaded, new and unused tensors; the heads start from scratch.

Defaults: the UperNet ADE20K recipe of MAE and BEiT at ViT-B: 512x512 crops
(random rescale 0.5-2.0, crop, flip, photometric distortion), AdamW (0.9, 0.999),
lr 1e-4 at batch 16 (``optim.blr`` 1.6e-3 x batch / 256), weight decay 0.05
(not on norms, biases, iRPE tables), layer-wise lr decay 0.65, drop path 0.1,
160k iterations with 1500 of warmup. Unlike mmseg's poly decay, the lr follows
the other jobs' warmup + cosine (lomar.schedule).

Checkpoints, resume, logs, progress, mixed precision and DDP as for the other jobs
(lomar.engine.loop): augmentation draws come from (seed, epoch, index), dropout
and drop path from (seed, step), so a resumed run repeats the uninterrupted one.
mIoU, pixel accuracy and mean class accuracy (percent) are measured every
``eval_every`` steps and at the end over the whole val set (each process a share,
the confusion matrices summed); the best mIoU is kept as ``checkpoint-best.pt``,
the last evaluation's per-class IoU in ``class_iou.json``. Figures: loss.png,
miou.png, class_iou.png, predictions.png."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import torch

from .. import distributed
from ..config import ConfigError
from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..models import create_model
from ..reports.segment import CLASS_IOU_FILE
from ..segmentation import SegmentationFolder, SegmentationMetrics, collate, figures
from ..segmentation.inference import resize_logits, sliding_window_logits
from ..segmentation.segmenter import build_segmenter
from ..segmentation.synthetic import build_demo_segmentation
from . import precision
from .detect import describe, detector_param_groups
from .init_weights import load_encoder_weights
from .job import LossTermsJob, OptimConfig, RunConfig, check_normalisation, run_job
from .seeding import mix, seed_all

SYNTHETIC = "synthetic"  # data.path value: the offline shapes-on-photos set
SYNTHETIC_FOLDERS = ("images/training", "annotations/training", "images/validation",
                     "annotations/validation")


@dataclass(frozen=True)
class SegmentDataConfig:
    path: str = ""
    train_images: str = "images/training"
    train_annotations: str = "annotations/training"
    val_images: str = "images/validation"
    val_annotations: str = "annotations/validation"
    crop_size: int = 512  # training crops; the sliding window at evaluation
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale of mmseg's (2048, 512) fit
    hflip: float = 0.5
    photometric: bool = True  # mmseg's photometric distortion
    ignore_index: int = 255
    reduce_zero_label: bool = True  # ADE20K: label 0 ("other") ignored, v -> class v - 1
    class_map: Optional[str] = None  # class names / {raw value: name}; default: classes.txt
    mean: Optional[tuple[float, ...]] = None  # per band; null: ImageNet's (RGB)
    std: Optional[tuple[float, ...]] = None
    num_workers: int = 4
    synthetic_dir: str = "output/synthetic_segmentation"  # where path "synthetic" is built
    synthetic_train: int = 256
    synthetic_val: int = 64
    synthetic_size: int = 128


@dataclass(frozen=True)
class SegmentHeadConfig:
    in_channels: int = 256  # every pyramid level's width (ViTDet's), the heads' input
    channels: int = 512  # UperNet's width
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    aux_channels: int = 256
    aux_weight: float = 0.4  # 0: no auxiliary head


@dataclass(frozen=True)
class SegmentOptimConfig(OptimConfig):
    blr: float = 1.6e-3  # lr 1e-4 at batch 16
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.65
    warmup_epochs: float = 1.19  # 1500 iterations of ADE20K's 1263 per epoch at batch 16


@dataclass(frozen=True)
class SegmentConfig(RunConfig):
    TASK: ClassVar[str] = "detection"  # the vitdet_* backbones serve both dense tasks

    model: str = "vitdet_base_patch16"
    checkpoint: Optional[str] = None  # backbone weights (ours, the authors', MAE/BEiT)
    window_size: int = 16  # a 512 crop's 32x32 grid in four windows; 0: all global
    global_blocks: Optional[tuple[int, ...]] = None  # default: the last of each quarter
    drop_path: float = 0.1
    checkpointing: bool = False
    head: SegmentHeadConfig = field(default_factory=SegmentHeadConfig)
    data: SegmentDataConfig = field(default_factory=SegmentDataConfig)
    optim: SegmentOptimConfig = field(default_factory=SegmentOptimConfig)
    batch_size: int = 2  # per process
    epochs: float = 126.7  # 160k iterations of ADE20K's 1263 per epoch at batch 16
    eval_every: int = 0  # steps between evaluations; 0: at the end only
    eval_stride: Optional[int] = None  # sliding-window stride; null: 2/3 of the crop
    figure_images: int = 4  # val images drawn with predictions; 0: none
    output_dir: str = "output/segment"
    log_every: int = 50

    def validate(self) -> None:
        self.check_run(f"an ADE20K-layout folder, or '{SYNTHETIC}' for the offline shapes set")
        info = self.model_info
        d, h, o = self.data, self.head, self.optim
        multiple = math.lcm(info.patch_size, 32)
        if d.crop_size % multiple or d.crop_size < multiple:
            raise ConfigError(f"config: data.crop_size {d.crop_size} must be a positive multiple "
                              f"of {multiple} (the patch size {info.patch_size} and the "
                              f"pyramid's largest stride 32)")
        bad = [b for b in self.global_blocks or () if not 0 <= b < info.depth]
        if bad:
            raise ConfigError(f"config: global_blocks must be block indices in [0, "
                              f"{info.depth - 1}], got {list(self.global_blocks)}")
        check_normalisation(d.mean, d.std, info.in_chans)
        if d.mean is None and info.in_chans != 3:
            raise ConfigError(f"config: data.mean and data.std are required for "
                              f"{info.in_chans}-band images (the default is ImageNet's RGB "
                              f"statistics; lomar stats measures them)")
        lo, hi = d.scale_range
        stride = self.eval_stride
        checks = [
            ("window_size", self.window_size, self.window_size >= 0, ">= 0"),
            ("eval_every", self.eval_every, self.eval_every >= 0, ">= 0"),
            ("eval_stride", stride, stride is None or 0 < stride <= d.crop_size,
             f"in [1, data.crop_size {d.crop_size}] or null (2/3 of the crop)"),
            ("figure_images", self.figure_images, self.figure_images >= 0, ">= 0"),
            ("drop_path", self.drop_path, 0 <= self.drop_path < 1, "in [0, 1)"),
            ("optim.layer_decay", o.layer_decay, 0 < o.layer_decay <= 1, "in (0, 1]"),
            ("data.scale_range", list(d.scale_range), 0 < lo <= hi, "(low, high), 0 < low <= high"),
            ("data.hflip", d.hflip, 0 <= d.hflip <= 1, "in [0, 1]"),
            ("data.ignore_index", d.ignore_index, d.ignore_index >= 0, ">= 0"),
            ("head.in_channels", h.in_channels, h.in_channels >= 4 and h.in_channels % 4 == 0,
             "a positive multiple of 4"),
            ("head.channels", h.channels, h.channels >= 1, ">= 1"),
            ("head.aux_channels", h.aux_channels, h.aux_channels >= 1, ">= 1"),
            ("head.pool_scales", list(h.pool_scales), len(h.pool_scales) >= 1
             and min(h.pool_scales) >= 1, "one or more sizes >= 1"),
            ("head.dropout", h.dropout, 0 <= h.dropout < 1, "in [0, 1)"),
            ("head.aux_weight", h.aux_weight, h.aux_weight >= 0, ">= 0 (0: no auxiliary head)"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config: {name} must be {allowed}, got {value}")


def _datasets(cfg: SegmentConfig, info: distributed.DistInfo):
    d = cfg.data
    root = Path(d.path)
    folders = (d.train_images, d.train_annotations, d.val_images, d.val_annotations)
    if d.path == SYNTHETIC:
        root, folders = Path(d.synthetic_dir), SYNTHETIC_FOLDERS
        if info.is_main:
            build_demo_segmentation(root, d.synthetic_train, d.synthetic_val, d.synthetic_size)
        if info.enabled:
            torch.distributed.barrier()
    common = dict(crop_size=d.crop_size, ignore_index=d.ignore_index,
                  reduce_zero_label=d.reduce_zero_label, class_map=d.class_map)
    train = SegmentationFolder(root, folders[0], folders[1], True, scale_range=d.scale_range,
                               hflip=d.hflip, photometric=d.photometric, **common)
    val = SegmentationFolder(root, folders[2], folders[3], False, **common)
    if val.classes != train.classes:
        raise ConfigError(f"config: the classes of {root / folders[2]} ({val.num_classes}) differ "
                          f"from those of {root / folders[0]} ({train.num_classes})")
    channels = cfg.model_info.in_chans
    if train.bands != channels:
        raise ConfigError(f"config: the images of {root / folders[0]} have {train.bands} band(s), "
                          f"the model takes {channels} (model_kwargs.in_chans)")
    return train, val


def build_model(cfg: SegmentConfig, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The segmenter (backbone weights from ``cfg.checkpoint`` when set) and the loading
    report (call it seeded: the heads draw their initial weights)."""
    h = cfg.head
    kwargs = {"drop_path_rate": cfg.drop_path, "window_size": cfg.window_size,
              "global_blocks": cfg.global_blocks, "checkpointing": cfg.checkpointing,
              "out_channels": h.in_channels, "top_pool": False, **cfg.model_kwargs}
    backbone = create_model(cfg.model, **kwargs)
    report = "backbone: random initialisation"
    if cfg.checkpoint:
        report = "backbone: " + describe(load_encoder_weights(backbone, cfg.checkpoint))
    backbone.ops_backend = cfg.ops_backend
    mean = cfg.data.mean or IMAGENET_MEAN
    std = cfg.data.std or IMAGENET_STD
    model = build_segmenter(backbone, num_classes, h.in_channels, h.channels, h.pool_scales,
                            h.dropout, h.aux_channels, h.aux_weight, mean, std,
                            cfg.data.ignore_index)
    heads = "UperNet + FCN heads" if model.auxiliary_head is not None else "UperNet head"
    return model, f"{report}; {heads}: new"


@torch.no_grad()
def predict_logits(model, image: torch.Tensor, size, cfg: SegmentConfig, device) -> torch.Tensor:
    """(K, *size) float32 logits of one evaluation image by sliding windows, resized to
    the label map's ``size`` (the image may have been scaled to fit the evaluation bound)."""
    with precision.autocast(cfg.amp, device):
        logits = sliding_window_logits(model, image.to(device), cfg.data.crop_size,
                                       cfg.eval_stride, cfg.batch_size,
                                       model.pixel_mean.flatten().tolist())
    return resize_logits(logits, size) if tuple(size) != tuple(logits.shape[-2:]) else logits


@torch.no_grad()
def evaluate(model, dataset: SegmentationFolder, cfg: SegmentConfig,
             info: distributed.DistInfo) -> tuple[dict, list[float]]:
    """({miou, pixel_accuracy, mean_accuracy} in percent, per-class IoU in percent)
    over the whole val set: each process predicts every world_size-th image, the
    confusion matrices are summed."""
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=None,
                                         num_workers=cfg.data.num_workers)
    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(dataset.num_classes, dataset.ignore_index)
    for image, mask in loader:
        metrics.update(predict_logits(model, image, mask.shape, cfg, info.device).argmax(0).cpu(),
                       mask)
    model.train(was_training)
    metrics.all_reduce()
    result = metrics.compute()
    scores = {key: 100 * result[key] for key in ("miou", "pixel_accuracy", "mean_accuracy")}
    return scores, [100 * v for v in result["iou"]]


class SegmentJob(LossTermsJob):
    name, kind = "segment", "segmentation"
    best_metric, best_key = "miou", "best_miou"
    collate_fn = staticmethod(collate)

    def datasets(self):
        return _datasets(self.cfg, self.info)

    def build_model(self, train_set):
        cfg, info = self.cfg, self.info
        sync_bn = info.enabled and info.device.type == "cuda"
        normalised = cfg.batch_size * (info.world_size if sync_bn else 1)
        if 1 in cfg.head.pool_scales and normalised < 2:
            raise ConfigError(f"config: batch_size {cfg.batch_size} leaves the pyramid pooling's "
                              f"1x1 branch one value per channel for BatchNorm (SyncBatchNorm "
                              f"needs DDP on CUDA); use batch_size >= 2 or drop 1 from "
                              f"head.pool_scales")
        model, report = build_model(cfg, train_set.num_classes)
        if sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.class_iou: list[float] = []
        return model, (f"segment: {cfg.model} UperNet, {train_set.num_classes} classes, "
                       f"{len(train_set)} train / {len(self.val_set)} val images; {report}")

    def optimizer(self, model, peak_lr):
        o = self.cfg.optim
        return torch.optim.AdamW(detector_param_groups(model, o.weight_decay, o.layer_decay),
                                 lr=peak_lr, betas=o.betas)

    def compute_loss(self, net, batch, step, micro):
        seed_all(mix(self.cfg.seed, step, micro, self.info.rank))  # dropout, drop path
        images, masks = batch
        return self.sum_terms(net(images, masks))

    def evaluate(self):
        scores, self.class_iou = evaluate(self.model, self.val_set, self.cfg, self.info)
        if self.info.is_main:
            record = {"step": self.loop.step, "classes": self.val_set.classes,
                      "iou": [None if math.isnan(v) else v for v in self.class_iou], **scores}
            (self.out / CLASS_IOU_FILE).write_text(json.dumps(record, indent=1) + "\n")
        return scores

    def eval_line(self, step, best):
        m = self.latest
        return (f"segment step {step}: mIoU {m['miou']:.2f}, pixel accuracy "
                f"{m['pixel_accuracy']:.2f} (best mIoU {best:.2f})")

    def figures(self):
        cfg, out, result = self.cfg, self.out, {}
        if self.latest:
            result["miou_curve"] = figures.plot_miou({cfg.model: out}, out / "miou.png",
                                                     title=cfg.model)
            result["class_iou"] = figures.plot_class_iou(  # takes fractions
                {cfg.model: [v / 100 for v in self.class_iou]}, self.val_set.classes,
                out / "class_iou.png",
                title=f"{cfg.model}: IoU per class (step {self.loop.step})")
        if cfg.figure_images:
            result["predictions"] = self.draw_predictions(out / "predictions.png")
        return result

    def draw_predictions(self, path: Path) -> Path:
        """The first val images with their true and predicted label maps (at the
        label map's size, as scored)."""
        count = min(self.cfg.figure_images, len(self.val_set))
        images, preds, targets = [], [], []
        was_training = self.model.training
        self.model.eval()
        for index in range(count):
            image, mask = self.val_set[index]
            logits = predict_logits(self.model, image, mask.shape, self.cfg, self.info.device)
            images.append(image)
            preds.append(logits.argmax(0).cpu())
            targets.append(mask)
        self.model.train(was_training)
        return figures.draw_segmentations(images, preds, targets, self.val_set.classes, path,
                                          ignore_index=self.val_set.ignore_index)


def segment(cfg: SegmentConfig) -> dict:
    """Run (or resume) a segmentation job; returns a summary."""
    return run_job(SegmentJob, cfg)
