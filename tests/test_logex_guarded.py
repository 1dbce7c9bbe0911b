"""logex-guarded: the judge's rule (tailsynth.guard.judge) by hand, the judges' mean softmax, bad settings at load,
and the judging stage end to end (kept images are byte-for-byte the guided or the un-guided image of the same x_T)."""
import json

import numpy as np
import pytest
import torch

from tailsynth.errors import TailsynthError
from tailsynth.guard import decide, judge_probabilities
from tailsynth.guard.judge import DROPPED, GUIDED, PLAIN
from tailsynth.pipeline.experiment import load_experiment

from tiny import quiet, tiny


def _probs(rows):
    return np.array(rows, dtype=float)


def test_agree_rule_keeps_confirmed_replaces_rejected_and_falls_back_per_class():
    # class 0: 3 of 4 confirmed (75 %); class 1: 1 of 4 (25 %) -> fall-back below 0.5
    probs = _probs([[.6, .4], [.7, .3], [.2, .8], [.9, .1],
                    [.1, .9], [.8, .2], [.7, .3], [.6, .4]])
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    d = decide(probs, targets, np.ones(8, bool), fallback_below=0.5)
    np.testing.assert_array_equal(d.accepted, [1, 1, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(d.source, [GUIDED, GUIDED, PLAIN, GUIDED, PLAIN, PLAIN, PLAIN, PLAIN])
    assert d.acceptance == {0: 0.75, 1: 0.25} and d.fallback == {0: False, 1: True}
    # no fall-back at 0: class 1 keeps its one confirmed guided image
    d0 = decide(probs, targets, np.ones(8, bool), fallback_below=0.0)
    np.testing.assert_array_equal(d0.source[4:], [GUIDED, PLAIN, PLAIN, PLAIN])
    # drop instead of replace; a missing partner is dropped even under replace=plain
    dd = decide(probs, targets, np.ones(8, bool), replace="drop", fallback_below=0.0)
    np.testing.assert_array_equal(dd.source, [GUIDED, GUIDED, DROPPED, GUIDED, GUIDED, DROPPED, DROPPED, DROPPED])
    partner = np.array([1, 1, 0, 1, 1, 1, 1, 0], bool)
    dp = decide(probs, targets, partner, fallback_below=0.5)
    np.testing.assert_array_equal(dp.source, [GUIDED, GUIDED, DROPPED, GUIDED, PLAIN, PLAIN, PLAIN, DROPPED])


def test_confidence_rule_uses_the_target_probability_not_the_argmax():
    probs = _probs([[.45, .30, .25], [.35, .40, .25], [.20, .30, .50]])
    targets = np.array([0, 0, 0])
    d = decide(probs, targets, np.ones(3, bool), rule="confidence", min_confidence=0.3, fallback_below=0.0)
    np.testing.assert_array_equal(d.accepted, [True, True, False])  # 0.35 >= 0.3 though class 1 is the argmax
    assert d.acceptance[0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="unknown replace"):
        decide(probs, targets, np.ones(3, bool), replace="keep")


def test_not_lower_rule_compares_each_guided_image_with_its_unguided_partner():
    guided = _probs([[.30, .70], [.20, .80], [.45, .55], [.60, .40], [.25, .75]])
    plain = _probs([[.20, .80], [.25, .75], [np.nan, np.nan], [.70, .30], [.25, .75]])
    targets = np.array([0, 0, 0, 0, 0])
    has = np.array([1, 1, 0, 1, 1], bool)
    d = decide(guided, targets, has, rule="not_lower", plain_probs=plain, fallback_below=0.0)
    # 0.30 >= 0.20 accepted though the judge's argmax is class 1; 0.20 < 0.25 rejected; no partner: argmax
    # (0.45 < 0.55, dropped); 0.60 < 0.70 rejected; an unchanged image (0.25 = 0.25) is its own partner: kept
    np.testing.assert_array_equal(d.accepted, [True, False, False, False, True])
    np.testing.assert_array_equal(d.source, [GUIDED, PLAIN, DROPPED, PLAIN, GUIDED])
    assert decide(guided, targets, has, rule="not_lower", plain_probs=plain, fallback_below=0.5).fallback == {0: True}
    with pytest.raises(ValueError, match="needs the judge's probabilities"):
        decide(guided, targets, has, rule="not_lower")


def test_not_lower_with_a_margin_asks_the_guidance_to_raise_the_judges_confidence():
    guided = _probs([[.30, .70], [.26, .74], [.45, .55], [.60, .40], [.25, .75]])
    plain = _probs([[.20, .80], [.25, .75], [np.nan, np.nan], [.50, .50], [.25, .75]])
    targets = np.zeros(5, int)
    has = np.array([1, 1, 0, 1, 1], bool)
    d = decide(guided, targets, has, rule="not_lower", plain_probs=plain, fallback_below=0.0, min_gain=0.05)
    # +0.10 kept; +0.01 < 0.05 replaced; no partner: argmax (0.45 < 0.55) dropped; +0.10 kept; unchanged (+0)
    # replaced by its partner
    np.testing.assert_array_equal(d.accepted, [True, False, False, True, False])
    np.testing.assert_array_equal(d.source, [GUIDED, PLAIN, DROPPED, GUIDED, PLAIN])
    assert d.acceptance[0] == pytest.approx(2 / 5)
    np.testing.assert_array_equal(decide(guided, targets, has, rule="not_lower", plain_probs=plain,
                                         fallback_below=0.0, min_gain=0.0).accepted, [1, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="min_gain applies to rule 'not_lower' only"):
        decide(guided, targets, has, rule="agree", min_gain=0.05)


def test_judge_probabilities_are_the_mean_softmax_of_the_judges():
    from tailsynth.models import create_model
    torch.manual_seed(0)
    models = [create_model("resnet18", num_classes=3, in_channels=1, width=0.125, small_input=True) for _ in range(2)]
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    from tailsynth.training import predict
    expected = sum(torch.softmax(torch.from_numpy(predict(m, images, torch.device("cpu"))[0]).double(), 1).numpy()
                   for m in models) / 2
    got = judge_probabilities(models, images, torch.device("cpu"), batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # float32 logits: batch size moves the last bits
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)


@pytest.mark.parametrize("override, match", [
    ("method_params.logex-guarded.judge_seeds=[0, 1]", r"judge_seeds: \[0\] are the auxiliary's own seeds"),
    ("method_params.logex-guarded.judge_seeds=[]", r"judge_seeds"),
    ("method_params.logex-guarded.judge_seeds=[3, 3]", r"repeats a seed"),
    ("method_params.logex-guarded.judge_method=logex-lora", r"judge_method: 'logex-lora' trains on synthetic"),
    ("method_params.logex-guarded.plain=logex", r"same generator 'logex'"),
    ("method_params.logex-guarded.guided=dig-in", r"unknown synthetic generator 'dig-in'"),
    ("method_params.logex-guarded.fallback_below=1.5", r"fallback_below"),
    ("method_params.logex-guarded.min_gain=1.0", r"min_gain"),
    ("method_params.logex-guarded={rule: agree, min_gain: 0.1}", r"min_gain: 0.1 applies to rule 'not_lower' only"),
    ("method_params.logex-guarded.judge_train={modle: resnet32}",
     r"(?s)method_params\.logex-guarded\.judge_train.*unknown key 'modle'"),
    ("method_params.logex-guarded.judge_train={epochs: 0}", r"(?s)method_params\.logex-guarded\.judge_train.*epochs"),
    # settings that leave the recipe as it is do not make the auxiliary's own seed a judge
    ("method_params.logex-guarded={judge_seeds: [0], judge_train: {model: resnet18}}",
     r"judge_seeds: \[0\] are the auxiliary's own seeds"),
])
def test_bad_guard_settings_fail_at_load(override, match):
    with pytest.raises(TailsynthError, match=match):
        load_experiment("demo", tiny("methods=[logex-guarded]", override))


def test_judges_of_another_architecture_are_their_own_stages_and_leave_the_default_fingerprints(tmp_path):
    """judge_train trains the judges with other settings (here another architecture) as stages of their own, may use
    the auxiliary's seed (a judge of another recipe never guided), and, left empty, changes no fingerprint."""
    from tailsynth.pipeline.experiment_run import run_experiment

    def plan(*extra):
        cfg = load_experiment("demo", tiny("methods=[logex-lora,logex,logex-guarded]", *extra))
        return run_experiment(cfg, tmp_path / "runs", plan_only=True, log=quiet).plan

    from tailsynth.methods.logex_guarded.stages import GuardConfig
    assert "judge_train" not in GuardConfig().model_dump()  # runs folders made before it existed stay valid
    assert GuardConfig(judge_train={"model": "resnet32"}).model_dump()["judge_train"] == {"model": "resnet32"}
    default = plan()
    other = plan("method_params.logex-guarded={judge_seeds: [0, 1], judge_train: {model: resnet32}}")
    judges = [p for p in other if p["label"].startswith("judge ")]
    assert [p["label"] for p in judges] == ["judge ce seed 0", "judge ce seed 1"]  # tiny()'s auxiliary is ce
    assert not {p["fingerprint"] for p in judges} & {p["fingerprint"] for p in default}
    guard = [p for p in other if p["stage"] == "guard_synthetic"]
    assert len(guard) == 1 and guard[0]["fingerprint"] not in {p["fingerprint"] for p in default}
    # everything upstream of the judged set is shared with the default plan
    shared = {(p["stage"], p["fingerprint"]) for p in default if p["stage"] in ("synthesize", "adapt_lora")}
    assert shared and shared <= {(p["stage"], p["fingerprint"]) for p in other}


@pytest.mark.slow
def test_the_judged_set_end_to_end(tmp_path):
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.pipeline.experiment_run import run_experiment
    cfg = load_experiment("demo", tiny("methods=[logex-lora,logex,logex-guarded]",
                                       "method_params.logex-guarded={fallback_below: 0.0, rule: not_lower}"))
    result = run_experiment(cfg, tmp_path / "runs", log=quiet)
    runs = tmp_path / "runs"
    (judged_dir,) = [p.parent for p in (runs / "guard_synthetic").glob("*/manifest.json")]
    manifest = json.loads((judged_dir / "manifest.json").read_text())
    assert sorted(k for k in manifest["inputs"] if k.startswith("judge_")) == ["judge_0", "judge_1"]
    guided = SyntheticSet.read(runs / "synthesize" / manifest["inputs"]["guided"]["fingerprint"])
    plain = SyntheticSet.read(runs / "synthesize" / manifest["inputs"]["plain"]["fingerprint"])
    kept = SyntheticSet.read(judged_dir)
    verdict = np.load(judged_dir / "judge.npz")
    assert len(verdict["source"]) == len(guided) and len(kept) == int((verdict["source"] != DROPPED).sum())
    for row, src in zip((r for r, s in zip(guided.rows, verdict["source"]) if s != DROPPED),
                        verdict["source"][verdict["source"] != DROPPED]):
        origin = guided if src == GUIDED else plain
        assert (judged_dir / row["file"]).read_bytes() == (origin.folder / row["file"]).read_bytes()
    assert {r["method"] for r in kept.rows} == {"logex-guarded"}
    judged = json.loads((judged_dir / "judge.json").read_text())
    for name, e in judged["per_class"].items():
        assert e["kept_guided"] + e["kept_plain"] + e["dropped"] == e["n"]
    report = (result.report_dir / "report.md").read_text()
    assert "Guided images judged by classifiers that never guided them" in report
    quality = json.loads(next((runs / "synthetic_quality").glob("*/quality.json")).read_text())
    assert "logex-guarded" in quality and "aux_accuracy" in quality["logex-guarded"]


def test_a_row_trains_on_what_a_dropping_judge_kept(tmp_path):
    """replace: drop leaves a class fewer images than were drawn: that row takes at most per_class kept images
    (none for a class the judge emptied); every other row, and replace: plain, still asks for exactly per_class."""
    from tailsynth.data.synthetic import SyntheticSet
    from tailsynth.methods.logex_guarded.stages import GuardConfig
    from tailsynth.methods.registry import METHODS
    rows = [{"file": f"{c}_{i}.png", "class": c, "role": "tail", "method": "logex-guarded", "score": "0.9"}
            for c, n in (("a", 4), ("b", 1)) for i in range(n)]
    kept = SyntheticSet(tmp_path, rows)
    guarded = METHODS.get("logex-guarded")
    chosen = guarded.synthetic_rows(kept, 3, GuardConfig(replace="drop"))
    assert [r["file"] for r in chosen.rows] == ["a_0.png", "a_1.png", "a_2.png", "b_0.png"]
    assert len(guarded.synthetic_rows(kept, None, GuardConfig(replace="drop"))) == 5
    with pytest.raises(TailsynthError, match=r"asked for 3 synthetic images per class, but it holds only \{'b': 1\}"):
        guarded.synthetic_rows(kept, 3, GuardConfig(replace="plain"))
    with pytest.raises(TailsynthError, match="asked for 3 synthetic images per class"):
        METHODS.get("logex").synthetic_rows(kept, 3, METHODS.get("logex").Config())
