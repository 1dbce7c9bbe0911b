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
    from tailsynth.ood import p_tail, tail_threshold
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
        cuts[which] = tail_threshold(scores, ~np.isin(data.labels, split.tail_classes))
    assert thr["value"] == pytest.approx(cuts["val"], abs=1e-12)
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
