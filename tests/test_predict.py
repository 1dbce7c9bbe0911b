"""`tailsynth predict` and `tailsynth.load(run_dir).predict(...)` on a tiny trained classifier."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import tailsynth
from tailsynth.cli import cli
from tailsynth.errors import TailsynthError
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment

from tiny import tiny

pytestmark = pytest.mark.slow

TINY = tiny("classifier.epochs=2", "methods=[ce]", generator=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    result = run_experiment(load_experiment("demo", TINY), root / "runs", log=lambda m: None)
    evaluation = result.evaluations[0].path
    classifier = json.loads((evaluation / "manifest.json").read_text())["inputs"]["classifier"]["path"]
    return root, evaluation, classifier


def write_digits(folder, n=6):
    from sklearn.datasets import load_digits
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.rint(digits.images[i] / 16 * 255).astype(np.uint8), "L").save(folder / f"d{i}_{digits.target[i]}.png")
    return digits


def test_threshold_is_calibrated_on_validation_and_stored(trained):
    _, _, classifier = trained
    card = json.loads(open(f"{classifier}/model.json").read())
    thr = card["tail_threshold"]
    assert thr["score"] == "p_tail" and 0.0 <= thr["value"] <= 1.0
    assert thr["val_head_tpr"] >= 0.95
    # the stored value is the one calibrated on the validation split, not the one test would give
    from tailsynth.data import Split
    from tailsynth.ood import p_tail
    from tailsynth.ood.conformal import RULE, conformal_threshold
    from tailsynth.engine.artifacts import split_data
    from tailsynth.training import predict
    root, evaluation, _ = trained
    split_path = json.loads((evaluation / "manifest.json").read_text())["inputs"]["split"]["path"]
    split = Split.read(f"{split_path}/split.csv")
    model = tailsynth.load(classifier).model
    cuts = {}
    for which in ("val", "test"):
        data = split_data(split, load_experiment("demo", TINY).data, which)
        scores = p_tail(predict(model, data.images, torch.device("cpu"))[0], split.tail_classes)
        cuts[which] = conformal_threshold(scores[~np.isin(data.labels, split.tail_classes)], 0.05)
    assert thr["value"] == pytest.approx(cuts["val"], abs=1e-12)  # split-conformal on every val head image
    assert thr["alpha"] == 0.05 and thr["rule"] == RULE and thr["mode"] == "shared"
    assert thr["n"] == len(thr["calibration_scores"]) == len(thr["calibration_head_class"])
    assert set(thr["calibration_head_class"]) <= set(card["head_classes"])
    assert abs(cuts["test"] - cuts["val"]) > 1e-6  # so the check above can tell them apart


def test_api_predicts_arrays_and_files(trained, tmp_path):
    _, evaluation, classifier = trained
    model = tailsynth.load(evaluation)  # an evaluation artifact points to its classifier
    assert str(model.path) == classifier
    digits = write_digits(tmp_path / "imgs")
    from_files = model.predict([tmp_path / "imgs"])
    from_arrays = model.predict((digits.images[:6] / 16.0).astype(np.float32))
    assert len(from_files) == 6
    by_name = {p.source.rsplit("/", 1)[-1]: p for p in from_files}
    for i, p in enumerate(from_arrays):
        q = by_name[f"d{i}_{digits.target[i]}.png"]
        assert p.predicted_class == q.predicted_class
        assert p.p_tail == pytest.approx(q.p_tail, abs=1e-6)
        assert p.is_rare == (p.p_tail > model.threshold)
        assert p.head_class in [model.class_names[c] for c in model.head_classes]


def test_cli_predict_table_csv_json_and_bad_images(trained, tmp_path):
    _, _, classifier = trained
    write_digits(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    runner = CliRunner()
    bad = runner.invoke(cli, ["predict", classifier, str(tmp_path / "imgs")])
    assert bad.exit_code != 0
    assert isinstance(bad.exception, TailsynthError) and "broken.png" in str(bad.exception)

    out = tmp_path / "pred.csv"
    ok = runner.invoke(cli, ["predict", classifier, str(tmp_path / "imgs"), "--skip-bad", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "P(tail)" in ok.output and "skipped" in ok.output and "broken.png" in ok.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 and set(rows[0]) == {"source", "predicted_class", "head_class", "p_tail", "is_rare"}
    js = tmp_path / "pred.json"
    assert runner.invoke(cli, ["predict", classifier, str(tmp_path / "imgs"), "--skip-bad", "--out", str(js)]).exit_code == 0
    assert [r["p_tail"] for r in json.loads(js.read_text())] == [pytest.approx(float(r["p_tail"])) for r in rows]


def test_predict_rejects_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(TailsynthError, match="not a trained classifier"):
        tailsynth.load(tmp_path)


def _report_classifier(runs, method="ce", seed=0):
    """The fingerprint of the classifier of a row, as the report's results.json names it."""
    entries = json.loads((runs / "reports" / "demo" / "results.json").read_text())["runs"][method]
    evaluation = next(e["path"] for e in entries if e["seed"] == seed)
    return json.loads(open(f"{evaluation}/manifest.json").read())["inputs"]["classifier"]["fingerprint"]


