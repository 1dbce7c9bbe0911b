"""Long-tail training criteria, registered by name (rows of LoGex Table 2).

``build_criterion(name, class_counts, tail_classes=(), **params)``; each criterion has
``forward(logits, targets) -> scalar``, ``set_epoch(epoch)`` and ``drw_epoch`` (None unless DRW).
"""
from . import ce, focal, hod, ldam  # noqa: F401  (registers the losses)
from .base import LOSSES, Criterion, build_criterion, class_balanced_weights, criterion_parameters
from .ce import CrossEntropy
from .focal import FocalLoss
from .hod import HODLoss
from .ldam import LDAMLoss, ldam_margins

__all__ = ["LOSSES", "Criterion", "CrossEntropy", "FocalLoss", "HODLoss", "LDAMLoss", "build_criterion",
           "class_balanced_weights", "criterion_parameters", "ldam_margins"]
