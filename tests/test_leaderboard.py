"""``tailsynth leaderboard``: rows, intervals, separability from CE, deterministic bytes (report/leaderboard.py)."""
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from scipy import stats

from tailsynth.cli import cli
from tailsynth.report.leaderboard import GENERATORS, t_interval, write_leaderboard

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results"


def stat(values, ci=None):
    mean = sum(values) / len(values)
    out = {"mean": mean, "std": 0.01 if len(values) > 1 else 0.0, "values": values}
    if ci:
        out["ci95"] = ci
    return out


def row(fpr, auroc, ci_fpr=None, ci_auc=None, val=None):
    out = {"fpr95": stat(fpr, ci_fpr), "auroc": stat(auroc, ci_auc), "bacc_head": stat([0.9] * len(fpr)),
           "bacc_tail": stat([0.2] * len(fpr))}
    if val is not None:
        out["val_fpr95"] = stat(val)
    return out


def write_experiments(root):
    a = {"methods": {"ce": row([0.34, 0.35, 0.36], [0.9] * 3, [0.30, 0.40], [0.88, 0.92], val=[0.3, 0.3, 0.3]),
                     "logex": row([0.24, 0.25, 0.26], [0.95] * 3, [0.20, 0.29], [0.93, 0.97]),
                     "logex-lora": row([0.31, 0.32, 0.33], [0.93] * 3, [0.28, 0.36], [0.91, 0.95])},
         "method_seeds": {"ce": [0, 1, 2], "logex": [0, 1, 2], "logex-lora": [0, 1, 2]},
         "oracle_accuracy": {"logex": {"overall": 0.6}, "lora": {"overall": 0.4}, "real_tail_test": {"overall": 0.9}},
         "meta": {"benchmark": "bench-x", "machine": "machine A", "code_commit": "abc123", "timings": [
             {"stage": "train", "label": "ce seed 0", "fingerprint": "a", "wall_time_s": 3600.0},
             {"stage": "evaluate", "label": "ce seed 0", "fingerprint": "b", "wall_time_s": 360.0},
             {"stage": "train_diffusion", "label": "base diffusion", "fingerprint": "c", "wall_time_s": 9e4},
             {"stage": "synthesize", "label": "synthesis logex", "fingerprint": "d", "wall_time_s": 7200.0},
             {"stage": "synthesize", "label": "synthesis logex", "fingerprint": "d", "wall_time_s": 7200.0},  # again
             {"stage": "train", "label": "logex seed 0", "fingerprint": "e", "wall_time_s": 1800.0},
             {"stage": "synthesize", "label": "synthesis lora", "fingerprint": "f", "wall_time_s": 3600.0},
             {"stage": "train", "label": "logex-lora seed 0", "fingerprint": "g", "wall_time_s": 1800.0}]}}
    b = {"methods": {"ce": row([0.50, 0.60, 0.55], [0.8, 0.82, 0.81]), "hod": row([0.30, 0.32, 0.31], [0.85] * 3),
                     "ldam": row([0.7], [0.7])},
         "method_seeds": {"ce": [0, 1, 2], "hod": [0, 1, 2], "ldam": [3]},
         "wall_time_s": {"ce": 720.0, "hod": 360.0, "ldam": None},
         "meta": {"machine_keys": ["cpu | avx2 | torch 2 | 1 threads", "cpu | avx512 | torch 2 | 1 threads"],
                  "results_commit": "def456 (2026-11-20)"},
         "method_commands": {"ce": "tailsynth run pbc-lt-cpu --runs runs"}}
    for name, data in (("exp-a", a), ("pbc-lt-cpu", b)):
        (root / name).mkdir(parents=True)
        (root / name / "results.json").write_text(json.dumps(data))
    (root / "exp-a" / "README.md").write_text("# exp-a\n")
    (root / "speed").mkdir()
    (root / "speed" / "results.json").write_text(json.dumps(a))  # never read: speed/ is skipped
    (root / "probes").mkdir()                                  # no results.json: skipped
    return root


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["experiment"], r["method"]): r for r in csv.DictReader(f)}


def test_t_interval_is_students():
    values = [0.5, 0.6, 0.55]
    lo, hi = t_interval(values)
    expected = stats.t.interval(0.95, 2, loc=0.55, scale=stats.sem(values))
    assert lo == pytest.approx(expected[0]) and hi == pytest.approx(expected[1])
    assert t_interval([0.5]) is None


