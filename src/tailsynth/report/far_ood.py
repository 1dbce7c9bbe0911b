"""Far-OOD in the report: the ``far_ood`` block of each run's ``metrics.json`` (the evaluate stage's far sets, see
:mod:`tailsynth.pipeline.far_ood`) aggregated over seeds into ``results.json`` and rendered as tables.

``results.json`` gets, per method row::

    "far_ood": {METHOD: {SET: {"score": the row's primary score, "n": images scored,
                               "fpr95": {"mean", "std", "values"}, "auroc": {...},
                               "scores": {SCORE: {"fpr95": {...}, "auroc": {...}}}}}}

and ``meta.far_ood_skipped`` ({set: why}) names the built-in far sets whose data was not on the machine.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..errors import TailsynthError
from .format import SCORE_COLUMNS, fmt_cell, order_methods, order_scores, rank_marks, score_label
from .tables import Table, pick_score_method

FAR_KEY = "far_ood"


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise TailsynthError(f"{where}: expected a fraction in [0, 1], got {value!r}")
    return float(value)


def parse_far(block: Any, where: str) -> dict[str, dict[str, Any]]:
    """The ``far_ood`` block of one ``metrics.json`` checked: {set: {"n", "primary": {"score", "fpr95", "auroc"},
    "scores": {score: {"fpr95", "auroc"}}}} ({} when the run has none)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise TailsynthError(f"{where}: 'far_ood' must be an object")
    out = {}
    for name, entry in block.items():
        at = f"{where} far_ood.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("primary"), dict) \
                or not isinstance(entry.get("scores"), dict):
            raise TailsynthError(f"{at}: must be an object with 'primary' and 'scores'")
        primary = entry["primary"]
        scores = {s: {k: _fraction(v.get(k), f"{at}.scores.{s}.{k}") for k in ("fpr95", "auroc")}
                  for s, v in entry["scores"].items() if isinstance(v, dict)}
        out[str(name)] = {"n": int(entry.get("n") or 0), "source": str(entry.get("source") or ""),
                          "primary": {"score": str(primary.get("score") or ""),
                                      **{k: _fraction(primary.get(k), f"{at}.primary.{k}")
                                         for k in ("fpr95", "auroc")}},
                          "scores": scores}
    return out


