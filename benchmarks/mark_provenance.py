"""Mark experiment folders made before reports recorded their code commit.

Every report now writes ``meta.code_commit`` (the commit of the checkout that ran it). A ``results.json`` written
before that has none; this script records, as ``meta.results_commit``, the commit that last changed it in git
(``<commit> (<date>)``): the code that made it is that commit or an earlier one. The leaderboard shows it as
"results committed in <commit>, code commit not recorded". Folders that already name a commit are left alone.

    python benchmarks/mark_provenance.py benchmarks/results
    tailsynth leaderboard benchmarks/results
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailsynth.provenance import last_commit_of
from tailsynth.report.aggregate import read_results
from tailsynth.utils import atomic_write_text


def mark(results_dir: Path) -> list[tuple[str, str]]:
    """Write ``meta.results_commit`` into every ``<experiment>/results.json`` under ``results_dir`` that names no
    commit; returns (experiment, what it says)."""
    marked = []
    for path in sorted(results_dir.glob("*/results.json")):
        data = read_results(path)
        meta = data.setdefault("meta", {})
        if meta.get("code_commit") or meta.get("results_commit"):
            continue
        found = last_commit_of(path)
        if found is None:
            marked.append((path.parent.name, "not tracked by git: left unmarked"))
            continue
        meta["results_commit"] = f"{found[0]} ({found[1]})"
        # the key order of the report's own file is kept (utils.atomic_write_json sorts keys: a needless diff)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        marked.append((path.parent.name, meta["results_commit"]))
    return marked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path)
    for experiment, said in mark(parser.parse_args().results_dir):
        print(f"{experiment}: {said}")


if __name__ == "__main__":
    main()
