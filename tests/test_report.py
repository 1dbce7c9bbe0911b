"""Report layer on synthetic result files: aggregation vs numpy, merge, Markdown numbers, self-contained HTML."""
import base64
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tailsynth.errors import TailsynthError
from tailsynth.ood import auroc
from tailsynth.report import (aggregate, load_runs, render_html, render_markdown, roc_points, write_report,
                              write_results_json)
from tailsynth.report.format import rank_marks

CLASSES = ["a", "b", "c", "d", "e"]
HEAD, TAIL = [0, 1, 2], [3, 4]
# method -> per seed (fpr95, auroc, bacc_head, bacc_tail)
TABLE = {
    "ce": {0: (0.2505, 0.95, 0.9667, 0.30), 1: (0.2710, 0.94, 0.9600, 0.32), 2: (0.2300, 0.96, 0.9700, 0.28)},
    "hod": {0: (0.1900, 0.955, 0.9650, 0.35), 1: (0.2000, 0.957, 0.9680, 0.36), 2: (0.2100, 0.952, 0.9610, 0.34)},
    "ldam": {0: (0.3624, 0.9196, 0.9561, 0.50), 1: (0.3500, 0.9200, 0.9500, 0.52), 2: (0.3800, 0.9100, 0.9600, 0.49)},
}
SCORE_TABLE = {"p_tail": (0.25, 0.95), "msp_head": (0.31, 0.9385), "maha_head": (0.534, 0.8258)}


def write_run(root, method, seed, values, *, acc_groups=True, n=80):
    run = root / f"{method}-{seed}"
    run.mkdir(parents=True)
    fpr, auc, bh, bt = values
    metrics = {"fpr95": fpr, "auroc": auc, "bacc_head": bh, "bacc_tail": bt, "acc": (bh + bt) / 2}
    if acc_groups:
        metrics.update({"acc_many": bh, "acc_medium": 0.5, "acc_few": bt})
    scores = {name: {"fpr95": f + 0.001 * seed, "auroc": a - 0.001 * seed} for name, (f, a) in SCORE_TABLE.items()}
    scores["p_tail"] = {"fpr95": fpr, "auroc": auc}
    data = {"method": method, "seed": seed, "primary_score": "p_tail", "metrics": metrics, "scores": scores,
            "wall_time_s": 10.0 + seed, "per_class_acc": {c: 0.1 * (i + 1) for i, c in enumerate(CLASSES)},
            "class_names": CLASSES, "head_classes": HEAD, "tail_classes": TAIL}
    (run / "metrics.json").write_text(json.dumps(data))
    rng = np.random.default_rng(seed + 100 * len(method))
    labels = rng.integers(0, 5, size=n)
    is_tail = np.isin(labels, TAIL)
    p_tail = np.clip(rng.normal(0.2 + 0.5 * is_tail, 0.2), 0, 1)
    np.savez(run / "scores.npz", labels=labels, is_tail=is_tail, p_tail=p_tail,
             msp_head=rng.normal(size=n) + is_tail)
    return run


def write_table(root, table=TABLE, **kw):
    return [write_run(root, m, s, v, **kw) for m, per_seed in table.items() for s, v in per_seed.items()]


def test_aggregate_matches_numpy(tmp_path):
    dirs = write_table(tmp_path)
    res = aggregate(load_runs(dirs[::-1]), command="tailsynth run x")  # reversed: values still in seed order
    assert res["seeds"] == [0, 1, 2] and res["command"] == "tailsynth run x"
    assert list(res["methods"]["ce"])[:5] == ["fpr95", "auroc", "bacc_head", "bacc_tail", "acc"]
    for method, per_seed in TABLE.items():
        for j, key in enumerate(["fpr95", "auroc", "bacc_head", "bacc_tail"]):
            vals = [per_seed[s][j] for s in (0, 1, 2)]
            stat = res["methods"][method][key]
            assert stat["values"] == vals
            assert stat["mean"] == float(np.mean(vals))
            assert stat["std"] == float(np.std(vals, ddof=1))
        msp = res["scores"][method]["msp_head"]["fpr95"]
        assert msp["values"] == [0.31, 0.311, 0.312] and msp["std"] == float(np.std(msp["values"], ddof=1))
        assert res["method_seeds"][method] == [0, 1, 2]
        assert res["wall_time_s"][method] == 33.0
    single = aggregate(load_runs([dirs[0]]))
    assert single["methods"]["ce"]["fpr95"] == {"mean": 0.2505, "std": 0.0, "values": [0.2505]}


