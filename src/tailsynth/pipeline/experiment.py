"""Experiment configs: a YAML file (+ dotted overrides) that names a benchmark, profile and methods."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, model_validator

from ..config import StrictConfig, apply_overrides, build_config, read_yaml
from ..data import DataConfig
from ..data.far import FarSetConfig
from ..diffusion import DiffusionConfig
from ..errors import TailsynthError
from ..methods import METHODS, SynthesisConfig
from ..training import TrainConfig


class ExperimentConfig(StrictConfig):
    """One experiment: a benchmark split, a training profile, methods x seeds, scores and a report.

    Parsed once: ``diffusion``, ``synthesis`` and ``oracle`` are typed here, and each method's
    ``method_params.<name>`` is parsed by the method into its own ``Config`` (:meth:`method_config`), which is
    what its stages are handed."""

    fingerprint_neutral: ClassVar[tuple[str, ...]] = ("threads", "jobs", "far_ood")

    name: str
    profile: str = "custom"
    benchmark: str
    benchmark_overrides: dict[str, Any] = {}
    split_seed: int = 0
    seeds: list[int] = [0, 1, 2]
    data: DataConfig = DataConfig()
    classifier: TrainConfig = TrainConfig()
    crt_epochs: int = 10
    # each method's own settings as written (its typed Config: method_config(name)), e.g. ldam-rw-drw: {drw_epoch: 1}
    method_params: dict[str, dict[str, Any]] = {}
    methods: list[str] = ["ce"]
    scores: list[str] | None = None  # None: every registered score
    primary_score: str = "p_tail"
    report_method: str = "ce"  # the method whose scores fill the Table-1/3 comparison
    # far-OOD sets the evaluate stage scores beside the tail: built-in names (mnist5k, digits, fashion-mnist,
    # cifar10-test) or {name, source, max_images, seed} (tailsynth.data.far; docs/scores-and-metrics.md)
    far_ood: list[FarSetConfig] = []
    device: str = "auto"
    # torch's CPU thread count for this run (None: torch's default, or OMP_NUM_THREADS). CPU results are
    # bit-identical only with the same thread count, so a profile that pins it prints the same digits on a
    # 2-core laptop and a 64-core server of one CPU kind; tiny models also run faster on 1 thread.
    threads: int | None = Field(default=None, ge=1)
    # independent stages built at the same time, each in its own process (engine.parallel); with threads None
    # each process gets cpu_count // jobs torch threads. Under torchrun / accelerate launch it is ignored.
    jobs: int = Field(default=1, ge=1)
    diffusion: DiffusionConfig = DiffusionConfig()  # the generator of the synthesis methods
    synthesis: SynthesisConfig = SynthesisConfig()  # params.<generator>: that generator's own config
    # the oracle's training settings over the classifier's (LoGex §4.4; the YAML names only what differs);
    # None: no oracle
    oracle: TrainConfig | None = None
    # LoGex Fig. 3: extra rows of a synthesis method trained with N synthetic images per tail class, e.g.
    # {logex: [25, 50, 200]} gives rows logex@25, logex@50, logex@200 (the synthesis runs once, for the
    # largest N; smaller sets are its per-class prefixes). sweep_seeds None: the experiment's seeds.
    synthetic_sweep: dict[str, list[int]] = {}
    sweep_seeds: list[int] | None = None
    _method_configs: dict[str, StrictConfig] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _oracle_over_classifier(cls, data: Any) -> Any:
        """``oracle`` in a YAML file names only what differs from ``classifier``."""
        if isinstance(data, dict) and isinstance(data.get("oracle"), dict):
            classifier = data.get("classifier") or {}
            base = classifier.model_dump() if isinstance(classifier, StrictConfig) else dict(classifier)
            data = {**data, "oracle": {**base, **data["oracle"]}}
        return data

    def method_config(self, name: str) -> StrictConfig:
        """Method ``name``'s typed settings (``method_params.<name>`` parsed by the method; parsed once)."""
        if name not in self._method_configs:
            method = METHODS.get(name)
            self._method_configs[name] = method.parse_config(self.method_params.get(name, {}),
                                                             f"method_params.{name}")
        return self._method_configs[name]


def find_experiment(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped config under ``configs/experiments/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = Path(__file__).resolve().parent.parent / "configs" / "experiments" / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise TailsynthError(f"experiment config {name_or_path!r} not found (not a file, not a shipped config; "
                         f"shipped: {', '.join(names)})")


def read_experiment_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of ``path`` with ``extends: <name or path>`` resolved: the named experiment's mapping
    with this file's keys merged over it (mappings key by key, every other value replaced; an empty mapping
    ``{}`` replaces, so it clears the parent's), so a profile that differs in a few settings names only those."""
    path = path.resolve()
    if path in chain:
        raise TailsynthError(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise TailsynthError(f"{path}: 'extends' must name one experiment config, got {parent!r}")
    return merge_mappings(read_experiment_yaml(find_experiment(parent), chain + (path,)), data)


def merge_mappings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: non-empty nested mappings key by key, other values (and ``{}``)
    replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def load_experiment(name_or_path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    path = find_experiment(name_or_path)
    data = apply_overrides(read_experiment_yaml(path), list(overrides or []))
    cfg = build_config(ExperimentConfig, data, where=str(path))
    if not cfg.seeds:
        raise TailsynthError(f"{path}: 'seeds' is empty")
    for method, counts in cfg.synthetic_sweep.items():
        if not counts or min(counts) < 1:
            raise TailsynthError(f"{path}: synthetic_sweep.{method} must list positive image counts, got {counts}")
    if cfg.data.channels not in (1, 3):
        raise TailsynthError(f"{path}: data.channels must be 1 or 3, got {cfg.data.channels}")
    from .graph import check_experiment  # every method's own settings, before any stage runs
    try:
        check_experiment(cfg)
    except TailsynthError as err:
        raise type(err)(f"{path}: {err}") from None
    return cfg
