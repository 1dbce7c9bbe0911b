"""``write_report``: run directories -> ``results.json`` (merged), ``report.md`` and ``report.html``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import TailsynthError
from ..utils import atomic_write_text
from .aggregate import write_results_json
from .html import Section, render_html
from .markdown import render_markdown
from .runs import RunResult, load_runs
from .tables import Table

RESULTS_JSON, REPORT_MD, REPORT_HTML = "results.json", "report.md", "report.html"
_META_KEYS = ("experiment", "benchmark", "profile", "timings", "machine", "machine_keys", "machine_key_stages",
              "split_fingerprint", "settings", "package_version", "code_commit", "results_commit", "wall_time_s",
              "merged_from", "far_ood_skipped")


def _kept_runs(results: Mapping[str, Any], new_methods: set[str]) -> list[RunResult]:
    """Runs of methods kept from an earlier results.json whose run directories still exist (for plots)."""
    kept = []
    for method, entries in (results.get("runs") or {}).items():
        if method in new_methods or method not in results["methods"]:
            continue
        try:
            kept += load_runs([e["path"] for e in entries])
        except (TailsynthError, KeyError, TypeError):
            continue  # moved or deleted: its table rows stay, its curves are left out
    return kept


def write_report(run_dirs: Iterable[str | Path], out_dir: str | Path, command: str = "",
                 meta: Mapping[str, Any] | None = None,
                 extra_sections: Sequence[Section] = (),
                 config_digest: Mapping[str, str] | None = None,
                 extra_results: Mapping[str, Any] | None = None) -> tuple[Path, Path, Path]:
    """Read the runs, write ``results.json`` (merged with an existing one: methods in ``run_dirs`` replace
    their old rows, other methods are kept), then ``report.md`` and ``report.html`` from the merged results,
    each written once, atomically. ``extra_sections``: Tables (in both files) and (title, PNG or HTML)
    sections (HTML only); ``extra_results``: further top-level blocks of results.json (synthetic-set and
    oracle figures), so every figure of the report is in the results file.

    Figures use the given runs plus, for kept methods, their recorded run directories if they still exist.
    Returns ``(md_path, html_path, json_path)``.
    """
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    meta.setdefault("command", command)
    runs = load_runs(run_dirs)
    json_path = out_dir / RESULTS_JSON
    extra = {"meta": {k: meta[k] for k in _META_KEYS if meta.get(k) is not None}, **(extra_results or {})}
    primary = (meta.get("config") or {}).get("primary_score")  # the experiment's; rows may have their own
    results = write_results_json(json_path, runs, command, extra=extra, config_digest=config_digest,
                                 primary=primary)
    plot_runs = runs + _kept_runs(results, {r.method for r in runs})
    md_path = out_dir / REPORT_MD
    tables = [section for section in extra_sections if isinstance(section, Table)]
    atomic_write_text(md_path, render_markdown(results, meta, tables))
    html_path = render_html(results, plot_runs, meta, out_dir / REPORT_HTML, extra_sections)
    return md_path, html_path, json_path
