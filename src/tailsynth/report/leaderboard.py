"""``tailsynth leaderboard RESULTS_DIR``: one table of every shipped experiment's rows.

Reads ``RESULTS_DIR/<experiment>/results.json`` (``speed/`` and folders without one are skipped) and writes
``RESULTS_DIR/README.md`` (a page per benchmark table) and ``RESULTS_DIR/leaderboard.csv``: one row per
benchmark x experiment x method with FPR@95 and AUROC (seed mean, 95 % interval), bAcc-head / bAcc-tail, the
validation FPR@95, seeds, the oracle accuracy of the row's synthetic images, the CPU-hours of the row's own
stages and the machine. Output is deterministic (sorted rows, fixed float formatting): a rerun on the same files
writes the same bytes.
"""
from __future__ import annotations

import csv
import io
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import TailsynthError
from ..utils import atomic_write_text

README, CSV_FILE, RESULTS_JSON = "README.md", "leaderboard.csv", "results.json"
SKIP_DIRS = ("speed",)
# method -> the synthetic generator whose images it trains on (methods/*.py: ``generator = ...`` and its ``name``;
# tests/test_leaderboard.py checks this against the method registry)
GENERATORS = {"logex": "logex", "logex-lora": "lora", "fg-entropy": "fg-entropy", "minority": "minority"}
BOOTSTRAP, T_OVER_SEEDS, NO_INTERVAL = "bootstrap", "t over seeds", "none (1 seed)"
REFERENCE, NOT_SEPARABLE = "reference", "not separable from CE"
CSV_COLUMNS = ("benchmark", "experiment", "method", "fpr95", "fpr95_lo", "fpr95_hi", "auroc", "auroc_lo",
               "auroc_hi", "interval", "bacc_head", "bacc_tail", "val_fpr95", "seeds", "oracle_acc", "cpu_hours",
               "cpu_hours_from", "machine", "made_by", "vs_ce")
_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "experiments"


@dataclass
class Row:
    benchmark: str
    experiment: str
    method: str
    fpr95: tuple[float, float | None, float | None] | None  # (mean, lo, hi), fractions
    auroc: tuple[float, float | None, float | None] | None
    interval: str
    bacc_head: float | None
    bacc_tail: float | None
    val_fpr95: float | None
    seeds: list[int]
    oracle_acc: float | None
    cpu_hours: float | None
    cpu_hours_from: str
    machine: str
    made_by: str = ""  # the code commit that made the experiment folder (made_by_of)
    vs_ce: str = ""
    far: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # far set -> (FPR@95, AUROC)
    rare: tuple[float | None, float | None] | None = None  # rare-case flag at alpha 0.05: (head flag rate, tail recall)


# --- intervals -------------------------------------------------------------------------------------------------

def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (the seeds), clipped to [0, 1]; None for fewer than 2."""
    if len(values) < 2:
        return None
    from scipy.stats import t as student_t
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(student_t.ppf(0.5 + level / 2.0, n - 1)) * std / math.sqrt(n)
    return max(0.0, mean - half), min(1.0, mean + half)


def _interval(stat: Mapping[str, Any] | None) -> tuple[tuple[float, float | None, float | None] | None, str]:
    """((mean, lo, hi), kind) of one metric's stat: its bootstrap ``ci95`` if present, else a t-interval."""
    if not stat or "mean" not in stat:
        return None, ""
    mean = float(stat["mean"])
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        return (mean, float(lo), float(hi)), BOOTSTRAP
    found = t_interval([float(v) for v in stat.get("values") or []])
    if found is None:
        return (mean, None, None), NO_INTERVAL
    return (mean, *found), T_OVER_SEEDS


def _mean(stat: Mapping[str, Any] | None) -> float | None:
    return float(stat["mean"]) if stat and "mean" in stat else None


# --- where a row comes from -----------------------------------------------------------------------------------

