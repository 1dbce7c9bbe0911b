"""Tables as data (cells with best / second-best marks), shared by the Markdown and HTML renderers.

* :func:`method_table` — LoGex Table 2: rows methods, columns FPR@95, AUROC, bAcc-head, bAcc-tail.
* :func:`score_table` — LoGex Tables 1 / 3: one method's OOD scores, columns FPR@95 and AUROC.
* :func:`accuracy_table` — top-1 and many / medium / few-shot accuracy, when the runs have them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .format import (ACCURACY_LABELS, SCORE_COLUMNS, TABLE2_COLUMNS, VAL_COLUMNS, fmt_cell, fmt_seconds, order_methods,
                     order_scores, rank_marks, score_label)

Cell = tuple[str, str]  # (text, mark) with mark in {"", "best", "second"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""


def _fill(table: Table, labels: Sequence[str], columns: Sequence[tuple[str, str, bool]],
          stats_of: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per label; each column's cells ranked among the rows."""
    marks = {}
    for key, _, higher in columns:
        marks[key] = rank_marks([stats_of[label].get(key) for label in labels], higher)
    for i, label in enumerate(labels):
        row: list[Cell] = []
        for key, _, _ in columns:
            row.append((fmt_cell(stats_of[label].get(key)), marks[key][i]))
        table.rows.append(row)
    return table


def _n_seeds_text(results: Mapping[str, Any], methods: Sequence[str]) -> str:
    counts = sorted({len(results.get("method_seeds", {}).get(m, [])) for m in methods} - {0})
    if not counts:
        return "seeds"
    return f"{'/'.join(str(c) for c in counts)} seed{'s' if counts != [1] else ''}"


def method_table(results: Mapping[str, Any], order: Sequence[str] | None = None) -> Table:
    """LoGex Table 2 over every method in ``results`` (``order`` first)."""
    methods = order_methods(list(results["methods"]), order)
    primary = score_label(results.get("primary_score", "p_tail"))
    with_val = any("val_fpr95" in results["methods"][m] for m in methods)
    columns = TABLE2_COLUMNS + (VAL_COLUMNS if with_val else ())
    digests = {m: (results.get("config_digest") or {}).get(m) for m in methods}
    mixed = len({d for d in digests.values() if d}) > 1
    caption = (f"Percent, mean ± sample std over {_n_seeds_text(results, methods)}; FPR@95 and AUROC of the "
               f"{primary} score on the test split" + ("; val columns: the same on the validation split, where "
                                                      "choices are made" if with_val else "")
               + ". Bold: best, underlined: second best per column.")
    if any(results["methods"][m].get(k, {}).get("ci95") for m in methods for k in ("fpr95", "auroc")):
        caption += (" [lo, hi]: 95 % interval of the seed mean, bootstrap over the test images within each seed "
                    "(B = 1000), pooled over seeds.")
    own = {m: results.get("method_primary_score", {}).get(m) for m in methods}
    own = {m: score for m, score in own.items() if score}
    if own:
        caption += (" Rows with their own test score (FPR@95 / AUROC of it): "
                    + ", ".join(f"{m}: {score_label(score)}" for m, score in own.items()) + ".")
    if mixed:
        caption += (" WARNING: the rows were made with different non-method settings (column 'settings' = a "
                    "digest of the experiment config without its method lists); compare only rows that share it.")
    table = Table("Tail detection and balanced accuracy (Table 2)",
                  ["method"] + [header for _, header, _ in columns] + (["settings"] if mixed else []),
                  caption=caption)
    _fill(table, methods, columns, results["methods"])
    for method, row in zip(methods, table.rows):
        row.insert(0, (method, ""))
        if mixed:
            row.append(((digests[method] or "–")[:8], ""))
    return table


def accuracy_table(results: Mapping[str, Any], order: Sequence[str] | None = None) -> Table | None:
    """Top-1 / many / medium / few-shot accuracy; None when no method has any of them."""
    methods = order_methods(list(results["methods"]), order)
    keys = [k for k in ACCURACY_LABELS if any(k in results["methods"][m] for m in methods)]
    if not keys:
        return None
    columns = [(k, ACCURACY_LABELS[k], True) for k in keys]
    table = Table("Classification accuracy", ["method"] + [ACCURACY_LABELS[k] for k in keys],
                  caption="Percent, mean ± sample std over seeds; predictions are argmax over all classes.")
    _fill(table, methods, columns, results["methods"])
    for method, row in zip(methods, table.rows):
        row.insert(0, (method, ""))
    return table