def test_status_shows_each_artifacts_label(trained, tmp_path):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(trained[0] / "runs", runs)
    (runs / "train_classifier" / "0123456789abcdef.partial").mkdir()
    out = CliRunner().invoke(cli, ["status", str(runs)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["stage", "fingerprint", "state", "wall", "s", "label"]
    by_fp = {line.split()[1]: line for line in lines[1:]}
    fp = _report_classifier(runs)
    assert by_fp[fp].startswith("train_classifier") and by_fp[fp].endswith("  ce seed 0")
    assert by_fp["0123456789abcdef"].split()[2:] == ["partial", "-", "-"]  # no manifest yet: no label
    assert any(line.startswith("evaluate") and line.endswith("ce seed 0") for line in lines)
    assert any(line.startswith("split") and line.endswith("digits-lt") for line in lines)


def test_predict_by_method_and_seed_finds_the_reports_classifier(trained, tmp_path):
    root, _, classifier = trained
    runs = root / "runs"
    fp = _report_classifier(runs)
    assert classifier.endswith(fp)
    for model in (tailsynth.load(runs=runs, experiment="demo", method="ce", seed=0),  # the report's row
                  tailsynth.load(runs / "reports" / "demo", method="ce"),  # the report folder, its only seed
                  tailsynth.load(runs=runs, method="ce", seed=0)):  # by the artifacts' labels
        assert model.path.name == fp
    write_digits(tmp_path / "imgs", 3)
    runner = CliRunner()
    by_dir = runner.invoke(cli, ["predict", classifier, str(tmp_path / "imgs")])
    assert by_dir.exit_code == 0, by_dir.output
    for args in (["--runs", str(runs), "--experiment", "demo", "--method", "ce", "--seed", "0"],
                 [str(runs / "reports" / "demo"), "--method", "ce", "--seed", "0"],
                 ["--model", classifier]):
        by_name = runner.invoke(cli, ["predict", *args, str(tmp_path / "imgs")])
        assert by_name.exit_code == 0, by_name.output
        assert by_name.output == by_dir.output


def test_predict_by_name_lists_candidates_when_ambiguous_or_missing(trained, tmp_path):
    import shutil
    runs = tmp_path / "runs"
    shutil.copytree(trained[0] / "runs", runs)
    first = _report_classifier(runs)
    # a second config in the same runs folder: another "ce seed 0" classifier; the report now names it
    run_experiment(load_experiment("demo", tiny("classifier.epochs=1", "methods=[ce]", generator=False)), runs,
                   log=lambda m: None)
    second = _report_classifier(runs)
    assert second != first
    with pytest.raises(TailsynthError, match="2 classifiers match 'ce seed 0'") as err:
        tailsynth.load(runs=runs, method="ce", seed=0)
    assert first in str(err.value) and second in str(err.value) and "--model" in str(err.value)
    assert "demo" in str(err.value)  # the experiment column: the reports that used each
    assert tailsynth.load(runs=runs, experiment="demo", method="ce", seed=0).path.name == second
    with pytest.raises(TailsynthError, match="no classifier labelled 'logex seed 0'") as err:
        tailsynth.load(runs=runs, method="logex", seed=0)
    assert first in str(err.value) and second in str(err.value)
    with pytest.raises(TailsynthError, match=r"has no row ce seed 3; its rows: ce \(seed 0\)"):
        tailsynth.load(runs=runs, experiment="demo", method="ce", seed=3)
    write_digits(tmp_path / "imgs", 2)
    out = CliRunner().invoke(cli, ["predict", "--runs", str(runs), "--method", "ce", str(tmp_path / "imgs")])
    assert out.exit_code != 0 and isinstance(out.exception, TailsynthError)
    assert first in str(out.exception) and second in str(out.exception)


def test_predict_alpha_re_thresholds_from_the_card_and_the_api_matches_the_cli(trained, tmp_path):
    """--alpha re-thresholds from the card's calibration scores without retraining: a smaller alpha gives a higher
    threshold and fewer flags; the API (load(..., alpha=), predict(..., alpha=)) gives the CLI's flags."""
    _, _, classifier = trained
    from tailsynth.ood.conformal import conformal_threshold
    card = json.loads(open(f"{classifier}/model.json").read())["tail_threshold"]
    digits = write_digits(tmp_path / "imgs", 60)
    arrays = (digits.images[:60] / 16.0).astype(np.float32)
    default, loose, strict = (tailsynth.load(classifier, alpha=a) for a in (None, 0.3, 0.01))
    assert default.threshold == card["value"] and default.alpha == 0.05
    assert loose.threshold == conformal_threshold(card["calibration_scores"], 0.3)
    assert strict.threshold == conformal_threshold(card["calibration_scores"], 0.01)
    assert loose.threshold < default.threshold <= strict.threshold
    flags = {a: [p.is_rare for p in m.predict(arrays)] for a, m in ((0.3, loose), (0.01, strict))}
    assert sum(flags[0.01]) <= sum(flags[0.3]) and sum(flags[0.3]) > 0
    assert [p.is_rare for p in default.predict(arrays, alpha=0.3)] == flags[0.3]  # per call
    runner = CliRunner()
    for alpha, model in ((0.3, loose), (0.01, strict)):
        out = tmp_path / f"pred{alpha}.json"
        res = runner.invoke(cli, ["predict", classifier, str(tmp_path / "imgs"), "--alpha", str(alpha), "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert f"alpha = {alpha:g}, split-conformal: k-th smallest of n" in res.output
        assert f"> {model.threshold:.4f}" in res.output
        by_name = {p.source: p.is_rare for p in model.predict([tmp_path / "imgs"])}
        assert {r["source"]: r["is_rare"] for r in json.loads(out.read_text())} == by_name
    mondrian = tailsynth.load(classifier, alpha=0.3, mondrian=True)
    assert set(mondrian.class_thresholds) == set(mondrian.head_classes)


def test_predict_alpha_needs_a_card_with_calibration_scores(trained, tmp_path):
    import shutil
    _, _, classifier = trained
    old = tmp_path / "old"
    shutil.copytree(classifier, old)
    card = json.loads((old / "model.json").read_text())
    card["tail_threshold"] = {k: card["tail_threshold"][k] for k in ("score", "value", "target_head_tpr")}
    (old / "model.json").write_text(json.dumps(card))
    assert tailsynth.load(old).threshold == card["tail_threshold"]["value"]  # an old card still predicts
    with pytest.raises(TailsynthError, match=r"model card .*old/model.json has no calibration scores.*"
                                             r"--force train_classifier"):
        tailsynth.load(old, alpha=0.01)
    with pytest.raises(TailsynthError, match="at least 99"):  # too small an alpha for n
        tailsynth.load(classifier, alpha=0.001)
