"""95 % bootstrap intervals of FPR@95 / AUROC in results.json and report.md (report/bootstrap.py)."""
import json
import time

import numpy as np

from tailsynth.ood import auroc, fpr_at_tpr
from tailsynth.report import load_runs, write_report, write_results_json
from tailsynth.report.bootstrap import CI_METHOD, replicate_metrics, seed_mean_intervals


def scores(n_head, n_tail, seed, shift=1.5):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n_head), rng.normal(shift, 1.0, n_tail)


def width(ci):
    return ci[1] - ci[0]


def test_point_estimate_inside_and_equal_to_the_seed_mean_of_the_metrics():
    per_seed = [scores(300, 100, s) for s in range(3)]
    res = seed_mean_intervals(per_seed, [0, 1, 2])
    assert res["fpr95"]["point"] == np.mean([fpr_at_tpr(h, t) for h, t in per_seed])
    assert res["auroc"]["point"] == np.mean([auroc(h, t) for h, t in per_seed])
    for key in ("fpr95", "auroc"):
        lo, hi = res[key]["ci95"]
        assert 0.0 <= lo < res[key]["point"] < hi <= 1.0


def test_a_larger_test_set_gives_a_narrower_interval():
    small = seed_mean_intervals([scores(200, 50, s) for s in range(3)], [0, 1, 2])
    large = seed_mean_intervals([scores(3200, 800, s) for s in range(3)], [0, 1, 2])
    for key in ("fpr95", "auroc"):
        assert width(large[key]["ci95"]) < 0.5 * width(small[key]["ci95"])  # ~1/4 expected (16x the images)


def test_identical_inputs_give_identical_intervals():
    per_seed = [scores(400, 100, s) for s in range(2)]
    assert seed_mean_intervals(per_seed, [0, 1]) == seed_mean_intervals([(h.copy(), t.copy()) for h, t in per_seed],
                                                                          [0, 1])
    other = seed_mean_intervals(per_seed, [5, 6])  # other run seeds: other resamples
    assert other["fpr95"]["ci95"] != seed_mean_intervals(per_seed, [0, 1])["fpr95"]["ci95"]


def test_hand_example_replicates_are_the_project_metrics_of_the_resampled_images():
    head = np.array([0.1, 0.2, 0.2, 0.4, 0.5, 0.7, 0.3, 0.2, 0.1, 0.9])
    tail = np.array([0.2, 0.6, 0.8, 0.9, 0.7, 0.4])   # ties with head scores
    fpr, auc = replicate_metrics(head, tail, np.random.default_rng(3), b=50)
    rng = np.random.default_rng(3)
    ih, it = rng.integers(0, 10, (50, 10)), rng.integers(0, 6, (50, 6))
    for r in range(50):
        assert fpr[r] == fpr_at_tpr(head[ih[r]], tail[it[r]])
        assert abs(auc[r] - auroc(head[ih[r]], tail[it[r]])) < 1e-12
    # perfectly separated scores: every replicate has FPR 0 and AUROC 1, so the interval is a point
    res = seed_mean_intervals([(np.zeros(20), np.ones(5))], [0], b=200)
    assert res["fpr95"] == {"point": 0.0, "ci95": [0.0, 0.0]} and res["auroc"] == {"point": 1.0, "ci95": [1.0, 1.0]}


def write_consistent_run(root, method, seed, n=2000, shift=1.5):
    """A run directory whose metrics.json FPR@95 / AUROC are the project's metrics of its scores.npz."""
    run = root / f"{method}-{seed}"
    run.mkdir(parents=True)
    rng = np.random.default_rng(1000 * seed + len(method))
    labels = rng.integers(0, 5, n)
    is_tail = labels >= 3
    p_tail = rng.normal(shift * is_tail, 1.0)
    head, tail = p_tail[~is_tail], p_tail[is_tail]
    metrics = {"fpr95": fpr_at_tpr(head, tail), "auroc": auroc(head, tail), "bacc_head": 0.9, "bacc_tail": 0.3}
    data = {"method": method, "seed": seed, "primary_score": "p_tail", "metrics": metrics,
            "scores": {"p_tail": {"fpr95": metrics["fpr95"], "auroc": metrics["auroc"]}},
            "class_names": list("abcde"), "head_classes": [0, 1, 2], "tail_classes": [3, 4]}
    (run / "metrics.json").write_text(json.dumps(data))
    np.savez(run / "scores.npz", labels=labels, is_tail=is_tail, p_tail=p_tail)
    return run


def test_results_json_rows_get_intervals_and_report_md_shows_them(tmp_path):
    dirs = [write_consistent_run(tmp_path / "runs", "ce", s) for s in range(3)]
    dirs += [write_consistent_run(tmp_path / "runs", "logex", s, shift=2.0) for s in range(3)]
    started = time.perf_counter()
    res = write_results_json(tmp_path / "out" / "results.json", load_runs(dirs[:3]))
    assert time.perf_counter() - started < 1.5  # a 3-seed row of 2000 test images: ~0.3 s on one core
    row = res["methods"]["ce"]
    assert row["ci_method"] == CI_METHOD
    for key in ("fpr95", "auroc"):
        lo, hi = row[key]["ci95"]
        assert lo < row[key]["mean"] < hi
    md, _, json_path = write_report(dirs, tmp_path / "rep")
    again = json.loads(json_path.read_text())
    assert again["methods"]["ce"]["fpr95"]["ci95"] == row["fpr95"]["ci95"]  # reproducible
    stat = again["methods"]["logex"]["fpr95"]
    cell = f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f} [{100 * stat['ci95'][0]:.1f}, {100 * stat['ci95'][1]:.1f}]"
    text = md.read_text()
    assert cell in text and "95 % interval of the seed mean" in text


def test_scores_that_do_not_reproduce_the_metrics_get_no_interval(tmp_path):
    run = write_consistent_run(tmp_path, "ce", 0)
    data = json.loads((run / "metrics.json").read_text())
    data["metrics"]["fpr95"] = 0.5
    (run / "metrics.json").write_text(json.dumps(data))
    res = write_results_json(tmp_path / "results.json", load_runs([run]))
    assert "ci95" not in res["methods"]["ce"]["fpr95"] and "ci_method" not in res["methods"]["ce"]
