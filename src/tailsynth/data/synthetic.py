"""Synthetic sets as data: ``synthetic.csv`` in a synthesis artifact, one row per generated image.

Columns: ``file`` (relative to the artifact folder), ``class`` (a class name of the split), ``role``
(``tail``: a synthetic sample of that tail class; ``outlier``: an imagined out-of-distribution sample
near that class, Dream-OOD / BOOD), ``method`` (the generator), ``seed`` (of the shard's generator) and
``score`` (the generator's per-image score: the auxiliary classifier's confidence in the target class).
Rows are in shard order, and shards are seeded by (seed, class, shard), so the first N rows of a class
in a larger set are exactly the images an N-image set holds.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TailsynthError
from ..utils import atomic_write_text
from .decode import decode_file

FILE = "synthetic.csv"
COLUMNS = ["file", "class", "role", "method", "seed", "score"]
ROLES = ("tail", "outlier")


@dataclass
class SyntheticSet:
    folder: Path
    rows: list[dict] = field(default_factory=list)  # each with the COLUMNS keys

    def write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(Path(self.folder) / FILE, buffer.getvalue())

    @classmethod
    def read(cls, folder: str | Path) -> "SyntheticSet":
        path = Path(folder) / FILE
        if not path.is_file():
            raise TailsynthError(f"{path}: no synthetic set here (not a finished synthesis artifact?)")
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = sorted(set(COLUMNS) - set(reader.fieldnames or []))
            if missing:
                raise TailsynthError(f"{path}: missing columns {missing}; expected {COLUMNS}")
            rows = list(reader)
        bad = sorted({r["role"] for r in rows} - set(ROLES))
        if bad:
            raise TailsynthError(f"{path}: unknown roles {bad}; valid: {list(ROLES)}")
        return cls(Path(folder), rows)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, per_class: int | None = None, role: str | None = None, at_most: bool = False) -> "SyntheticSet":
        """The first ``per_class`` rows of each class (None: all), optionally of one role; a class with fewer rows
        is an error unless ``at_most`` (a filtered set, e.g. a judged set that drops images: take what is there)."""
        rows = [r for r in self.rows if role is None or r["role"] == role]
        if per_class is not None:
            by_class: dict[str, list[dict]] = {}
            for r in rows:
                by_class.setdefault(r["class"], []).append(r)
            short = {c: len(rs) for c, rs in by_class.items() if len(rs) < per_class}
            if short and not at_most:
                raise TailsynthError(f"{Path(self.folder) / FILE}: asked for {per_class} synthetic images per "
                                     f"class, but it holds only {short}")
            rows = [r for rs in by_class.values() for r in rs[:per_class]]
        return SyntheticSet(self.folder, rows)

    def load_images(self, class_names: list[str], image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, S, S, C) at the classifier's size and labels indexing ``class_names``."""
        index = {n: i for i, n in enumerate(class_names)}
        unknown = sorted({r["class"] for r in self.rows} - set(index))
        if unknown:
            raise TailsynthError(f"{Path(self.folder) / FILE}: unknown classes {unknown}; known: {class_names}")
        if not self.rows:
            return np.zeros((0, image_size, image_size, channels), np.uint8), np.zeros(0, np.int64)
        images = np.stack([decode_file(Path(self.folder) / r["file"], image_size, channels) for r in self.rows])
        return images, np.array([index[r["class"]] for r in self.rows], dtype=np.int64)

    def scores(self) -> np.ndarray:
        return np.array([float(r["score"]) for r in self.rows])