def _run_args(command: str) -> tuple[str | None, str | None]:
    """(experiment config, ``benchmark=`` override) of a ``tailsynth run|demo|train`` command line."""
    try:
        words = shlex.split(command or "")
    except ValueError:
        return None, None
    config = override = None
    for i, word in enumerate(words):
        if word.startswith("benchmark="):
            override = word.split("=", 1)[1]
        elif word == "--benchmark" and i + 1 < len(words):
            override = Path(words[i + 1]).stem
    if "run" in words[:2] and len(words) > words.index("run") + 1:
        config = words[words.index("run") + 1]
    elif "demo" in words[:2]:
        config = "demo"
    return config, override


def _yaml_benchmark(config: str | None, depth: int = 0) -> str | None:
    """The ``benchmark`` of a shipped experiment config (following ``extends``), read as plain YAML."""
    if not config or depth > 8:
        return None
    path = _CONFIGS / f"{config}.yaml"
    if not path.is_file():
        return None
    import yaml
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if data.get("benchmark"):
        return str(data["benchmark"])
    return _yaml_benchmark(data.get("extends"), depth + 1)


def benchmark_of(experiment: str, results: Mapping[str, Any]) -> str:
    """``meta.benchmark`` when recorded, else a ``benchmark=`` override of the row commands, else the benchmark of
    the shipped config named by the folder, by ``meta.experiment`` or by the command; else ``"unknown"``."""
    meta = results.get("meta") or {}
    if meta.get("benchmark"):
        return str(meta["benchmark"])
    commands = sorted(set((results.get("method_commands") or {}).values()) | {results.get("command") or ""})
    parsed = [_run_args(c) for c in commands]
    overrides = sorted({o for _, o in parsed if o})
    if len(overrides) == 1:
        return overrides[0]
    for name in [experiment, meta.get("experiment")] + sorted({c for c, _ in parsed if c}):
        found = _yaml_benchmark(name)
        if found:
            return found
    return "unknown"


def machine_of(results: Mapping[str, Any]) -> str:
    meta = results.get("meta") or {}
    if meta.get("machine"):
        return str(meta["machine"])
    keys = meta.get("machine_keys")
    if isinstance(keys, Mapping):
        keys = list(keys)
    return "; ".join(str(k) for k in keys) if keys else ""


def made_by_of(results: Mapping[str, Any]) -> str:
    """Which code made an experiment folder: ``code <commit>`` from ``meta.code_commit`` (every report records it),
    else ``meta.results_commit`` for folders made before that (the commit that last changed their results.json,
    written by ``benchmarks/mark_provenance.py``), else "not recorded"."""
    meta = results.get("meta") or {}
    if meta.get("code_commit"):
        return f"code {meta['code_commit']}"
    if meta.get("results_commit"):
        return f"results committed in {meta['results_commit']}, code commit not recorded"
    return "not recorded"


def own_stage_hours(method: str, results: Mapping[str, Any]) -> tuple[float | None, str]:
    """(hours, source): the summed wall time of the stages whose label names ``method`` (its classifiers and
    evaluations: "logex seed 0") or its generator's synthesis ("synthesis logex"), each stage counted once, from
    ``meta.timings``. Shared stages (split, base diffusion, LoRA, auxiliary classifier, oracle) are left out, so
    it is an approximation. Without timings: the summed classifier training time of ``wall_time_s``."""
    timings = (results.get("meta") or {}).get("timings") or []
    generator = GENERATORS.get(method.split("@")[0])
    total, seen, found = 0.0, set(), False
    for t in timings:
        words = str(t.get("label", "")).split()
        own = method in words or (generator is not None and words[:1] == ["synthesis"] and generator in words[1:])
        key = (t.get("stage"), t.get("fingerprint") or id(t))
        if own and key not in seen:
            seen.add(key)
            found = True
            total += float(t.get("wall_time_s") or 0.0)
    if found:
        return total / 3600.0, "stage timings"
    wall = (results.get("wall_time_s") or {}).get(method)
    if wall is not None:
        return float(wall) / 3600.0, "classifier training only"
    return None, ""


def oracle_accuracy(method: str, results: Mapping[str, Any]) -> float | None:
    """The oracle's accuracy on the synthetic images of ``method``'s generator (results.json ``oracle_accuracy``), or
    on the set named after the row itself (a judged set: ``logex-guarded``)."""
    name = method.split("@")[0]
    entry = (results.get("oracle_accuracy") or {}).get(GENERATORS.get(name, name))
    if isinstance(entry, Mapping) and entry.get("overall") is not None:
        return float(entry["overall"])
    return None


