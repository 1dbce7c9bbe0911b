"""Batch sources for the one trainer: what an epoch's batches are made of.

A source has ``len(source)`` samples and ``epoch(generator, batch_size)`` yielding dict batches on the CPU
(``"y"`` = labels); every random draw of the epoch (order, augmentation) comes from ``generator``, which the
trainer seeds by (seed, epoch), so an epoch is the same whether or not the run was resumed before it.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from ..errors import TailsynthError
from .augment import augment, to_float
from .config import AugmentConfig
from .samplers import SAMPLERS

Batch = dict[str, torch.Tensor]


class ImageBatches:
    """uint8 images (N, H, W, C) -> float batches ``{"x": (B, C, H, W), "y": (B,)}`` in the order of a
    registered sampler ("instance" shuffle, "class_balanced"), each batch augmented (flips, rotation)."""

    def __init__(self, data, augment_cfg: AugmentConfig, sampler: str = "instance"):
        self.data, self.augment_cfg, self.order_fn = data, augment_cfg, SAMPLERS.get(sampler)

    def __len__(self) -> int:
        return len(self.data.labels)

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        order = self.order_fn(self.data.labels, generator)
        for b in range(math.ceil(len(self) / batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = augment(to_float(torch.from_numpy(self.data.images[idx])), self.augment_cfg, generator)
            yield {"x": x, "y": torch.from_numpy(self.data.labels[idx])}


class PairedBatches:
    """Each batch of ``data`` (in a registered sampler's order, every sample once an epoch, augmented) joined by
    an equally large batch of ``extra`` (augmented the same way) drawn from a cycle over ``extra`` that is
    reshuffled whenever it runs out: the outlier-exposure step of Dream-OOD's official loop
    (``train_ood_det_*.py``: an ID batch and an outlier batch of the same size per step), with the outliers cycled
    rather than the epoch cut at the shorter set. The cycle restarts with each epoch (its draws come from the
    epoch's generator), so a resumed run sees the same batches. The two halves are interleaved (data, extra,
    data, ...), so the contiguous slice a data-parallel rank takes holds as many of each. ``len``: the samples
    of ``data`` (one epoch is one pass over it)."""

    def __init__(self, data, extra, augment_cfg: AugmentConfig, sampler: str = "instance"):
        if not len(extra.labels):
            raise TailsynthError("PairedBatches: the set paired with the training data is empty")
        self.main, self.extra, self.augment_cfg = ImageBatches(data, augment_cfg, sampler), extra, augment_cfg

    def __len__(self) -> int:
        return len(self.main)

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        cycle = Cycle(len(self.extra.labels), generator)
        for batch in self.main.epoch(generator, batch_size):
            idx = cycle.take(len(batch["y"])).numpy()
            x = augment(to_float(torch.from_numpy(self.extra.images[idx])), self.augment_cfg, generator)
            y = torch.from_numpy(self.extra.labels[idx])
            yield {"x": _interleave(batch["x"], x), "y": _interleave(batch["y"], y)}


class Cycle:
    """Indices 0..n-1 in a random order drawn from ``generator``, a new order each time the last one is used up."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order, self.position = torch.zeros(0, dtype=torch.long), 0

    def take(self, count: int) -> torch.Tensor:
        out = []
        while count > 0:
            if self.position == len(self.order):
                self.order, self.position = torch.randperm(self.n, generator=self.generator), 0
            part = self.order[self.position:self.position + count]
            out.append(part)
            self.position += len(part)
            count -= len(part)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows a0, b0, a1, b1, ... of two tensors with the same shape."""
    return torch.stack([a, b], dim=1).flatten(0, 1)


class FeatureBatches:
    """Cached feature vectors (N, D) float32 and labels (N,) -> ``{"z": (B, D), "y": (B,)}`` (+ ``"pseudo"``
    (B,) bool when ``pseudo`` flags generated vectors), in a registered sampler's order; for objectives that
    train a head on features without an image forward pass (LDMLR)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, sampler: str = "instance",
                 pseudo: np.ndarray | None = None):
        if len(features) != len(labels):
            raise TailsynthError(f"{len(features)} feature vectors but {len(labels)} labels")
        self.features = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.labels, self.order_fn = np.asarray(labels, dtype=np.int64), SAMPLERS.get(sampler)
        self.pseudo = None if pseudo is None else torch.as_tensor(np.asarray(pseudo, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def epoch(self, generator: torch.Generator, batch_size: int) -> Iterator[Batch]:
        order = self.order_fn(self.labels, generator)
        for b in range(math.ceil(len(self) / batch_size)):
            idx = torch.as_tensor(order[b * batch_size:(b + 1) * batch_size])
            batch = {"z": self.features[idx], "y": torch.from_numpy(self.labels[idx.numpy()])}
            if self.pseudo is not None:
                batch["pseudo"] = self.pseudo[idx]
            yield batch
