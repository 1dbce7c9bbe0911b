"""The method registry's contract: every registered method validates its config, resolves a plan and runs on
the tiny experiment; a method's own settings fail at load, before any stage; a new method is one class."""
import json

import pytest
import torch
from pydantic import Field

from tailsynth.config import StrictConfig
from tailsynth.engine import Stage
from tailsynth.engine.artifacts import load_classifier
from tailsynth.errors import TailsynthError, UnknownNameError
from tailsynth.methods import METHODS, Method, generator_named, register
from tailsynth.report.tables import Table
from tailsynth.training.checkpoint import save_weights
from tailsynth.utils import atomic_write_json
from tailsynth.pipeline.experiment import load_experiment
from tailsynth.pipeline.experiment_run import run_experiment
from tailsynth.training import CriterionObjective

from tiny import quiet, tiny

ALL = METHODS.names()


def test_registry_holds_the_paper_methods():
    assert set(ALL) >= {"ce", "ce-rw", "hod", "crt", "focal", "focal-rw", "ldam", "ldam-rw", "ldam-rw-drw",
                        "logex-lora", "logex", "fg-entropy"}
    assert all(METHODS.get(n).reference for n in ALL)
    assert generator_named("logex") is METHODS.get("logex").generator
    with pytest.raises(UnknownNameError, match="fg-entropy, logex, lora"):
        generator_named("dream")


@pytest.mark.parametrize("name", ALL)
def test_each_method_validates_and_plans(name, tmp_path):
    cfg = load_experiment("demo", tiny(f"methods=[{name}]"))
    result = run_experiment(cfg, tmp_path / "runs", plan_only=True, log=quiet)
    labels = [(p["stage"], p["label"]) for p in result.plan]
    own = "label_shift" if name in ("la", "la-ldmlr") else "train_classifier"  # post hoc: nothing retrains
    assert (own, f"{name} seed 0") in labels and ("evaluate", f"{name} seed 0") in labels
    assert len(labels) == len(set((p["stage"], p["fingerprint"]) for p in result.plan))  # each stage once
    if METHODS.get(name).generator is not None:
        assert [s for s, _ in labels].count("train_diffusion") == 1 and ("synthesize", "synthesis "
                                                                        + METHODS.get(name).generator.name) in labels
    assert not (tmp_path / "runs" / "train_classifier").exists()  # planning ran nothing


@pytest.mark.slow
def test_every_method_runs_on_the_tiny_experiment_sharing_stages(tmp_path):
    result = run_experiment(load_experiment("demo", tiny(f"methods=[{','.join(ALL)}]", "oracle=null")),
                            tmp_path / "runs", log=quiet)
    rows = {json.loads((a.path / "metrics.json").read_text())["method"]: a for a in result.evaluations}
    assert sorted(rows) == sorted(ALL)
    for name, art in rows.items():
        m = json.loads((art.path / "metrics.json").read_text())["metrics"]
        assert 0.0 <= m["fpr95"] <= 1.0 and 0.0 <= m["bacc_head"] <= 1.0, name
    runs = tmp_path / "runs"
    assert len(list((runs / "train_diffusion").glob("*/manifest.json"))) == 1  # shared by all four generators
    assert len(list((runs / "adapt_lora").glob("*/manifest.json"))) == 1
    assert len(list((runs / "synthesize").glob("*/manifest.json"))) == 4  # lora, logex, fg-entropy, minority
    assert len(list((runs / "minority_score").glob("*/manifest.json"))) == 1
    # the auxiliary classifier (aux_method: ce, seed 0) is the ce row's own classifier, trained once
    # (la and la-ldmlr retrain nothing: a label_shift stage each); logex-guarded's judges: ce seeds 1 and 2
    assert len(list((runs / "train_classifier").glob("*/manifest.json"))) == len(ALL) - 2 + 2
    assert len(list((runs / "guard_synthetic").glob("*/manifest.json"))) == 1
    assert len(list((runs / "label_shift").glob("*/manifest.json"))) == 2


@pytest.mark.parametrize("override, message", [
    ("synthesis.params.logex.threshhold=0.5", r"synthesis\.params\.logex.*threshhold"),
    ("method_params.ldam-rw-drw.drw_epok=3", r"method_params\.ldam-rw-drw.*drw_epok.*drw_epoch"),
    ("synthesis.params.dream={sigma: 1}", r"unknown synthetic generator 'dream'.*fg-entropy, logex, lora"),
    ("synthesis.params.logex.aux_method=logex-lora", r"aux_method.*'logex-lora' trains on synthetic images"),
    ("synthesis.params.logex.aux_method=cee", r"unknown method 'cee'"),
    ("diffusion.pixel.block_out_chanels=[8]", r"diffusion\.pixel.*block_out_chanels"),
    ("diffusion.backend=dalle", r"unknown diffusion backend 'dalle'.*pixel, sd"),
    ("synthetic_sweep={ce: [5]}", r"synthetic_sweep: 'ce' uses no synthetic images"),
])
def test_a_bad_method_setting_fails_at_load_before_any_stage(override, message, tmp_path):
    with pytest.raises(TailsynthError, match="(?s)" + message):
        load_experiment("demo", tiny("methods=[ce,logex]", override))


