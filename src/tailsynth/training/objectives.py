"""Objectives: what the one trainer minimises on a batch.

An objective is an ``nn.Module`` with ``forward(model, batch) -> loss`` or ``(loss, {name: part})``; a
batch is the dict a :mod:`~tailsynth.training.batches` source yields (``"y"`` always holds the labels).
It may own extra trainable parameters (e.g. Dream-OOD's 1->512->2 MLP on the energy): the trainer adds
them to the optimizer and checkpoints them with the model. ``set_epoch`` and ``drop_epoch`` let a
criterion change with the epoch (DRW, Cao et al. 2019: re-weighting and lr x0.1 from ``drop_epoch``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Objective(nn.Module):
    """Base class: no epoch dependence, no lr drop."""

    drop_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        pass

    def forward(self, model: nn.Module, batch: Batch) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class CriterionObjective(Objective):
    """A classification criterion (``tailsynth.losses``) on the model's logits: ``criterion(model(x), y)``."""

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion
        self.drop_epoch = getattr(criterion, "drw_epoch", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.criterion, "set_epoch"):
            self.criterion.set_epoch(epoch)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.criterion(model(batch["x"]).float(), batch["y"])


def split_output(output: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, named parts) from an objective's return value."""
    if isinstance(output, tuple):
        loss, parts = output
        return loss, dict(parts)
    return output, {}