# --- rows -------------------------------------------------------------------------------------------------------

def _vs_ce(row: Row, ce: Row | None) -> str:
    if row.method == "ce":
        return REFERENCE
    if ce is None:
        return "no CE row"
    if row.fpr95 is None or ce.fpr95 is None or row.fpr95[1] is None or ce.fpr95[1] is None:
        return "no interval"
    (_, lo, hi), (_, ce_lo, ce_hi) = row.fpr95, ce.fpr95
    if lo <= ce_hi and ce_lo <= hi:
        return NOT_SEPARABLE
    return "lower FPR@95 than CE" if hi < ce_lo else "higher FPR@95 than CE"


def experiment_rows(experiment: str, results: Mapping[str, Any]) -> list[Row]:
    """The rows of one experiment's results.json: CE first, then by FPR@95 (lower first), then by name."""
    benchmark, machine = benchmark_of(experiment, results), machine_of(results)
    made_by = made_by_of(results)
    rows = []
    for method, stats in results["methods"].items():
        fpr, kind = _interval(stats.get("fpr95"))
        auc, _ = _interval(stats.get("auroc"))
        hours, source = own_stage_hours(method, results)
        seeds = list((results.get("method_seeds") or {}).get(method) or [])
        rows.append(Row(benchmark, experiment, method, fpr, auc, kind, _mean(stats.get("bacc_head")),
                        _mean(stats.get("bacc_tail")), _mean(stats.get("val_fpr95")), seeds,
                        oracle_accuracy(method, results), hours, source, machine, made_by))
        rows[-1].far = {name: (_mean(e.get("fpr95")), _mean(e.get("auroc")))
                        for name, e in ((results.get("far_ood") or {}).get(method) or {}).items()}
        at05 = (((results.get("rare_flag") or {}).get(method) or {}).get("alphas") or {}).get("0.05") or {}
        if at05.get("head_flag_rate"):  # the rare-case flag (report/rare_flag.py)
            rows[-1].rare = (_mean(at05.get("head_flag_rate")), _mean(at05.get("tail_recall")))
    ce = next((r for r in rows if r.method == "ce"), None)
    for row in rows:
        row.vs_ce = _vs_ce(row, ce)
    rows.sort(key=lambda r: (r.method != "ce", r.fpr95[0] if r.fpr95 else math.inf, r.method))
    return rows


def experiment_dirs(results_dir: Path) -> list[Path]:
    return sorted((p for p in results_dir.iterdir() if p.is_dir() and p.name not in SKIP_DIRS
                   and not p.name.startswith(".") and (p / RESULTS_JSON).is_file()), key=lambda p: p.name)


def collect_rows(results_dir: str | Path) -> list[Row]:
    """Every row of every ``<experiment>/results.json`` under ``results_dir``, sorted by benchmark, experiment, then
    as :func:`experiment_rows`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise TailsynthError(f"results directory not found: {results_dir}")
    dirs = experiment_dirs(results_dir)
    if not dirs:
        raise TailsynthError(f"no <experiment>/{RESULTS_JSON} under {results_dir}")
    from .aggregate import read_results
    rows = []
    for folder in dirs:
        rows += experiment_rows(folder.name, read_results(folder / RESULTS_JSON))
    return sorted(rows, key=lambda r: (r.benchmark, r.experiment))  # stable: keeps each experiment's order


# --- formatting ---------------------------------------------------------------------------------------------

def _pct(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{100.0 * value:.{digits}f}"


def _hours(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def far_sets(rows: list[Row]) -> list[str]:
    """The far-OOD sets of ``rows``, sorted: their FPR@95 / AUROC columns follow the tail's (none without any)."""
    return sorted({name for r in rows for name in r.far})


