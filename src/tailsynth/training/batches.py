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