def pick_score_method(results: Mapping[str, Any], wanted: str | None) -> str | None:
    """``wanted`` (default "ce") when it has scores, else the first method that has any; None if none."""
    scores = results.get("scores") or {}
    wanted = wanted or "ce"
    if scores.get(wanted):
        return wanted
    return next((m for m, block in scores.items() if block), None)


def score_table(results: Mapping[str, Any], method: str | None = "ce") -> Table | None:
    """LoGex Tables 1 / 3 for one method: rows OOD scores, columns FPR@95 and AUROC."""
    chosen = pick_score_method(results, method)
    if chosen is None:
        return None
    block = results["scores"][chosen]
    names = order_scores(list(block))
    primary = results.get("primary_score")
    note = "" if chosen == (method or "ce") else f" (method {method!r} has no results; showing {chosen!r})"
    table = Table(f"OOD scores of method {chosen} (Tables 1 and 3)", ["score"] + [h for _, h, _ in SCORE_COLUMNS],
                  caption=f"Percent, mean ± sample std over seeds; higher score = more tail{note}.")
    _fill(table, names, SCORE_COLUMNS, block)
    for name, row in zip(names, table.rows):
        label = score_label(name) + (" (primary)" if name == primary else "")
        row.insert(0, (label, ""))
    return table


def meta_rows(results: Mapping[str, Any], meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, value) lines of the run's provenance: command, machine, wall time, seeds, version."""
    rows = []
    for key, label in (("experiment", "experiment"), ("profile", "profile")):
        if meta.get(key):
            rows.append((label, str(meta[key])))
    rows.append(("command", str(meta.get("command") or results.get("command") or "–")))
    rows.append(("machine", str(meta.get("machine") or "–")))
    rows.append(("compute time (all stages, cached or not)", fmt_seconds(meta.get("wall_time_s"))))
    if meta.get("this_invocation_s") is not None:
        jobs = meta.get("jobs") or 1
        rows.append(("this invocation" + (f" ({jobs} stages at a time)" if jobs > 1 else ""),
                     fmt_seconds(meta.get("this_invocation_s"))))
    seeds = meta.get("seeds") or results.get("seeds") or []
    rows.append(("seeds", ", ".join(str(s) for s in seeds) or "–"))
    rows.append(("primary score", score_label(results.get("primary_score", "p_tail"))))
    rows.append(("package version", str(meta.get("package_version") or "–")))
    if meta.get("code_commit"):
        rows.append(("code commit", str(meta["code_commit"])))
    return rows


def machine_note(meta: Mapping[str, Any], shown: int = 6) -> str | None:
    """The report header's line on the machines its stages were built on (``meta["machine_keys"]``, per key
    ``meta["machine_key_stages"]``): CPU digits are bit-identical only under one machine key, so several keys are
    said plainly, with the stages built under each. None when the meta records no key."""
    keys = list(meta.get("machine_keys") or [])
    if not keys:
        return None
    if keys == ["unknown"]:
        return "The machine kind of the stages is unknown (built before manifests recorded machine keys)."
    if len(keys) == 1:
        return f"Every stage was built on one machine kind: {keys[0]}."
    stages = meta.get("machine_key_stages") or {}
    parts = []
    for key in keys:
        names = list(stages.get(key) or [])
        listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
        parts.append(f"{key} ({len(names)} stage{'s' if len(names) != 1 else ''}: {listed})" if names else key)
    return (f"WARNING: this report mixes stages built on {len(keys)} machine kinds: " + "; ".join(parts)
            + ". CPU results are bit-identical only on one kind of CPU with one torch thread count.")


def timings_table(meta: Mapping[str, Any]) -> Table | None:
    """Stage timings recorded by the runner (``meta["timings"]``: stage, label, state, wall_time_s, peak_rss_bytes),
    one row per artifact; a resumed stage's wall time includes its interrupted invocations."""
    timings = meta.get("timings") or []
    if not timings:
        return None
    table = Table("Stage timings", ["stage", "label", "state", "wall time", "peak memory"])
    seen = set()
    for t in timings:
        key = (t.get("stage"), t.get("fingerprint") or id(t))
        if key in seen:  # a stage shared by several methods (base diffusion, LoRA) is listed once
            continue
        seen.add(key)
        table.rows.append([(str(t.get("stage", "")), ""), (str(t.get("label", "")), ""),
                           (str(t.get("state", "")), ""), (fmt_seconds(t.get("wall_time_s")), ""),
                           (f"{t['peak_rss_bytes'] / 2 ** 30:.1f} GiB" if t.get("peak_rss_bytes") else "-", "")])
    return table