class SmoothedCE(Method):
    """A method written as one class: CE with label smoothing 0.2 (Szegedy et al. 2016)."""

    name = "test-smoothed-ce"
    reference = "label smoothing 0.2"

    def objective(self, class_counts, split, params):
        return CriterionObjective(torch.nn.CrossEntropyLoss(label_smoothing=0.2))


@pytest.mark.slow
def test_a_new_method_is_one_class(tmp_path):
    register(SmoothedCE)
    try:
        cfg = load_experiment("demo", tiny("methods=[ce,test-smoothed-ce]", generator=False))
        result = run_experiment(cfg, tmp_path / "runs", log=quiet)
        hist = {json.loads((a.path / "metrics.json").read_text())["method"]:
                json.loads((tmp_path / "runs" / "train_classifier" /
                            json.loads((a.path / "manifest.json").read_text())["inputs"]["classifier"]["fingerprint"]
                            / "history.json").read_text())["history"][0]["train_loss"]
                for a in result.evaluations}
        assert set(hist) == {"ce", "test-smoothed-ce"} and hist["ce"] != hist["test-smoothed-ce"]
    finally:
        METHODS._items.pop(SmoothedCE.name)


# --- the contract of a method with stages of its own: one module (here: this test file), nothing else touched ---
class TemperedConfig(StrictConfig):
    """``method_params.test-tempered-ce``: the temperature the CE classifier's logits are divided by."""

    temperature: float = Field(2.0, gt=0)


class TemperStageConfig(StrictConfig):
    temperature: float


def run_temper(cfg: TemperStageConfig, inputs: dict, workdir) -> dict:
    """The CE classifier with its head divided by the temperature: an ordinary classifier artifact."""
    model, card = load_classifier(inputs["base"].path)
    with torch.no_grad():
        model.head.weight /= cfg.temperature
        model.head.bias /= cfg.temperature
    save_weights(model, workdir / "model.safetensors")
    atomic_write_json(workdir / "model.json", {**card, "method": "test-tempered-ce"})
    return {"temperature": cfg.temperature}


def temper_report(built, context):
    table = Table("Tempered classifiers (test)", ["stage", "temperature"])
    table.rows += [[(b.artifact.fingerprint[:8], ""), (f"{b.config.temperature:g}", "")] for b in built]
    return [table], {"tempered": {b.artifact.fingerprint: b.config.temperature for b in built}}


TEMPER = Stage("test_temper", "1", run_temper, "the CE classifier's logits / T", report=temper_report,
               cost=lambda cfg: f"one copy at T = {cfg.temperature:g}")


class TemperedCE(Method):
    """A method with a config, a stage and a report section of its own."""

    name = "test-tempered-ce"
    reference = "CE logits divided by a temperature (Guo et al. 2017), as a post-hoc stage"
    Config = TemperedConfig

    def classifier(self, graph, seed, per_class=None):
        base = graph.classifier("ce", seed)
        cfg = TemperStageConfig(temperature=graph.method_config(self).temperature)
        return graph.run(TEMPER, cfg, {"split": graph.split(), "base": base}, seed, f"{self.name} seed {seed}")


@pytest.fixture
def tempered():
    register(TemperedCE)
    yield
    METHODS._items.pop(TemperedCE.name)


def test_a_method_with_its_own_stage_config_and_report_plans_and_checks_its_settings(tempered, tmp_path):
    cfg = load_experiment("demo", tiny("methods=[ce,test-tempered-ce]", "method_params.test-tempered-ce.temperature=4",
                                       generator=False))
    assert cfg.method_config("test-tempered-ce") == TemperedConfig(temperature=4.0)
    plan = run_experiment(cfg, tmp_path / "runs", plan_only=True, log=quiet).plan
    own = [p for p in plan if p["stage"] == "test_temper"]
    assert [(p["label"], p["cost"]) for p in own] == [("test-tempered-ce seed 0", "one copy at T = 4")]
    with pytest.raises(TailsynthError, match=r"(?s)method_params\.test-tempered-ce.*temperature"):
        load_experiment("demo", tiny("methods=[test-tempered-ce]", "method_params.test-tempered-ce.temperature=-1",
                                     generator=False))


@pytest.mark.slow
def test_a_method_with_its_own_stage_runs_and_shows_its_report_section(tempered, tmp_path):
    cfg = load_experiment("demo", tiny("methods=[ce,test-tempered-ce]", generator=False))
    result = run_experiment(cfg, tmp_path / "runs", log=quiet)
    metrics = {json.loads((a.path / "metrics.json").read_text())["method"]: json.loads((a.path / "metrics.json")
               .read_text())["metrics"] for a in result.evaluations}
    assert set(metrics) == {"ce", "test-tempered-ce"}
    # dividing the logits by T > 0 keeps every argmax: the balanced accuracies are the CE row's
    assert metrics["test-tempered-ce"]["bacc_head"] == metrics["ce"]["bacc_head"]
    results = json.loads((result.report_dir / "results.json").read_text())
    (fingerprint, temperature), = results["tempered"].items()
    assert temperature == 2.0 and (tmp_path / "runs" / "test_temper" / fingerprint / "model.json").is_file()
    assert "Tempered classifiers (test)" in (result.report_dir / "report.md").read_text()
