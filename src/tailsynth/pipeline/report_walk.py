"""The report walk: every stage the experiment requested that has a report section (``Stage.report``) adds it,
in the order the stages were first requested; the pipeline knows no method's section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data import Split
from ..engine import Built
from .experiment import ExperimentConfig


@dataclass(frozen=True)
class ReportContext:
    """What a stage's report hook may read besides its own artifacts: the experiment and its split."""

    config: ExperimentConfig
    split: Split


def stage_sections(graph, context: ReportContext) -> tuple[list, dict[str, Any]]:
    """(sections, results.json entries) of every requested stage with a report hook, each stage's hook called
    once with all of its artifacts."""
    by_stage: dict[str, list[Built]] = {}
    for built in graph.built():
        if built.stage.report is not None:
            by_stage.setdefault(built.stage.name, []).append(built)
    sections: list = []
    results: dict[str, Any] = {}
    for built in by_stage.values():
        extra, found = built[0].stage.report(built, context)
        sections += extra
        results.update(found)
    return sections, results
