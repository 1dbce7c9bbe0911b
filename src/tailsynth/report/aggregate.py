"""Mean ± std over seeds, the ``results.json`` format, and its merge-on-write.

Format (values are fractions in [0, 1]; tables multiply by 100 as LoGex Tables 1-3 do)::

    {"methods": {NAME: {METRIC: {"mean": m, "std": s, "values": [one per seed, in seed order]}}},
     "scores":  {NAME: {SCORE: {"fpr95" | "auroc": {"mean", "std", "values"}}}},
     "seeds": [union of all seeds], "command": str, "primary_score": str,
     "method_seeds": {NAME: [seeds]}, "method_commands": {NAME: command that produced the row},
     "method_primary_score": {NAME: its own primary score, for rows whose FPR@95 / AUROC use another score},
     "runs": {NAME: [{"seed", "path"}]}, "wall_time_s": {NAME: summed training wall time or null},
     "far_ood": {NAME: {SET: far-OOD FPR@95 / AUROC over seeds}} (only with far sets: report/far_ood.py)}

``std`` is the SAMPLE standard deviation (``ddof=1``) when a method has >= 2 seeds and 0.0 for a single
seed (the LoGex tables give "mean ± std" over 5 seeds; a one-seed std would be undefined).

``write_results_json`` adds to a row's ``fpr95`` and ``auroc`` a ``"ci95": [lo, hi]`` (95 % bootstrap interval of
the seed mean over the test images, :mod:`.bootstrap`) and to the row a ``"ci_method"`` string, when the runs'
``scores.npz`` reproduce the row's values.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import TailsynthError
from ..utils import atomic_write_text, json_default
from .bootstrap import add_intervals
from .far_ood import drop_stale, far_results
from .rare_flag import aggregate_rare_flag
from .runs import REQUIRED_METRICS, RunResult

METRIC_ORDER = (*REQUIRED_METRICS, "acc", "acc_many", "acc_medium", "acc_few")


def seed_stats(values: Iterable[float]) -> dict[str, Any]:
    """{"mean", "std", "values"}: sample std (ddof=1) for >= 2 values, 0.0 for one value."""
    vals = [float(v) for v in values]
    if not vals:
        raise TailsynthError("cannot aggregate an empty list of values")
    arr = np.asarray(vals, dtype=np.float64)
    std = float(np.std(arr, ddof=1)) if len(vals) >= 2 else 0.0
    return {"mean": float(np.mean(arr)), "std": std, "values": vals}


def _ordered_keys(per_run: list[Mapping[str, Any]]) -> list[str]:
    """Keys present in EVERY run: the known metric order first, then the rest sorted."""
    common = set(per_run[0])
    for entry in per_run[1:]:
        common &= set(entry)
    return [k for k in METRIC_ORDER if k in common] + sorted(common - set(METRIC_ORDER))


def group_by_method(runs: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    """{method: its runs sorted by seed}, methods in first-appearance order."""
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(run.method, []).append(run)
    for method in groups:
        groups[method].sort(key=lambda r: r.seed)
    return groups


def _primary(runs: list[RunResult], preferred: str | None = None) -> str:
    """The report's primary score: ``preferred`` (the experiment's) when a row uses it, else the one most rows
    use; rows with their own (Dream-OOD's energy) are listed in ``method_primary_score``. One method's seeds
    must agree."""
    for method, group in group_by_method(runs).items():
        names = sorted({r.primary_score for r in group})
        if len(names) > 1:
            where = ", ".join(f"{r.path} ({r.primary_score})" for r in group)
            raise TailsynthError(f"runs of {method} use different primary scores {names}: {where}")
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.primary_score] = counts.get(r.primary_score, 0) + 1
    if preferred in counts:
        return preferred
    return max(sorted(counts), key=lambda name: counts[name])


def _method_block(group: list[RunResult]) -> tuple[dict, dict]:
    metrics = {k: seed_stats(r.metrics[k] for r in group) for k in _ordered_keys([r.metrics for r in group])}
    scores = {}
    for name in _ordered_keys([r.scores for r in group]):
        keys = _ordered_keys([r.scores[name] for r in group])
        scores[name] = {k: seed_stats(r.scores[name][k] for r in group) for k in keys}
    return metrics, scores


def aggregate(runs: Iterable[RunResult], command: str = "", primary: str | None = None) -> dict[str, Any]:
    """The ``results.json`` dict of ``runs`` (see the module docstring for the format)."""
    runs = list(runs)
    if not runs:
        raise TailsynthError("cannot aggregate zero runs")
    results: dict[str, Any] = {"methods": {}, "scores": {}, "seeds": sorted({r.seed for r in runs}),
                               "command": command, "primary_score": _primary(runs, primary), "method_seeds": {},
                               "method_commands": {}, "runs": {}, "wall_time_s": {}}
    for method, group in group_by_method(runs).items():
        results["methods"][method], results["scores"][method] = _method_block(group)
        results["method_seeds"][method] = [r.seed for r in group]
        if group[0].primary_score != results["primary_score"]:
            results.setdefault("method_primary_score", {})[method] = group[0].primary_score
        results["method_commands"][method] = command
        results["runs"][method] = [{"seed": r.seed, "path": str(r.path)} for r in group]
        walls = [r.wall_time_s for r in group]
        results["wall_time_s"][method] = None if any(w is None for w in walls) else float(sum(walls))
    for method, group in group_by_method(runs).items():  # the rare-case flag on test (report/rare_flag.py)
        rare = aggregate_rare_flag(group)
        if rare:
            results.setdefault("rare_flag", {})[method] = rare
    far = far_results(group_by_method(runs))  # far-OOD sets per row (report/far_ood.py), when the runs have them
    if far:
        results["far_ood"] = far
    return results


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json``; a corrupt file or one without a "methods" object is an error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TailsynthError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TailsynthError(f"corrupt results file {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise TailsynthError(f"corrupt results file {path}: no 'methods' object")
    return data


_PER_METHOD = ("methods", "scores", "method_seeds", "method_commands", "runs", "wall_time_s", "config_digest",
               "method_primary_score", "far_ood", "rare_flag")


def merge_results(old: Mapping[str, Any], new: Mapping[str, Any], where: str = "results.json") -> dict:
    """Methods of ``new`` replace the same names of ``old``; old methods not in ``new`` are kept.

    Kept methods stay in their old position, new ones are appended; ``seeds`` becomes the union.
    """
    old_primary, new_primary = old.get("primary_score"), new.get("primary_score")
    if old_primary and new_primary and old_primary != new_primary:
        raise TailsynthError(f"{where} holds results for primary score {old_primary!r}, the new runs use "
                             f"{new_primary!r}; write the report to a new directory")
    merged = {k: v for k, v in old.items() if k not in _PER_METHOD}
    merged.update({k: v for k, v in new.items() if k not in _PER_METHOD})
    for key in _PER_METHOD:
        block = dict(old.get(key) or {})
        block.update(new.get(key) or {})
        merged[key] = block
    drop_stale(merged, new)  # a row re-run without far sets loses its old far-OOD entry
    for method in new.get("methods") or {}:  # likewise a row re-run without the rare-case flag block
        if method not in (new.get("rare_flag") or {}):
            merged["rare_flag"].pop(method, None)
    seeds = set(old.get("seeds") or []) | set(new.get("seeds") or [])
    merged["seeds"] = sorted(seeds)
    return merged


def write_results_json(path: str | Path, runs: Iterable[RunResult], command: str = "",
                       extra: Mapping[str, Any] | None = None,
                       config_digest: Mapping[str, str] | None = None, primary: str | None = None) -> dict[str, Any]:
    """Aggregate ``runs`` and write ``path`` atomically, merging with an existing file; returns the dict.

    ``extra`` adds top-level keys (it may not replace the per-method blocks). ``config_digest``: per method,
    a digest of the non-method settings it was run with; kept per row through merges, so a report whose
    rows come from different settings flags them.
    """
    path = Path(path)
    runs = list(runs)
    results = aggregate(runs, command, primary)
    add_intervals(results, group_by_method(runs))  # 95 % bootstrap intervals of FPR@95 / AUROC
    results["config_digest"] = {m: (config_digest or {}).get(m) for m in results["methods"]}
    for key, value in (extra or {}).items():
        if key in _PER_METHOD or key in ("seeds", "primary_score"):
            raise TailsynthError(f"write_results_json: extra key {key!r} would overwrite the aggregated results")
        results[key] = value
    if path.exists():
        results = merge_results(read_results(path), results, str(path))
    try:
        text = json.dumps(results, indent=2, allow_nan=False, default=json_default)
    except (ValueError, TypeError) as err:  # NaN / inf or an odd object in ``extra``
        raise TailsynthError(f"cannot write {path}: {err}") from None
    atomic_write_text(path, text + "\n")
    return results
