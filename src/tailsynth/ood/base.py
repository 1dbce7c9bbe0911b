"""Score protocol, input conversion and the ``SCORES`` registry.

Convention, ALWAYS: a higher score means "more tail" (the tail is treated as the out-distribution).
A score is fitted once (``fit(features, labels, head_classes, tail_classes) -> self``; logit-based scores
only record the class sets) and then applied (``score(logits, features) -> float64 (N,)``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import TailsynthError
from ..registry import Registry


def as_array(x: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """numpy or torch (any device, any float dtype) -> float64 numpy, checked for shape and finiteness."""
    if x is None:
        raise TailsynthError(f"{name} is required but was None")
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy() if str(x.dtype) in ("torch.bfloat16", "torch.float16") \
            else x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if ndim is not None and arr.ndim != ndim:
        raise TailsynthError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TailsynthError(f"{name} contains NaN or infinite values")
    return arr


def as_labels(y: Any, name: str = "labels") -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise TailsynthError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise TailsynthError(f"{name} must be integer class indices")
    return arr.astype(np.int64)


def check_class_sets(head_classes: Sequence[int], tail_classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    head = np.array(sorted({int(c) for c in head_classes}), dtype=np.int64)
    tail = np.array(sorted({int(c) for c in tail_classes}), dtype=np.int64)
    both = sorted(set(head.tolist()) & set(tail.tolist()))
    if both:
        raise TailsynthError(f"classes {both} are listed both as head and as tail classes")
    if np.any(head < 0) or np.any(tail < 0):
        raise TailsynthError("class indices must be >= 0")
    return head, tail


class Score:
    """Base class. Subclasses set ``uses`` ("logits" or "features"), ``needs`` ("head", "tail" or both)
    and implement :meth:`_score`."""

    name = ""
    uses = "logits"
    needs: tuple[str, ...] = ()
    fit_kwargs: tuple[str, ...] = ()  # optional fit inputs beyond the features ("logits", "classifier"): ViM

    def __init__(self) -> None:
        self.head_classes_: np.ndarray | None = None
        self.tail_classes_: np.ndarray | None = None
        self.selection_: dict[str, Any] = {}  # choices made by select(): metrics.json scores.<name>.selection

    def fit(self, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int]) -> "Score":
        """Record the class sets (logit scores: nothing else is fitted; ``features``/``labels`` may be None)."""
        head, tail = check_class_sets(head_classes, tail_classes)
        for group, classes in (("head", head), ("tail", tail)):
            if group in self.needs and classes.size == 0:
                raise TailsynthError(f"score {self.name!r} needs {group} classes, but none were given")
        self.head_classes_, self.tail_classes_ = head, tail
        return self

    def select(self, logits: Any, features: Any, labels: Any, head_classes: Sequence[int],
               tail_classes: Sequence[int]) -> "Score":
        """Choose hyper-parameters on the VALIDATION outputs after :meth:`fit` (default: nothing to choose).
        Scores that choose (``knn``: k, ``vim``: dim) record the choice in ``selection_``."""
        return self

    def score(self, logits: Any = None, features: Any = None) -> np.ndarray:
        """Tail-ness of each sample, float64 (N,); higher = more tail."""
        if self.head_classes_ is None:
            raise TailsynthError(f"score {self.name!r} is not fitted; call fit(...) first")
        if self.uses == "logits":
            x = as_array(logits, f"logits for score {self.name!r}", ndim=2)
            top = max(self.head_classes_.max(initial=-1), self.tail_classes_.max(initial=-1))
            if top >= x.shape[1]:
                raise TailsynthError(f"score {self.name!r}: class {top} is out of range for logits of "
                                     f"{x.shape[1]} classes")
        else:
            x = as_array(features, f"features for score {self.name!r}", ndim=2)
        return self._score(x)

    def _score(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


SCORES: Registry[type[Score]] = Registry("score")


def register_score(cls: type[Score]) -> type[Score]:
    SCORES.register(cls.name)(cls)
    return cls


def build_score(name: str) -> Score:
    """A fresh, unfitted score object for the registered ``name``."""
    return SCORES.get(name)()
