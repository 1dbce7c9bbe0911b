"""``report.md``: LoGex Table 2 (methods), Tables 1/3 (one method's OOD scores) and the run's provenance."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .far_ood import far_tables
from .format import fmt_seconds, md_mark
from .rare_flag import rare_flag_table
from .tables import Table, accuracy_table, machine_note, meta_rows, method_table, score_table, timings_table


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _is_number_cell(text: str) -> bool:
    return text == "–" or text[:1].isdigit()


def table_to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table; best cells bold, second best underlined."""
    lines = [f"## {table.title}", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(_escape(h) for h in table.headers) + " |")
    numeric = [bool(table.rows) and all(_is_number_cell(row[i][0]) for row in table.rows)
               for i in range(len(table.headers))]
    lines.append("|" + "|".join("---:" if num and i else ":---" for i, num in enumerate(numeric)) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(md_mark(_escape(text), mark) for text, mark in row) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(results: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                    extra_tables: Sequence[Table] = ()) -> str:
    """The Markdown report of a ``results.json`` dict.

    ``meta`` keys used (all optional): ``methods`` (row order of the method table), ``report_method``
    (method of the score table, default "ce"), ``experiment``, ``profile``, ``command``, ``machine``,
    ``wall_time_s``, ``seeds``, ``package_version``, ``timings``, ``machine_keys`` and ``machine_key_stages``
    (the header's machine line). ``extra_tables`` (synthetic-image quality, sweeps) follow the main tables.
    """
    meta = dict(meta or {})
    order = meta.get("methods")
    title = f"# tailsynth report: {meta['experiment']}" if meta.get("experiment") else "# tailsynth report"
    parts = [title + "\n"]
    note = machine_note(meta)
    if note is not None:  # which machine kinds built the stages: several kinds are a warning
        warning = note.startswith("WARNING:")
        parts.append((f"> **WARNING:**{note[len('WARNING:'):]}" if warning else f"_{note}_") + "\n")
    parts.append(table_to_markdown(method_table(results, order)))
    acc = accuracy_table(results, order)
    if acc is not None:
        parts.append(table_to_markdown(acc))
    scores = score_table(results, meta.get("report_method") or "ce")
    if scores is not None:
        parts.append(table_to_markdown(scores))
    parts += [table_to_markdown(t) for t in far_tables(results, meta)]  # far-OOD sets beside the tail
    rare = rare_flag_table(results, order)  # the rare-case flag: head flag rate at alpha, band, tail recall
    if rare is not None:
        parts.append(table_to_markdown(rare))
    parts += [table_to_markdown(t) for t in extra_tables]
    lines = ["## Run", ""] + [f"- **{key}**: `{value}`" if key == "command" else f"- **{key}**: {value}"
                              for key, value in meta_rows(results, meta)]
    walls = results.get("wall_time_s") or {}
    if walls:
        lines.append("- **training wall time per method (sum over seeds)**: "
                     + ", ".join(f"{m} {fmt_seconds(w)}" for m, w in walls.items()))
    parts.append("\n".join(lines) + "\n")
    timings = timings_table(meta)
    if timings is not None:
        parts.append(table_to_markdown(timings))
    return "\n".join(parts)
