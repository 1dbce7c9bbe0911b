"""Feature sets as data: ``features.npz`` with the penultimate features of one classifier (the encoder).

Arrays: ``features`` (N, D) float32, ``labels`` (N,) int64 indexing the split's classes, ``ids`` (N,) the
sample ids, ``splits`` (N,) "train" / "val" / "test" (or "pseudo" for generated features), ``roles``
(N,) "head" / "tail" / "pseudo"; scalar ``encoder`` = the fingerprint of the classifier that made them,
so a head can refuse features from another encoder (LDMLR).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TailsynthError
from ..utils import atomic_write_bytes

FILE = "features.npz"


@dataclass
class FeatureSet:
    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    splits: np.ndarray
    roles: np.ndarray
    encoder: str

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2:
            raise TailsynthError(f"features must be (N, D), got shape {self.features.shape}")
        for name in ("labels", "ids", "splits", "roles"):
            if len(getattr(self, name)) != n:
                raise TailsynthError(f"feature set: {len(getattr(self, name))} {name} for {n} feature vectors")

    def write(self, folder: str | Path) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, features=self.features.astype(np.float32), labels=self.labels.astype(np.int64),
                            ids=self.ids.astype(str), splits=self.splits.astype(str), roles=self.roles.astype(str),
                            encoder=np.array(self.encoder))
        atomic_write_bytes(Path(folder) / FILE, buffer.getvalue())

    @classmethod
    def read(cls, folder: str | Path, encoder: str | None = None) -> "FeatureSet":
        """``encoder``: the fingerprint the features must come from (a mismatch is an error naming both)."""
        path = Path(folder) / FILE
        if not path.is_file():
            raise TailsynthError(f"{path}: no feature set here")
        with np.load(path, allow_pickle=False) as z:
            out = cls(z["features"], z["labels"], z["ids"], z["splits"], z["roles"], str(z["encoder"]))
        if encoder is not None and out.encoder != encoder:
            raise TailsynthError(f"{path}: features of encoder {out.encoder}, but the head belongs to {encoder}")
        return out

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        keep = self.splits == split
        return self.features[keep], self.labels[keep]
