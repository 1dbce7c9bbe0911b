"""The README's results table: one experiment's rows of the leaderboard, in the README's columns.

    python benchmarks/readme_table.py pbc-lt-cpu            # prints the table (Markdown)

Reads ``benchmarks/results/<experiment>/results.json`` through the leaderboard's own row builder, so the README's
numbers are the leaderboard's (tests/test_leaderboard.py checks that the README holds this table).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tailsynth.report.aggregate import read_results
from tailsynth.report.leaderboard import experiment_rows, interval_cell

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = {"logex-lora": "logex-lora (only LoRA)"}
HEADER = ("| method | FPR@95 ↓ [95 %] | AUROC ↑ | bAcc-head ↑ | bAcc-tail ↑ | val FPR@95 ↓ | oracle acc. ↑ | vs CE |\n"
          "|---|---|---|---|---|---|---|---|")


def _pct(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}{suffix}"


def _vs_ce(text: str) -> str:
    return {"not separable from CE": "not separable", "lower FPR@95 than CE": "lower FPR@95",
            "higher FPR@95 than CE": "higher FPR@95"}.get(text, text)


def readme_table(experiment: str, results_dir: Path = RESULTS) -> str:
    rows = experiment_rows(experiment, read_results(results_dir / experiment / "results.json"))
    lines = [HEADER]
    for r in rows:
        auroc = r.auroc[0] if r.auroc else None
        lines.append(f"| {LABELS.get(r.method, r.method)} | {interval_cell(r.fpr95)} | {_pct(auroc)} | "
                     f"{_pct(r.bacc_head)} | {_pct(r.bacc_tail)} | {_pct(r.val_fpr95)} | "
                     f"{_pct(r.oracle_acc, 1, ' %')} | {_vs_ce(r.vs_ce)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(readme_table(args.experiment, args.results_dir))


if __name__ == "__main__":
    main()