def test_write_results_json_merges_and_replaces(tmp_path):
    runs_a = load_runs(write_table(tmp_path / "a", {"ce": TABLE["ce"], "hod": TABLE["hod"]}))
    out = tmp_path / "rep" / "results.json"
    write_results_json(out, runs_a, "cmd1")
    new_ce = {0: (0.1, 0.99, 0.98, 0.9)}
    runs_b = load_runs(write_table(tmp_path / "b", {"ce": new_ce, "ldam": TABLE["ldam"]}))
    write_results_json(out, runs_b, "cmd2", extra={"note": "second"})
    res = json.loads(out.read_text())
    assert list(res["methods"]) == ["ce", "hod", "ldam"]
    assert res["methods"]["ce"]["fpr95"] == {"mean": 0.1, "std": 0.0, "values": [0.1]}  # replaced
    assert res["methods"]["hod"]["fpr95"]["values"] == [0.19, 0.2, 0.21]                 # kept
    assert res["method_commands"] == {"ce": "cmd2", "hod": "cmd1", "ldam": "cmd2"}
    assert res["method_seeds"]["ce"] == [0] and res["seeds"] == [0, 1, 2]
    assert res["command"] == "cmd2" and res["note"] == "second"
    assert not list(out.parent.glob("*.tmp"))


def section_rows(md, title_part):
    """{first cell: line} of the Markdown table under the heading that contains ``title_part``."""
    section = next(s for s in md.split("\n## ") if title_part in s.splitlines()[0])
    return {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}


def test_markdown_numbers_and_bold_best(tmp_path):
    res = aggregate(load_runs(write_table(tmp_path)), "cmd")
    md = render_markdown(res, {"methods": ["ldam", "ce", "hod"], "machine": "box", "package_version": "0.1.0",
                               "wall_time_s": 125.0, "command": "tailsynth run demo"})
    rows = section_rows(md, "Table 2")
    ce = TABLE["ce"]
    fpr = [ce[s][0] for s in (0, 1, 2)]
    cell = f"{100 * np.mean(fpr):.2f} ± {100 * np.std(fpr, ddof=1):.2f}"
    assert cell == "25.05 ± 2.05" and cell in rows["ce"]
    assert "**20.00 ± 1.00**" in rows["hod"]            # lowest FPR is bold
    assert "<u>25.05 ± 2.05</u>" in rows["ce"]           # second best underlined
    assert "**" not in rows["ldam"].split("|")[2]        # worst FPR not marked
    assert "**" in rows["ldam"].split("|")[5]           # ldam has the best bAcc-tail
    assert list(rows)[1:] == ["ldam", "ce", "hod"]      # given order
    assert "FPR@95 ↓" in md and "AUROC ↑" in md and "bAcc-tail ↑" in md
    # Table 1/3 for "ce": P(tail) first, then MSP head, then Maha; the best of both columns bold
    scores = section_rows(md, "OOD scores of method ce")
    assert list(scores)[1:] == ["P(tail) (primary)", "MSP head", "Maha dist. to head"]
    assert scores["P(tail) (primary)"].count("**") == 4
    msp = [0.31, 0.311, 0.312]
    assert f"<u>{100 * np.mean(msp):.2f} ± {100 * np.std(msp, ddof=1):.2f}</u>" in scores["MSP head"]
    assert "tailsynth run demo" in md and "box" in md and "0.1.0" in md and "2 min 05 s" in md
    assert "many-shot acc" in md


def test_rank_marks_ties_and_small_tables():
    st = lambda m: {"mean": m, "std": 0.0}  # noqa: E731
    assert rank_marks([st(0.2), st(0.100001), st(0.1), None], False) == ["second", "best", "best", ""]  # tie as shown
    assert rank_marks([st(0.2), st(0.3), st(0.1)], True) == ["second", "best", ""]
    assert rank_marks([st(0.2), st(0.3)], True) == ["", "best"]           # no second best with two rows
    assert rank_marks([st(0.5), st(0.5), st(0.5)], True) == ["", "", ""]   # all equal: nothing marked
    assert rank_marks([st(0.5)], True) == [""]
@pytest.mark.slow
def test_html_is_self_contained(tmp_path):
    dirs = write_table(tmp_path / "runs")
    runs = load_runs(dirs)
    res = aggregate(runs, "cmd")
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    out = render_html(res, runs, {"config": {"a": 1}, "timings": [{"stage": "train", "label": "ce", "state": "run",
                                                                    "wall_time_s": 3.0}]},
                      tmp_path / "report.html", extra_sections=[("Samples", png), ("Notes", "<p>hi</p>")])
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 4  # ROC, histograms, per-class, extra section
    assert 'src="http' not in text and "href=" not in text
    assert "<h2>Samples</h2>" in text and "<p>hi</p>" in text and "Resolved config" in text
    assert '<td class="best">20.00 ± 1.00</td>' in text
    for blob in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text):
        assert base64.b64decode(blob)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(TailsynthError, match="PNG"):
        render_html(res, runs, {}, tmp_path / "x.html", extra_sections=[("bad", b"not a png")])


