"""Randomness as a function of (seed, epoch, index) or (seed, step), so that a run
resumed from a checkpoint mid-epoch draws exactly what the uninterrupted run drew,
whatever the number of data-loader workers."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int, devices: bool = True) -> None:
    """Seed torch (the CPU and, with ``devices``, every GPU), Python's ``random`` and
    NumPy's global generator: timm's augmentations and mixup draw from the last two.

    Data items seed the CPU only: ``torch.manual_seed`` also queues a seed for CUDA,
    which, until CUDA is initialised, records a stack trace each time (milliseconds
    per call, more than decoding a small JPEG)."""
    if devices:
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def mix(*parts: int) -> int:
    """A 63-bit seed from integers (a simple, stable hash)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` is transformed with every
    generator seeded from mix(seed, e, i): augmentation independent of workers and
    resumable. Keys are (epoch, index) pairs (what :class:`ResumableSampler` yields),
    so that workers that live across epochs need no message when the epoch changes;
    a bare index means epoch 0."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed_all(mix(self.seed, epoch, index), devices=False)
        return self.dataset[index]


class ResumableSampler(torch.utils.data.Sampler):
    """A permutation per epoch from mix(seed, epoch), this rank's share of it, from
    ``start`` (batches already consumed in this epoch are skipped on resume), as
    (epoch, index) keys for :class:`SeededItems`."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self):
        g = torch.Generator().manual_seed(mix(self.seed, self.epoch))
        perm = torch.randperm(self.size, generator=g).tolist()
        usable = self.size - self.size % self.world
        return perm[:usable][self.rank::self.world]

    def __len__(self):
        return max(0, self.size // self.world - self.start)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in self._indices()[self.start:])


def sample_generators(seed: int, step: int, first: int, count: int,
                      stride: int = 1) -> list[torch.Generator]:
    """CPU generators for the windows and masks of ``count`` samples, sample i seeded
    by mix(seed, step, first + i * stride): a function of the sample's index in the
    step's global batch, not of the process that holds it.

    :class:`ResumableSampler` deals an epoch's order round-robin to the ranks, so
    with W processes of micro-batches of b, rank r's sample i of micro-batch m is
    sample W*(m*b + i) + r of the step's global batch, the same image one process
    with micro-batches of W*b holds at that index: first = W*m*b + r, stride = W."""
    return [torch.Generator().manual_seed(mix(seed, step, first + i * stride))
            for i in range(count)]
