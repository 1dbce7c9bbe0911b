"""``report.html``: one self-contained page (inline CSS, PNGs embedded as base64, no external file or URL).

Sections: run provenance, LoGex Table 2 (methods), accuracy, Tables 1/3 (one method's OOD scores), ROC
curves of the primary score, score histograms head vs tail, per-class accuracy, stage timings, then any
``extra_sections`` given by later stages, then the resolved config (``meta["config"]``).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from ..utils import atomic_write_text
from ..errors import TailsynthError
from .aggregate import group_by_method
from .far_ood import far_tables
from .format import score_label
from .rare_flag import rare_flag_table
from .plots import plot_histograms, plot_per_class, plot_roc
from .runs import RunResult
from .tables import Table, accuracy_table, machine_note, meta_rows, method_table, score_table, timings_table

Section = Union[Table, tuple[str, Union[bytes, str]]]  # a Table, or (title, PNG bytes or an HTML fragment)

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; font-size: 0.9em; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
td.best { font-weight: bold; }
td.second { text-decoration: underline; }
p.caption { color: #555; font-size: 0.85em; margin-bottom: 0.2em; }
img { max-width: 100%; }
p.warning { color: #a00; font-weight: bold; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


def png_img(png: bytes, alt: str) -> str:
    """An <img> with the PNG inlined as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_to_html(table: Table) -> str:
    out = [f"<h2>{html.escape(table.title)}</h2>"]
    if table.caption:
        out.append(f'<p class="caption">{html.escape(table.caption)}</p>')
    out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
               + "</tr></thead><tbody>")
    for row in table.rows:
        cells = "".join(f'<td class="{mark}">{html.escape(text)}</td>' if mark else f"<td>{html.escape(text)}</td>"
                        for text, mark in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _section(title: str, body: str) -> str:
    return f"<section>\n<h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _extra(section: Section) -> str:
    if isinstance(section, Table):
        return table_to_html(section)
    title, content = section
    if isinstance(content, (bytes, bytearray)):
        if not bytes(content[:8]) == b"\x89PNG\r\n\x1a\n":
            raise TailsynthError(f"extra report section {title!r}: bytes must be a PNG image")
        return _section(title, png_img(bytes(content), title))
    if isinstance(content, str):
        return _section(title, content)
    raise TailsynthError(f"extra report section {title!r}: content must be PNG bytes or an HTML string, "
                         f"got {type(content).__name__}")


def _figures(results: Mapping[str, Any], runs: Sequence[RunResult], order: Sequence[str] | None) -> list[str]:
    groups = group_by_method(runs)
    ordered = {m: groups[m] for m in (order or []) if m in groups}
    ordered.update({m: g for m, g in groups.items() if m not in ordered})
    primary = results.get("primary_score", "p_tail")
    out = []
    own = results.get("method_primary_score") or {}
    roc = plot_roc(ordered, primary, own)
    if roc is not None:
        out.append(_section(f"ROC curves: {score_label(primary)}", png_img(roc, "ROC curves")
                            + '<p class="caption">One curve per method from its lowest seed (not pooled over '
                              'seeds); head is the positive class, dashed line at TPR 95 %.</p>'))
    hist = plot_histograms(ordered, primary, own)
    if hist is not None:
        out.append(_section(f"{score_label(primary)} on head vs tail test images", png_img(hist, "histograms")
                            + '<p class="caption">Lowest seed of each method; densities.</p>'))
    bars = plot_per_class(ordered)
    if bars is not None:
        out.append(_section("Per-class accuracy", png_img(bars, "per-class accuracy")))
    return out


def build_html(results: Mapping[str, Any], runs: Sequence[RunResult], meta: Mapping[str, Any] | None = None,
               extra_sections: Sequence[Section] = ()) -> str:
    """The report page as a string (see the module docstring for its sections)."""
    meta = dict(meta or {})
    order = meta.get("methods")
    title = f"tailsynth report: {meta['experiment']}" if meta.get("experiment") else "tailsynth report"
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in meta_rows(results, meta))
    body = [f"<h1>{html.escape(title)}</h1>"]
    note = machine_note(meta)
    if note is not None:
        body.append(f'<p class="{"warning" if note.startswith("WARNING") else "caption"}">{html.escape(note)}</p>')
    body += [f"<table>{rows}</table>", table_to_html(method_table(results, order))]
    for table in (accuracy_table(results, order), score_table(results, meta.get("report_method") or "ce")):
        if table is not None:
            body.append(table_to_html(table))
    body += [table_to_html(t) for t in far_tables(results, meta)]  # far-OOD sets beside the tail
    body += [table_to_html(t) for t in [rare_flag_table(results, order)] if t is not None]  # the rare-case flag
    body += _figures(results, runs, order)
    timings = timings_table(meta)
    if timings is not None:
        body.append(table_to_html(timings))
    body += [_extra(section) for section in extra_sections]
    if meta.get("config") is not None:
        config = json.dumps(meta["config"], indent=2, default=str)
        body.append(_section("Resolved config", f"<pre>{html.escape(config)}</pre>"))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def render_html(results: Mapping[str, Any], runs: Sequence[RunResult], meta: Mapping[str, Any] | None,
                out_path: str | Path, extra_sections: Sequence[Section] = ()) -> Path:
    """Write the self-contained ``report.html`` (atomically) and return its path."""
    out_path = Path(out_path)
    atomic_write_text(out_path, build_html(results, runs, meta, extra_sections))
    return out_path
