"""The kNN monitor of pretraining: how well the encoder's features separate labelled
images, while it trains (docs/training.md#knn-monitor).

DINO's weighted k-nearest-neighbour classifier (Caron et al. 2021, ``eval_knn.py``):
features L2-normalised, the cosine similarity of each val image to every train image,
its k most similar train images vote for their class with weight exp(sim / T), the
votes summed per class; top-1 and top-5 of those sums. k = 20 and T = 0.07 by default.

Features (:func:`extract_features`): the pretraining model's ``forward_features``,
whole images at the pretraining resolution (resized on the shorter side and centre
cropped), nothing masked, eval mode, no gradients, under the run's autocast. Images
go to the model as uint8: it normalises them as it normalises its training windows.

Nothing here draws from the global random generators (the data loader has its own),
so a run with the monitor computes the same losses as one without it. Under DDP each
process extracts every world_size-th image and the features are all-gathered into
dataset order: every process holds the same matrices and computes the same accuracy,
which does not depend on how many processes share the work (up to the rounding of
batched matrix products, which batch composition may change in the last bit)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from .. import distributed
from ..config import ConfigError
from ..data import ImageFiles, build_demo_digits
from . import precision
from .finetune import DEMO_DIGITS, topk_correct


def knn_transform(size: int) -> v2.Compose:
    """uint8 (C, H, W) -> uint8 (C, size, size): shorter side to ``size`` (bicubic,
    antialiased), centre crop."""
    return v2.Compose([v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                       v2.CenterCrop(size)])


def knn_datasets(path: str, size: int, out_dir: str | Path,
                 info: distributed.DistInfo) -> tuple[ImageFiles, ImageFiles]:
    """(train, val) image sets of ``path`` (``train/`` and ``val/`` in the ImageFolder
    layout), or of scikit-learn's digits built at ``size`` in ``out_dir/demo_digits``
    when ``path`` is "digits" (the demo probe's set). Their classes must agree."""
    root = Path(path)
    if path == DEMO_DIGITS:
        root = Path(out_dir) / "demo_digits"
        if info.is_main:
            build_demo_digits(root, size=size, seed=0)
        if info.enabled:
            torch.distributed.barrier()
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ConfigError(f"config: eval.knn_data {path}: {root / split} not found (it must "
                              f"hold train/ and val/, one sub-folder per class)")
    train, val = (ImageFiles(root / split, knn_transform(size)) for split in ("train", "val"))
    if not train.classes:
        raise ConfigError(f"config: eval.knn_data: {train.root} must hold one sub-folder per "
                          f"class (ImageFolder layout); it holds images only")
    if val.classes != train.classes:
        raise ConfigError(f"config: eval.knn_data: the classes of {val.root} "
                          f"({', '.join(val.classes) or 'none'}) differ from those of "
                          f"{train.root} ({', '.join(train.classes)})")
    return train, val


def subset_indices(n: int, max_images: int) -> torch.Tensor:
    """Indices of at most ``max_images`` of ``n`` images, evenly spaced (0: all). The
    folders list images class by class, so every class keeps its share; no random draw."""
    if not max_images or max_images >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, max_images).round().long()


