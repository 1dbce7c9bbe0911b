"""Read the evaluation stage's result files of one (method, seed) run: ``metrics.json`` + ``scores.npz``.

The report layer reads these files only (it never imports models or data). Every value of
``metrics.json`` is a fraction in [0, 1] (LoGex Tables 1-3 report them x100, see ``format.py``);
``scores.npz`` holds the test ``labels``, the ``is_tail`` mask and one per-sample tail score per score
name (higher = more tail, the project-wide convention).
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import TailsynthError
from .far_ood import parse_far

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.npz"
REQUIRED_METRICS = ("fpr95", "auroc", "bacc_head", "bacc_tail")  # the four columns of LoGex Table 2


@dataclass
class RunResult:
    """One evaluated (method, seed) run. ``metrics`` / ``scores`` hold fractions in [0, 1]."""

    path: Path
    method: str
    seed: int
    primary_score: str
    metrics: dict[str, float]
    scores: dict[str, dict[str, float]]
    wall_time_s: float | None = None
    per_class_acc: dict[str, float] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    head_classes: list[int] = field(default_factory=list)
    tail_classes: list[int] = field(default_factory=list)
    labels: np.ndarray | None = None            # (N,) int test labels
    is_tail: np.ndarray | None = None           # (N,) bool
    score_arrays: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) float, higher = tail
    far_ood: dict[str, dict[str, Any]] = field(default_factory=dict)  # far set -> its metrics (report/far_ood.py)
    rare_flag: dict[str, Any] = field(default_factory=dict)  # the rare-case flag on test (report/rare_flag.py)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fraction(value: Any, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise TailsynthError(f"{where}: expected a fraction in [0, 1], got {value!r}")
    return float(value)


def _require(data: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in data:
        raise TailsynthError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TailsynthError(f"{where}: key {key!r} must be {names}, got {type(value).__name__}")
    return value


def _read_metrics(path: Path) -> dict:
    if not path.is_file():
        raise TailsynthError(f"missing result file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TailsynthError(f"corrupt result file {path}: {err}") from None
    except OSError as err:
        raise TailsynthError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise TailsynthError(f"corrupt result file {path}: top level must be a JSON object")
    return data


def _parse_metrics(data: dict, path: Path) -> dict[str, Any]:
    """Validate ``metrics.json``; numeric entries of ``metrics`` besides the required four are kept."""
    where = str(path)
    metrics_in = _require(data, "metrics", dict, where)
    for key in REQUIRED_METRICS:
        if key not in metrics_in:
            raise TailsynthError(f"{where}: 'metrics' lacks {key!r}")
    metrics = {k: _fraction(v, f"{where} metrics.{k}") for k, v in metrics_in.items() if _is_number(v)}
    scores = {}
    for name, entry in _require(data, "scores", dict, where).items():
        if not isinstance(entry, dict) or "fpr95" not in entry or "auroc" not in entry:
            raise TailsynthError(f"{where}: scores.{name} must be an object with 'fpr95' and 'auroc'")
        scores[name] = {k: _fraction(v, f"{where} scores.{name}.{k}") for k, v in entry.items() if _is_number(v)}
    per_class = {str(k): _fraction(v, f"{where} per_class_acc.{k}")
                 for k, v in (data.get("per_class_acc") or {}).items()}
    wall = data.get("wall_time_s")
    return {
        "method": _require(data, "method", str, where), "seed": _require(data, "seed", int, where),
        "primary_score": data.get("primary_score") or "p_tail", "metrics": metrics, "scores": scores,
        "wall_time_s": float(wall) if _is_number(wall) else None, "per_class_acc": per_class,
        "class_names": [str(c) for c in data.get("class_names") or []],
        "head_classes": [int(c) for c in data.get("head_classes") or []],
        "tail_classes": [int(c) for c in data.get("tail_classes") or []],
        "far_ood": parse_far(data.get("far_ood"), where),
        "rare_flag": data["rare_flag"] if isinstance(data.get("rare_flag"), dict) else {},
    }


def _read_scores(path: Path, primary: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(labels, is_tail, {score: array}) from ``scores.npz``; all 1-D of one length."""
    if not path.is_file():
        raise TailsynthError(f"missing result file: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise TailsynthError(f"corrupt result file {path}: {err}") from None
    for key in ("labels", "is_tail", primary):
        if key not in arrays:
            raise TailsynthError(f"{path}: missing array {key!r} (has: {', '.join(sorted(arrays))})")
    n = len(arrays["labels"])
    for key, arr in arrays.items():
        if arr.ndim != 1 or len(arr) != n:
            raise TailsynthError(f"{path}: array {key!r} has shape {arr.shape}, expected ({n},) like 'labels'")
    labels = arrays.pop("labels").astype(np.int64)
    is_tail = arrays.pop("is_tail").astype(bool)
    return labels, is_tail, {k: v.astype(np.float64) for k, v in arrays.items()}


def load_run(run_dir: str | Path, *, with_scores: bool = True) -> RunResult:
    """Read one run directory (``metrics.json``, and ``scores.npz`` unless ``with_scores=False``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TailsynthError(f"run directory not found: {run_dir}")
    fields = _parse_metrics(_read_metrics(run_dir / METRICS_FILE), run_dir / METRICS_FILE)
    run = RunResult(path=run_dir, **fields)
    if with_scores:
        run.labels, run.is_tail, run.score_arrays = _read_scores(run_dir / SCORES_FILE, run.primary_score)
    return run


def load_runs(paths: Iterable[str | Path], *, with_scores: bool = True) -> list[RunResult]:
    """Read every run directory; a (method, seed) pair given twice is an error naming both paths."""
    runs: list[RunResult] = []
    seen: dict[tuple[str, int], Path] = {}
    for path in paths:
        run = load_run(path, with_scores=with_scores)
        key = (run.method, run.seed)
        if key in seen:
            raise TailsynthError(f"method {run.method!r} seed {run.seed} appears twice: {seen[key]} and {run.path}")
        seen[key] = run.path
        runs.append(run)
    if not runs:
        raise TailsynthError("no run directories given to the report")
    return runs
