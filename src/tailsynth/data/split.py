"""``Split``: a long-tailed benchmark split stored as data - a CSV manifest plus a JSON sidecar.

The CSV (``source_id,class,label,role,split,source_index``) has one row per used sample; the sidecar
``<name>.json`` next to it holds the benchmark name, seed, class names, head/tail class indices, groups,
the source config and the source fingerprint. Both are written atomically and byte-identically for the
same inputs (no timestamps), so a manifest can be diffed and hashed.
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from ..errors import TailsynthError
from ..utils import atomic_write_text
from .images import ImageArrays
from .sources import SourceConfig

COLUMNS = ("source_id", "class", "label", "role", "split", "source_index")
SPLITS = ("train", "val", "test")
_SOURCE = TypeAdapter(SourceConfig)


@dataclass
class Split:
    """Per-sample rows (parallel arrays) plus the class layout. Labels index ``class_names``."""

    name: str
    seed: int
    class_names: list[str]
    head_classes: list[int]
    tail_classes: list[int]
    groups: dict[str, list[int]]
    source: Any  # a SourceConfig
    source_fingerprint: str
    source_ids: list[str]
    labels: np.ndarray
    roles: list[str]
    splits: list[str]
    source_index: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.source_ids)

    def mask(self, which: str) -> np.ndarray:
        if which not in SPLITS:
            raise TailsynthError(f"unknown split {which!r}; valid: {', '.join(SPLITS)}")
        return np.array([s == which for s in self.splits], dtype=bool)

    def without(self, source_ids, note: str = "skipped_corrupt") -> "Split":
        """This split without the samples whose source id is in ``source_ids``; the sidecar lists them."""
        import dataclasses
        drop = set(source_ids)
        keep = np.array([i for i, sid in enumerate(self.source_ids) if sid not in drop], dtype=np.int64)
        pick = keep.tolist()
        return dataclasses.replace(
            self, source_ids=[self.source_ids[i] for i in pick], labels=self.labels[keep],
            roles=[self.roles[i] for i in pick], splits=[self.splits[i] for i in pick],
            source_index=self.source_index[keep], meta={**self.meta, note: sorted(drop)})

    def ids(self, which: str) -> list[str]:
        return [sid for sid, s in zip(self.source_ids, self.splits) if s == which]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{class_name: {"train": n, "val": n, "test": n}}`` in label order (JSON-able)."""
        out = {name: {s: 0 for s in SPLITS} for name in self.class_names}
        for label, split in zip(self.labels.tolist(), self.splits):
            out[self.class_names[label]][split] += 1
        return out

    def group_of(self, label: int) -> str:
        for name, members in self.groups.items():
            if label in members:
                return name
        return "-"

    def count_table(self) -> str:
        """Per-class rows ``class, role, group, train, val, test`` and a totals row, as aligned text."""
        rows = [("class", "role", "group", "train", "val", "test")]
        totals = {s: 0 for s in SPLITS}
        for label, (name, counts) in enumerate(self.counts().items()):
            role = "tail" if label in self.tail_classes else "head"
            rows.append((name, role, self.group_of(label), *(str(counts[s]) for s in SPLITS)))
            for s in SPLITS:
                totals[s] += counts[s]
        rows.append(("total", "", "", *(str(totals[s]) for s in SPLITS)))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = []
        for r in rows:
            left = [r[i].ljust(widths[i]) for i in range(3)]
            right = [r[i].rjust(widths[i]) for i in range(3, 6)]
            lines.append("  ".join(left + right).rstrip())
        return f"{self.name} (seed {self.seed})\n" + "\n".join(lines)

    def sidecar(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "class_names": self.class_names,
                "head_classes": self.head_classes, "tail_classes": self.tail_classes, "groups": self.groups,
                "source": _SOURCE.dump_python(self.source, mode="json"),
                "source_fingerprint": self.source_fingerprint, "counts": self.counts(), **self.meta}

    def write(self, path: str | Path) -> None:
        """Write ``path`` (CSV manifest) and ``path`` with suffix ``.json`` (sidecar), atomically."""
        path = Path(path)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for i in range(len(self)):
            writer.writerow([self.source_ids[i], self.class_names[self.labels[i]], int(self.labels[i]),
                             self.roles[i], self.splits[i], int(self.source_index[i])])
        atomic_write_text(path, buffer.getvalue())
        atomic_write_text(sidecar_path(path), json.dumps(self.sidecar(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> "Split":
        path = Path(path)
        meta = _read_sidecar(path)
        rows = _read_rows(path)
        try:
            source = _SOURCE.validate_python(meta["source"])
        except ValidationError as err:
            raise TailsynthError(f"{sidecar_path(path)}: invalid source config: {err}") from None
        extra = {k: v for k, v in meta.items() if k not in _META_KEYS}
        return cls(meta["name"], int(meta["seed"]), list(meta["class_names"]), list(meta["head_classes"]),
                   list(meta["tail_classes"]), {k: list(v) for k, v in meta["groups"].items()}, source,
                   meta["source_fingerprint"], [r[0] for r in rows],
                   np.array([int(r[2]) for r in rows], dtype=np.int64), [r[3] for r in rows],
                   [r[4] for r in rows], np.array([int(r[5]) for r in rows], dtype=np.int64), extra)


_META_KEYS = {"name", "seed", "class_names", "head_classes", "tail_classes", "groups", "source",
              "source_fingerprint", "counts"}


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise TailsynthError(f"split sidecar not found: {side} (written next to the manifest {path})")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise TailsynthError(f"corrupt split sidecar {side}: {err}") from None
    missing = sorted(_META_KEYS - {"counts"} - set(meta))
    if missing:
        raise TailsynthError(f"split sidecar {side} lacks keys {missing}")
    return meta


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise TailsynthError(f"split manifest not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) != COLUMNS:
        raise TailsynthError(f"{path}: not a split manifest; the header must be {','.join(COLUMNS)}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(COLUMNS) or row[4] not in SPLITS:
            raise TailsynthError(f"{path} line {line}: malformed row {row}")
    return rows[1:]


def split_arrays(split: Split, arrays: ImageArrays, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W, C) and labels int64 (the split's label order) of one split, selected by
    source id in manifest order. An id missing from ``arrays`` is an error (the source changed since the
    split was built), except ids ``load_images`` skipped as corrupt: those are dropped with a warning."""
    position = {sid: i for i, sid in enumerate(arrays.ids)}
    corrupt = set(arrays.corrupt)
    rows, labels, dropped, missing = [], [], [], []
    for sid, label, s in zip(split.source_ids, split.labels.tolist(), split.splits):
        if s != which:
            continue
        if sid in position:
            rows.append(position[sid])
            labels.append(label)
        elif sid in corrupt:
            dropped.append(sid)
        else:
            missing.append(sid)
    if which not in SPLITS:
        raise TailsynthError(f"unknown split {which!r}; valid: {', '.join(SPLITS)}")
    if missing:
        raise TailsynthError(f"{len(missing)} {which} sample(s) of split {split.name!r} are missing from the "
                             f"source (has it changed since the split was built?): {missing[:5]}")
    if dropped:
        warnings.warn(f"split {split.name!r}: {len(dropped)} corrupt {which} image(s) skipped: {dropped[:5]}")
    index = np.array(rows, dtype=np.int64)
    return arrays.images[index], np.array(labels, dtype=np.int64)
