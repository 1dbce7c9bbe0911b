"""Epoch orders: instance-balanced (a shuffle) and class-balanced (cRT, Kang et al. 2020)."""
from __future__ import annotations

import numpy as np
import torch

from ..registry import Registry

SAMPLERS: Registry = Registry("sampler")


@SAMPLERS.register("instance")
def instance_order(labels: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Every sample once per epoch, shuffled."""
    return torch.randperm(len(labels), generator=generator).numpy()


@SAMPLERS.register("class_balanced")
def class_balanced_order(labels: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """As many draws as samples; each draw picks a class uniformly, then a sample of it uniformly."""
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    n = len(labels)
    cls = torch.randint(len(classes), (n,), generator=generator).numpy()
    pick = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        group = members[cls[i]]
        out[i] = group[min(int(pick[i] * len(group)), len(group) - 1)]
    return out