def csv_text(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    sets = far_sets(rows)
    rare = any(r.rare for r in rows)  # rare-case flag columns only where some row has them
    writer.writerow(list(CSV_COLUMNS) + [f"far_{s}_{m}" for s in sets for m in ("fpr95", "auroc")]
                    + (["head_flag_05", "tail_recall_05"] if rare else []))
    for r in rows:
        fpr, auc = r.fpr95 or (None, None, None), r.auroc or (None, None, None)
        far = [_pct(v) for s in sets for v in r.far.get(s, (None, None))]
        writer.writerow([r.benchmark, r.experiment, r.method, _pct(fpr[0]), _pct(fpr[1]), _pct(fpr[2]),
                         _pct(auc[0]), _pct(auc[1]), _pct(auc[2]), r.interval, _pct(r.bacc_head),
                         _pct(r.bacc_tail), _pct(r.val_fpr95), " ".join(str(s) for s in r.seeds),
                         _pct(r.oracle_acc), _hours(r.cpu_hours), r.cpu_hours_from, r.machine, r.made_by,
                         r.vs_ce] + far
                        + ([_pct(v) for v in (r.rare or (None, None))] if rare else []))
    return buffer.getvalue()


def interval_cell(stat: tuple[float, float | None, float | None] | None) -> str:
    """"mean [lo, hi]" in percent (two / one decimals), "mean" without an interval, "–" without a value."""
    if stat is None:
        return "–"
    mean, lo, hi = stat
    return f"{100 * mean:.2f}" if lo is None else f"{100 * mean:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _or_dash(text: str) -> str:
    return text if text else "–"


INTRO = """\
# tailsynth leaderboard

Every row of every shipped experiment in this folder (one folder per experiment: its `README.md`, `results.json`
and `report.md`), one table per benchmark. Numbers are percent on the benchmark's **test** split, the mean over
the row's seeds. Every setting of every method was chosen on the **validation** split (the `val FPR@95` column) or
on the oracle's verdict on the synthetic images; the test numbers were never used to choose anything.

Columns:

- **FPR@95 ↓ / AUROC ↑ [95 % interval]**: tail detection with the row's primary score (share of tail images
  taken for head at 95 % head TPR; area under the ROC curve). The interval (column *interval*) is a
  **bootstrap** over the test images: the test images of each seed are resampled with replacement (head and tail
  separately, B = 1000 replicates, a fixed random seed), the metric is recomputed per seed and averaged over the
  seeds, and the interval is the 2.5 / 97.5 percentiles of those seed means. Rows whose `results.json` predates
  the bootstrap get a Student-**t over seeds** interval instead (mean ± t·std/√n; none with one seed).
- **vs CE**: *not separable from CE* when the row's FPR@95 interval overlaps the CE row's of the same experiment
  (a conservative check: overlap does not show the rows are equal, only that these seeds and test images do not
  tell them apart); *reference* for CE itself.
- **bAcc-head / bAcc-tail ↑**: balanced accuracy over the head / tail classes (argmax over all classes).
- **val FPR@95 ↓**: FPR@95 of the same score on the validation split, where choices are made.
- **oracle acc ↑**: share of the row's synthetic tail images (its generator: logex → LoGex, logex-lora → LoRA
  sampling, ...) that an independent oracle classifier assigns to the intended class.
- **CPU-h ≈**: wall-clock hours of the row's own stages on the experiment's machine (its classifier training and
  evaluation over all seeds plus its generator's synthesis); shared stages (split, base diffusion, LoRA, auxiliary
  classifier, oracle) are not counted, so it is an approximation. † marks rows whose `results.json` has no stage
  timings: classifier training only.

Under each table, every experiment names its machine and the code commit that made it (*made by*): rows of
experiments made by different commits or machines are not one run; compare rows within one experiment.
"""

FAR_NOTE = ("far *set* FPR@95 ↓ / AUROC ↑: the row's primary score with the head test images as positives and the "
            "images of the far-OOD set (something else entirely, the experiment's `far_ood:`) as negatives, seed mean; "
            "– where the experiment has no such set.")

RARE_NOTE = ("head flag α=0.05 / tail recall α=0.05: the rare-case flag of `tailsynth predict` (split-conformal "
             "threshold from the validation head images, target head flag rate α = 0.05) on the test split: the "
             "share of head images flagged (≤ 5 % expected) and of tail images flagged, seed mean; – where the "
             "row's results predate it. See docs/scores-and-metrics.md, \"The rare-case flag\".")


def readme_text(rows: list[Row], command: str, results_dir: Path | None = None) -> str:
    parts = [INTRO]
    for benchmark in sorted({r.benchmark for r in rows}):
        group = [r for r in rows if r.benchmark == benchmark]
        sets = far_sets(group)  # far-OOD columns beside the tail's, only where some row has far sets
        rare = any(r.rare for r in group)  # rare-case flag columns, only where some row has them
        lines = [f"## {benchmark}", "",
                 ("| experiment | method | FPR@95 ↓ [95 %] | AUROC ↑ [95 %] | "
                  + "".join(f"far {s} FPR@95 ↓ | far {s} AUROC ↑ | " for s in sets)
                  + "interval | vs CE | bAcc-head ↑ | bAcc-tail ↑ | val FPR@95 ↓ | "
                  + ("head flag α=0.05 | tail recall α=0.05 ↑ | " if rare else "")
                  + "oracle acc ↑ | CPU-h ≈ | seeds |"),
                 "|:---|:---|---:|---:|" + "---:|---:|" * len(sets) + ":---|:---|---:|---:|---:|"
                 + "---:|---:|" * rare + "---:|---:|:---|"]
        for r in group:
            hours = _hours(r.cpu_hours) + ("†" if r.cpu_hours_from == "classifier training only" else "")
            lines.append("| " + " | ".join([
                r.experiment, r.method, interval_cell(r.fpr95), interval_cell(r.auroc),
                *[_or_dash(_pct(v)) for s in sets for v in r.far.get(s, (None, None))],
                _or_dash(r.interval), r.vs_ce,
                _or_dash(_pct(r.bacc_head)), _or_dash(_pct(r.bacc_tail)), _or_dash(_pct(r.val_fpr95)),
                *([_or_dash(_pct(v)) for v in (r.rare or (None, None))] if rare else []),
                _or_dash(_pct(r.oracle_acc, 1)), _or_dash(hours), ", ".join(str(s) for s in r.seeds) or "–",
            ]).replace("\n", " ") + " |")
        if sets:
            lines += ["", FAR_NOTE]
        if rare:
            lines += ["", RARE_NOTE]
        lines += ["", "Experiments:", ""]
        for experiment in sorted({r.experiment for r in group}):
            first = next(r for r in group if r.experiment == experiment)
            link = experiment
            if results_dir is not None:
                page = next((name for name in (README, "report.md") if (results_dir / experiment / name).is_file()),
                            None)
                link = f"[{experiment}]({experiment}/{page})" if page else experiment
            lines.append(f"- {link}: machine {first.machine or 'not recorded'}; made by {first.made_by}")
        parts.append("\n".join(lines) + "\n")
    parts.append("## Regenerate\n\nThis page and `leaderboard.csv` (the same rows, percent with two decimals) are "
                 "written by\n\n```\n" + command + "\n```\n")
    return "\n".join(parts)


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (so the page names the same command wherever
    the checkout is), else as given; POSIX separators."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def write_leaderboard(results_dir: str | Path, out_dir: str | Path | None = None,
                      command: str | None = None) -> tuple[Path, Path, list[Row]]:
    """Write ``README.md`` and ``leaderboard.csv`` of ``results_dir`` into ``out_dir`` (default: ``results_dir``).
    ``command``: the regenerating command the page names (default ``tailsynth leaderboard <results_dir>``)."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    rows = collect_rows(results_dir)
    command = command or f"tailsynth leaderboard {display_path(results_dir)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    readme, table = out_dir / README, out_dir / CSV_FILE
    atomic_write_text(readme, readme_text(rows, command, results_dir))
    atomic_write_text(table, csv_text(rows))
    return readme, table, rows


def rows_as_dicts(rows: list[Row]) -> list[dict[str, str]]:
    """The CSV rows as dicts (for tests and scripts)."""
    return list(csv.DictReader(io.StringIO(csv_text(rows))))


__all__ = ["GENERATORS", "collect_rows", "experiment_rows", "interval_cell", "rows_as_dicts", "t_interval",
           "write_leaderboard"]