@torch.no_grad()
def extract_features(model: nn.Module, dataset, indices: torch.Tensor, batch_size: int,
                     info: distributed.DistInfo, amp: precision.Amp = False,
                     num_workers: int = 0) -> torch.Tensor:
    """(len(indices), D) float32 features ``model.forward_features`` gives the images
    ``dataset[indices]``, in that order, on ``info.device``; the model in eval mode
    meanwhile (its mode restored), autocast as ``amp`` selects. Under DDP each process
    computes every world_size-th image and all get the whole matrix."""
    rank, world = info.rank, info.world_size
    mine = indices[rank::world]
    # A loader of its own generator: creating an iterator otherwise draws its base seed
    # from the global generator, which would shift the training's random stream.
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, mine.tolist()), batch_size=batch_size,
        num_workers=num_workers, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    parts = []
    try:
        for images, _ in loader:
            with precision.autocast(amp, info.device):
                parts.append(model.forward_features(images.to(info.device)).float())
    finally:
        model.train(was_training)
    dim = model.embed_dim
    feats = torch.cat(parts) if parts else torch.zeros(0, dim, device=info.device)
    if not info.enabled:
        return feats
    # all_gather needs equal sizes: pad every shard to the largest, then keep each
    # process's own rows, interleaved back into the order of ``indices``.
    per = -(-len(indices) // world)
    padded = torch.zeros(per, dim, device=info.device)
    padded[:len(feats)] = feats
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    out = torch.empty(len(indices), dim, device=info.device)
    for r, part in enumerate(gathered):
        n = len(indices[r::world])
        out[r::world] = part[:n]
    return out


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor,
               query_features: torch.Tensor, num_classes: int, k: int = 20,
               temperature: float = 0.07, chunk: int = 256) -> torch.Tensor:
    """(M, num_classes) weighted votes of the ``k`` nearest train images of each query
    (DINO's rule): cosine similarity of the L2-normalised features, each neighbour's
    vote exp(sim / temperature) added to its class. Queries in chunks of ``chunk``
    (memory: chunk x N similarities). ``k`` is capped at the number of train images."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_scores: k must be >= 1 and temperature > 0, got k={k}, "
                         f"temperature={temperature}")
    train = nn.functional.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query_features), chunk):
        query = nn.functional.normalize(query_features[start:start + chunk].float(), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(query), num_classes, device=train.device)
        scores.append(votes.scatter_add_(1, labels[idx], (sim / temperature).exp()))
    return torch.cat(scores) if scores else torch.zeros(0, num_classes, device=train.device)


def knn_accuracy(train_features, train_labels, val_features, val_labels, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> dict:
    """{"knn_top1", "knn_top5"}: the % of val images whose class has the most weighted
    votes (:func:`knn_scores`), or is among the 5 with most (5 capped at the classes)."""
    scores = knn_scores(train_features, train_labels, val_features, num_classes, k, temperature)
    top1, top5 = topk_correct(scores, val_labels.to(scores.device))
    n = max(1, len(val_labels))
    return {"knn_top1": 100.0 * top1 / n, "knn_top5": 100.0 * top5 / n}


class KnnMonitor:
    """The monitor of one run: its two image sets (subsets of at most ``max_images``)
    and :meth:`evaluate`, which extracts both sets' features with the model as it is
    and returns the kNN accuracy and its cost in seconds (``knn_seconds``)."""

    def __init__(self, path: str, size: int, out_dir: str | Path, info: distributed.DistInfo,
                 k: int, temperature: float, batch_size: int, max_images: int,
                 amp: precision.Amp, num_workers: int):
        self.info, self.k, self.temperature = info, k, temperature
        self.batch_size, self.amp, self.num_workers = batch_size, amp, num_workers
        self.train, self.val = knn_datasets(path, size, out_dir, info)
        self.num_classes = len(self.train.classes)
        self.indices = [subset_indices(len(s), max_images) for s in (self.train, self.val)]
        self.labels = [torch.tensor(s.labels)[i] for s, i in zip((self.train, self.val),
                                                                  self.indices)]

    def describe(self) -> str:
        return (f"kNN monitor: {len(self.indices[0])} train / {len(self.indices[1])} val images "
                f"of {self.train.root.parent}, {self.num_classes} classes, k={self.k}, "
                f"T={self.temperature}")

    def evaluate(self, model: nn.Module) -> dict:
        start = time.perf_counter()
        feats = [extract_features(model, s, i, self.batch_size, self.info, self.amp,
                                  self.num_workers)
                 for s, i in zip((self.train, self.val), self.indices)]
        result = knn_accuracy(feats[0], self.labels[0], feats[1], self.labels[1],
                              self.num_classes, self.k, self.temperature)
        return {**result, "knn_seconds": time.perf_counter() - start}
