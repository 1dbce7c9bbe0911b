"""Far-OOD in every run: the experiment key ``far_ood:``, the evaluate stage's far metrics, results.json, report.md
and the leaderboard; validation at load; absent built-in sets skipped; evaluate fingerprints without far sets
unchanged."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailsynth.config import to_dict
from tailsynth.data import DataConfig
from tailsynth.engine import Artifact
from tailsynth.engine.runner import Runner
from tailsynth.engine.store import ArtifactStore
from tailsynth.errors import TailsynthError
from tailsynth.ood.metrics import auroc, fpr_at_tpr
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment
from tailsynth.pipeline.stages import EVALUATE, EvalStageConfig

from tiny import quiet, tiny

SCORES = "scores=[p_tail,msp_head,energy_head,maha_head,rmaha]"


def noise_folder(root: Path, n: int = 12) -> Path:
    """A folder source of ``n`` random colour images of another size (one class sub-folder, as sources need)."""
    rng = np.random.default_rng(0)
    (root / "noise").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "noise" / f"{i}.png")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))


def test_far_sets_in_metrics_results_report_and_leaderboard(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_DATA_ROOT", str(tmp_path / "no-shared-data"))  # cifar10-test is absent here
    folder = noise_folder(tmp_path / "far")
    far = (f"far_ood=[{{name: mnist5k, max_images: 150}}, {{name: noise, source: {{kind: folder, path: {folder}}}}}, "
           "cifar10-test]")
    cfg = load_experiment("demo", tiny("methods=[ce]", SCORES, far, generator=False))
    logs = []
    result = run_experiment(cfg, tmp_path / "runs", log=logs.append, command="test")
    assert any("WARNING: far-OOD set 'cifar10-test' skipped" in line for line in logs)

    run = result.evaluations[0].path
    metrics = json.loads((run / "metrics.json").read_text())
    block = metrics["far_ood"]
    assert list(block) == ["mnist5k", "noise"] and block["mnist5k"]["n"] == 150 and block["noise"]["n"] == 12
    assert set(block["noise"]["scores"]) == {"p_tail", "msp_head", "energy_head", "maha_head", "rmaha"}
    # every value recomputed by hand from the saved arrays: head TEST images positive, far images negative
    saved = np.load(run / "scores.npz")
    far_saved = np.load(run / "far_scores.npz")
    head = ~saved["is_tail"]
    for name in ("mnist5k", "noise"):
        for score, values in block[name]["scores"].items():
            negatives = far_saved[f"{name}/{score}"]
            assert len(negatives) == block[name]["n"]
            assert values["fpr95"] == fpr_at_tpr(saved[score][head], negatives)
            assert values["auroc"] == auroc(saved[score][head], negatives)
        assert block[name]["primary"] == {"score": "p_tail", **block[name]["scores"]["p_tail"]}
    t = np.quantile(-saved["p_tail"][head], 0.05)  # keeps 95 % of the head test images (docs/scores-and-metrics.md)
    assert block["noise"]["primary"]["fpr95"] == float(np.mean(-far_saved["noise/p_tail"] >= t))

    results = json.loads((result.report_dir / "results.json").read_text())
    row = results["far_ood"]["ce"]["mnist5k"]
    assert row["fpr95"]["values"] == [block["mnist5k"]["primary"]["fpr95"]] and row["score"] == "p_tail"
    assert results["meta"]["far_ood_skipped"].keys() == {"cifar10-test"}
    report = (result.report_dir / "report.md").read_text()
    assert "## Far-OOD" in report and "| method | mnist5k FPR@95 ↓ | mnist5k AUROC ↑ | noise FPR@95 ↓" in report
    assert "## Far-OOD scores of method ce" in report
    assert "WARNING: far-OOD set 'cifar10-test' was skipped" in report
    assert "Far-OOD" in (result.report_dir / "report.html").read_text()

    from tailsynth.report.leaderboard import rows_as_dicts, write_leaderboard
    board = tmp_path / "board" / "tiny"
    board.mkdir(parents=True)
    (board / "results.json").write_text(json.dumps(results))
    readme, _, rows = write_leaderboard(board.parent)
    cells = rows_as_dicts(rows)[0]
    assert cells["far_mnist5k_fpr95"] == f"{100 * row['fpr95']['mean']:.2f}"
    assert "far noise FPR@95 ↓" in readme.read_text()

    # a rerun is cached; the evaluation is the same artifact
    again = run_experiment(cfg, tmp_path / "runs", log=quiet, command="test")
    assert [a.path for a in again.evaluations] == [run]


def test_an_unknown_builtin_and_a_missing_user_folder_fail_at_load(tmp_path):
    with pytest.raises(TailsynthError, match="unknown built-in far-OOD set 'nope'.*cifar10-test, digits, "
                                             "fashion-mnist, mnist5k"):
        load_experiment("demo", tiny("far_ood=[mnist5k, nope]", generator=False))
    missing = tmp_path / "not-here"
    with pytest.raises(TailsynthError, match=f"far_ood set 'mine'.*{missing}"):
        load_experiment("demo", tiny(f"far_ood=[{{name: mine, source: {{kind: folder, path: {missing}}}}}]",
                                     generator=False))
    with pytest.raises(TailsynthError, match="far_ood set 'digits'.*the benchmark's own data"):
        load_experiment("demo", tiny("far_ood=[digits]", generator=False))  # the tiny benchmark is digits-lt
    with pytest.raises(TailsynthError, match="appears twice"):
        load_experiment("demo", tiny("far_ood=[mnist5k, {name: mnist5k, max_images: 10}]", generator=False))


def test_an_absent_builtin_set_is_skipped_with_a_warning_at_plan(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_DATA_ROOT", str(tmp_path / "empty"))
    cfg = load_experiment("demo", tiny("methods=[ce]", "far_ood=[cifar10-test]", generator=False))  # no error
    logs = []
    plan = run_experiment(cfg, tmp_path / "runs", plan_only=True, log=logs.append).plan
    missing = tmp_path / "empty" / "cifar-lt" / "cifar10_test.npz"
    assert [line for line in logs if "far-OOD" in line] == [
        f"WARNING: far-OOD set 'cifar10-test' skipped: its data is not on this machine (not found: {missing} "
        "(the shared CIFAR data: TAILSYNTH_DATA_ROOT names its folder))"]
    # nothing to score: the evaluation is the one of the experiment without far sets
    without = run_experiment(load_experiment("demo", tiny("methods=[ce]", generator=False)), tmp_path / "runs",
                             plan_only=True, log=quiet).plan
    assert [r["fingerprint"] for r in plan] == [r["fingerprint"] for r in without]


def test_evaluate_fingerprints_without_far_sets_are_unchanged(tmp_path):
    cfg = EvalStageConfig(data=DataConfig(image_size=8, channels=1), scores=["p_tail", "msp_head", "rmaha"])
    inputs = {"split": Artifact("split", "0123456789abcdef", tmp_path),
              "classifier": Artifact("train_classifier", "fedcba9876543210", tmp_path)}
    runner = Runner(ArtifactStore(tmp_path / "runs"))
    assert "far_ood" not in to_dict(cfg)
    # recorded with the code before far_ood existed (commit 49eabe4): the same config, the same fingerprint
    assert runner.fingerprint(EVALUATE, cfg, inputs) == "32f24baa1ab7e80a"
    assert "far_ood" not in to_dict(load_experiment("demo", tiny("far_ood=[]", generator=False)))
    from tailsynth.data.far import FarSet, FarSetConfig, resolve_far_sets
    far, _ = resolve_far_sets([FarSetConfig(name="mnist5k")])
    assert isinstance(far[0], FarSet) and far[0].fingerprint
    with_far = cfg.model_copy(update={"far_ood": far})
    assert runner.fingerprint(EVALUATE, with_far, inputs) != "32f24baa1ab7e80a"


def test_far_images_are_a_seeded_choice_at_the_classifier_input(tmp_path, cache):
    from tailsynth.data.far import FarSetConfig, far_images, resolve_far_sets
    folder = noise_folder(tmp_path / "far", n=10)
    far, _ = resolve_far_sets([FarSetConfig(name="noise", source={"kind": "folder", "path": str(folder)},
                                            max_images=4, seed=3)])
    a = far_images(far[0], DataConfig(image_size=8, channels=1))
    b = far_images(far[0], DataConfig(image_size=8, channels=1))
    assert a.shape == (4, 8, 8, 1) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert far_images(far[0], DataConfig(image_size=16, channels=3)).shape == (4, 16, 16, 3)


def test_merge_keeps_far_rows_of_kept_methods_only_and_the_all_skipped_note():
    from tailsynth.report.aggregate import merge_results
    from tailsynth.report.far_ood import far_tables
    from tailsynth.report.markdown import table_to_markdown
    stat = {"mean": 0.5, "std": 0.0, "values": [0.5]}
    far = {"mnist5k": {"score": "p_tail", "n": 10, "fpr95": stat, "auroc": stat, "scores": {}}}
    old = {"methods": {"ce": {}, "logex": {}}, "far_ood": {"ce": far, "logex": far}}
    merged = merge_results(old, {"methods": {"ce": {}}})  # ce re-run without far sets
    assert merged["far_ood"] == {"logex": far}
    assert "far_ood" not in merge_results({"methods": {"ce": {}}, "far_ood": {"ce": far}}, {"methods": {"ce": {}}})
    tables = far_tables({"methods": {"ce": {}}}, {"far_ood_skipped": {"fashion-mnist": "not found: x"}})
    assert "WARNING: far-OOD set 'fashion-mnist' was skipped" in table_to_markdown(tables[0])
    assert far_tables({"methods": {"ce": {}}}, {}) == []
