"""The report layer: reads the evaluation stage's result files only; tables, plots, HTML.

``write_report(run_dirs, out_dir, command, meta)`` writes ``results.json``, ``report.md`` and a
self-contained ``report.html`` (LoGex Tables 1-3 style, percent, mean ± sample std over seeds).
"""
from .aggregate import aggregate, merge_results, read_results, seed_stats, write_results_json
from .format import SCORE_LABELS, fmt_cell, score_label
from .html import build_html, png_img, render_html
from .markdown import render_markdown
from .plots import figure_png, plot_histograms, plot_per_class, plot_roc, roc_points
from .runs import RunResult, load_run, load_runs
from .tables import Table, accuracy_table, method_table, score_table
from .write import write_report

__all__ = [
    "RunResult", "load_run", "load_runs",
    "aggregate", "seed_stats", "merge_results", "read_results", "write_results_json",
    "render_markdown", "render_html", "build_html", "png_img", "write_report",
    "figure_png", "roc_points", "plot_roc", "plot_histograms", "plot_per_class",
    "Table", "method_table", "score_table", "accuracy_table", "fmt_cell", "score_label", "SCORE_LABELS",
]
