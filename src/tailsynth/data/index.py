"""``index_source``: the cheap view of a source (ids, labels, class names, official split, fingerprint).

No pixels are decoded for folders and CSV manifests; npz files are read for their labels only, IDX sources
for their label files only.
Source ids are stable strings: the relative path for folders (``class/file.jpg``), the path as written
in the CSV for manifests, ``<part>/<row>`` for npz files with parts (``train/12``, ``test/3``) and the
row number for single arrays and built-in sets; IDX sources with a test pair use ``train/<row>`` /
``test/<row>``.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TailsynthError
from .builtin import BUILTINS
from .content_hash import content_digest, file_sha256
from .decode import is_image_file
from .idx import read_idx
from .sources import BuiltinSource, CsvSource, FolderSource, IdxSource, NpzSource, SourceConfig, resolve_data_path

MEDMNIST_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")
PLAIN_KEYS = ("images", "labels")
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class SourceIndex:
    """What a source holds, without pixels. ``labels`` index ``class_names``; ``files`` (folders and
    CSV only) are the image paths to decode, aligned with ``ids``."""

    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    official_split: np.ndarray | None
    fingerprint: str
    ignored_files: int = 0
    files: list[str] = field(default_factory=list, repr=False)


def index_folder(src: FolderSource) -> SourceIndex:
    root = resolve_data_path(src.path)
    if not root.is_dir():
        raise TailsynthError(f"image folder not found: {root} (source path {src.path!r})")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    ignored = sum(1 for p in root.iterdir() if not p.is_dir())
    if not class_dirs:
        raise TailsynthError(f"image folder {root} has no class sub-folders (expected one folder per class)")
    ids, labels, files = [], [], []
    for label, class_dir in enumerate(class_dirs):
        count = 0
        for entry in sorted(class_dir.iterdir(), key=lambda p: p.name):
            if not entry.is_file() or not is_image_file(entry):
                ignored += 1
                continue
            rel = f"{class_dir.name}/{entry.name}"
            ids.append(rel)
            labels.append(label)
            files.append(str(entry))
            count += 1
        if count == 0:
            raise TailsynthError(f"class folder {class_dir} contains no images (JPEG, PNG, BMP or TIFF)")
    fingerprint = content_digest(root, [(rel, Path(f)) for rel, f in zip(ids, files)])
    return SourceIndex(ids, np.array(labels, dtype=np.int64), [d.name for d in class_dirs], None,
                       fingerprint, ignored, files)


def open_npz(path: Path, role: str):
    if not path.is_file():
        raise TailsynthError(f"npz {role} file not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise TailsynthError(f"cannot read npz file {path}: {err}") from None


def npz_labels(data, key: str, path: Path) -> np.ndarray:
    labels = np.asarray(data[key])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise TailsynthError(f"{path}: {key!r} must be integer labels of shape (N,) or (N, 1), "
                             f"got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def checked_class_names(names: list[str] | None, labels: np.ndarray, path: Path) -> list[str]:
    """``names`` (default "0".."K-1" for the largest label K-1), after checking every label indexes one."""
    if names is None:
        names = [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise TailsynthError(f"{path}: labels range {labels.min()}..{labels.max()} is outside the "
                             f"{len(names)} class names 0..{len(names) - 1} ({names})")
    return names


def npz_class_names(src: NpzSource, data, labels: np.ndarray, path: Path) -> list[str]:
    names = list(src.class_names) if src.class_names is not None else None
    if names is None and "class_names" in data.files:
        names = [str(n) for n in np.asarray(data["class_names"]).tolist()]
    return checked_class_names(names, labels, path)


def part_ids(parts: list[tuple[str, np.ndarray]]) -> tuple[list[str], np.ndarray | None]:
    """Source ids and the official split of labelled parts ``(part name, labels)``: ``<part>/<row>`` and the
    part names when the parts are named, the row number and no official split for one unnamed part."""
    ids = [f"{part}/{i}" if part else str(i) for part, lab in parts for i in range(len(lab))]
    official = None
    if parts[0][0]:
        official = np.array([part for part, lab in parts for _ in range(len(lab))], dtype="<U5")
    return ids, official


def index_npz(src: NpzSource) -> SourceIndex:
    path = resolve_data_path(src.path)
    data = open_npz(path, "source")
    found = sorted(data.files)
    if all(k in data.files for k in MEDMNIST_KEYS):
        parts = [(name, npz_labels(data, f"{name}_labels", path)) for name in SPLIT_NAMES]
    elif all(k in data.files for k in PLAIN_KEYS):
        parts = [("train" if src.test_path else "", npz_labels(data, "labels", path))]
    else:
        raise TailsynthError(f"{path}: missing keys; expected {list(PLAIN_KEYS)} (+ optional 'class_names') "
                             f"or the MedMNIST keys {list(MEDMNIST_KEYS)}; found {found}")
    digest = hashlib.sha256(file_sha256(path).encode())
    if src.test_path:
        if parts[0][0] != "train":
            raise TailsynthError(f"{path}: test_path is only for the images/labels layout; "
                                 f"the MedMNIST layout already has its test split")
        test_path = resolve_data_path(src.test_path)
        test = open_npz(test_path, "test")
        missing = [k for k in PLAIN_KEYS if k not in test.files]
        if missing:
            raise TailsynthError(f"{test_path}: missing keys {missing}; expected {list(PLAIN_KEYS)}; "
                                 f"found {sorted(test.files)}")
        if "class_names" in test.files and "class_names" in data.files and \
                np.asarray(test["class_names"]).tolist() != np.asarray(data["class_names"]).tolist():
            raise TailsynthError(f"{test_path}: class_names differ from those of {path}")
        parts.append(("test", npz_labels(test, "labels", test_path)))
        digest.update(file_sha256(test_path).encode())
    labels = np.concatenate([lab for _, lab in parts])
    names = npz_class_names(src, data, labels, path)
    ids, official = part_ids(parts)
    return SourceIndex(ids, labels, names, official, digest.hexdigest())


def idx_parts(src: IdxSource) -> list[tuple[str, Path, Path]]:
    """``(part, images file, labels file)`` of an IDX source: one unnamed part, or ``train`` and ``test``."""
    if src.test_path is None:
        return [("", resolve_data_path(src.path), resolve_data_path(src.labels))]
    return [("train", resolve_data_path(src.path), resolve_data_path(src.labels)),
            ("test", resolve_data_path(src.test_path), resolve_data_path(src.test_labels))]


def index_idx(src: IdxSource) -> SourceIndex:
    digest = hashlib.sha256()
    parts = []
    for part, images, labels_file in idx_parts(src):
        if not images.is_file():
            raise TailsynthError(f"IDX images file not found: {images}")
        labels = read_idx(labels_file, 1).astype(np.int64)
        digest.update(f"{file_sha256(images)}|{file_sha256(labels_file)}|".encode())
        parts.append((part, labels))
    labels = np.concatenate([lab for _, lab in parts])
    names = checked_class_names(list(src.class_names) if src.class_names else None, labels,
                                resolve_data_path(src.labels))
    ids, official = part_ids(parts)
    return SourceIndex(ids, labels, names, official, digest.hexdigest())


def read_manifest(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise TailsynthError(f"CSV manifest not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "path" not in header or "label" not in header:
            raise TailsynthError(f"{path}: the header must have columns 'path,label[,split]', got {header}")
        return list(reader)


def index_csv(src: CsvSource) -> SourceIndex:
    path = resolve_data_path(src.path)
    rows = read_manifest(path)
    if not rows:
        raise TailsynthError(f"CSV manifest {path} has no rows")
    names = list(src.class_names) if src.class_names else sorted({r["label"] for r in rows})
    lookup = {name: i for i, name in enumerate(names)}
    ids, labels, files, splits = [], [], [], []
    for line, row in enumerate(rows, start=2):
        if row["label"] not in lookup:
            raise TailsynthError(f"{path} line {line}: unknown class {row['label']!r}; known classes: {names}")
        file = path.parent / row["path"]
        if not file.is_file():
            raise TailsynthError(f"{path} line {line}: image file not found: {file}")
        split = (row.get("split") or "").strip()
        if "split" in row and split not in SPLIT_NAMES:
            raise TailsynthError(f"{path} line {line}: split {split!r} is not one of {list(SPLIT_NAMES)}")
        ids.append(row["path"])
        labels.append(lookup[row["label"]])
        files.append(str(file))
        splits.append(split)
    if len(set(ids)) != len(ids):
        raise TailsynthError(f"{path}: an image path is listed more than once")
    official = np.array(splits, dtype="<U5") if "split" in rows[0] else None
    images = content_digest(path.parent, [(i, Path(f)) for i, f in zip(ids, files)])
    fingerprint = hashlib.sha256(f"{file_sha256(path)}|{images}".encode()).hexdigest()
    return SourceIndex(ids, np.array(labels, dtype=np.int64), names, official, fingerprint, 0, files)


def index_builtin(src: BuiltinSource) -> SourceIndex:
    data = BUILTINS.get(src.name)(False)
    ids = [str(i) for i in range(len(data.labels))]
    return SourceIndex(ids, data.labels, data.class_names, None, data.fingerprint)


def index_source(src: SourceConfig) -> SourceIndex:
    """The cheap index of ``src`` (no pixel decoding for folders and CSV manifests)."""
    if isinstance(src, FolderSource):
        return index_folder(src)
    if isinstance(src, NpzSource):
        return index_npz(src)
    if isinstance(src, IdxSource):
        return index_idx(src)
    if isinstance(src, CsvSource):
        return index_csv(src)
    if isinstance(src, BuiltinSource):
        return index_builtin(src)
    raise TailsynthError(f"unknown source type {type(src).__name__}")
