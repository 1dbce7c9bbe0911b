"""The rare-case flag in the pipeline: ``classifier.calibration`` (shared / split), what the threshold reads (never
the test split; in split mode never the model-selection images), the evaluate stage's ``rare_flag`` block and the
report's "Rare-case flag" table."""
import json
from collections import Counter

import numpy as np
import pytest

from tailsynth.config import to_dict
from tailsynth.data import DataConfig, index_source, load_benchmark_config
from tailsynth.engine import Artifact, ArtifactStore, Runner
from tailsynth.ood.conformal import RULE, conformal_threshold
from tailsynth.pipeline import rare_flag as rare_flag_module
from tailsynth.pipeline import stages
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.training import TrainConfig

from tiny import quiet, tiny

TINY = tiny("classifier.epochs=2", "methods=[ce]", "scores=[p_tail,msp_head]", generator=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILSYNTH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TAILSYNTH_PROGRESS", "0")


def test_default_calibration_leaves_the_train_fingerprint_unchanged(tmp_path):
    """``classifier.calibration`` at its default is left out of every dump: the train stage's fingerprint is the one
    recorded with the code before the setting existed (commit 49eabe4); split mode is another stage."""
    assert "calibration" not in to_dict(TrainConfig())
    assert "calibration" not in to_dict(load_experiment("demo", tiny(generator=False)))
    inputs = {"split": Artifact("split", "0123456789abcdef", tmp_path)}
    runner = Runner(ArtifactStore(tmp_path / "runs"))

    def fp(**calibration):
        cfg = stages.TrainStageConfig(method="ce", seed=0, data=DataConfig(image_size=8, channels=1),
                                      train=TrainConfig(epochs=2, **({"calibration": calibration} if calibration else {})))
        return runner.fingerprint(stages.TRAIN, cfg, inputs)

    assert fp() == fp(mode="shared", fraction=0.5) == "f04f9873ef3f822b"
    assert fp(mode="split") != fp() and fp(mode="split", fraction=0.3) != fp(mode="split")


@pytest.mark.slow
def test_split_mode_threshold_reads_only_held_out_head_images_and_never_test(tmp_path, cache, monkeypatch):
    """Split mode: model selection gets the validation images minus a seeded half of the head images; the threshold
    is computed from exactly those held-out head images (their rows, as a multiset, plus the selection's head rows
    are the validation head rows), the test split is never read; the evaluate stage thresholds the TEST scores with
    the card's calibration scores only."""
    seen, selection, calibration = [], {}, {}
    original_split_data, original_fit = stages.split_data, stages.fit
    original_calibrate = stages.calibrate_tail_threshold

    def guarded_split_data(split, data, which):
        seen.append(which)
        if which == "test":
            raise AssertionError("the training stage read the test split")
        return original_split_data(split, data, which)

    def spy_fit(model, objective, batches, val, *args, **kwargs):
        selection["val"] = val
        return original_fit(model, objective, batches, val, *args, **kwargs)

    def spy_calibrate(model, val, split, device, *args, **kwargs):
        calibration.update(val=val, kwargs=kwargs)
        return original_calibrate(model, val, split, device, *args, **kwargs)

    monkeypatch.setattr(stages, "split_data", guarded_split_data)
    monkeypatch.setattr(stages, "fit", spy_fit)
    monkeypatch.setattr(stages, "calibrate_tail_threshold", spy_calibrate)
    cfg = load_experiment("demo", TINY + ["classifier.calibration={mode: split, fraction: 0.5}"])
    bench = load_benchmark_config("digits-lt")
    runner = Runner(ArtifactStore(tmp_path / "runs"), log=quiet)
    split_art = runner.run(stages.SPLIT, stages.SplitStageConfig(
        benchmark=bench, seed=0, source_fingerprint=index_source(bench.source).fingerprint))
    classifier = runner.run(stages.TRAIN, stages.TrainStageConfig(method="ce", seed=0, data=cfg.data,
                                                                  train=cfg.classifier), {"split": split_art})
    assert set(seen) == {"train", "val"}

    split = stages.read_split(split_art)
    val, held = calibration["val"], calibration["kwargs"]["calibration"]
    tail = np.isin(val.labels, split.tail_classes)
    assert calibration["kwargs"]["mode"] == "split" and held.sum() == round(0.5 * (~tail).sum()) and not held[tail].any()
    chosen = selection["val"]
    assert len(chosen.labels) == len(val.labels) - held.sum()
    assert np.isin(chosen.labels, split.tail_classes).sum() == tail.sum()  # every tail image still selects

    def rows(images):
        return Counter(bytes(np.ascontiguousarray(x)) for x in images)

    chosen_head = chosen.images[~np.isin(chosen.labels, split.tail_classes)]
    assert rows(chosen_head) + rows(val.images[held]) == rows(val.images[~tail])  # a partition of the head images

    card = json.loads((classifier.path / "model.json").read_text())["tail_threshold"]
    assert card["mode"] == "split" and card["fraction"] == 0.5 and card["rule"] == RULE
    assert card["n"] == held.sum() == len(card["calibration_scores"])
    assert card["value"] == conformal_threshold(card["calibration_scores"], 0.05)
    # the held-out scores are those of the held-out images (recomputed from the model)
    import torch

    from tailsynth.engine.artifacts import load_classifier
    from tailsynth.ood import p_tail
    from tailsynth.training import predict
    model, _ = load_classifier(classifier.path)
    held_scores = p_tail(predict(model, val.images[held], torch.device("cpu"))[0], split.tail_classes)
    np.testing.assert_allclose(np.sort(held_scores), np.sort(card["calibration_scores"]), atol=1e-6)

    # the evaluate stage: the threshold reads the card's calibration scores only, never a test score
    reads = []
    original_threshold = rare_flag_module.conformal_threshold

    def guarded_threshold(scores, alpha, where="calibration"):
        reads.append(alpha)
        assert np.array_equal(np.asarray(scores), np.asarray(card["calibration_scores"])), "threshold read other scores"
        return original_threshold(scores, alpha, where)

    monkeypatch.setattr(rare_flag_module, "conformal_threshold", guarded_threshold)
    monkeypatch.setattr(stages, "split_data", original_split_data)
    evaluation = runner.run(stages.EVALUATE, stages.EvalStageConfig(data=cfg.data, scores=["p_tail"]),
                            {"split": split_art, "classifier": classifier})
    assert sorted(reads) == [0.01, 0.05]
    rare = json.loads((evaluation.path / "metrics.json").read_text())["rare_flag"]
    assert rare["mode"] == "split" and rare["n"] == card["n"] and rare["source"] == "model card"
    at05 = rare["alphas"]["0.05"]
    assert at05["threshold"] == card["value"]
    lo, hi = at05["band95"]
    assert lo <= at05["expected_head_flag_rate"] <= hi and at05["inside_band"] == (lo <= at05["head_flag_rate"] <= hi)
    assert "at least 99" in rare["alphas"]["0.01"]["error"]  # n = 50 is too few for alpha = 0.01


@pytest.mark.slow
def test_evaluate_and_report_give_the_rare_flag_per_seed_and_over_seeds(tmp_path, cache):
    from tailsynth.pipeline.experiment_run import run_experiment
    from tailsynth.report.leaderboard import collect_rows, rows_as_dicts
    cfg = load_experiment("demo", TINY + ["seeds=[0,1]"])
    result = run_experiment(cfg, tmp_path / "runs", log=quiet, command="test")
    per_seed = [json.loads((a.path / "metrics.json").read_text())["rare_flag"] for a in result.evaluations]
    results = json.loads((result.report_dir / "results.json").read_text())
    block = results["rare_flag"]["ce"]
    assert block["mode"] == "shared" and block["n"] == [p["n"] for p in per_seed]
    for alpha in ("0.05", "0.01"):
        entry = block["alphas"][alpha]
        assert entry["head_flag_rate"]["values"] == [p["alphas"][alpha]["head_flag_rate"] for p in per_seed]
        assert entry["tail_recall"]["values"] == [p["alphas"][alpha]["tail_recall"] for p in per_seed]
        assert entry["band95"] == [p["alphas"][alpha]["band95"] for p in per_seed]
        assert entry["outside_band"] == sum(not p["alphas"][alpha]["inside_band"] for p in per_seed)
    # a smaller alpha: a higher threshold, fewer flags
    for p in per_seed:
        assert p["alphas"]["0.01"]["threshold"] >= p["alphas"]["0.05"]["threshold"]
        assert p["alphas"]["0.01"]["head_flag_rate"] <= p["alphas"]["0.05"]["head_flag_rate"]
    md = (result.report_dir / "report.md").read_text()
    assert "## Rare-case flag" in md and "| ce | 0.05 |" in md and "| ce | 0.01 |" in md
    assert "approximate" in md  # shared mode says its guarantee is approximate
    assert "Rare-case flag" in (result.report_dir / "report.html").read_text()
    # the leaderboard's columns
    folder = tmp_path / "board" / "demo"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    row = rows_as_dicts(collect_rows(tmp_path / "board"))[0]
    assert row["head_flag_05"] == f"{100 * block['alphas']['0.05']['head_flag_rate']['mean']:.2f}"
    assert row["tail_recall_05"] == f"{100 * block['alphas']['0.05']['tail_recall']['mean']:.2f}"