def test_roc_points_head_positive(tmp_path):
    run = load_runs([write_run(tmp_path, "ce", 0, TABLE["ce"][0])])[0]
    fpr, tpr, auc = roc_points(run, "p_tail")
    s = run.score_arrays["p_tail"]
    assert auc == pytest.approx(roc_auc_score(run.is_tail, s)) and auc == pytest.approx(auroc(s[~run.is_tail],
                                                                                              s[run.is_tail]))
    assert fpr[0] == 0 and tpr[-1] == 1 and np.all(np.diff(fpr) >= 0)
    # hand example: head scores 0, 1; tail 2, 3 -> perfect separation, curve through (0, 1)
    run.is_tail, run.score_arrays = np.array([False, False, True, True]), {"p_tail": np.array([0.0, 1, 2, 3])}
    fpr, tpr, auc = roc_points(run, "p_tail")
    assert auc == 1.0 and (0.0, 1.0) in set(zip(fpr.tolist(), tpr.tolist()))
@pytest.mark.slow
def test_write_report_end_to_end(tmp_path):
    dirs = write_table(tmp_path / "runs", acc_groups=False)
    md, html, js = write_report(dirs[:3], tmp_path / "rep", "cmd1", {"report_method": "ce"})
    md2, html2, js2 = write_report(dirs[3:], tmp_path / "rep", "cmd2", {"methods": ["ce", "hod", "ldam"]})
    res = json.loads(js2.read_text())
    assert list(res["methods"]) == ["ce", "hod", "ldam"] and "acc_many" not in res["methods"]["ce"]
    assert res["methods"]["ce"]["fpr95"]["values"] == [0.2505, 0.271, 0.23]
    assert "many-shot" not in md2.read_text() and "| ce |" in md2.read_text()
    assert html2.read_text().count("data:image/png;base64,") == 3


def test_missing_and_corrupt_files_are_named(tmp_path):
    run = write_run(tmp_path, "ce", 0, TABLE["ce"][0])
    (run / "scores.npz").unlink()
    with pytest.raises(TailsynthError, match=re.escape(str(run / "scores.npz"))):
        load_runs([run])
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(TailsynthError, match=re.escape(str(run / "metrics.json"))):
        load_runs([run])
    with pytest.raises(TailsynthError, match="run directory not found"):
        load_runs([tmp_path / "nope"])
    other = write_run(tmp_path, "hod", 0, TABLE["hod"][0])
    data = json.loads((other / "metrics.json").read_text())
    data["metrics"]["fpr95"] = 25.0  # a percent where a fraction belongs
    (other / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(TailsynthError, match="metrics.fpr95"):
        load_runs([other])
    (other / "scores.npz").write_bytes(b"garbage")
    data["metrics"]["fpr95"] = 0.25
    (other / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(TailsynthError, match="corrupt result file .*scores.npz"):
        load_runs([other])
    dup = write_run(tmp_path / "x", "hod", 0, TABLE["hod"][0])
    fine = write_run(tmp_path / "y", "hod", 0, TABLE["hod"][0])
    with pytest.raises(TailsynthError, match="appears twice"):
        load_runs([dup, fine])
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(TailsynthError, match="results.json"):
        write_results_json(tmp_path / "results.json", load_runs([fine]), "c")


def test_one_seed_prints_no_zero_std_and_val_columns_appear(tmp_path):
    run = write_run(tmp_path, "ce", 0, TABLE["ce"][0])
    data = json.loads((run / "metrics.json").read_text())
    data["metrics"].update({"val_fpr95": 0.1234, "val_auroc": 0.9876})
    (run / "metrics.json").write_text(json.dumps(data))
    md = render_markdown(aggregate(load_runs([run])))
    row = next(line for line in md.splitlines() if line.startswith("| ce"))
    assert "±" not in row and "25.05" in row
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "val FPR@95" in header and "val AUROC" in header
    assert "12.34" in row and "98.76" in row


def test_rows_from_different_settings_are_flagged(tmp_path):
    dirs = write_table(tmp_path)
    out = tmp_path / "report"
    write_report([d for d in dirs if "ce-" in d.name], out, config_digest={"ce": "aaaaaaaa11112222"})
    md_same = (out / "report.md").read_text()
    first = md_same.split("## Tail detection")[1].split("\n## ")[0]
    assert "WARNING" not in first and "| settings |" not in first
    write_report([d for d in dirs if "hod-" in d.name], out, config_digest={"hod": "bbbbbbbb33334444"})
    md = (out / "report.md").read_text()
    assert "WARNING: the rows were made with different non-method settings" in md
    table = md.split("## Tail detection")[1].split("\n## ")[0]
    assert "| settings |" in table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith(("| ce", "| hod"))}
    assert rows["ce"].rstrip(" |").endswith("aaaaaaaa") and rows["hod"].rstrip(" |").endswith("bbbbbbbb")
    results = json.loads((out / "results.json").read_text())
    assert results["config_digest"] == {"ce": "aaaaaaaa11112222", "hod": "bbbbbbbb33334444"}


def test_cli_summary_shows_no_spread_for_one_seed(tmp_path, capsys):
    from tailsynth.cli import _print_summary
    out = tmp_path / "r"
    write_report([write_run(tmp_path, "ce", 0, TABLE["ce"][0])], out)
    _print_summary(out)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("ce"))
    assert "±" not in row and "25.05" in row