def test_leaderboard_rows_separability_and_identical_bytes(tmp_path):
    root = write_experiments(tmp_path / "results")
    first = CliRunner().invoke(cli, ["leaderboard", str(root)])
    assert first.exit_code == 0, first.output
    assert "6 rows from 2 experiment(s)" in first.output
    readme, table = root / "README.md", root / "leaderboard.csv"
    before = readme.read_bytes(), table.read_bytes()
    second = CliRunner().invoke(cli, ["leaderboard", str(root)])
    assert second.exit_code == 0 and (readme.read_bytes(), table.read_bytes()) == before

    rows = read_csv(table)
    assert list(rows) == [("exp-a", "ce"), ("exp-a", "logex"), ("exp-a", "logex-lora"),  # CE first, then FPR@95
                          ("pbc-lt-cpu", "ce"), ("pbc-lt-cpu", "hod"), ("pbc-lt-cpu", "ldam")]
    ce, logex, lora = rows["exp-a", "ce"], rows["exp-a", "logex"], rows["exp-a", "logex-lora"]
    assert ce["benchmark"] == "bench-x" and rows["pbc-lt-cpu", "ce"]["benchmark"] == "pbc-lt"  # shipped config
    assert (ce["fpr95"], ce["fpr95_lo"], ce["fpr95_hi"], ce["interval"]) == ("35.00", "30.00", "40.00", "bootstrap")
    assert (logex["auroc"], logex["auroc_lo"], logex["auroc_hi"]) == ("95.00", "93.00", "97.00")
    assert ce["vs_ce"] == "reference" and logex["vs_ce"] == "lower FPR@95 than CE"
    assert lora["vs_ce"] == "not separable from CE"
    assert (ce["val_fpr95"], logex["val_fpr95"], ce["bacc_head"], ce["bacc_tail"]) == ("30.00", "", "90.00", "20.00")
    assert (logex["oracle_acc"], lora["oracle_acc"], ce["oracle_acc"]) == ("60.00", "40.00", "")
    assert (ce["cpu_hours"], logex["cpu_hours"], lora["cpu_hours"]) == ("1.100", "2.500", "1.500")
    assert ce["cpu_hours_from"] == "stage timings" and ce["machine"] == "machine A" and ce["seeds"] == "0 1 2"

    b_ce, hod, ldam = rows["pbc-lt-cpu", "ce"], rows["pbc-lt-cpu", "hod"], rows["pbc-lt-cpu", "ldam"]
    lo, hi = t_interval([0.50, 0.60, 0.55])
    assert (b_ce["interval"], b_ce["fpr95_lo"], b_ce["fpr95_hi"]) == ("t over seeds", f"{100 * lo:.2f}",
                                                                      f"{100 * hi:.2f}")
    assert hod["vs_ce"] == "lower FPR@95 than CE"  # t interval of [0.30, 0.32, 0.31] ends below CE's
    assert (ldam["interval"], ldam["fpr95_lo"], ldam["vs_ce"], ldam["cpu_hours"]) == ("none (1 seed)", "", "no interval",
                                                                                      "")
    assert (b_ce["cpu_hours"], b_ce["cpu_hours_from"]) == ("0.200", "classifier training only")
    assert b_ce["machine"] == "cpu | avx2 | torch 2 | 1 threads; cpu | avx512 | torch 2 | 1 threads"

    text = readme.read_text(encoding="utf-8")
    assert text.index("## bench-x") < text.index("## pbc-lt")
    assert "| exp-a | logex | 25.00 [20.0, 29.0] | 95.00 [93.0, 97.0] | bootstrap | lower FPR@95 than CE |" in text
    assert "| pbc-lt-cpu | ce | 55.00 [" in text and "0.200† |" in text
    assert "[exp-a](exp-a/README.md): machine machine A; made by code abc123" in text
    assert "made by results committed in def456 (2026-11-20), code commit not recorded" in text
    assert ce["made_by"] == "code abc123"
    assert b_ce["made_by"] == "results committed in def456 (2026-11-20), code commit not recorded"
    assert f"tailsynth leaderboard {root.as_posix()}" in text and "never used to choose" in text


def test_out_option_and_an_empty_folder(tmp_path):
    root = write_experiments(tmp_path / "results")
    readme, _, rows = write_leaderboard(root, tmp_path / "out", command="tailsynth leaderboard X")
    assert readme.parent == tmp_path / "out" and not (root / "README.md").exists() and len(rows) == 6
    assert "tailsynth leaderboard X\n" in readme.read_text(encoding="utf-8")
    (tmp_path / "empty").mkdir()
    failed = CliRunner().invoke(cli, ["leaderboard", str(tmp_path / "empty")])
    assert failed.exit_code != 0 and "no <experiment>/results.json" in str(failed.exception)


def test_generator_map_matches_the_method_registry():
    from tailsynth.methods import METHODS
    registered = {name: METHODS.get(name).generator.name for name in METHODS.names() if METHODS.get(name).generator}
    assert registered == GENERATORS


def test_a_judged_set_is_looked_up_under_its_row():
    from tailsynth.report.leaderboard import oracle_accuracy
    results = {"oracle_accuracy": {"logex": {"overall": 0.6}, "lora": {"overall": 0.4},
                                   "logex-guarded": {"overall": 0.756}}}
    assert [oracle_accuracy(m, results) for m in ("logex", "logex-lora", "logex-guarded", "logex@25", "ce")] == [
        0.6, 0.4, 0.756, 0.6, None]


def test_the_committed_leaderboard_is_current(tmp_path):
    if not (COMMITTED / "README.md").is_file():
        pytest.skip("benchmarks/results/README.md is not committed yet: run `tailsynth leaderboard benchmarks/results` "
                    "from the repository root and commit README.md and leaderboard.csv")
    write_leaderboard(COMMITTED, tmp_path, command="tailsynth leaderboard benchmarks/results")
    for name in ("README.md", "leaderboard.csv"):
        assert (tmp_path / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"benchmarks/results/{name} is stale: rerun `tailsynth leaderboard benchmarks/results` from the repository "
            "root and commit it")


def test_the_readme_table_is_the_committed_results():
    """The README's results table is what `python benchmarks/readme_table.py <experiment>` prints from the committed
    results.json (the README names the command and the experiment)."""
    import importlib.util
    import re
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"python benchmarks/readme_table\.py ([\w.-]+)", readme)
    assert found, "README.md must name the command that prints its results table"
    spec = importlib.util.spec_from_file_location("readme_table", REPO / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.readme_table(found.group(1), COMMITTED)
    assert table in readme, (f"README.md's results table is stale: paste `python benchmarks/readme_table.py "
                             f"{found.group(1)}` into it")