def far_results(groups: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """{method: {set: ...}} (module docstring) over the runs of each method (``group_by_method``); a set enters a
    row when every seed of the row has it. Empty when no run has far-OOD results."""
    from .aggregate import seed_stats
    out: dict[str, dict[str, Any]] = {}
    for method, runs in groups.items():
        blocks = [getattr(r, "far_ood", None) or {} for r in runs]
        common = [name for name in blocks[0] if all(name in b for b in blocks[1:])]
        row = {}
        for name in common:
            entries = [b[name] for b in blocks]
            scores = [s for s in entries[0]["scores"] if all(s in e["scores"] for e in entries[1:])]
            row[name] = {"score": entries[0]["primary"]["score"], "n": entries[0]["n"],
                         **{k: seed_stats(e["primary"][k] for e in entries) for k in ("fpr95", "auroc")},
                         "scores": {s: {k: seed_stats(e["scores"][s][k] for e in entries) for k in ("fpr95", "auroc")}
                                    for s in scores}}
        if row:
            out[method] = row
    return out


def drop_stale(merged: dict[str, Any], new: Mapping[str, Any]) -> None:
    """After a merge: a method the new results hold without far-OOD loses the far-OOD entry of its old row; an empty
    block is removed."""
    block = merged.get(FAR_KEY)
    if block is None:
        return
    for method in new.get("methods") or {}:
        if method not in (new.get(FAR_KEY) or {}):
            block.pop(method, None)
    if not block:
        merged.pop(FAR_KEY)


def far_set_names(results: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> list[str]:
    """The far sets of ``results``: in the experiment's ``far_ood:`` order (``meta.config``), then the others in
    first-appearance order over the rows."""
    names: dict[str, None] = {}
    for row in (results.get(FAR_KEY) or {}).values():
        names.update(dict.fromkeys(row))
    listed = [f.get("name") for f in ((meta or {}).get("config") or {}).get(FAR_KEY) or [] if isinstance(f, dict)]
    return [n for n in listed if n in names] + [n for n in names if n not in listed]


def skipped_sets(meta: Mapping[str, Any] | None, results: Mapping[str, Any]) -> dict[str, str]:
    """{set: why} of the built-in far sets skipped (absent data): the run's meta, else the results file's."""
    return dict((meta or {}).get("far_ood_skipped") or (results.get("meta") or {}).get("far_ood_skipped") or {})


def skipped_note(meta: Mapping[str, Any] | None, results: Mapping[str, Any]) -> str:
    return " ".join(f"WARNING: far-OOD set {name!r} was skipped: its data is not on the machine ({why})."
                    for name, why in skipped_sets(meta, results).items())


def far_tables(results: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> list[Table]:
    """The report's "Far-OOD" table (rows methods, per far set FPR@95 / AUROC of the row's primary score, mean ±
    std over seeds) and the far sets' OOD-scores table of the report method; a note only when every set was
    skipped; nothing when the experiment has no far sets."""
    meta = dict(meta or {})
    sets = far_set_names(results, meta)
    note = skipped_note(meta, results)
    if not sets:
        if not note:
            return []
        return [Table("Far-OOD", ["far set", "status"], [[(name, ""), ("skipped: data not on this machine", "")]
                                                         for name in skipped_sets(meta, results)],
                      caption=note)]
    far = results[FAR_KEY]
    methods = order_methods([m for m in results["methods"] if m in far], meta.get("methods"))
    columns = [(name, key, higher) for name in sets for key, _, higher in SCORE_COLUMNS]
    headers = ["method"] + [f"{name} {header}" for name in sets for _, header, _ in SCORE_COLUMNS]
    sizes = {name: next((far[m][name]["n"] for m in methods if name in far[m]), 0) for name in sets}
    caption = ("Percent, mean ± sample std over seeds: FPR@95 / AUROC of each row's primary score with the head TEST "
               "images as positives and the far-OOD images as negatives (the near-OOD convention: the far images "
               "should look tail-like). Images per set: " + ", ".join(f"{n} {sizes[n]}" for n in sets) + ".")
    own = {m: far[m][s]["score"] for m in methods for s in far[m]}
    if len(set(own.values())) > 1:
        caption += " Rows with their own score: " + ", ".join(
            f"{m}: {score_label(s)}" for m, s in own.items() if s != results.get("primary_score")) + "."
    if note:
        caption += " " + note
    table = Table("Far-OOD", headers, caption=caption)
    marks = {(n, k): rank_marks([far[m].get(n, {}).get(k) for m in methods], higher) for n, k, higher in columns}
    for i, method in enumerate(methods):
        table.rows.append([(method, "")] + [(fmt_cell(far[method].get(n, {}).get(k)), marks[(n, k)][i])
                                            for n, k, _ in columns])
    tables = [table]
    chosen = pick_score_method({"scores": {m: far[m] for m in far}}, meta.get("report_method") or "ce")
    if chosen is not None:
        block = {n: far[chosen][n] for n in sets if n in far[chosen]}
        names = order_scores([s for s in next(iter(block.values()))["scores"]
                              if all(s in block[n]["scores"] for n in block)])
        score_tab = Table(f"Far-OOD scores of method {chosen}",
                          ["score"] + [f"{n} {h}" for n in block for _, h, _ in SCORE_COLUMNS],
                          caption="Percent, mean ± sample std over seeds; head test images positive, far images "
                                  "negative; higher score = more tail.")
        score_marks = {(n, k): rank_marks([block[n]["scores"][s].get(k) for s in names], higher)
                       for n in block for k, _, higher in SCORE_COLUMNS}
        primary = results.get("primary_score")
        for i, s in enumerate(names):
            label = score_label(s) + (" (primary)" if s == primary else "")
            score_tab.rows.append([(label, "")] + [(fmt_cell(block[n]["scores"][s].get(k)), score_marks[(n, k)][i])
                                                  for n in block for k, _, _ in SCORE_COLUMNS])
        tables.append(score_tab)
    return tables
