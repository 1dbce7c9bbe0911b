"""Find a final classifier by name (method, seed, experiment) in a runs folder, from manifests and reports only.

``tailsynth predict --method logex --seed 0 [--experiment demo] IMAGES`` and
``tailsynth.load(runs="runs", experiment="demo", method="logex", seed=0)`` come here. The order:

1. the experiment's report (``<runs>/reports/<experiment>/results.json``, or a report folder given as such): its
   ``runs`` list, per method, the ``evaluate`` artifacts of the row; the manifest's ``inputs.classifier`` of the
   one with that seed is the classifier;
2. failing that (no report yet, or no experiment named), every artifact whose manifest ``label`` is
   ``"<method> seed <seed>"``: a classifier itself (it has ``model.json``: ``train_classifier``, ``label_shift``)
   or an artifact with a ``classifier`` input (``evaluate``), which names it.

Several distinct classifiers found, or none, is an error that lists the candidates (fingerprint, label, finished
time, experiments whose report used it), so the caller can pass the folder itself. Nothing here knows a method.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TailsynthError
from ..utils import read_json
from .store import MANIFEST

RESULTS = "results.json"
MODEL_CARD = "model.json"


@dataclass(frozen=True)
class Candidate:
    """A classifier artifact with what its manifest says about it."""

    stage: str
    fingerprint: str
    path: Path
    label: str
    finished: str
    experiments: tuple[str, ...] = ()

    def row(self) -> str:
        return (f"  {self.fingerprint:<18} {self.label:<26} {self.finished:<26} "
                f"{', '.join(self.experiments) or '-':<14} {self.path}")


HEADER = f"  {'fingerprint':<18} {'label':<26} {'finished':<26} {'experiment':<14} path"


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path / MANIFEST)
    except TailsynthError:
        return None
    return data if isinstance(data, dict) else None


def _finished_dirs(runs: Path):
    """(stage, folder, manifest) of every finished artifact under ``runs`` (reports and partial work skipped)."""
    if not runs.is_dir():
        return
    for stage_dir in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(stage_dir.iterdir()):
            if path.is_dir() and not path.name.startswith(".") and not path.name.endswith(".partial"):
                manifest = _manifest(path)
                if manifest is not None:
                    yield stage_dir.name, path, manifest


def report_experiments(runs: Path) -> dict[str, list[str]]:
    """{fingerprint: [experiments]}: which experiment reports under ``runs/reports`` used each artifact."""
    found: dict[str, list[str]] = {}
    reports = runs / "reports"
    if not reports.is_dir():
        return found
    for folder in sorted(p for p in reports.iterdir() if (p / RESULTS).is_file()):
        try:
            results = read_json(folder / RESULTS)
        except TailsynthError:
            continue
        for timing in ((results.get("meta") or {}).get("timings") or []):
            fp = timing.get("fingerprint") if isinstance(timing, dict) else None
            if fp and folder.name not in found.setdefault(fp, []):
                found[fp].append(folder.name)
    return found


def _resolve(runs: Path, ref: dict[str, Any] | str) -> Path | None:
    """An artifact folder from a manifest's input ``{stage, fingerprint, path}`` or a recorded path: looked for
    under ``runs`` first (the folder may have moved since), then where it was recorded."""
    recorded = Path(ref["path"] if isinstance(ref, dict) else ref)
    stage = ref.get("stage") if isinstance(ref, dict) else recorded.parent.name
    fingerprint = ref.get("fingerprint") if isinstance(ref, dict) else recorded.name
    for path in (runs / str(stage) / str(fingerprint), recorded):
        if (path / MANIFEST).is_file():
            return path
    return None


def _candidate(path: Path, experiments: dict[str, list[str]]) -> Candidate:
    manifest = _manifest(path) or {}
    return Candidate(stage=path.parent.name, fingerprint=path.name, path=path, label=manifest.get("label") or "-",
                     finished=manifest.get("finished") or "-", experiments=tuple(experiments.get(path.name, ())))


def _classifier_of(runs: Path, path: Path, manifest: dict[str, Any]) -> Path | None:
    """The classifier an artifact is or names (its ``classifier`` input), or None."""
    if (path / MODEL_CARD).is_file():
        return path
    ref = (manifest.get("inputs") or {}).get("classifier")
    return _resolve(runs, ref) if isinstance(ref, dict) else None


def _table(candidates: list[Candidate]) -> str:
    return "\n".join([HEADER] + [c.row() for c in candidates])


def _wanted(method: str, seed: int | None) -> re.Pattern:
    return re.compile(rf"{re.escape(method)} seed {seed if seed is not None else r'[0-9]+'}")


def classifiers(runs: str | Path) -> list[Candidate]:
    """Every finished classifier (an artifact with ``model.json``) under ``runs``, with its label."""
    runs = Path(runs)
    experiments = report_experiments(runs)
    return [_candidate(path, experiments) for _, path, _ in _finished_dirs(runs) if (path / MODEL_CARD).is_file()]


def _from_report(report: Path, runs: Path, method: str, seed: int | None) -> Path:
    results = read_json(report / RESULTS)
    rows = results.get("runs") or {}
    shown = "; ".join(f"{m} (seed {', '.join(str(e.get('seed')) for e in entries)})" for m, entries in rows.items())
    entries = [e for e in rows.get(method) or [] if seed is None or e.get("seed") == seed]
    what = f"{method}" + (f" seed {seed}" if seed is not None else "")
    if not entries:
        raise TailsynthError(f"the report {report} has no row {what}; its rows: {shown or 'none'}")
    if len(entries) > 1:
        raise TailsynthError(f"the report {report} has {method} with seeds "
                             f"{', '.join(str(e.get('seed')) for e in entries)}: pass --seed")
    evaluation = _resolve(runs, entries[0].get("path", ""))
    if evaluation is None:
        raise TailsynthError(f"the report {report} names {entries[0].get('path')} for {what}, which is gone "
                             f"(not under {runs} either); rerun the experiment or pass the classifier folder")
    classifier = _classifier_of(runs, evaluation, _manifest(evaluation) or {})
    if classifier is None:
        raise TailsynthError(f"{evaluation} (the report's run of {what}) names no classifier that exists")
    return classifier


def find_classifier(runs: str | Path = "runs", method: str | None = None, seed: int | None = None,
                    experiment: str | None = None, report: str | Path | None = None) -> Path:
    """The folder of the final classifier of row ``method`` (``seed``) in ``runs``: from the report of
    ``experiment`` (``<runs>/reports/<experiment>``, or the report folder ``report``) when it exists, else the
    classifier whose artifacts are labelled ``"<method> seed <seed>"``. ``seed`` None: the only seed there is.
    Several or no matches: an error listing the candidates."""
    runs = Path(runs)
    if report is not None:
        report = Path(report)
        if not (report / RESULTS).is_file():
            raise TailsynthError(f"{report} is not an experiment report folder (no {RESULTS})")
        runs = report.parent.parent  # <runs>/reports/<experiment>
    elif experiment is not None:
        report = runs / "reports" / experiment
    if method is None:
        if report is not None and (report / RESULTS).is_file():
            rows = read_json(report / RESULTS).get("runs") or {}
            raise TailsynthError(f"name the row with --method (and --seed); the report {report} has: "
                                 + "; ".join(f"{m} (seed {', '.join(str(e.get('seed')) for e in v)})"
                                             for m, v in rows.items()))
        raise TailsynthError("name the classifier with --method (and --seed), or pass its folder")
    if report is not None and (report / RESULTS).is_file():
        return _from_report(report, runs, method, seed)
    wanted = _wanted(method, seed)
    experiments = report_experiments(runs)
    found: dict[Path, Candidate] = {}
    for _, path, manifest in _finished_dirs(runs):
        if not wanted.fullmatch(str(manifest.get("label") or "")):
            continue
        classifier = _classifier_of(runs, path, manifest)
        if classifier is not None and classifier.resolve() not in found:
            found[classifier.resolve()] = _candidate(classifier, experiments)
    what = f"{method} seed {seed}" if seed is not None else f"{method} seed N"
    where = f"{runs}" + (f" (no report {report / RESULTS} yet)" if report is not None else "")
    if len(found) == 1:
        return next(iter(found.values())).path
    if not found:
        there = classifiers(runs)
        listing = f"the classifiers there:\n{_table(there)}" if there else "it holds no finished classifier"
        raise TailsynthError(f"no classifier labelled {what!r} in {where}; {listing}")
    ordered = sorted(found.values(), key=lambda c: c.finished)
    hint = "" if experiment is not None else "--experiment NAME (use its report) or "
    raise TailsynthError(f"{len(found)} classifiers match {what!r} in {where}; choose with {hint}--model "
                         f"PATH (Python: tailsynth.load(PATH)):\n{_table(ordered)}")
