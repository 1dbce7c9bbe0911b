"""Benchmark configs: a source plus the long-tailed split recipe (LoGex-style head/tail, or CIFAR-LT style).

Presets live in ``tailsynth/configs/benchmarks/<name>.yaml``; :func:`load_benchmark_config` takes a preset
name or a YAML path plus dotted overrides (``n_tail=5``, ``source.path=/data/pbc``).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from ..config import StrictConfig, apply_overrides, build_config, read_yaml
from ..errors import TailsynthError
from .sources import SourceConfig

PRESET_DIR = Path(str(files("tailsynth").joinpath("configs").joinpath("benchmarks")))


def _names(value: Any) -> Any:
    """Class names may be written as YAML numbers (digits: ``[0, 1, 2]``); they are names, i.e. strings."""
    if isinstance(value, (list, tuple)):
        return [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value


class SplitCaps(StrictConfig):
    """``max_per_class``: per-class caps of the train, val and test splits and of the oracle's pool (None: no cap)."""

    train: int | None = Field(None, ge=1)
    val: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)
    oracle: int | None = Field(None, ge=1)


class BenchmarkConfig(StrictConfig):
    """How to build the long-tailed split of a source (see :func:`tailsynth.data.build_split`).

    - ``head`` / ``tail``: class names (None: every class is head, resp. no tail); classes named in
      neither are dropped when either list is given. Label order = head list, then tail list.
    - ``n_tail``: training images per tail class (LoGex: 10); None keeps the whole train pool.
    - ``n_val_head`` / ``n_val_tail``: validation images per head / tail class (LoGex: 100 / 10), used
      when the source has no official train split and no ``imbalance_factor``.
    - ``val_fraction``: with an official train split (CIFAR-LT) or an ``imbalance_factor``, validation is
      this stratified share of each class's train pool (at least 1 image per class); None: the
      ``n_val_head`` / ``n_val_tail`` counts there too (LoGex's 100 / 10 on CIFAR).
    - ``test_fraction``: the stratified test share per class when the source has no official test split.
    - ``max_per_head``: cap on training images per head class (random subset); None = all.
    - ``imbalance_factor``: exponential profile of Cao et al. 2019, n_c = n_max * IF^(-c/(K-1)) over the
      label order c = 0..K-1, applied to the train pool of a balanced source.
    - ``groups``: optional many/medium/few class-name groups for per-group accuracy.
    - ``max_per_class``: at most this many images per class in each split (``train``, ``val``, ``test``) and in
      the oracle's pool (``oracle``), a seeded random subset of what the recipe above gives: a dry run that keeps
      every dimension and cuts only counts (``pbc-lt-paper-dryrun``). None: no cap.
    """

    # added after splits were made without it: left out of fingerprints (and sidecars) while it holds the default
    fingerprint_neutral: ClassVar[tuple[str, ...]] = ("max_per_class",)

    name: str
    source: SourceConfig
    head: list[str] | None = None
    tail: list[str] | None = None
    n_tail: int | None = 10
    n_val_head: int = 100
    n_val_tail: int = 10
    test_fraction: float = 0.2
    max_per_head: int | None = None
    val_fraction: float | None = 0.1
    imbalance_factor: float | None = None
    groups: dict[str, list[str]] | None = None
    seed: int = 0
    max_per_class: SplitCaps | None = None

    _head = field_validator("head", "tail", mode="before")(_names)

    @field_validator("groups", mode="before")
    @classmethod
    def _group_names(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): _names(v) for k, v in value.items()}
        return value

    @field_validator("test_fraction", "val_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError("must be in [0, 1)")
        return value

    @field_validator("n_tail", "n_val_head", "n_val_tail", "max_per_head")
    @classmethod
    def _count(cls, value: int | None) -> int | None:
        if value is not None and value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("imbalance_factor")
    @classmethod
    def _factor(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ValueError("must be >= 1 (n_max / n_min)")
        return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def find_benchmark(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TailsynthError(f"benchmark config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise TailsynthError(f"unknown benchmark {str(name_or_path)!r}: not a YAML file and not a preset; "
                         f"presets: {', '.join(preset_names())}")


def load_benchmark_config(name_or_path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    """A preset by name (``pbc-lt``) or a YAML path, with dotted ``key=value`` overrides applied."""
    path = find_benchmark(name_or_path)
    data = apply_overrides(read_yaml(path), list(overrides or []))
    return build_config(BenchmarkConfig, data, where=str(path))
