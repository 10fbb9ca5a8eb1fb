"""Object detection and instance segmentation with a LoMaR encoder as a ViTDet
backbone: torchvision's Mask R-CNN (or Faster R-CNN) trained and evaluated (COCO
box and mask AP) on data in COCO format.

    lomar detect --config detect_vitdet_base_1024 data.path=/data/coco \\
        checkpoint=output/lomar_vit_base_448/checkpoint-last.pt

``data.path`` holds ``train_images`` / ``val_images`` folders and their instances
JSON files (COCO 2017 names by default); ``synthetic`` builds the offline digits
set (lomar.detection.synthetic) in ``data.synthetic_dir`` and uses it.

Defaults are ViTDet's recipe for ViT-B (Li et al. 2022): 1024x1024 inputs with
large-scale jitter (scale 0.1-2.0, flip), windowed attention (14x14) with global
blocks 2, 5, 8, 11, drop path 0.1, AdamW (0.9, 0.999) with weight decay 0.1 (not
on norms, biases, iRPE tables), layer-wise lr decay 0.7, lr 1e-4 at batch 64
(``blr`` 4e-4 x batch / 256), 100 epochs. Unlike ViTDet's step decay, the lr
follows the other jobs' warmup + cosine. The heads are torchvision's defaults.

The backbone's weights come from ``checkpoint`` (our pretraining or fine-tuning
checkpoint, its model.safetensors, or the authors' checkpoint) with a report of
the loaded, new and unused tensors; the detector's heads start from scratch.

Checkpoints, resume, logs, progress and DDP as for ``pretrain`` and ``finetune``
(lomar.engine.loop): scale jitter and flips are drawn from seeds of (seed, epoch,
index), the RPN's and RoI heads' sampling and drop path from (seed, step), so a
resumed run repeats the uninterrupted one. Box and mask AP are measured every
``eval_every`` steps and at the end; the best box AP is kept as
``checkpoint-best.pt``. Figures: loss.png, ap.png, predictions.png."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import torch
from torch import nn

from .. import distributed
from ..config import ConfigError
from ..detection import (
    CocoDetection,
    build_demo_detection,
    build_detector,
    coco_ap,
    coco_results,
    collate,
)
from ..detection.figures import draw_predictions, plot_ap
from ..models import create_model
from . import precision
from .init_weights import LoadReport, load_encoder_weights
from .job import LossTermsJob, OptimConfig, RunConfig, run_job
from .param_groups import no_weight_decay_names, param_groups_layer_decay
from .seeding import mix, seed_all

SYNTHETIC = "synthetic"  # data.path value: the offline digits-on-photos set
SYNTHETIC_FILES = ("train", "annotations/instances_train.json", "val",
                   "annotations/instances_val.json")


@dataclass(frozen=True)
class DetectDataConfig:
    path: str = ""
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    input_size: int = 1024  # images are padded to input_size x input_size
    scale_range: tuple[float, float] = (0.1, 2.0)  # large-scale jitter of the long side
    hflip: float = 0.5
    num_workers: int = 2
    synthetic_dir: str = "output/synthetic_coco"  # where path "synthetic" is built
    synthetic_train: int = 512
    synthetic_val: int = 128
    synthetic_size: int = 128
    synthetic_digit_sizes: tuple[int, int] = (16, 48)


@dataclass(frozen=True)
class DetectorConfig:
    kind: Literal["mask_rcnn", "faster_rcnn"] = "mask_rcnn"
    out_channels: int = 256  # of every pyramid level
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per level, strides 4-64
    box_head_dim: int = 1024
    mask_head_dims: tuple[int, ...] = (256, 256, 256, 256)
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    detections_per_image: int = 100
    rpn_proposals: tuple[int, int] = (2000, 1000)  # (training, evaluation), torchvision's


@dataclass(frozen=True)
class DetectOptimConfig(OptimConfig):
    blr: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.7
    warmup_epochs: float = 0.25


@dataclass(frozen=True)
class DetectConfig(RunConfig):
    TASK: ClassVar[str] = "detection"

    model: str = "vitdet_base_patch16"
    checkpoint: Optional[str] = None  # backbone weights (ours or the authors'); none: random
    window_size: int = 14  # 0: global attention in every block
    global_blocks: Optional[tuple[int, ...]] = None  # default: the last of each quarter
    drop_path: float = 0.1
    checkpointing: bool = False  # activation checkpointing of the backbone's blocks
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    optim: DetectOptimConfig = field(default_factory=DetectOptimConfig)
    batch_size: int = 2  # per process
    eval_every: int = 0  # steps between evaluations; 0: at the end only
    figure_images: int = 4  # val images drawn with predictions (predictions.png); 0: none
    output_dir: str = "output/detect"
    log_every: int = 20

    @property
    def depth(self) -> int:
        return self.model_info.depth

    def validate(self) -> None:
        self.check_run(f"a COCO-format folder, or '{SYNTHETIC}' for the offline digits set")
        patch = self.model_info.patch_size
        size, multiple = self.data.input_size, math.lcm(patch, 32)
        if size % multiple:
            raise ConfigError(f"config: data.input_size {size} must be a multiple of {multiple} "
                              f"(the patch size {patch} and the pyramid's largest stride 32)")
        bad = [b for b in self.global_blocks or () if not 0 <= b < self.depth]
        if bad:
            raise ConfigError(f"config: global_blocks must be block indices in [0, "
                              f"{self.depth - 1}], got {list(self.global_blocks)}")
        o, d, det = self.optim, self.data, self.detector
        lo, hi = d.scale_range
        checks = [
            ("window_size", self.window_size, self.window_size >= 0, ">= 0"),
            ("eval_every", self.eval_every, self.eval_every >= 0, ">= 0"),
            ("figure_images", self.figure_images, self.figure_images >= 0, ">= 0"),
            ("drop_path", self.drop_path, 0 <= self.drop_path < 1, "in [0, 1)"),
            ("optim.layer_decay", o.layer_decay, 0 < o.layer_decay <= 1, "in (0, 1]"),
            ("data.scale_range", list(d.scale_range), 0 < lo <= hi, "(low, high), 0 < low <= high"),
            ("data.hflip", d.hflip, 0 <= d.hflip <= 1, "in [0, 1]"),
            ("detector.anchor_sizes", list(det.anchor_sizes), len(det.anchor_sizes) == 5
             and min(det.anchor_sizes) > 0, "5 positive sizes (strides 4, 8, 16, 32, 64)"),
            ("detector.mask_head_dims", list(det.mask_head_dims),
             len(det.mask_head_dims) >= 1 and min(det.mask_head_dims) > 0,
             "one or more positive widths"),
            ("detector.out_channels", det.out_channels, det.out_channels >= 1, ">= 1"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"config: {name} must be {allowed}, got {value}")


def _datasets(cfg: DetectConfig, info: distributed.DistInfo):
    d = cfg.data
    root = Path(d.path)
    files = (d.train_images, d.train_annotations, d.val_images, d.val_annotations)
    if d.path == SYNTHETIC:
        root, files = Path(d.synthetic_dir), SYNTHETIC_FILES
        if info.is_main:
            build_demo_detection(root, d.synthetic_train, d.synthetic_val, d.synthetic_size,
                                 d.synthetic_digit_sizes, seed=0)
        if info.enabled:
            torch.distributed.barrier()
    masks = cfg.detector.kind == "mask_rcnn"
    train = CocoDetection(root / files[0], root / files[1], True, d.input_size, d.scale_range,
                          d.hflip, masks)
    val = CocoDetection(root / files[2], root / files[3], False, d.input_size, masks=masks)
    if val.category_ids != train.category_ids:
        raise ConfigError(f"config: the categories of {val.annotations} differ from those of "
                          f"{train.annotations}")
    return train, val


def describe(report: LoadReport) -> str:
    """The loading report in a line: names grouped by their first part when many."""
    def names(items):
        groups: dict[str, list[str]] = {}
        for name in items:
            groups.setdefault(name.split(".")[0], []).append(name)
        parts = [f"{head}.* ({len(v)} tensors)" if len(v) > 3 else ", ".join(v)
                 for head, v in groups.items()]
        return ", ".join(parts) or "none"
    return (f"{len(report.loaded)} tensors loaded ({report.source} checkpoint); new: "
            f"{names(report.missing)}; unused: {names(report.unused)}")


def build_model(cfg: DetectConfig, num_classes: int) -> tuple[torch.nn.Module, str]:
    """The detector (backbone weights from ``cfg.checkpoint`` when set) and the
    loading report (call it seeded: the heads draw their initial weights)."""
    kwargs = {"drop_path_rate": cfg.drop_path, "window_size": cfg.window_size,
              "global_blocks": cfg.global_blocks, "checkpointing": cfg.checkpointing,
              "out_channels": cfg.detector.out_channels, **cfg.model_kwargs}
    backbone = create_model(cfg.model, **kwargs)
    report = "backbone: random initialisation"
    if cfg.checkpoint:
        report = "backbone: " + describe(load_encoder_weights(backbone, cfg.checkpoint))
    backbone.ops_backend = cfg.ops_backend
    det = cfg.detector
    model = build_detector(backbone, num_classes, det.kind, cfg.data.input_size, det.anchor_sizes,
                           det.box_head_dim, det.mask_head_dims, det.rpn_batch_size_per_image,
                           det.box_batch_size_per_image, det.detections_per_image,
                           det.rpn_proposals)
    return model, report + "; detector heads: new"


def detector_param_groups(detector: nn.Module, weight_decay: float,
                          layer_decay: float) -> list[dict]:
    """The backbone's groups from :func:`param_groups_layer_decay` (patch embedding
    and block i at layer_decay ** (depth + 1 - layer), the pyramid at the full lr),
    then the heads at the full lr; no weight decay on norms, biases and iRPE tables."""
    backbone = detector.backbone
    groups = param_groups_layer_decay(backbone, weight_decay, layer_decay,
                                      no_weight_decay_names(backbone))
    top = len(backbone.blocks) + 1
    heads = {True: [], False: []}
    for name, param in detector.named_parameters():
        if param.requires_grad and not name.startswith("backbone."):
            heads[not (param.ndim <= 1 or name.endswith(".bias"))].append(param)
    for decay, params in heads.items():
        if params:
            groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0,
                           "lr_scale": 1.0, "layer": top})
    return groups


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: CocoDetection, cfg: DetectConfig,
             info: distributed.DistInfo) -> dict:
    """COCO box (and mask) AP in percent over the whole val set: each process
    predicts every world_size-th image, the main process scores them all."""
    shard = torch.utils.data.Subset(dataset, range(info.rank, len(dataset), info.world_size))
    loader = torch.utils.data.DataLoader(shard, batch_size=cfg.batch_size, collate_fn=collate,
                                         num_workers=cfg.data.num_workers)
    was_training = model.training
    model.eval()
    results = []
    for images, targets in loader:
        with precision.autocast(cfg.amp, info.device):
            outputs = model([im.to(info.device) for im in images])
        results += coco_results(outputs, [int(t["image_id"]) for t in targets],
                                dataset.category_ids)
    model.train(was_training)
    if info.enabled:
        gathered = [None] * info.world_size
        torch.distributed.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics = [None]
    if info.is_main:
        kinds = ("bbox", "segm") if cfg.detector.kind == "mask_rcnn" else ("bbox",)
        metrics = [{f"{'box' if kind == 'bbox' else 'mask'}_{stat}": value for kind in kinds
                    for stat, value in coco_ap(dataset.coco, results, kind, dataset.ids).items()}]
    if info.enabled:
        torch.distributed.broadcast_object_list(metrics, src=0)
    return {**metrics[0], "detections": float(len(results))}


class DetectJob(LossTermsJob):
    name, kind = "detect", "detection"
    best_metric, best_key = "box_ap", "best_box_ap"
    collate_fn = staticmethod(collate)

    def datasets(self):
        return _datasets(self.cfg, self.info)

    def build_model(self, train_set):
        cfg = self.cfg
        model, report = build_model(cfg, len(train_set.category_ids))
        return model, (f"detect: {cfg.model} {cfg.detector.kind}, {len(train_set.categories)} "
                       f"categories, {len(train_set)} train / {len(self.val_set)} val images; "
                       f"{report}")

    def optimizer(self, model, peak_lr):
        o = self.cfg.optim
        return torch.optim.AdamW(detector_param_groups(model, o.weight_decay, o.layer_decay),
                                 lr=peak_lr, betas=o.betas)

    def compute_loss(self, net, batch, step, micro):
        seed_all(mix(self.cfg.seed, step, micro, self.info.rank))  # RPN/RoI sampling, drop path
        images, targets = batch
        return self.sum_terms(net(list(images), list(targets)))

    def evaluate(self):
        return evaluate(self.model, self.val_set, self.cfg, self.info)

    def eval_line(self, step, best):
        m = self.latest
        mask = f", mask AP {m['mask_ap']:.2f}" if "mask_ap" in m else ""
        return f"detect step {step}: box AP {m['box_ap']:.2f}{mask} (best box AP {best:.2f})"

    def summary(self):
        return {k: v for k, v in self.latest.items() if k.endswith(("_ap", "_ap50", "_ap75"))}

    def figures(self):
        cfg, out, figures = self.cfg, self.out, {}
        if self.latest:
            figures["ap_curve"] = plot_ap({cfg.model: out}, out / "ap.png", title=cfg.model)
        if cfg.figure_images:
            figures["predictions"] = draw_predictions(
                self.model, self.val_set, out / "predictions.png", cfg.figure_images,
                device=self.info.device)
        return figures


def detect(cfg: DetectConfig) -> dict:
    """Run (or resume) a detection job; returns a summary."""
    return run_job(DetectJob, cfg)
